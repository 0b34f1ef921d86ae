"""Data access for slimscout's tables.

Every function takes the session first and everything else by keyword. Lookups return ``None``
when nothing matches; turning that into an HTTP status is the routes' job, not ours. Functions
flush but never commit: the caller's ``session_scope`` decides.

State changes are compare-and-set updates (``UPDATE ... WHERE status = <the status we saw>``),
so two processes racing on one study cannot both win, on PostgreSQL or SQLite.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Select, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from common.errors import SlimscoutError
from storage.models import Artifact, Study, StudyGroup, StudyStatus, utcnow

__all__ = [
    "ALLOWED_TRANSITIONS",
    "IllegalTransitionError",
    "StudyRunningError",
    "add_artifact",
    "claim_queued_study",
    "count_studies",
    "create_study",
    "create_study_group",
    "delete_study",
    "end_setup_lease",
    "get_artifact",
    "get_study",
    "get_study_group",
    "hash_token",
    "list_artifacts",
    "list_studies",
    "renew_setup_lease",
    "set_status",
    "take_over_setup",
    "update_summary",
]

#: How long a claim's setup lease lasts unless renewed (workers pass their own, from the heartbeat interval).
SETUP_LEASE_S = 60.0

#: Which status may follow which. Finished statuses are final; RUNNING -> QUEUED hands a study
#: back to the queue (a worker shutting down gracefully, or a reaper recovering a dead worker).
ALLOWED_TRANSITIONS: dict[StudyStatus, frozenset[StudyStatus]] = {
    StudyStatus.QUEUED: frozenset({StudyStatus.RUNNING, StudyStatus.FAILED, StudyStatus.CANCELLED}),
    StudyStatus.RUNNING: frozenset(
        {StudyStatus.COMPLETED, StudyStatus.FAILED, StudyStatus.CANCELLED, StudyStatus.QUEUED}
    ),
    StudyStatus.COMPLETED: frozenset(),
    StudyStatus.FAILED: frozenset(),
    StudyStatus.CANCELLED: frozenset(),
}


class IllegalTransitionError(SlimscoutError, ValueError):
    """A status change the study's life cycle does not allow (e.g. anything after finishing)."""

    def __init__(self, study_id: str, current: StudyStatus, requested: StudyStatus) -> None:
        super().__init__(f"study {study_id} is {current.value}; it cannot become {requested.value}")
        self.study_id = study_id
        self.current = current
        self.requested = requested


class StudyRunningError(SlimscoutError, ValueError):
    """A running study cannot be deleted: its worker is still writing to it."""

    def __init__(self, study_id: str) -> None:
        super().__init__(f"study {study_id} is running; cancel it first")
        self.study_id = study_id


def hash_token(token: str) -> str:
    """The sha256 hex digest under which an owner token is stored (never the token itself)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _new_study_id() -> str:
    return secrets.token_hex(6)


def create_study(session: Session, *, spec: Mapping[str, Any], owner_token_hash: str | None = None) -> Study:
    """Queue a new study with ``spec`` (a ``search.spec.StudySpec`` as JSON); its Optuna study is ``slimscout-<id>``."""
    study_id = _new_study_id()
    now = utcnow()
    study = Study(
        id=study_id,
        optuna_study_name=f"slimscout-{study_id}",
        spec=dict(spec),
        status=StudyStatus.QUEUED,
        owner_token_hash=owner_token_hash,
        created_at=now,
        updated_at=now,
    )
    session.add(study)
    session.flush()
    return study


def create_study_group(session: Session, *, spec: Mapping[str, Any], study_ids: list[str],
                       owner_token_hash: str | None = None) -> StudyGroup:
    """Record that the studies ``study_ids`` (created already, ascending budget order) answer one request."""
    group = StudyGroup(id=_new_study_id(), spec=dict(spec), study_ids=list(study_ids),
                       owner_token_hash=owner_token_hash, created_at=utcnow())
    session.add(group)
    session.flush()
    return group


def get_study_group(session: Session, *, group_id: str, owner_token_hash: str | None = None) -> StudyGroup | None:
    """The group ``group_id``; with ``owner_token_hash``, only if that owner created it."""
    group = session.get(StudyGroup, group_id)
    if group is None or (owner_token_hash is not None and group.owner_token_hash != owner_token_hash):
        return None
    return group


def _reload(session: Session, study_id: str) -> Study | None:
    """The study as the database has it now (after Core UPDATEs the identity map may be stale)."""
    return session.get(Study, study_id, populate_existing=True)


def get_study(session: Session, *, study_id: str, owner_token_hash: str | None = None) -> Study | None:
    """The study ``study_id``; with ``owner_token_hash``, only if that owner created it."""
    study = _reload(session, study_id)
    if study is None:
        return None
    if owner_token_hash is not None and study.owner_token_hash != owner_token_hash:
        return None
    return study


def _filtered(
    query: Select[Any], *, owner_token_hash: str | None, status: StudyStatus | str | None
) -> Select[Any]:
    if owner_token_hash is not None:
        query = query.where(Study.owner_token_hash == owner_token_hash)
    if status is not None:
        query = query.where(Study.status == StudyStatus(status))
    return query


def list_studies(
    session: Session,
    *,
    owner_token_hash: str | None = None,
    status: StudyStatus | str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Study]:
    """Studies, newest first, optionally only one owner's and/or one status's."""
    if limit < 0 or offset < 0:
        raise ValueError(f"limit and offset must be >= 0, got limit={limit}, offset={offset}")
    query = _filtered(select(Study), owner_token_hash=owner_token_hash, status=status)
    query = query.order_by(Study.created_at.desc(), Study.id).limit(limit).offset(offset)
    return list(session.scalars(query))


def count_studies(
    session: Session, *, owner_token_hash: str | None = None, status: StudyStatus | str | None = None
) -> int:
    """How many studies ``list_studies`` would page through with the same filters."""
    query = _filtered(
        select(func.count()).select_from(Study), owner_token_hash=owner_token_hash, status=status
    )
    return session.scalar(query) or 0


def _compare_and_set(session: Session, study_id: str, expected: StudyStatus, values: dict[str, Any]) -> bool:
    """Apply ``values`` to the study only if its status is still ``expected``; True if it was."""
    statement = (
        update(Study)
        .where(Study.id == study_id, Study.status == expected)
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    result = cast(CursorResult[Any], session.execute(statement))
    return result.rowcount == 1


def set_status(
    session: Session, *, study_id: str, status: StudyStatus | str, error: str | None = None
) -> Study | None:
    """Move a study to ``status``, stamping ``started_at``/``finished_at``; None if it does not exist.

    Raises ``IllegalTransitionError`` (a ``ValueError``) for a change ``ALLOWED_TRANSITIONS``
    forbids; in particular a finished study never changes again, even if another process
    finished it a moment ago.
    """
    target = StudyStatus(status)
    while True:
        study = _reload(session, study_id)
        if study is None:
            return None
        current = study.status
        if target not in ALLOWED_TRANSITIONS[current]:
            raise IllegalTransitionError(study_id, current, target)
        now = utcnow()
        values: dict[str, Any] = {"status": target}
        if target is StudyStatus.RUNNING:
            values.update(started_at=now, finished_at=None)
        elif target is StudyStatus.QUEUED:
            values.update(started_at=None)
        else:
            values.update(finished_at=now)
        if error is not None:
            values["error"] = error
        if _compare_and_set(session, study_id, current, values):
            return _reload(session, study_id)
        # Someone changed the status between our read and our write: re-read and re-check.


def claim_queued_study(session: Session, *, owner: str = "", lease_s: float = SETUP_LEASE_S) -> Study | None:
    """Atomically move the oldest queued study to running and return it; None if none is queued.

    Two sessions never claim the same study. PostgreSQL locks the candidate row with
    ``FOR UPDATE SKIP LOCKED`` (concurrent claimers take the next one instead of waiting);
    other backends (SQLite) use a conditional UPDATE and try the next candidate if they lost.
    The claim is final once the caller's session commits. The claimer (``owner``) holds the setup
    lease for ``lease_s`` seconds: it renews it while it builds the baselines and ends it when done.
    """
    oldest_queued = (
        select(Study.id)
        .where(Study.status == StudyStatus.QUEUED)
        .order_by(Study.created_at, Study.id)
        .limit(1)
    )
    now = utcnow()
    claim = {"status": StudyStatus.RUNNING, "started_at": now, "finished_at": None, "setup_owner": owner,
             "setup_lease_until": now + timedelta(seconds=lease_s)}
    if session.get_bind().dialect.name == "postgresql":
        study_id = session.scalar(oldest_queued.with_for_update(skip_locked=True))
        if study_id is None:
            return None
        # The row is locked by us, so this cannot miss.
        if not _compare_and_set(session, study_id, StudyStatus.QUEUED, claim):
            raise RuntimeError(f"lost the claim on locked study {study_id}")
        return _reload(session, study_id)
    while True:
        study_id = session.scalar(oldest_queued)
        if study_id is None:
            return None
        if _compare_and_set(session, study_id, StudyStatus.QUEUED, claim):
            return _reload(session, study_id)
        # Another process claimed (or cancelled) it first; try the next oldest.


def take_over_setup(session: Session, *, owner: str, lease_s: float = SETUP_LEASE_S) -> Study | None:
    """Take the setup lease of the oldest running study whose lease ran out; the study, or None.

    A lease runs out when the worker setting the study up died (or lost the database) before it
    finished. Like a claim, a compare-and-set: of several workers, one takes it over.
    """
    now = utcnow()
    expired = (Study.status == StudyStatus.RUNNING, Study.setup_lease_until < now)
    oldest = select(Study.id).where(*expired).order_by(Study.created_at, Study.id).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        oldest = oldest.with_for_update(skip_locked=True)
    while True:
        study_id = session.scalar(oldest)
        if study_id is None:
            return None
        statement = (
            update(Study)
            .where(Study.id == study_id, *expired)
            .values(setup_owner=owner, setup_lease_until=now + timedelta(seconds=lease_s), updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if cast(CursorResult[Any], session.execute(statement)).rowcount == 1:
            return _reload(session, study_id)
        # Another worker took it over first; look again.


def renew_setup_lease(session: Session, *, study_id: str, owner: str, lease_s: float = SETUP_LEASE_S) -> bool:
    """Extend ``owner``'s setup lease on a running study by ``lease_s`` from now; False if it is not theirs."""
    statement = (
        update(Study)
        .where(Study.id == study_id, Study.status == StudyStatus.RUNNING, Study.setup_owner == owner,
               Study.setup_lease_until.is_not(None))
        .values(setup_lease_until=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], session.execute(statement)).rowcount == 1


def end_setup_lease(session: Session, *, study_id: str, owner: str) -> bool:
    """``owner`` finished the study's setup: no lease to watch any more. False if it was not theirs."""
    statement = (
        update(Study)
        .where(Study.id == study_id, Study.setup_owner == owner)
        .values(setup_lease_until=None)
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], session.execute(statement)).rowcount == 1


def update_summary(session: Session, *, study_id: str, summary: dict[str, Any]) -> Study | None:
    """Replace the study's summary (best / baselines / predictor / holdout numbers)."""
    study = _reload(session, study_id)
    if study is None:
        return None
    study.summary = dict(summary)
    study.updated_at = utcnow()
    session.flush()
    return study


def add_artifact(
    session: Session, *, study_id: str, kind: str, path: str, size_bytes: int, sha256: str
) -> Artifact | None:
    """Record the study's artifact of ``kind``, replacing any earlier one; None if no such study.

    A single INSERT ... ON CONFLICT DO UPDATE, so concurrent writers of the same kind do not
    collide on the (study_id, kind) unique constraint; the last write wins.
    """
    if session.get(Study, study_id) is None:
        return None
    values = {
        "study_id": study_id,
        "kind": kind,
        "path": path,
        "size_bytes": size_bytes,
        "sha256": sha256,
        "created_at": utcnow(),
    }
    replace = {key: values[key] for key in ("path", "size_bytes", "sha256", "created_at")}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg_statement = postgresql.insert(Artifact).values(**values)
        session.execute(pg_statement.on_conflict_do_update(index_elements=["study_id", "kind"], set_=replace))
    elif dialect == "sqlite":
        lite_statement = sqlite.insert(Artifact).values(**values)
        session.execute(
            lite_statement.on_conflict_do_update(index_elements=["study_id", "kind"], set_=replace)
        )
    else:
        artifact = get_artifact(session, study_id=study_id, kind=kind)
        if artifact is None:
            session.add(Artifact(**values))
        else:
            for key, value in replace.items():
                setattr(artifact, key, value)
        session.flush()
    return get_artifact(session, study_id=study_id, kind=kind)


def get_artifact(session: Session, *, study_id: str, kind: str) -> Artifact | None:
    """The study's artifact of ``kind``, or None."""
    query = select(Artifact).where(Artifact.study_id == study_id, Artifact.kind == kind)
    return session.scalars(query.execution_options(populate_existing=True)).one_or_none()


def list_artifacts(session: Session, *, study_id: str) -> list[Artifact]:
    """All the study's artifacts, by kind."""
    query = select(Artifact).where(Artifact.study_id == study_id).order_by(Artifact.kind)
    return list(session.scalars(query.execution_options(populate_existing=True)))


def delete_study(session: Session, *, study_id: str) -> Study | None:
    """Delete a study that is not running, with its artifact rows; the study as it was, or None if none.

    A compare-and-delete (``DELETE ... WHERE status = <the status we saw>``), so a worker claiming
    a queued study at the same moment either wins (and this raises) or finds no row to claim.
    Raises ``StudyRunningError`` for a running study. Artifact files and the Optuna study are the
    caller's to remove.
    """
    while True:
        study = _reload(session, study_id)
        if study is None:
            return None
        if study.status is StudyStatus.RUNNING:
            raise StudyRunningError(study_id)
        statement = (
            delete(Study)
            .where(Study.id == study_id, Study.status == study.status)
            .execution_options(synchronize_session=False)
        )
        if cast(CursorResult[Any], session.execute(statement)).rowcount == 1:
            session.execute(delete(Artifact).where(Artifact.study_id == study_id))  # the cascade's job, unless off
            session.expunge(study)
            return study
        # Its status changed between our read and our delete: re-read and re-check.
