"""A study's last step when ``StudySpec.recover_steps`` is set: recover the winner, claim on holdout.

The winner is distilled from the dense model by ``compress.recover.recover`` (the same code as
``slimscout recover``), trained on the calibration split and early-stopped on the study's split,
then measured on the study's holdout tokens, so that the summary holds holdout numbers before and
after recovery side by side. Progress (step, loss, ETA) goes to a callback after every step.

Recovery checkpoints every ``eval_every`` steps next to its output and resumes from there, so a
worker killed mid-recovery loses at most that many steps: the next worker that completes the study
continues it. ``RecoveryLock`` keeps two workers of one machine (they share the artifacts folder,
like the API that serves them) from recovering the same study at once; the kernel drops it when
its process dies, so a killed worker never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import math
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from common.settings import get_settings
from compress.config import CompressionConfig
from search.context import Workbench
from search.spec import StudySpec

#: At most this many steps between checkpoints (fewer on short runs: at least four per run).
MAX_EVAL_EVERY = 20


class RecoveryLock:
    """An exclusive, non-blocking ``flock`` on ``path``; ``acquired`` says whether this process holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.acquired = False
        self._fd: int | None = None

    def __enter__(self) -> RecoveryLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.acquired = True
        except BlockingIOError:
            self.acquired = False
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def progress_record(step: int, steps: int, loss: float, eta_s: float,
                    search: dict[str, float] | None) -> dict[str, Any]:
    """What the summary's ``recovery`` holds while a recovery runs (JSON: no NaN)."""
    record: dict[str, Any] = {"status": "running", "step": step, "steps": steps,
                              "loss": None if math.isnan(loss) else loss,
                              "eta_s": None if math.isnan(eta_s) else eta_s}
    if search is not None:
        record["search"] = {key: value for key, value in search.items() if key != "step"}
    return record


def recover_winner(spec: StudySpec, bench: Workbench, config: CompressionConfig, out: Path, *,
                   holdout_before: dict[str, Any] | None,
                   on_progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Recover ``config`` into ``out`` (resuming a checkpoint a killed run left there); the summary's
    ``recovery`` entry: holdout before and after, search-split numbers, steps and seconds."""
    from compress.catalog import load_model
    from compress.recover import RecoverSettings, recover

    assert spec.recover_steps is not None
    every = max(1, min(MAX_EVAL_EVERY, spec.recover_steps // 4))
    settings = RecoverSettings(steps=spec.recover_steps, eval_every=every, eval_tokens=spec.eval_tokens,
                               dataset=spec.dataset, train_extra=tuple(spec.recover_train_extra), seed=spec.seed,
                               bf16=get_settings().recover_bf16, max_minutes=spec.recover_minutes)
    result = recover(bench.session(spec.model_id), config, out, settings=settings, resume=True, force=True,
                     on_progress=lambda p: on_progress(progress_record(p.step, p.steps, p.loss, p.eta_s, p.search)))
    evaluator = bench.evaluator(spec.model_id, spec.dataset, "holdout", spec.holdout_tokens)
    after = evaluator.evaluate(load_model(str(out)).model)
    return {"status": "done", "steps": settings.steps, "steps_run": result.steps_run, "best_step": result.best_step,
            "max_minutes": settings.max_minutes, "schedule_steps": result.schedule_steps,
            "lr": settings.lr, "bf16": settings.bf16, "tokens_per_step": settings.tokens,
            "train_extra": list(settings.train_extra),
            "resumed_from": result.resumed_from,
            "seconds": result.seconds, "holdout_tokens": spec.holdout_tokens, "holdout_before": holdout_before,
            "holdout_after": {"ppl": after.ppl, "kl": after.kl, "cosine": after.cosine},
            "search_before": result.before, "search_after": result.after}
