"""Retrying through database outages: which errors count as transient, and the backoff between attempts."""

from __future__ import annotations

import pytest
from optuna.exceptions import StorageInternalError
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from storage.retry import Backoff, is_transient, retry_db


def _operational() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


def _wrapped(cause: Exception) -> StorageInternalError:
    """As Optuna raises it: a StorageInternalError from the SQLAlchemy error."""
    try:
        raise StorageInternalError("An exception is raised during the commit.") from cause
    except StorageInternalError as exc:
        return exc


def test_what_counts_as_transient() -> None:
    assert is_transient(_operational())
    assert is_transient(_wrapped(_operational()))
    invalidated = DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert is_transient(invalidated)
    assert not is_transient(DBAPIError("SELECT 1", {}, Exception("syntax")))
    assert not is_transient(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_transient(_wrapped(IntegrityError("INSERT", {}, Exception("duplicate key"))))
    assert not is_transient(ValueError("bad value"))


def test_a_refused_connection_is_transient() -> None:
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    with pytest.raises(Exception) as raised, engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    assert is_transient(raised.value)


def test_retry_db_carries_on_after_transient_errors() -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _wrapped(_operational())
        return "done"

    assert retry_db(flaky, base_delay=0.1, max_delay=0.4, sleep=sleeps.append) == "done"
    assert len(calls) == 3 and len(sleeps) == 2
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2


def test_retry_db_raises_other_errors_at_once_and_gives_up_after_attempts() -> None:
    sleeps: list[float] = []
    calls = []

    def broken() -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        retry_db(broken, sleep=sleeps.append)
    assert len(calls) == 1 and sleeps == []

    def down() -> None:
        raise _operational()

    with pytest.raises(OperationalError):
        retry_db(down, attempts=4, sleep=sleeps.append)
    assert len(sleeps) == 3


def test_backoff_grows_with_jitter_up_to_its_ceiling() -> None:
    backoff = Backoff(base_delay=0.5, max_delay=4.0)
    delays = [backoff.next_delay() for _ in range(200)]
    ceilings = [min(4.0, 0.5 * 2**n) for n in range(200)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len({round(d, 6) for d in delays[10:]}) > 100  # jittered, not one fixed delay
    backoff.reset()
    assert 0.25 <= backoff.next_delay() <= 0.5
    with pytest.raises(ValueError):
        Backoff(base_delay=0.0)
