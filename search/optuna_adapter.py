"""Every use of Optuna's internals, in one module (torch-free: the API uses it too).

slimscout uses Optuna's RDB storage as its work queue, and a few things it needs have no public
API: the RDB storage under the trial cache, a trial's and a study's storage ids, the ORM models
for light queries (trial states and marks in one SELECT; running trials and their heartbeats),
heartbeats outside ``Study.optimize``. They are reached here and nowhere else; ``pyproject.toml``
pins Optuna to one minor version, and ``tests/search/test_search_optuna_adapter.py`` checks each
function on SQLite and PostgreSQL, so an upgrade that moves them fails there first.

Also here, once: the storage URL's spelling, opening the storage (with the race on a fresh
database retried), the names of the study attributes slimscout writes, and which trials count.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._rdb import models as rdb_models
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError
from tenacity import before_sleep_log, retry, retry_if_exception_type, stop_after_attempt, wait_incrementing

from storage.db import normalize_url, session_scope

log = logging.getLogger(__name__)

#: Study user attributes slimscout writes: the spec (search.spec.StudySpec as JSON), the summary
#: workers publish, whether the baselines are enqueued, the setup's progress record
#: (``common.progress.ThrottledRecord``: its step, counts, seconds, whether it finished), what screening saved.
SPEC_ATTR = "slimscout"
SUMMARY_ATTR = "summary"
SETUP_ATTR = "setup_done"
SETUP_PROGRESS_ATTR = "setup_progress"
#: What a screening strategy (evolve) left unmeasured: per generation, candidates drawn and screened out,
#: and the forward tokens that saved at the cheapest fidelity (the summary's ``screening``).
SCREENING_ATTR = "screening"
#: Trial user attribute: created past ``n_trials`` by a race and failed unmeasured; never part of the search.
SURPLUS_ATTR = "surplus"
#: Two processes creating Optuna's tables at once: one loses ("already exists"), then sees them.
TABLE_RACE_ATTEMPTS = 5

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and stale-trial failing are used with ask/tell here, on purpose; Optuna warns about both.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def storage_url(url: str) -> str:
    """One spelling per database, as Optuna needs it (postgres:// and postgresql:// get the psycopg 3 driver)."""
    return normalize_url(url).render_as_string(hide_password=False)


@retry(retry=retry_if_exception_type((SQLAlchemyError, optuna.exceptions.StorageInternalError)),
       stop=stop_after_attempt(TABLE_RACE_ATTEMPTS), wait=wait_incrementing(start=0.2, increment=0.2), reraise=True,
       before_sleep=before_sleep_log(log, logging.INFO))
def _new_rdb(url: str, engine_kwargs: dict[str, Any], heartbeat_interval: int | None,
             grace_period: int | None) -> RDBStorage:
    return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                      grace_period=grace_period)


def open_rdb(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
             serialize_sqlite: bool = True) -> RDBStorage:
    """A new RDB storage on ``url``; on a fresh database, losing the race to create Optuna's tables is retried.

    ``serialize_sqlite``: every SQLite transaction takes the write lock at its start (workers need
    it to claim trials safely; see ``_serialize_sqlite_transactions``). Read-only users may pass False.
    """
    url = storage_url(url)
    backend = normalize_url(url).get_backend_name()
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": 60, "check_same_thread": False}}
    rdb = _new_rdb(url, engine_kwargs, heartbeat_interval, grace_period)
    if backend == "sqlite" and serialize_sqlite:
        _serialize_sqlite_transactions(rdb.engine)
    return rdb


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


_STORAGES: dict[str, RDBStorage] = {}
_STORAGES_LOCK = threading.Lock()


def _forget_storages_after_fork() -> None:
    # A forked worker must not use (or close) the parent's pooled connections.
    for storage in _STORAGES.values():
        storage.engine.dispose(close=False)
    _STORAGES.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_storages_after_fork)


def shared_rdb(url: str, *, heartbeat_interval: int, grace_period: int) -> RDBStorage:
    """The process's one heartbeat-recording RDB storage for ``url`` (workers; opened on first use)."""
    key = storage_url(url)
    with _STORAGES_LOCK:
        if key not in _STORAGES:
            _STORAGES[key] = open_rdb(key, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        return _STORAGES[key]


def cached(rdb: RDBStorage) -> BaseStorage:
    """``rdb`` behind Optuna's cache of finished trials (what ``optuna.load_study`` would use)."""
    return optuna.storages.get_storage(rdb)


def rdb_of(study: optuna.Study) -> RDBStorage:
    """The RDB storage under Optuna's cache wrapper."""
    storage = getattr(study._storage, "_backend", study._storage)
    if not isinstance(storage, RDBStorage):
        raise TypeError(f"study {study.study_name} is not on an RDB storage")
    return storage


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage ``study`` reads and writes through (Optuna's cache wrapper, where it has one)."""
    return study._storage


def study_id(study: optuna.Study | FrozenStudy) -> int:
    return int(study._study_id)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return int(trial._trial_id)


def trial_state(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> TrialState:
    """The trial's state as the storage has it now."""
    return storage_of(study).get_trial(trial_id(trial)).state


def fail_if_running(study: optuna.Study, trial_id_: int) -> bool:
    """Compare-and-set RUNNING -> FAIL; False if the trial finished meanwhile (raises UpdateFinishedTrialError
    when it was finished already)."""
    return bool(storage_of(study).set_trial_state_values(trial_id_, state=TrialState.FAIL))


def trial_by_id(study: optuna.Study, trial_id_: int) -> FrozenTrial:
    return storage_of(study).get_trial(trial_id_)


def record_heartbeat(storage: RDBStorage, trial_id_: int) -> None:
    storage.record_heartbeat(trial_id_)


def is_surplus(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(SURPLUS_ATTR))


def live(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that are part of the search (surplus ones left out)."""
    return [trial for trial in trials if not is_surplus(trial)]


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
        .outerjoin(attrs, sqlalchemy.and_(attrs.trial_id == trials.trial_id, attrs.key == SURPLUS_ATTR))
        .where(trials.study_id == study_id(study))
    )
    with session_scope(storage.engine) as session:
        return [TrialRow(number, state, bool(surplus and json.loads(surplus)))
                for number, state, surplus in session.execute(query)]


def running_trials(storage: RDBStorage, study_id_: int) -> tuple[datetime, list[tuple[int, datetime | None]]]:
    """The database's clock and each RUNNING trial's (id, last heartbeat or None)."""
    trials, beats = rdb_models.TrialModel, rdb_models.TrialHeartbeatModel
    query = (
        sqlalchemy.select(trials.trial_id, beats.heartbeat)
        .outerjoin(beats, beats.trial_id == trials.trial_id)
        .where(trials.study_id == study_id_, trials.state == TrialState.RUNNING)
    )
    with session_scope(storage.engine) as session:
        now = session.execute(sqlalchemy.func.now()).scalar()
        rows = [(int(trial_id_), beat) for trial_id_, beat in session.execute(query)]
    assert now is not None
    # As Optuna does: heartbeats are stored without a time zone, in the database's own.
    return now.replace(tzinfo=None), rows


@dataclass(frozen=True)
class OtherStudy:
    name: str
    spec: dict[str, Any]
    study_id: int


def other_studies(study: optuna.Study) -> list[OtherStudy]:
    """Every other study in ``study``'s storage, with its stored spec (empty if it has none)."""
    return [OtherStudy(other.study_name, other.user_attrs.get(SPEC_ATTR) or {}, study_id(other))
            for other in storage_of(study).get_all_studies() if other.study_name != study.study_name]


def completed_trials(study: optuna.Study, other: OtherStudy) -> Sequence[FrozenTrial]:
    """The COMPLETE trials of ``other`` (a study in ``study``'s storage)."""
    return storage_of(study).get_all_trials(other.study_id, deepcopy=False, states=(TrialState.COMPLETE,))
