"""``/v1/groups``: the studies one request over a list of budgets created (``POST /v1/studies``), one per budget.

Each member is an ordinary study: its trials, best config, checkpoint and recovered checkpoint
download from its own ``/v1/studies/{study_id}/...`` endpoints, and it is cancelled or deleted there.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from api import study_view
from api.deps import AUTH_RESPONSES, OptunaDep, OwnerDep, SessionDep
from api.jsonbody import StrictJSONRoute
from api.routes.studies import NOT_FOUND, shown
from api.schemas import StudyGroupPublic
from storage import get_artifact, get_study, get_study_group

router = APIRouter(prefix="/v1/groups", tags=["groups"], route_class=StrictJSONRoute, responses=AUTH_RESPONSES)


@router.get("/{group_id}", response_model=StudyGroupPublic, responses=NOT_FOUND)
def detail(group_id: str, session: SessionDep, owner: OwnerDep, optuna: OptunaDep) -> StudyGroupPublic:
    """Each budget's status, progress, winner so far and holdout numbers, in ascending budget order."""
    group = get_study_group(session, group_id=group_id, owner_token_hash=owner)
    if group is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"group {shown(group_id)} not found")
    members, statuses = [], []
    for study_id in group.study_ids:
        study = get_study(session, study_id=study_id, owner_token_hash=owner)
        if study is None:  # deleted on its own
            continue
        trials = optuna.trials(study.optuna_study_name)
        seen = optuna.digest(study.optuna_study_name, trials)
        has_checkpoint = get_artifact(session, study_id=study.id, kind="checkpoint") is not None
        members.append(study_view.group_member(study, trials, seen, has_checkpoint=has_checkpoint))
        statuses.append(study.status)
    return StudyGroupPublic.of(group, members, study_view.group_status(statuses) if statuses else "deleted")
