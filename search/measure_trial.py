"""Measure one claimed trial: build its config, apply it, stream chunks (pruning), report.

The config stays applied afterwards: the next trial's apply overwrites it (``ModelSession.applied``).

From the first chunk on, every storage call is retried through short outages (each is idempotent:
an intermediate value or a user attribute written twice is the same value), so a measurement that
took minutes is not thrown away for a dropped connection. A failure before that abandons the trial:
its heartbeat stops and the reaper re-queues it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from compress.config import config_from_dict
from search.context import Workbench
from search.liveness import Heartbeat
from search.optuna_adapter import rdb_of, trial_id, trial_state
from search.spec import StudySpec
from storage.retry import is_transient, retry_db

log = logging.getLogger(__name__)


def worker_id() -> str:
    """``host:pid`` of this process (called each time: a forked worker has its own pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def measure_trial(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, bench: Workbench) -> TrialState:
    """Measure ``trial`` and tell its result; the state it ends in (FAIL if the reaper took it meanwhile).

    An error that is not the database's fails the trial and is raised.
    """
    interval = rdb_of(study).heartbeat_interval
    assert interval is not None
    with Heartbeat(study, trial_id(trial), interval):
        try:
            return _measure(study, trial, spec, bench)
        except Exception as exc:
            if not is_transient(exc):
                tell_once(study, trial, TrialState.FAIL)
            raise


def _measure(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, bench: Workbench) -> TrialState:
    session = bench.session(spec.model_id)
    evaluator = bench.evaluator(spec.model_id, spec.dataset, spec.split, spec.eval_tokens)
    space = bench.space(spec)
    started = time.perf_counter()
    params = space.suggest(trial)
    # Enqueued trials say who picked them (baseline:..., predictor); the rest come from the strategy's sampler.
    source = trial.user_attrs.get("source", f"sampler:{spec.strategy}")
    seed_config = trial.user_attrs.get("seed_config")
    if seed_config is not None:
        config = config_from_dict(seed_config)
    else:
        config = space.config(params, {"trial": trial.number, "source": source})
    cost = session.cost(config)
    attrs: dict[str, Any] = {
        "source": source,
        "keep_ratio": cost.params / session.params_linear,
        "params_kept": cost.params,
        "bytes": cost.bytes,
        "bits_per_weight": 8 * cost.bytes / session.params_linear,
        "worker": worker_id(),
        "config": config.to_dict(),
    }
    state = TrialState.COMPLETE
    metrics = None
    with session.applied(config, restore_after=False) as apply_s:  # the next trial overwrites it
        for step, metrics in enumerate(evaluator.stream()):
            score = metrics.score(spec.objective)
            retry_db(lambda: trial.report(score, step), what=f"reporting trial {trial.number}")  # noqa: B023
            # Seeds and screened candidates are already the promising few: measure them fully.
            if source.startswith("sampler") and retry_db(trial.should_prune, what=f"pruning trial {trial.number}"):
                state = TrialState.PRUNED
                break
    assert metrics is not None
    attrs |= {
        "ppl": metrics.ppl,
        "kl": metrics.kl,
        "cosine": metrics.cosine,
        "n_tokens": metrics.n_tokens,
        "apply_s": apply_s,
        "forward_s": metrics.seconds,
        "wall_s": time.perf_counter() - started,
    }

    def record() -> None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    retry_db(record, what=f"recording trial {trial.number}")
    if state == TrialState.PRUNED:
        return tell_once(study, trial, TrialState.PRUNED)
    return tell_once(study, trial, TrialState.COMPLETE, metrics.score(spec.objective))


def tell_once(study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None = None) -> TrialState:
    """Finish ``trial`` as ``state`` unless it is finished already; the state it ends in.

    Retried through outages. A tell whose commit reached the database before the connection
    dropped is not applied again (the trial is found finished); a trial the reaper failed meanwhile
    (its heartbeats could not reach the database) stays failed, and its re-queued copy counts.
    """

    def attempt() -> TrialState:
        current = trial_state(study, trial)
        if current.is_finished():
            return current
        try:
            # state=None for a value: Optuna stores a value it cannot accept (NaN) as a failed trial.
            return study.tell(trial, value, state=None if state == TrialState.COMPLETE else state).state
        except (UpdateFinishedTrialError, ValueError):
            current = trial_state(study, trial)
            if not current.is_finished():
                raise  # a bad value, not a race
            return current

    final = retry_db(attempt, what=f"finishing trial {trial.number}")
    if final != state:
        log.warning("trial %d of %s ended %s, not %s (failed by the reaper, or an unacceptable value)",
                    trial.number, study.study_name, final.name, state.name)
    return final
