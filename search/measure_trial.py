"""Measure one claimed trial: build its config, apply it, stream chunks (pruning), report, restore."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from compress.config import config_from_dict
from search.context import Workbench
from search.spec import StudySpec

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def measure_trial(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, bench: Workbench) -> TrialState:
    session = bench.session(spec.model_id)
    evaluator = bench.evaluator(spec.model_id, spec.dataset, spec.split, spec.eval_tokens)
    space = bench.space(spec)
    started = time.perf_counter()
    with get_heartbeat_thread(trial._trial_id, study._storage):
        params = space.suggest(trial)
        source = trial.user_attrs.get("source", "sampler")
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
            "worker": WORKER_ID,
            "config": config.to_dict(),
        }
        state = TrialState.COMPLETE
        metrics = None
        with session.applied(config) as apply_s:
            for step, metrics in enumerate(evaluator.stream()):
                trial.report(metrics.score(spec.objective), step)
                # Seeds and screened candidates are already the promising few: measure them fully.
                if source == "sampler" and trial.should_prune():
                    state = TrialState.PRUNED
                    break
        assert metrics is not None
        attrs |= {
            "ppl": metrics.ppl,
            "kl": metrics.kl,
            "n_tokens": metrics.n_tokens,
            "apply_s": apply_s,
            "forward_s": metrics.seconds,
            "wall_s": time.perf_counter() - started,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if state == TrialState.PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, metrics.score(spec.objective))
    return state
