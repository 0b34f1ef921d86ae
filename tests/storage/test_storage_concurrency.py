"""Many claimers, one queue: every study is claimed exactly once, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from storage import (
    IllegalTransitionError,
    StudyStatus,
    add_artifact,
    claim_queued_study,
    create_study,
    get_study,
    list_artifacts,
    list_studies,
    session_scope,
    set_status,
)


def queue_studies(engine: Engine, count: int) -> list[str]:
    """``count`` queued studies, oldest first."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    ids = []
    with session_scope(engine) as session:
        for i in range(count):
            study = create_study(session, spec=dict(
                model_id=f"model-{i}",
                dataset="wikitext-2",
                budget=0.5,
                operators=["lowrank"],
                granularity="layer",
                n_trials=4,
                eval_tokens=256,
                objective="perplexity",
                seed=i,
            ))
            study.created_at = start + timedelta(seconds=i)
            ids.append(study.id)
    return ids


def claim_until_empty(engine: Engine, barrier: threading.Barrier | None = None) -> list[str]:
    if barrier is not None:
        barrier.wait()
    claimed: list[str] = []
    while True:
        with session_scope(engine) as session:
            study = claim_queued_study(session)
            if study is None:
                return claimed
            assert study.status is StudyStatus.RUNNING and study.started_at is not None
            claimed.append(study.id)


def assert_claimed_exactly_once(engine: Engine, ids: list[str], claims: list[list[str]]) -> None:
    counts = Counter(study_id for claimed in claims for study_id in claimed)
    assert [study_id for study_id, n in counts.items() if n > 1] == []
    assert set(counts) == set(ids)
    with session_scope(engine) as session:
        assert {s.id for s in list_studies(session, status=StudyStatus.RUNNING, limit=1000)} == set(ids)
        assert list_studies(session, status=StudyStatus.QUEUED) == []
    # The race was real: more than one claimer got work.
    assert sum(1 for claimed in claims if claimed) >= 2


def test_claim_takes_the_oldest_and_skips_other_statuses(engine: Engine) -> None:
    ids = queue_studies(engine, 4)
    with session_scope(engine) as session:
        set_status(session, study_id=ids[0], status=StudyStatus.CANCELLED)
    with session_scope(engine) as session:
        first = claim_queued_study(session)
        assert first is not None and first.id == ids[1]
    assert claim_until_empty(engine) == ids[2:]
    with session_scope(engine) as session:
        assert claim_queued_study(session) is None
        cancelled = get_study(session, study_id=ids[0])
        assert cancelled is not None and cancelled.status is StudyStatus.CANCELLED


def test_claim_is_undone_by_rollback(engine: Engine) -> None:
    (study_id,) = queue_studies(engine, 1)
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        assert claim_queued_study(session) is not None
        raise RuntimeError("worker crashed before committing")
    with session_scope(engine) as session:
        again = claim_queued_study(session)
        assert again is not None and again.id == study_id


def test_concurrent_claims_from_threads(engine: Engine) -> None:
    ids = queue_studies(engine, 60)
    threads = 8
    barrier = threading.Barrier(threads)
    with ThreadPoolExecutor(threads) as pool:
        claims = list(pool.map(lambda _: claim_until_empty(engine, barrier), range(threads)))
    assert_claimed_exactly_once(engine, ids, claims)


def test_concurrent_claims_from_processes(
    db_url: str, engine: Engine, run_children: Callable[..., list[str]]
) -> None:
    ids = queue_studies(engine, 60)
    claims = [json.loads(out) for out in run_children("claim", db_url, 4)]
    assert_claimed_exactly_once(engine, ids, claims)


def test_racing_finishers_exactly_one_wins(engine: Engine) -> None:
    (study_id,) = queue_studies(engine, 1)
    with session_scope(engine) as session:
        set_status(session, study_id=study_id, status=StudyStatus.RUNNING)
    targets = [StudyStatus.COMPLETED, StudyStatus.FAILED, StudyStatus.CANCELLED] * 4
    barrier = threading.Barrier(len(targets))

    def finish(target: StudyStatus) -> StudyStatus | None:
        barrier.wait()
        try:
            with session_scope(engine) as session:
                set_status(session, study_id=study_id, status=target)
            return target
        except IllegalTransitionError:
            return None

    with ThreadPoolExecutor(len(targets)) as pool:
        winners = [w for w in pool.map(finish, targets) if w is not None]
    assert len(winners) == 1
    with session_scope(engine) as session:
        study = get_study(session, study_id=study_id)
        assert study is not None and study.status is winners[0]


def test_concurrent_artifact_upserts(engine: Engine) -> None:
    (study_id,) = queue_studies(engine, 1)
    writers = 8
    barrier = threading.Barrier(writers)

    def write(i: int) -> None:
        barrier.wait()
        with session_scope(engine) as session:
            add_artifact(
                session,
                study_id=study_id,
                kind="config",
                path=f"/run/{i}/config.json",
                size_bytes=i,
                sha256=f"{i:064x}",
            )

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    with session_scope(engine) as session:
        (artifact,) = list_artifacts(session, study_id=study_id)
        assert artifact.path == f"/run/{artifact.size_bytes}/config.json"
