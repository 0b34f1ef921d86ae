"""Learning-rate schedules of recovery runs (torch-free, so the CLI lists them without loading torch)."""

from __future__ import annotations

import math
from collections.abc import Callable


def _constant(step: int, steps: int) -> float:
    return 1.0


def _cosine(step: int, steps: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))  # past the end: 0, not rising again


LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {"constant": _constant, "cosine": _cosine}
"""The factor on the base rate of step ``step`` (0-based) of ``steps``, after the warmup."""


def learning_rate(lr: float, schedule: str, warmup: int, step: int, steps: int) -> float:
    """The rate of the optimizer step that follows ``step`` completed steps: a linear warmup over
    ``warmup`` steps, then ``schedule``'s factor. A pure function of the step, so a resumed run sets
    exactly the rates an uninterrupted one would."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0  # a warmup longer than the run never ends
    return lr * warm * LR_SCHEDULES[schedule](step, steps)
