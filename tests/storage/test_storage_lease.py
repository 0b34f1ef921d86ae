"""The setup lease: a claimed study's setup is taken over only once the claimer stopped renewing it."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine

from search.spec import StudySpec
from storage import (
    Study,
    StudyStatus,
    claim_queued_study,
    create_study,
    end_setup_lease,
    renew_setup_lease,
    session_scope,
    set_status,
    take_over_setup,
)


def _queue(engine: Engine) -> str:
    with session_scope(engine) as session:
        study: Study = create_study(session, spec=StudySpec(
            model_id="tiny-llama", budget=0.5, n_trials=8, eval_tokens=128).to_dict())
        return study.id


def test_a_live_lease_is_not_taken_over(engine: Engine) -> None:
    study_id = _queue(engine)
    with session_scope(engine) as session:
        claimed = claim_queued_study(session, owner="a:1", lease_s=60)
        assert claimed is not None and claimed.id == study_id
        assert claimed.setup_owner == "a:1" and claimed.setup_lease_until is not None
    with session_scope(engine) as session:
        assert take_over_setup(session, owner="b:2", lease_s=60) is None
        assert renew_setup_lease(session, study_id=study_id, owner="a:1", lease_s=60)
        assert not renew_setup_lease(session, study_id=study_id, owner="b:2", lease_s=60)


def test_a_lease_that_ran_out_goes_to_one_other_worker(engine: Engine) -> None:
    study_id = _queue(engine)
    with session_scope(engine) as session:
        assert claim_queued_study(session, owner="a:1", lease_s=-1) is not None  # its worker died at once
    with session_scope(engine) as session:
        taken = take_over_setup(session, owner="b:2", lease_s=60)
        assert taken is not None and taken.id == study_id and taken.setup_owner == "b:2"
    with session_scope(engine) as session:
        assert take_over_setup(session, owner="c:3", lease_s=60) is None
        assert not renew_setup_lease(session, study_id=study_id, owner="a:1", lease_s=60)  # a came back: too late
        assert end_setup_lease(session, study_id=study_id, owner="b:2")
    with session_scope(engine) as session:
        assert take_over_setup(session, owner="c:3", lease_s=-1) is None  # set up: no lease to take
        assert not renew_setup_lease(session, study_id=study_id, owner="b:2", lease_s=60)


def test_finished_studies_have_no_setup_to_take_over(engine: Engine) -> None:
    study_id = _queue(engine)
    with session_scope(engine) as session:
        claim_queued_study(session, owner="a:1", lease_s=-1)
        set_status(session, study_id=study_id, status=StudyStatus.CANCELLED)
    with session_scope(engine) as session:
        assert take_over_setup(session, owner="b:2") is None


def test_concurrent_take_overs_have_one_winner(engine: Engine) -> None:
    for _ in range(3):
        _queue(engine)
    with session_scope(engine) as session:
        for _ in range(3):
            claim_queued_study(session, owner="dead:1", lease_s=-1)
    won: list[Any] = []
    start = threading.Barrier(6)

    def contend(index: int) -> None:
        start.wait()
        with session_scope(engine) as session:
            study = take_over_setup(session, owner=f"w:{index}", lease_s=60)
            if study is not None:
                won.append(study.id)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == len(set(won)) == 3
