from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from common.errors import SlimscoutError
from storage import (
    Artifact,
    IllegalTransitionError,
    Study,
    StudyRunningError,
    StudyStatus,
    add_artifact,
    count_studies,
    create_study,
    delete_study,
    get_artifact,
    get_study,
    hash_token,
    list_artifacts,
    list_studies,
    session_scope,
    set_status,
    update_summary,
)

FINISHED = [StudyStatus.COMPLETED, StudyStatus.FAILED, StudyStatus.CANCELLED]


def new_study(session: Session, **overrides: Any) -> Study:
    fields: dict[str, Any] = {
        "model_id": "HuggingFaceTB/SmolLM2-135M",
        "dataset": "wikitext-2",
        "budget": 0.6,
        "operators": ["lowrank", "sparsity"],
        "granularity": "layer",
        "n_trials": 40,
        "eval_tokens": 4096,
        "objective": "perplexity",
        "seed": 7,
        "split": "search",
    }
    owner = overrides.pop("owner_token_hash", None)
    return create_study(session, spec=fields | overrides, owner_token_hash=owner)


def test_create_and_get_round_trip(engine: Engine) -> None:
    before = datetime.now(UTC)
    with session_scope(engine) as session:
        created = new_study(session, owner_token_hash=hash_token("alice"))
    with session_scope(engine) as session:
        study = get_study(session, study_id=created.id)
        assert study is not None
        assert re.fullmatch(r"[0-9a-f]{12}", study.id)
        assert study.optuna_study_name == f"slimscout-{study.id}"
        # The spec is stored as given: a document, checked by search.spec, not by storage.
        assert study.spec == {"model_id": "HuggingFaceTB/SmolLM2-135M", "dataset": "wikitext-2", "budget": 0.6,
                              "operators": ["lowrank", "sparsity"], "granularity": "layer", "n_trials": 40,
                              "eval_tokens": 4096, "objective": "perplexity", "seed": 7, "split": "search"}
        assert study.status is StudyStatus.QUEUED
        assert study.owner_token_hash == hash_token("alice")
        assert study.error is None and study.summary is None
        assert study.started_at is None and study.finished_at is None
        assert study.created_at.tzinfo is not None and study.created_at.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= study.created_at <= datetime.now(UTC)
        assert study.updated_at >= study.created_at


def test_create_study_with_split_and_unique_ids(session: Session) -> None:
    studies = [new_study(session, split="holdout") for _ in range(20)]
    assert {s.spec["split"] for s in studies} == {"holdout"}
    assert len({s.id for s in studies}) == 20
    assert len({s.optuna_study_name for s in studies}) == 20


def test_missing_things_are_none(session: Session) -> None:
    assert get_study(session, study_id="000000000000") is None
    assert set_status(session, study_id="000000000000", status=StudyStatus.RUNNING) is None
    assert update_summary(session, study_id="000000000000", summary={"best": 1.0}) is None
    assert (
        add_artifact(session, study_id="000000000000", kind="config", path="/x", size_bytes=1, sha256="0")
        is None
    )
    assert get_artifact(session, study_id="000000000000", kind="config") is None
    assert list_artifacts(session, study_id="000000000000") == []


def test_owner_filtering(session: Session) -> None:
    alice, bob = hash_token("alice-token"), hash_token("bob-token")
    a1, a2 = new_study(session, owner_token_hash=alice), new_study(session, owner_token_hash=alice)
    b1 = new_study(session, owner_token_hash=bob)
    anonymous = new_study(session)

    assert get_study(session, study_id=a1.id, owner_token_hash=alice) is a1
    assert get_study(session, study_id=a1.id, owner_token_hash=bob) is None
    assert get_study(session, study_id=anonymous.id, owner_token_hash=alice) is None
    assert get_study(session, study_id=b1.id) is b1  # no owner given: any study

    assert {s.id for s in list_studies(session, owner_token_hash=alice)} == {a1.id, a2.id}
    assert [s.id for s in list_studies(session, owner_token_hash=bob)] == [b1.id]
    assert len(list_studies(session)) == 4
    assert count_studies(session, owner_token_hash=alice) == 2
    assert count_studies(session) == 4


def test_list_studies_order_status_and_paging(session: Session) -> None:
    studies = [new_study(session) for _ in range(5)]
    for i, study in enumerate(studies):  # distinct, known creation times
        study.created_at = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
    session.flush()
    set_status(session, study_id=studies[1].id, status=StudyStatus.CANCELLED)

    newest_first = [s.id for s in reversed(studies)]
    assert [s.id for s in list_studies(session)] == newest_first
    assert [s.id for s in list_studies(session, limit=2)] == newest_first[:2]
    assert [s.id for s in list_studies(session, limit=2, offset=2)] == newest_first[2:4]
    assert list_studies(session, offset=10) == []
    assert [s.id for s in list_studies(session, status=StudyStatus.CANCELLED)] == [studies[1].id]
    assert len(list_studies(session, status="queued")) == 4
    assert count_studies(session, status="queued") == 4
    with pytest.raises(ValueError):
        list_studies(session, limit=-1)
    with pytest.raises(ValueError):
        list_studies(session, status="bogus")


def test_life_cycle_timestamps(session: Session) -> None:
    study = new_study(session)
    running = set_status(session, study_id=study.id, status=StudyStatus.RUNNING)
    assert running is not None and running.status is StudyStatus.RUNNING
    assert running.started_at is not None and running.finished_at is None
    assert running.started_at.tzinfo is not None
    done = set_status(session, study_id=study.id, status="completed")
    assert done is not None and done.status is StudyStatus.COMPLETED
    assert done.finished_at is not None and done.started_at is not None
    assert done.finished_at >= done.started_at


def test_failure_records_error(session: Session) -> None:
    study = new_study(session)
    set_status(session, study_id=study.id, status=StudyStatus.RUNNING)
    failed = set_status(session, study_id=study.id, status=StudyStatus.FAILED, error="CUDA out of memory")
    assert failed is not None and failed.error == "CUDA out of memory" and failed.finished_at is not None


def test_running_study_can_go_back_to_the_queue(session: Session) -> None:
    study = new_study(session)
    set_status(session, study_id=study.id, status=StudyStatus.RUNNING)
    requeued = set_status(session, study_id=study.id, status=StudyStatus.QUEUED)
    assert requeued is not None and requeued.status is StudyStatus.QUEUED and requeued.started_at is None


@pytest.mark.parametrize("finished", FINISHED)
@pytest.mark.parametrize("target", list(StudyStatus))
def test_finished_studies_never_change(session: Session, finished: StudyStatus, target: StudyStatus) -> None:
    study = new_study(session)
    if finished is StudyStatus.COMPLETED:
        set_status(session, study_id=study.id, status=StudyStatus.RUNNING)
    set_status(session, study_id=study.id, status=finished)
    with pytest.raises(IllegalTransitionError) as info:
        set_status(session, study_id=study.id, status=target, error="late")
    assert isinstance(info.value, ValueError) and isinstance(info.value, SlimscoutError)
    after = get_study(session, study_id=study.id)
    assert after is not None and after.status is finished and after.error is None


@pytest.mark.parametrize("target", [StudyStatus.QUEUED, StudyStatus.COMPLETED])
def test_illegal_transitions_from_queued(session: Session, target: StudyStatus) -> None:
    study = new_study(session)
    with pytest.raises(ValueError, match="queued"):
        set_status(session, study_id=study.id, status=target)


def test_unknown_status_is_refused(session: Session) -> None:
    study = new_study(session)
    with pytest.raises(ValueError):
        set_status(session, study_id=study.id, status="paused")


def test_status_check_uses_the_database_not_a_stale_object(engine: Engine) -> None:
    with session_scope(engine) as session:
        study_id = new_study(session).id
        set_status(session, study_id=study_id, status=StudyStatus.RUNNING)
    with session_scope(engine) as worker, session_scope(engine) as user:
        seen = get_study(user, study_id=study_id)
        assert seen is not None and seen.status is StudyStatus.RUNNING
        user.commit()  # the user's read is over; a worker finishes the study meanwhile
        set_status(worker, study_id=study_id, status=StudyStatus.COMPLETED)
        worker.commit()
        with pytest.raises(IllegalTransitionError):
            set_status(user, study_id=study_id, status=StudyStatus.CANCELLED)


def test_status_enum() -> None:
    assert [s for s in StudyStatus if s.is_finished()] == FINISHED
    assert StudyStatus("running") is StudyStatus.RUNNING and StudyStatus.RUNNING == "running"


def test_update_summary_round_trip(engine: Engine) -> None:
    summary = {
        "best": {"trial": 12, "perplexity": 21.5, "params_ratio": 0.598},
        "baselines": {"uniform": 25.25, "dense": 18.0},
        "predictor": {"spearman": 0.91, "features": ["rank", "sparsity"]},
        "holdout": None,
    }
    with session_scope(engine) as session:
        study_id = new_study(session).id
        updated = update_summary(session, study_id=study_id, summary=summary)
        assert updated is not None and updated.summary == summary
    with session_scope(engine) as session:
        study = get_study(session, study_id=study_id)
        assert study is not None and study.summary == summary
        update_summary(session, study_id=study_id, summary={"best": None})
    with session_scope(engine) as session:
        study = get_study(session, study_id=study_id)
        assert study is not None and study.summary == {"best": None}


def test_artifacts_upsert_per_kind(engine: Engine) -> None:
    big = 5 * 2**30  # checkpoints exceed 32-bit sizes
    with session_scope(engine) as session:
        study_id = new_study(session).id
        first = add_artifact(
            session, study_id=study_id, kind="config", path="/a/config.json", size_bytes=100, sha256="a" * 64
        )
        assert first is not None
        add_artifact(
            session,
            study_id=study_id,
            kind="checkpoint",
            path="/a/model.safetensors",
            size_bytes=big,
            sha256="b" * 64,
        )
    with session_scope(engine) as session:
        replaced = add_artifact(
            session, study_id=study_id, kind="config", path="/b/config.json", size_bytes=200, sha256="c" * 64
        )
        assert replaced is not None and replaced.id == first.id
        assert (replaced.path, replaced.size_bytes, replaced.sha256) == ("/b/config.json", 200, "c" * 64)
    with session_scope(engine) as session:
        config = get_artifact(session, study_id=study_id, kind="config")
        assert config is not None and config.path == "/b/config.json"
        assert config.created_at.tzinfo is not None
        checkpoint = get_artifact(session, study_id=study_id, kind="checkpoint")
        assert checkpoint is not None and checkpoint.size_bytes == big
        assert [a.kind for a in list_artifacts(session, study_id=study_id)] == ["checkpoint", "config"]
        assert session.scalar(select(func.count()).select_from(Artifact)) == 2
        assert get_artifact(session, study_id=study_id, kind="report") is None


def test_deleting_a_study_deletes_its_artifacts(session: Session) -> None:
    """The foreign key cascades (on SQLite too, where foreign keys must be switched on)."""
    study = new_study(session)
    add_artifact(session, study_id=study.id, kind="config", path="/c", size_bytes=1, sha256="d" * 64)
    session.execute(delete(Study).where(Study.id == study.id))
    assert session.scalar(select(func.count()).select_from(Artifact)) == 0


def test_hash_token() -> None:
    assert hash_token("secret") == hashlib.sha256(b"secret").hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", hash_token("x"))
    assert hash_token("a") != hash_token("b")


def test_session_scope_commits_on_success(engine: Engine) -> None:
    with session_scope(engine) as session:
        study_id = new_study(session).id
    with session_scope(engine) as session:
        assert get_study(session, study_id=study_id) is not None


def test_session_scope_rolls_back_on_error(engine: Engine) -> None:
    with session_scope(engine) as session:
        kept = new_study(session).id

    class Boom(Exception):
        pass

    with pytest.raises(Boom), session_scope(engine) as session:
        lost = new_study(session).id
        set_status(session, study_id=kept, status=StudyStatus.CANCELLED)
        raise Boom
    with session_scope(engine) as session:
        assert get_study(session, study_id=lost) is None
        study = get_study(session, study_id=kept)
        assert study is not None and study.status is StudyStatus.QUEUED


def test_naive_datetimes_are_refused(engine: Engine) -> None:
    with pytest.raises(StatementError, match="naive datetime"), session_scope(engine) as session:
        study = new_study(session)
        study.started_at = datetime(2025, 1, 1)
        session.flush()


@pytest.mark.parametrize("status", [StudyStatus.QUEUED, *FINISHED])
def test_delete_study_unless_running(engine: Engine, status: StudyStatus) -> None:
    with session_scope(engine) as session:
        study = new_study(session)
        add_artifact(session, study_id=study.id, kind="config", path="/tmp/c.json", size_bytes=2, sha256="0" * 64)
        if status is not StudyStatus.QUEUED:
            set_status(session, study_id=study.id, status=StudyStatus.RUNNING)
            set_status(session, study_id=study.id, status=status)
        study_id = study.id
    with session_scope(engine) as session:
        deleted = delete_study(session, study_id=study_id)
        assert deleted is not None and deleted.id == study_id and deleted.status is status
    with session_scope(engine) as session:
        assert get_study(session, study_id=study_id) is None
        assert list_artifacts(session, study_id=study_id) == []
        assert delete_study(session, study_id=study_id) is None


def test_delete_study_refuses_a_running_one_even_from_a_session_that_saw_it_queued(engine: Engine) -> None:
    with session_scope(engine) as session:
        study_id = new_study(session).id
        set_status(session, study_id=study_id, status=StudyStatus.RUNNING)
    with session_scope(engine) as session, pytest.raises(StudyRunningError, match="cancel it first"):
        delete_study(session, study_id=study_id)
    # A session that read the study while queued; a worker claims it since: the delete goes by the database.
    with session_scope(engine) as session:
        set_status(session, study_id=study_id, status=StudyStatus.QUEUED)
    with session_scope(engine) as reader:
        stale = get_study(reader, study_id=study_id)
        assert stale is not None and stale.status is StudyStatus.QUEUED
        with session_scope(engine) as worker:
            set_status(worker, study_id=study_id, status=StudyStatus.RUNNING)
        with pytest.raises(StudyRunningError):
            delete_study(reader, study_id=study_id)
    with session_scope(engine) as session:
        assert get_study(session, study_id=study_id) is not None
