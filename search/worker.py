"""The worker loop: claim trials from the shared storage, measure them, report; stop cleanly.

Workers are symmetric and may run on any number of machines against one database. The study's
``n_trials`` is enforced by slots: a trial created when ``n_trials`` live trials already exist is
marked ``surplus`` and failed without being measured, so concurrent workers never overshoot.

The database may go away for a while. Between trials, a transient error abandons the iteration
and the loop starts over after a backoff (everything it does there is a read, or a write the
heartbeat reaper undoes). Once a trial is claimed, each storage call is retried in place, and the
result is told exactly once (``tell_once``), so a measurement is not lost or counted twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from search.context import Workbench
from search.liveness import Reaper
from search.measure_trial import measure_trial, tell_once, worker_id
from search.optuna_adapter import SURPLUS_ATTR, rdb_of, record_heartbeat, trial_id
from search.strategy_registry import Proposer, get_strategy
from search.study import counts, load_study, slot_of, wait_for_setup
from storage.retry import Backoff, retry_db

log = logging.getLogger(__name__)
POLL_S = 1.0

TrialHook = Callable[[int, TrialState], None]


def claim(study: optuna.Study) -> optuna.Trial:
    """Take the next trial (a queued one first) and stamp it: first heartbeat, and which worker holds it.

    Without a heartbeat a trial is only reaped after a grace period of being seen without one, so
    the first is recorded at once.
    """
    trial = study.ask()
    retry_db(lambda: record_heartbeat(rdb_of(study), trial_id(trial)), what="the first heartbeat")
    retry_db(lambda: trial.set_user_attr("worker", worker_id()), what="stamping the trial")
    return trial


def drop_if_surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Fail ``trial`` unmeasured if ``n_trials`` live trials were created before it; True if so."""
    if retry_db(lambda: slot_of(study, trial.number), what="counting slots") < n_trials:
        return False
    retry_db(lambda: trial.set_user_attr(SURPLUS_ATTR, True), what="marking a surplus trial")
    tell_once(study, trial, TrialState.FAIL)
    return True


def work_on_study(
    url: str,
    name: str,
    bench: Workbench,
    *,
    stop: threading.Event | None = None,
    worker_index: int = 0,
    on_trial: TrialHook | None = None,
    guide: Proposer | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Measure trials of one study until it has ``n_trials`` finished ones. Returns how many we measured.

    ``guide``: the proposer to run when the queue is empty (default: the study's strategy's own).
    """
    stop = stop or threading.Event()
    study, spec = retry_db(lambda: load_study(url, name, worker_index), what=f"loading study {name}")
    if guide is None:
        guide = get_strategy(spec.strategy).proposer()
    wait_for_setup(study)
    mine = 0
    backoff = Backoff()
    with Reaper(study):
        while not stop.is_set():
            try:
                if should_stop and should_stop():
                    break
                now = counts(study)
                if now.finished >= spec.n_trials:
                    break
                if now.waiting == 0 and now.finished + now.running >= spec.n_trials:
                    stop.wait(POLL_S)  # the last trials are out; if a worker dies, the reaper re-queues its trial
                    continue
                if guide is not None and now.waiting == 0:
                    guide(study, spec, bench, now)
                trial = claim(study)
                if drop_if_surplus(study, trial, spec.n_trials):
                    continue
                state = measure_trial(study, trial, spec, bench)
                if state in (TrialState.COMPLETE, TrialState.PRUNED):
                    mine += 1
                if on_trial:
                    on_trial(trial.number, state)
            except Exception as exc:
                backoff.wait_out(exc, stop)
            else:
                backoff.reset()
    return mine
