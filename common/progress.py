"""Progress of long work in real counts: which step runs, and how many of its units are done.

The seam: long work takes a ``StepProgress`` and calls it as ``progress(step, done, total)``, with
``done=0`` when the step starts and again after each unit (a block, a layer, a forward pass).
``step`` names the work ("calibration statistics", "sensitivity scan"); ``done`` and ``total``
count units that exist, never estimates. What the calls become is the caller's affair: a bar in
the CLI, or (``ThrottledRecord``) a study's record that the dashboard shows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

StepProgress = Callable[[str, int, int], None]  # (step, units done, units in all)
StepCounts = Callable[[int, int], None]  # (done, total) of one step: the ``on_step`` callbacks compress takes


def bound(progress: StepProgress | None, step: str) -> StepCounts | None:
    """``progress`` for one named step, in the ``on_step(done, total)`` shape; None without ``progress``."""
    if progress is None:
        return None
    return lambda done, total: progress(step, done, total)


class ThrottledRecord:
    """Turns reports into a record ``{step, done, total, seconds, finished}`` and hands it to ``write``.

    Writes are throttled: within a step, at most one every ``interval_s``; a new step is written at
    once, so the record never shows a finished step while the next one runs (steps are few). The
    record then lags the work by at most one unit. A report's write that fails is logged and stays
    due: the work goes on, and the next report writes. ``finish()`` always writes the final state,
    and raises if it cannot (a record left unfinished would say the work still runs).
    ``seconds`` counts from the record's creation.
    """

    def __init__(self, write: Callable[[dict[str, Any]], None], *, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self.write = write
        self.interval_s = interval_s
        self.clock = clock
        self.started = clock()
        self.record: dict[str, Any] = {"step": None, "done": 0, "total": 0, "seconds": 0.0, "finished": False}
        self._written_step: str | None = None
        self._written_at: float | None = None
        self.writes = 0  # how many writes succeeded

    def __call__(self, step: str, done: int, total: int) -> None:
        if total < 0 or not 0 <= done <= total:
            raise ValueError(f"progress of {step!r}: {done} of {total} is not a count")
        now = self.clock()
        self.record = {"step": step, "done": done, "total": total, "seconds": now - self.started, "finished": False}
        due = self._written_at is None or now - self._written_at >= self.interval_s
        if step != self._written_step or due:
            self._write(now)

    def finish(self) -> None:
        """Mark the work done and write the record, whatever the throttle says (raises if the write fails)."""
        now = self.clock()
        self.record = {**self.record, "seconds": now - self.started, "finished": True}
        self._write(now, swallow=False)

    def _write(self, now: float, *, swallow: bool = True) -> None:
        try:
            self.write(dict(self.record))
        except Exception as exc:
            if not swallow:
                raise
            # a progress report is not worth failing the work for
            log.warning("progress record not written (%s: %s); the next report retries", type(exc).__name__, exc)
            return
        self._written_step, self._written_at = self.record["step"], now
        self.writes += 1
