"""Retrying database work through short outages: which errors are transient, and backoff with jitter.

A dropped connection, a refused one, a restarted server, SQLite's "database is locked": the same
call may well succeed a moment later. Integrity errors, bad SQL and our own exceptions do not
get better by waiting, so they are raised at once.

Only idempotent work may be retried blindly: a write whose commit reached the server before the
connection dropped is applied again by the retry. Callers that must not write twice check what
the database already has before writing (see ``search.measure_trial.tell_once``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

__all__ = ["Backoff", "describe", "is_transient", "retry_db", "transient_cause"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Defaults: 10 attempts, 0.25 s doubling up to 5 s between them: 14 to 28 s of outage are ridden out.
ATTEMPTS = 10
BASE_DELAY_S = 0.25
MAX_DELAY_S = 5.0


def transient_cause(exc: BaseException) -> BaseException | None:
    """The exception in ``exc``'s chain that says the database was unreachable for now, or None.

    Optuna re-raises SQLAlchemy errors as ``StorageInternalError``, so the whole chain of causes
    is searched.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OperationalError | InterfaceError):
            return current
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return current
        current = current.__cause__ or current.__context__
    return None


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` (or an exception it was raised from) says the database was unreachable for now."""
    return transient_cause(exc) is not None


class Backoff:
    """Exponential delays with jitter: the n-th is uniform in [c / 2, c], c = ``min(max_delay, base * 2**n)``.

    Jitter spreads out the workers that all lost the database at the same moment, so they do not
    all come back at the same moment either; the lower bound keeps the total wait growing, so a
    number of attempts stands for a known stretch of outage.
    """

    def __init__(self, base_delay: float = BASE_DELAY_S, max_delay: float = MAX_DELAY_S) -> None:
        if base_delay <= 0 or max_delay < base_delay:
            raise ValueError(f"need 0 < base_delay <= max_delay, got {base_delay}, {max_delay}")
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2**self.failures)
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0

    def wait_out(self, exc: BaseException, stop: threading.Event) -> None:
        """Between units of work: re-raise ``exc`` unless the database is only unreachable for now,
        else log it and wait the next delay (or until ``stop`` is set)."""
        if not is_transient(exc):
            raise exc
        delay = self.next_delay()
        log.warning("database unavailable (%s); carrying on in %.1f s", describe(exc), delay)
        stop.wait(delay)


def retry_db(
    fn: Callable[[], T],
    *,
    what: str = "database call",
    attempts: int = ATTEMPTS,
    base_delay: float = BASE_DELAY_S,
    max_delay: float = MAX_DELAY_S,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, called again after a backoff while it fails with a transient database error.

    The last transient error is raised once ``attempts`` calls have failed; any other error at once.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    backoff = Backoff(base_delay, max_delay)

    def warn(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s failed (%s); retry %d/%d in %.2f s", what, describe(exc) if exc else "?",
                    state.attempt_number, attempts - 1, delay)

    retrying = Retrying(stop=stop_after_attempt(attempts), retry=retry_if_exception(is_transient),
                        wait=lambda _state: backoff.next_delay(), sleep=sleep, before_sleep=warn, reraise=True)
    return retrying(fn)


def describe(exc: BaseException) -> str:
    """``Type: first line of the message`` of the transient error behind ``exc`` if any, else of ``exc``.

    (SQLAlchemy's messages go on with the statement and a link; Optuna's wrapper says nothing useful.)
    """
    exc = transient_cause(exc) or exc
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__
