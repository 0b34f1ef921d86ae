"""Which trials are alive: heartbeats that ride out database hiccups, and the reaper of dead workers' trials.

A worker records a heartbeat for the trial it holds every ``interval`` seconds (database clock).
A RUNNING trial whose heartbeat is older than the grace period (1.5 intervals) belongs to a dead
or cut-off worker: the reaper, a thread in every worker that looks every eighth interval, fails
it and re-queues a copy (same params and seed config), at most ``MAX_RETRY`` times per trial. So a
dead worker's trial is back in the queue within 1.5 + 1/8 intervals of its last heartbeat (two at most).

A RUNNING trial with no heartbeat at all (its worker died between the claim and the first
heartbeat, or the claim's reply was lost with the connection) is reaped once it has been seen
without one for the grace period. Optuna's own ``fail_stale_trials`` skips those forever, and
its retry callback would re-queue twice if the connection dropped mid-way; hence this module.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import timedelta
from typing import Self

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState, create_trial

from search.optuna_adapter import (
    SURPLUS_ATTR,
    fail_if_running,
    is_surplus,
    rdb_of,
    record_heartbeat,
    running_trials,
    study_id,
    trial_by_id,
)
from storage.retry import is_transient, retry_db

log = logging.getLogger(__name__)

#: How many times one measurement is re-queued after its worker died (then it stays failed).
MAX_RETRY = 2
#: User attributes a re-queued copy does not inherit: they describe the dead attempt, not the candidate.
NOT_INHERITED = frozenset({SURPLUS_ATTR, "worker"})
#: After a failed heartbeat write, the next attempt comes this much sooner than a whole interval.
HEARTBEAT_RETRY_S = 0.5


def grace_period_s(interval_s: int) -> int:
    """Seconds without a heartbeat after which a trial counts as abandoned (1.5 intervals, rounded up)."""
    return math.ceil(1.5 * interval_s)


class BackgroundThread:
    """A daemon thread running ``_run`` for the duration of a ``with`` block; ``_stop`` ends it."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError


class Heartbeat(BackgroundThread):
    """Records ``trial_id``'s heartbeat now and every ``interval_s`` while the ``with`` block runs.

    Unlike Optuna's heartbeat thread, a failed write (database unreachable) does not end the
    thread: it is logged and tried again after ``HEARTBEAT_RETRY_S``.
    """

    def __init__(self, study: optuna.Study, trial_id: int, interval_s: float) -> None:
        super().__init__(f"heartbeat-{trial_id}")
        self.storage = rdb_of(study)
        self.trial_id = trial_id
        self.interval_s = interval_s

    def _run(self) -> None:
        while True:
            wait = self.interval_s
            try:
                record_heartbeat(self.storage, self.trial_id)
            except Exception as exc:
                log.warning("heartbeat of trial id %d not recorded (%s); retrying", self.trial_id, exc)
                wait = min(self.interval_s, HEARTBEAT_RETRY_S)
            if self._stop.wait(wait):
                return


def requeue(study: optuna.Study, failed: FrozenTrial, max_retry: int = MAX_RETRY) -> int | None:
    """Enqueue a copy of ``failed`` to be measured again; the copy's number, or None if not re-queued.

    Idempotent: a copy already in the study (an earlier attempt whose reply was lost) is not added
    again. A surplus trial was never meant to be measured and is not re-queued.
    """
    if is_surplus(failed):
        return None
    history = [*failed.system_attrs.get("retry_history", []), failed.number]
    if len(history) > max_retry:
        log.warning("trial %d of %s failed %d times; not retried again", history[0], study.study_name, len(history))
        return None

    def add() -> int | None:
        for trial in study.get_trials(deepcopy=False):
            if trial.system_attrs.get("retry_history") == history:
                return None
        copy = create_trial(
            state=TrialState.WAITING,
            params=failed.params,
            distributions=failed.distributions,
            user_attrs={k: v for k, v in failed.user_attrs.items() if k not in NOT_INHERITED},
            system_attrs={**failed.system_attrs, "failed_trial": history[0], "retry_history": history},
        )
        study.add_trial(copy)
        return max(t.number for t in study.get_trials(deepcopy=False) if t.system_attrs.get("retry_history") == history)

    return retry_db(add, what=f"re-queueing trial {failed.number}")


class Reaper(BackgroundThread):
    """Fails and re-queues a study's abandoned trials, by heartbeat (see the module docstring).

    ``reap()`` may be called from any thread; used as a context manager, a daemon thread calls it
    every eighth of a heartbeat interval until the block ends (one light query each time).
    """

    def __init__(self, study: optuna.Study) -> None:
        super().__init__(f"reaper-{study.study_name}")
        self.study = study
        storage = rdb_of(study)
        interval = storage.heartbeat_interval
        if interval is None:
            raise ValueError("the study's storage records no heartbeats")
        self.grace_s = float(storage.grace_period or 2 * interval)
        self.period_s = interval / 8
        self._unbeaten: dict[int, float] = {}  # trial id -> when first seen RUNNING without a heartbeat
        self._lock = threading.Lock()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.reap()
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("reaping %s failed", self.study.study_name)
                # else: the database is away; the heartbeats cannot reach it either. Look again later.

    def stale(self) -> list[int]:
        """Ids of the RUNNING trials that count as abandoned now."""
        now, rows = running_trials(rdb_of(self.study), study_id(self.study))
        grace = timedelta(seconds=self.grace_s)
        seen_at = time.monotonic()
        stale = []
        with self._lock:
            self._unbeaten = {
                trial_id: self._unbeaten.get(trial_id, seen_at) for trial_id, beat in rows if beat is None
            }
            for trial_id, beat in rows:
                if beat is None:
                    if seen_at - self._unbeaten[trial_id] > self.grace_s:
                        stale.append(trial_id)
                elif now - beat > grace:
                    stale.append(trial_id)
        return stale

    def reap(self) -> list[int]:
        """Fail every abandoned trial and re-queue it; the numbers of the trials this call failed."""
        reaped = []
        for trial_id in self.stale():
            failed = self._fail(trial_id)
            if failed is None:
                continue
            copy = requeue(self.study, failed)
            log.warning("trial %d of %s: its worker went quiet; failed it%s", failed.number, self.study.study_name,
                        "" if copy is None else f" and re-queued it as trial {copy}")
            reaped.append(failed.number)
        return reaped

    def _fail(self, trial_id: int) -> FrozenTrial | None:
        """Fail the trial if it is still RUNNING; the failed trial, or None if it finished meanwhile."""
        try:
            # A compare-and-set: of several reapers, exactly one moves the trial from RUNNING to FAIL.
            won = retry_db(lambda: fail_if_running(self.study, trial_id), what=f"failing trial id {trial_id}")
        except UpdateFinishedTrialError:
            return None  # finished meanwhile, by its worker or another reaper
        if not won:
            return None
        return retry_db(lambda: trial_by_id(self.study, trial_id), what=f"reading trial id {trial_id}")
