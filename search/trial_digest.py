"""The summary of a study's trials in one pass: counts, best, baselines, timings, workers. Torch-free.

Workers publish it (``search.setup.summarize``) and the API shows it live (``api.study_view``); both
fold the trials the same way, here. Optuna never changes a finished trial, so ``IncrementalDigest``
folds each finished trial in once and a poll costs a set lookup per trial.

Ties for the best go to the earlier trial; a rerun baseline replaces the earlier measurement.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

# Optuna's TrialState names -> our count fields.
COUNT_FIELDS = {"COMPLETE": "n_complete", "RUNNING": "n_running", "WAITING": "n_waiting",
                "FAIL": "n_failed", "PRUNED": "n_pruned"}


def number(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN; missing and malformed attributes read as None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None



@dataclass
class TrialDigest:
    """What the detail needs from the trials, gathered in one pass (a poll must stay cheap at 1000 trials)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_FIELDS.values(), 0))
    best: FrozenTrial | None = None
    baselines: dict[str, FrozenTrial] = field(default_factory=dict)
    completed_s: float = 0.0
    n_timed: int = 0
    n_running: int = 0
    workers: set[str] = field(default_factory=set)

    @property
    def mean_trial_s(self) -> float | None:
        return self.completed_s / self.n_timed if self.n_timed else None

    @property
    def active_workers(self) -> int:
        return len(self.workers) or self.n_running


def _fold(seen: TrialDigest, trial: FrozenTrial) -> None:
    """Count one trial into ``seen``. Ties for the best go to the earlier trial; a rerun baseline replaces
    the earlier measurement."""
    state = trial.state.name
    count = COUNT_FIELDS.get(state)
    if count is not None:
        seen.counts[count] += 1
    if state == "RUNNING":
        seen.n_running += 1
        worker = trial.user_attrs.get("worker")
        if isinstance(worker, str) and worker:
            seen.workers.add(worker)
        return
    if state != "COMPLETE":
        return
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        seen.completed_s += (trial.datetime_complete - trial.datetime_start).total_seconds()
        seen.n_timed += 1
    value = number(trial.value)
    if value is None:
        return
    best = seen.best
    if best is None or (value, trial.number) < (number(best.value), best.number):
        seen.best = trial
    source = trial.user_attrs.get("source")
    if isinstance(source, str) and source.startswith("baseline:"):
        name = source.removeprefix("baseline:")
        if name not in seen.baselines or trial.number > seen.baselines[name].number:  # the latest rerun
            seen.baselines[name] = trial


def digest(trials: Sequence[FrozenTrial]) -> TrialDigest:
    seen = TrialDigest()
    for trial in trials:
        _fold(seen, trial)
    return seen


class IncrementalDigest:
    """One study's digest that folds each finished trial in once: Optuna never changes a finished trial,
    so a poll costs a set lookup per trial plus the work on new and unfinished ones."""

    def __init__(self) -> None:
        self._finished = TrialDigest()
        self._folded: set[int] = set()
        self._lock = threading.Lock()

    def update(self, trials: Sequence[FrozenTrial]) -> TrialDigest:
        with self._lock:
            unfinished = []
            for trial in trials:
                if trial.number in self._folded:
                    continue
                if trial.state.is_finished():
                    _fold(self._finished, trial)
                    self._folded.add(trial.number)
                else:
                    unfinished.append(trial)
            done = self._finished
            seen = TrialDigest(counts=dict(done.counts), best=done.best, baselines=dict(done.baselines),
                               completed_s=done.completed_s, n_timed=done.n_timed)
        for trial in unfinished:
            _fold(seen, trial)
        return seen


def metrics(trial: FrozenTrial) -> dict[str, Any]:
    """A measured trial's numbers, as the stored summary keeps them."""
    attrs = trial.user_attrs
    return {"trial": trial.number, "value": trial.value, "ppl": attrs.get("ppl"), "kl": attrs.get("kl"),
            "keep_ratio": attrs.get("keep_ratio"), "bits_per_weight": attrs.get("bits_per_weight"),
            "source": attrs.get("source")}
