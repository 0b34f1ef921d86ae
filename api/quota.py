"""The cap on open studies per token: ``Settings.max_open_studies`` queued or running at once, else 429.

Without it one token could queue studies without end (each up to ``max_trials`` trials of
``max_eval_tokens`` tokens) and starve everyone else's. With auth off every caller is one owner.
Two requests racing for the last slot may both get it: the cap bounds the queue, it is no ledger.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, status
from sqlalchemy.orm import Session

from api.deps import OwnerDep, SessionDep, SettingsDep
from common.settings import Settings
from storage import StudyStatus, count_studies

OPEN = (StudyStatus.QUEUED, StudyStatus.RUNNING)


def open_study_slot(settings: SettingsDep, session: SessionDep, owner: OwnerDep) -> None:
    """Refuses (429) a caller who already has ``max_open_studies`` studies queued or running."""
    open_study_slots(settings, session, owner, wanted=1)


def open_study_slots(settings: Settings, session: Session, owner: str | None, *, wanted: int) -> None:
    """Refuses (429) a caller whose open studies and ``wanted`` more (a group's, one per budget) exceed the cap."""
    open_now = sum(count_studies(session, owner_token_hash=owner, status=state) for state in OPEN)
    if open_now + wanted > settings.max_open_studies:
        more = "" if wanted == 1 else f"; this request would open {wanted} more"
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"this token already has {open_now} open studies (queued or running){more}, the most "
                   f"SLIMSCOUT_MAX_OPEN_STUDIES allows; cancel or delete one, or wait for one to finish")


OpenStudySlot = Annotated[None, Depends(open_study_slot)]
