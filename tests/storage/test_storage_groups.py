"""slimscout_study_groups: the studies one multi-budget request created, read back per owner."""

from __future__ import annotations

from sqlalchemy import Engine

from storage import create_study, create_study_group, get_study_group, hash_token, session_scope


def test_a_group_round_trips_its_members_in_order_and_only_for_its_owner(engine: Engine) -> None:
    alice = hash_token("alice")
    request = {"model_id": "tiny-llama", "budget": [0.3, 0.5, 0.7]}
    with session_scope(engine) as session:
        ids = [create_study(session, spec=request | {"budget": b}, owner_token_hash=alice).id for b in (0.3, 0.5, 0.7)]
        group_id = create_study_group(session, spec=request, study_ids=ids, owner_token_hash=alice).id
    with session_scope(engine) as session:
        group = get_study_group(session, group_id=group_id, owner_token_hash=alice)
        assert group is not None
        assert (group.spec, group.study_ids, group.created_at.tzinfo is not None) == (request, ids, True)
        assert get_study_group(session, group_id=group_id) is not None  # no owner filter
        assert get_study_group(session, group_id=group_id, owner_token_hash=hash_token("bob")) is None
        assert get_study_group(session, group_id="nope") is None
