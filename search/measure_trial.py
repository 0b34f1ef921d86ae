"""Measure one claimed trial: build its config, apply it, stream chunks (pruning), report.

The config stays applied afterwards: the next trial's apply overwrites it (``ModelSession.applied``).

From the first chunk on, every storage call is retried through short outages (each is idempotent:
an intermediate value or a user attribute written twice is the same value), so a measurement that
took minutes is not thrown away for a dropped connection. A failure before that abandons the trial:
its heartbeat stops and the reaper re-queues it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from common.settings import get_settings
from compress.config import CompressionConfig, config_from_dict
from compress.measure import Evaluator
from search.context import Workbench
from search.liveness import Heartbeat
from search.optuna_adapter import rdb_of, trial_id, trial_state
from search.spec import RECOVERED_OBJECTIVES, StudySpec
from storage.retry import is_transient, retry_db

log = logging.getLogger(__name__)
#: An enqueued trial's user attribute: measure only the first this many evaluation tokens (a lower
#: fidelity of a multi-fidelity strategy). Such a trial ends PRUNED, like a trial a pruner stopped, so
#: its cheaper score never competes with full measurements for the study's best.
FIDELITY_ATTR = "fidelity_tokens"


def fidelity_chunks(tokens: int, seq_len: int) -> int:
    """How many evaluation chunks cover the first ``tokens`` tokens (at least one)."""
    return max(1, math.ceil(tokens / seq_len))


def worker_id() -> str:
    """``host:pid`` of this process (called each time: a forked worker has its own pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def measure_trial(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, bench: Workbench) -> TrialState:
    """Measure ``trial`` and tell its result; the state it ends in (FAIL if the reaper took it meanwhile).

    A trial finished by someone else while it was measured (the reaper, when this process's heartbeats
    starved on a crowded machine) is given up: its state is returned and the worker goes on with the
    next trial, as the reaper re-queued a copy. Any other error that is not the database's fails the
    trial and is raised.
    """
    interval = rdb_of(study).heartbeat_interval
    assert interval is not None
    with Heartbeat(study, trial_id(trial), interval):
        try:
            return _measure(study, trial, spec, bench)
        except UpdateFinishedTrialError:
            state = trial_state(study, trial)
            if not state.is_finished():
                raise
            log.warning("trial %d of %s was finished (%s) by another process while measured; giving it up",
                        trial.number, study.study_name, state.name)
            return state
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
    streamed = RECOVERED_OBJECTIVES.get(spec.objective, spec.objective)
    fidelity = trial.user_attrs.get(FIDELITY_ATTR)
    n_chunks = len(evaluator.chunks) if fidelity is None else fidelity_chunks(int(fidelity), evaluator.seq_len)
    with session.applied(config, restore_after=False) as apply_s:  # the next trial overwrites it
        for step, metrics in enumerate(evaluator.stream()):
            score = metrics.score(streamed)
            retry_db(lambda: trial.report(score, step), what=f"reporting trial {trial.number}")  # noqa: B023
            if step + 1 >= n_chunks and n_chunks < len(evaluator.chunks):  # a lower fidelity: stop here
                state = TrialState.PRUNED
                break
            # Seeds and screened candidates are already the promising few: measure them fully.
            if source.startswith("sampler") and retry_db(trial.should_prune, what=f"pruning trial {trial.number}"):
                state = TrialState.PRUNED
                break
    assert metrics is not None
    value = metrics.score(streamed)
    if state == TrialState.COMPLETE and spec.objective in RECOVERED_OBJECTIVES:
        value, attrs["recovered"] = measure_recovered(spec, bench, config, evaluator)
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
    return tell_once(study, trial, TrialState.COMPLETE, value)


def measure_recovered(spec: StudySpec, bench: Workbench, config: CompressionConfig,
                      evaluator: Evaluator) -> tuple[float, dict[str, Any]]:
    """The recovery-aware objective: ``config`` distilled for ``spec.recover_trial_steps`` steps
    (``compress.recover.distil``), then measured on the trial's own tokens; (value, what to record).

    Cost: ``recover_trial_steps`` × (teacher forward + student forward and backward) on 512 calibration
    tokens, plus one more forward pass over the ``eval_tokens``; the trial's plain measurement comes first.
    """
    from compress.recover import RecoverSettings, distil

    started = time.perf_counter()
    settings = RecoverSettings(steps=spec.recover_trial_steps, dataset=spec.dataset, seed=spec.seed,
                               train_extra=tuple(spec.recover_train_extra), bf16=get_settings().recover_bf16)
    student = distil(bench.session(spec.model_id), config, settings)
    metrics = evaluator.evaluate(student)
    plain = RECOVERED_OBJECTIVES[spec.objective]
    value = metrics.score(plain)
    return value, {"steps": settings.steps, plain: value, "ppl": metrics.ppl,
                   "seconds": time.perf_counter() - started}


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
