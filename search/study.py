"""The Optuna study: RDB storage (the queue), samplers by name, seeding with baselines, counting, summary.

Optuna's RDB storage is the work queue: enqueued WAITING trials are claimed atomically by
``study.ask()`` (a compare-and-set on the trial state), a heartbeat marks the trials that live
workers hold, and a stale trial (its worker died) is failed and re-enqueued (``search.liveness``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from common.settings import get_settings
from search.liveness import grace_period_s
from search.optuna_adapter import SETUP_ATTR, SPEC_ATTR, shared_rdb, trial_rows
from search.spec import StudySpec
from search.strategy_registry import get_strategy
from storage.retry import retry_db

log = logging.getLogger(__name__)


def optuna_storage(url: str) -> RDBStorage:
    """One RDBStorage per URL and process, with heartbeats (``search.liveness`` re-queues dead workers' trials)."""
    interval = get_settings().heartbeat_interval_s
    return shared_rdb(url, heartbeat_interval=interval, grace_period=grace_period_s(interval))


def make_sampler(spec: StudySpec, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    return get_strategy(spec.strategy).sampler(spec, worker_index)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if not spec.prune:
        return optuna.pruners.NopPruner()
    # Staged selection: a candidate worse than the best third of its peers at the same chunk stops there.
    return optuna.pruners.PercentilePruner(33.0, n_startup_trials=6, n_warmup_steps=0)


def create_study(url: str, name: str, spec: StudySpec) -> optuna.Study:
    study = optuna.create_study(
        storage=optuna_storage(url),
        study_name=name,
        direction="minimize",
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
    return study


def load_study(url: str, name: str, worker_index: int = 0) -> tuple[optuna.Study, StudySpec]:
    storage = optuna_storage(url)
    raw = optuna.load_study(study_name=name, storage=storage)
    spec = StudySpec.from_dict(raw.user_attrs[SPEC_ATTR])
    return optuna.load_study(
        study_name=name, storage=storage, sampler=make_sampler(spec, worker_index), pruner=make_pruner(spec)
    ), spec


@dataclass(frozen=True)
class Counts:
    complete: int
    pruned: int
    running: int
    waiting: int
    failed: int

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def counts(study: optuna.Study) -> Counts:
    live = [row.state for row in trial_rows(study) if not row.surplus]
    return Counts(
        live.count(TrialState.COMPLETE),
        live.count(TrialState.PRUNED),
        live.count(TrialState.RUNNING),
        live.count(TrialState.WAITING),
        live.count(TrialState.FAIL),
    )


def slot_of(study: optuna.Study, trial_number: int) -> int:
    """How many live (not failed, not surplus) trials were created before this one."""
    return sum(
        1
        for row in trial_rows(study)
        if row.number < trial_number and row.state != TrialState.FAIL and not row.surplus
    )


def measured(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    done = measured(study)
    return min(done, key=lambda t: float(t.value)) if done else None  # type: ignore[arg-type]


def is_set_up(study: optuna.Study) -> bool:
    """Whether the study's baselines are enqueued (``user_attrs`` reads the storage each time)."""
    return bool(study.user_attrs.get(SETUP_ATTR))


def wait_for_setup(study: optuna.Study, timeout_s: float = 3600.0) -> None:
    start = time.monotonic()
    while not retry_db(lambda: is_set_up(study), what="reading the study's setup"):
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"study {study.study_name} was never set up")
        time.sleep(1.0)
