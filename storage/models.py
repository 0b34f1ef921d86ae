"""slimscout's own tables (every name prefixed ``slimscout_``; Optuna's tables share the database)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Artifact", "Base", "Study", "StudyGroup", "StudyStatus", "UTCDateTime", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class StudyStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_finished(self) -> bool:
        """Finished studies are final: their status never changes again."""
        return self in _FINISHED


_FINISHED = frozenset({StudyStatus.COMPLETED, StudyStatus.FAILED, StudyStatus.CANCELLED})


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as naive
    UTC and get ``tzinfo=UTC`` back on load. Naive datetimes are refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: slimscout stores timezone-aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
_JSON = JSON().with_variant(JSONB(), "postgresql")

# Explicit constraint names, so that later migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: _JSON,
        list[str]: _JSON,
    }


class Study(Base):
    """One compression search: what to compress, under which budget, and how it went."""

    __tablename__ = "slimscout_studies"
    __table_args__ = (
        # claim_queued_study: the oldest queued study.
        Index("ix_slimscout_studies_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    optuna_study_name: Mapped[str] = mapped_column(String(64), unique=True)
    # The study's spec as search.spec.StudySpec stores it (every option, defaults filled in); storage
    # keeps it as a document, so a new study option needs no migration.
    spec: Mapped[dict[str, Any]]
    status: Mapped[StudyStatus] = mapped_column(
        Enum(
            StudyStatus,
            native_enum=False,
            create_constraint=False,
            length=16,
            values_callable=lambda statuses: [s.value for s in statuses],
            validate_strings=True,
        ),
        default=StudyStatus.QUEUED,
        server_default=StudyStatus.QUEUED.value,
    )
    owner_token_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    # Written by workers: best / baselines / predictor / holdout numbers.
    summary: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # The setup lease: the worker that claimed the study builds its baselines, renewing the lease as
    # it goes; a running study whose lease ran out lost its worker mid-setup, and another takes over.
    # NULL once the setup is done.
    setup_owner: Mapped[str | None] = mapped_column(String(128))
    setup_lease_until: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"Study(id={self.id!r}, model_id={self.spec.get('model_id')!r}, status={self.status.value!r})"


class Artifact(Base):
    """A file a study produced (its best config, a compressed checkpoint, ...); one per kind."""

    __tablename__ = "slimscout_artifacts"
    __table_args__ = (UniqueConstraint("study_id", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(String(12), ForeignKey(Study.id, ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(String(4096))
    size_bytes: Mapped[int] = mapped_column(BigInteger)  # checkpoints exceed 2 GiB
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Artifact(study_id={self.study_id!r}, kind={self.kind!r}, path={self.path!r})"


class StudyGroup(Base):
    """Studies created together from one request over a list of budgets (``search.budgets``), one per budget.

    Each member is an ordinary study; the group only remembers which, in ascending budget order. A
    member deleted on its own drops out of the group (its id stays listed here, and is skipped).
    """

    __tablename__ = "slimscout_study_groups"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    # The request as search.budgets.BudgetGroup.to_dict stores it: the shared spec with the list of budgets.
    spec: Mapped[dict[str, Any]]
    study_ids: Mapped[list[str]]
    owner_token_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"StudyGroup(id={self.id!r}, study_ids={self.study_ids!r})"
