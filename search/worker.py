"""The worker loop: claim trials from the shared storage, measure them, report; stop cleanly.

Workers are symmetric and may run on any number of machines against one database. The study's
``n_trials`` is enforced by slots: a trial created when ``n_trials`` live trials already exist is
marked ``surplus`` and failed without being measured, so concurrent workers never overshoot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from search.context import Workbench
from search.measure_trial import measure_trial
from search.study import counts, load_study, slot_of, wait_for_setup

log = logging.getLogger(__name__)
POLL_S = 1.0

TrialHook = Callable[[int, TrialState], None]
Guide = Callable[..., int]


def work_on_study(
    url: str,
    name: str,
    bench: Workbench,
    *,
    stop: threading.Event | None = None,
    worker_index: int = 0,
    on_trial: TrialHook | None = None,
    guide: Guide | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Measure trials of one study until it has ``n_trials`` finished ones. Returns how many we measured."""
    stop = stop or threading.Event()
    study, spec = load_study(url, name, worker_index)
    wait_for_setup(study)
    mine = 0
    while not stop.is_set() and not (should_stop and should_stop()):
        fail_stale_trials(study)
        now = counts(study)
        if now.finished >= spec.n_trials:
            break
        if now.waiting == 0 and now.finished + now.running >= spec.n_trials:
            time.sleep(POLL_S)  # the last trials are out; if a worker dies, its trial comes back
            continue
        if guide is not None and now.waiting == 0:
            guide(study, spec, bench, now)
        trial = study.ask()
        # A first heartbeat at once: a trial without any is never seen as stale if we die now.
        study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
        if slot_of(study, trial.number) >= spec.n_trials:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            continue
        try:
            state = measure_trial(study, trial, spec, bench)
        except Exception:
            log.exception("trial %d of %s failed", trial.number, name)
            study.tell(trial, state=TrialState.FAIL)
            raise
        mine += 1
        if on_trial:
            on_trial(trial.number, state)
    return mine
