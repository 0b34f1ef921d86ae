"""The Optuna study: RDB storage (the queue), samplers by name, seeding with baselines, counting, summary.

Optuna's RDB storage is the work queue: enqueued WAITING trials are claimed atomically by
``study.ask()`` (a compare-and-set on the trial state), a heartbeat marks the trials that live
workers hold, and a stale trial (its worker died) is failed and re-enqueued (``search.liveness``).
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._rdb import models as rdb_models
from optuna.trial import FrozenTrial, TrialState

from common.settings import get_settings
from search.liveness import grace_period_s
from search.spec import StudySpec
from search.strategies import get_strategy
from storage.db import normalize_url as storage_url
from storage.db import session_scope
from storage.retry import retry_db

log = logging.getLogger(__name__)
SPEC_ATTR = "slimscout"
SUMMARY_ATTR = "summary"
SETUP_ATTR = "setup_done"
optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and stale-trial failing are used with ask/tell here, on purpose; Optuna warns about both.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def normalize_url(url: str) -> str:
    """One spelling per database (postgres:// and postgresql:// use the psycopg 3 driver)."""
    return storage_url(url).render_as_string(hide_password=False)


_STORAGES: dict[str, RDBStorage] = {}


def _forget_storages_after_fork() -> None:
    # A forked worker must not use (or close) the parent's pooled connections.
    for storage in _STORAGES.values():
        storage.engine.dispose(close=False)
    _STORAGES.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_storages_after_fork)


def optuna_storage(url: str) -> RDBStorage:
    """One RDBStorage per URL and process, with heartbeats (``search.liveness`` re-queues dead workers' trials)."""
    url = normalize_url(url)
    if url not in _STORAGES:
        interval = get_settings().heartbeat_interval_s
        engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            engine_kwargs = {"connect_args": {"timeout": 60}}
        for attempt in range(5):  # two processes creating Optuna's tables at once: one loses, then sees them
            try:
                _STORAGES[url] = RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=interval,
                    grace_period=grace_period_s(interval),
                )
                break
            except Exception:
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
        if url.startswith("sqlite"):
            _serialize_sqlite_transactions(_STORAGES[url].engine)
    return _STORAGES[url]


def _serialize_sqlite_transactions(engine: sqlalchemy.Engine) -> None:
    """Make every transaction on ``engine`` take SQLite's write lock at its start (``BEGIN IMMEDIATE``).

    Optuna claims a WAITING trial by reading its state and then writing RUNNING. pysqlite runs
    the read outside any transaction (it only opens one before the write), so two processes can
    both read WAITING and both claim the same trial. Beginning each transaction explicitly and
    immediately makes the read and the write one atomic step; other writers wait (busy timeout).
    PostgreSQL needs none of this: Optuna reads with SELECT ... FOR UPDATE there.
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _driver_does_not_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sqlalchemy.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna created its tables predate the listeners


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


def is_surplus(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get("surplus"))


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: TrialState
    surplus: bool


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """Every trial's number, state and surplus mark, in one light query.

    Workers count before every claim; reading whole trials through Optuna's cache (params, every
    attribute, the config documents of all unfinished trials) cost 30 ms a time with 8 workers.
    """
    storage = getattr(study._storage, "_backend", study._storage)
    if not isinstance(storage, RDBStorage):
        return [TrialRow(t.number, t.state, is_surplus(t)) for t in study.get_trials(deepcopy=False)]
    trials, attrs = rdb_models.TrialModel, rdb_models.TrialUserAttributeModel
    query = (
        sqlalchemy.select(trials.number, trials.state, attrs.value_json)
        .outerjoin(attrs, sqlalchemy.and_(attrs.trial_id == trials.trial_id, attrs.key == "surplus"))
        .where(trials.study_id == study._study_id)
    )
    with session_scope(storage.engine) as session:
        return [TrialRow(number, state, bool(surplus and json.loads(surplus)))
                for number, state, surplus in session.execute(query)]


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
