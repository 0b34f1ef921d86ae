"""Conformance of search.optuna_adapter (every use of Optuna's internals) on SQLite and PostgreSQL.

An Optuna upgrade that moves a private name or changes what it means fails here first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from search import optuna_adapter as adapter


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database without any tables (Optuna creates its own on first open)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'optuna.db'}"
        return
    postgres: Any = request.getfixturevalue("postgres")
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


def test_storage_url_has_one_spelling() -> None:
    assert adapter.storage_url("postgres://me@db/x") == adapter.storage_url("postgresql://me@db/x") == \
        "postgresql+psycopg://me@db/x"
    assert adapter.storage_url("sqlite:///a.db") == "sqlite:///a.db"


def test_opening_a_fresh_database_from_many_threads_at_once(fresh_url: str) -> None:
    """Each opener creates Optuna's tables if missing; the losers of that race retry and succeed."""
    opened: list[RDBStorage] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(adapter.open_rdb(fresh_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(opened) == 4
    for rdb in opened:
        rdb.engine.dispose()


def test_the_internals_slimscout_uses(fresh_url: str) -> None:
    rdb = adapter.shared_rdb(fresh_url, heartbeat_interval=5, grace_period=8)
    assert adapter.shared_rdb(adapter.storage_url(fresh_url), heartbeat_interval=5, grace_period=8) is rdb
    study = optuna.create_study(storage=rdb, study_name="a", direction="minimize")
    cached = optuna.load_study(study_name="a", storage=adapter.cached(adapter.open_rdb(fresh_url)))
    assert adapter.rdb_of(study) is rdb and isinstance(adapter.rdb_of(cached), RDBStorage)
    assert adapter.study_id(study) == adapter.study_id(cached) == rdb.get_study_id_from_name("a")

    kept, surplus, done = study.ask(), study.ask(), study.ask()
    assert adapter.trial_id(kept) == rdb.get_trial_id_from_study_id_trial_number(adapter.study_id(study), kept.number)
    adapter.record_heartbeat(rdb, adapter.trial_id(kept))
    now, running = adapter.running_trials(rdb, adapter.study_id(study))
    beats = dict(running)
    assert set(beats) == {adapter.trial_id(t) for t in (kept, surplus, done)}
    assert beats[adapter.trial_id(kept)] is not None and beats[adapter.trial_id(surplus)] is None
    assert now.tzinfo is None and abs((now - beats[adapter.trial_id(kept)]).total_seconds()) < 60

    surplus.set_user_attr(adapter.SURPLUS_ATTR, True)
    study.tell(done, 0.5)
    rows = {row.number: row for row in adapter.trial_rows(study)}
    assert {n: (r.state, r.surplus) for n, r in rows.items()} == {
        kept.number: (TrialState.RUNNING, False), surplus.number: (TrialState.RUNNING, True),
        done.number: (TrialState.COMPLETE, False)}
    assert [t.number for t in adapter.live(study.get_trials())] == [kept.number, done.number]

    assert adapter.trial_state(study, kept) is TrialState.RUNNING
    assert adapter.fail_if_running(study, adapter.trial_id(kept)) is True
    assert adapter.trial_state(study, kept) is TrialState.FAIL
    with pytest.raises(UpdateFinishedTrialError):
        adapter.fail_if_running(study, adapter.trial_id(kept))
    assert adapter.trial_by_id(study, adapter.trial_id(done)).value == 0.5

    other = optuna.create_study(storage=rdb, study_name="b", direction="minimize")
    other.set_user_attr(adapter.SPEC_ATTR, {"model_id": "tiny-llama"})
    other.tell(other.ask(), 1.0)
    other.ask()
    (found,) = adapter.other_studies(study)
    assert (found.name, found.spec) == ("b", {"model_id": "tiny-llama"})
    assert [t.value for t in adapter.completed_trials(study, found)] == [1.0]
