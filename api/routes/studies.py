"""``/v1/studies``: start, watch, cancel a search and download what it found."""

from __future__ import annotations

import json
import logging
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError, WithJsonSchema

from api import study_view
from api.deps import AUTH_RESPONSES, OptunaDep, OwnerDep, SessionDep, SettingsDep
from api.jsonbody import StrictJSONRoute
from api.quota import open_study_slot, open_study_slots
from api.schemas import (
    STUDY_REQUEST_SCHEMA,
    LayerProfile,
    Message,
    StudyDetail,
    StudyGroupPublic,
    StudyList,
    StudyListItem,
    StudyPublic,
    TrialPage,
)
from api.tarstream import tar_stream
from api.validation import check_study
from search.budgets import BudgetGroup, parse_request
from storage import (
    IllegalTransitionError,
    Study,
    StudyRunningError,
    StudyStatus,
    count_studies,
    create_study,
    create_study_group,
    delete_study,
    get_artifact,
    get_study,
    list_studies,
    set_status,
)
from storage.retry import describe, is_transient

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/studies", tags=["studies"], route_class=StrictJSONRoute, responses=AUTH_RESPONSES)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Message, "description": "no such study (another token's studies do not exist for this one)"}}

# Databases take 64-bit offsets at most (SQLite raises OverflowError beyond); no page lies further than this.
MAX_OFFSET = 2**31 - 1
TRIAL_STATES = ("complete", "running", "waiting", "fail", "pruned")
TRIAL_STATE_PATTERN = "^(" + "|".join(TRIAL_STATES) + ")$"
SHOWN_ID_CHARS = 200  # a study id echoed back in an error: no more than this of whatever the client sent


def shown(study_id: str) -> str:
    """``study_id`` as an error message may echo it: clipped, so a 60,000-character path is not sent back."""
    if len(study_id) <= SHOWN_ID_CHARS:
        return study_id
    return f"{study_id[:SHOWN_ID_CHARS]}... ({len(study_id)} characters)"


def _owned(session: SessionDep, study_id: str, owner: str | None) -> Study:
    """The caller's study, else 404 (another owner's study does not exist, as far as they can tell)."""
    study = get_study(session, study_id=study_id, owner_token_hash=owner)
    if study is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"study {shown(study_id)} not found")
    return study


@router.post("", status_code=status.HTTP_201_CREATED, response_model=StudyPublic | StudyGroupPublic,
             dependencies=[Depends(open_study_slot)],
             responses={201: {"description": "one budget: the study; a list of budgets: the group (GET "
                                             "/v1/groups/{id}), one study per budget"},
                        429: {"model": Message, "description": "the token has SLIMSCOUT_MAX_OPEN_STUDIES open"},
                        413: {"model": Message, "description": "the body exceeds SLIMSCOUT_MAX_REQUEST_BYTES"},
                        415: {"model": Message, "description": "the body is not declared application/json"},
                        503: {"model": Message, "description": "the Optuna study could not be created"}})
def create(body: Annotated[dict[str, Any], Body(), WithJsonSchema(STUDY_REQUEST_SCHEMA)], response: Response,
           settings: SettingsDep, session: SessionDep, owner: OwnerDep,
           optuna: OptunaDep) -> StudyPublic | StudyGroupPublic:
    """Queue a study; workers pick it up from the database. A list of budgets (``"budget": [0.3, 0.5]``)
    queues one study per budget, answered as their group."""
    try:
        request = parse_request(body)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]) \
            from None
    specs = request.specs if isinstance(request, BudgetGroup) else (request,)
    if len(specs) > 1:
        open_study_slots(settings, session, owner, wanted=len(specs))
    checked = [check_study(spec, settings) for spec in specs]
    if checked[0][1]:  # the settings' checks see no budget: every member fails alike
        raise RequestValidationError(checked[0][1])
    studies = [create_study(session, spec=spec.to_dict(), owner_token_hash=owner) for spec, _ in checked]
    group = None
    if isinstance(request, BudgetGroup):
        group = create_study_group(session, spec=request.to_dict(), study_ids=[study.id for study in studies],
                                   owner_token_hash=owner)
    # Commit before touching Optuna's tables: on SQLite our open write would block Optuna's.
    # A worker that claims the row first creates the Optuna study itself (load_if_exists on both sides).
    session.commit()
    for study in studies:
        _create_optuna_study(study, session, optuna)
    if group is None:
        response.headers["Location"] = f"/v1/studies/{studies[0].id}"
        return StudyPublic.of(studies[0])
    response.headers["Location"] = f"/v1/groups/{group.id}"
    return StudyGroupPublic.of(group, [study_view.group_member(study) for study in studies],
                               study_view.group_status([study.status for study in studies]))


def _create_optuna_study(study: Study, session: SessionDep, optuna: OptunaDep) -> None:
    """The study's Optuna study now; left to its worker on a transient error, else the study fails (503)."""
    try:
        optuna.create_study(study.optuna_study_name, study.spec)
    except Exception as exc:
        if is_transient(exc):  # the row is queued; the worker that claims it creates the Optuna study
            log.warning("Optuna study %s not created now (%s); its worker will", study.optuna_study_name,
                        describe(exc))
            return
        log.exception("could not create Optuna study %s", study.optuna_study_name)
        with suppress(IllegalTransitionError):  # cancelled meanwhile: leave it so
            set_status(session, study_id=study.id, status=StudyStatus.FAILED,
                       error=f"could not create the Optuna study: {exc}")
        session.commit()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail=f"study {study.id} failed to start: {exc}") from exc


@router.get("", response_model=StudyList)
def list_(session: SessionDep, owner: OwnerDep, offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
          limit: Annotated[int, Query(ge=1, le=500)] = 100,
          status_: Annotated[StudyStatus | None, Query(alias="status")] = None) -> StudyList:
    """The caller's studies, newest first."""
    studies = list_studies(session, owner_token_hash=owner, status=status_, limit=limit, offset=offset)
    total = count_studies(session, owner_token_hash=owner, status=status_)
    items = [StudyListItem(**StudyPublic.of(study).model_dump(),
                           best=study_view.summary_point((study.summary or {}).get("best")))
             for study in studies]
    return StudyList(total=total, offset=offset, limit=limit, studies=items)


@router.get("/{study_id}", response_model=StudyDetail, responses=NOT_FOUND)
def detail(study_id: str, session: SessionDep, owner: OwnerDep, optuna: OptunaDep) -> StudyDetail:
    """Status, trial counts, progress and ETA, best so far, baselines, predictor and holdout numbers."""
    study = _owned(session, study_id, owner)
    trials = optuna.trials(study.optuna_study_name)
    seen = optuna.digest(study.optuna_study_name, trials)
    summary = study.summary or {}
    return StudyDetail(
        **StudyPublic.of(study).model_dump(),
        counts=study_view.counts(seen),
        progress=study_view.progress(study, seen),
        setup=study_view.setup_progress(study),
        best=study_view.best_point(study, trials, seen),
        baselines=study_view.baselines(study, seen),
        predictor=summary.get("predictor") if isinstance(summary.get("predictor"), dict) else None,
        holdout=summary.get("holdout") if isinstance(summary.get("holdout"), dict) else None,
        summary=study_view.summary_rest(study),
        has_checkpoint=get_artifact(session, study_id=study.id, kind="checkpoint") is not None,
        has_recovered_checkpoint=get_artifact(session, study_id=study.id, kind="recovered-checkpoint") is not None,
    )


@router.get("/{study_id}/trials", response_model=TrialPage, responses=NOT_FOUND)
def trials(study_id: str, session: SessionDep, owner: OwnerDep, optuna: OptunaDep,
           offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
           state: Annotated[str | None, Query(pattern=TRIAL_STATE_PATTERN)] = None) -> TrialPage:
    """Trials by number, a page at a time (the config documents stay out; see best-config)."""
    study = _owned(session, study_id, owner)
    selected = optuna.trials(study.optuna_study_name)
    if state is not None:
        selected = [t for t in selected if t.state.name.lower() == state]
    page = selected[offset:offset + limit]
    return TrialPage(total=len(selected), offset=offset, limit=limit,
                     trials=[study_view.trial_public(t) for t in page])


def _best_config(study: Study, session: SessionDep,
                 optuna: OptunaDep) -> tuple[int | None, dict[str, Any] | None]:
    """(trial number, config document) of the winner, from its trial or else the study's config artifact."""
    trials = optuna.trials(study.optuna_study_name)
    trial = study_view.best_trial(study, trials, optuna.digest(study.optuna_study_name, trials))
    if trial is not None and isinstance(trial.user_attrs.get("config"), dict):
        return trial.number, trial.user_attrs["config"]
    artifact = get_artifact(session, study_id=study.id, kind="config")
    if artifact is not None:
        try:
            document = json.loads(Path(artifact.path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("config artifact %s of study %s is unreadable", artifact.path, study.id)
        else:
            if isinstance(document, dict):
                return None, document
    return None, None


@router.get("/{study_id}/best-config", response_class=JSONResponse,
            responses={200: {"description": "the config document (slimscout.config/v1)"},
                       404: {"model": Message, "description": "no such study, or no measured trial yet"}})
def best_config(study_id: str, session: SessionDep, owner: OwnerDep, optuna: OptunaDep) -> JSONResponse:
    """The best trial's config document, as a file download."""
    study = _owned(session, study_id, owner)
    _, config = _best_config(study, session, optuna)
    if config is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"study {study_id} has no measured config yet")
    filename = f"slimscout-{study.id}-best-config.json"
    return JSONResponse(config, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/{study_id}/layer-profile", response_model=LayerProfile, responses=NOT_FOUND)
def layer_profile(study_id: str, session: SessionDep, owner: OwnerDep, optuna: OptunaDep) -> LayerProfile:
    """Per-layer kept fraction of the best config, by block, one trace per projection type."""
    study = _owned(session, study_id, owner)
    trial_number, config = _best_config(study, session, optuna)
    return study_view.layer_profile(trial_number, config)


def _tar_download(study: Study, session: SessionDep, kind: str, name: str) -> Response:
    """The study's directory artifact of ``kind`` as a tar archive named ``name``, streamed."""
    artifact = get_artifact(session, study_id=study.id, kind=kind)
    path = Path(artifact.path) if artifact is not None else None
    if path is None or not path.exists():
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"study {study.id} has no {kind.replace('-', ' ')}")
    if path.is_file() and path.suffix == ".tar":
        return FileResponse(path, media_type="application/x-tar", filename=f"{name}.tar")
    return StreamingResponse(tar_stream(path, name), media_type="application/x-tar",
                             headers={"Content-Disposition": f'attachment; filename="{name}.tar"'})


@router.get("/{study_id}/checkpoint", response_model=None,
            responses={200: {"content": {"application/x-tar": {}}},
                       404: {"model": Message, "description": "no such study, or no checkpoint"}})
def checkpoint(study_id: str, session: SessionDep, owner: OwnerDep) -> Response:
    """The exported checkpoint (spec.export_format) as a tar archive, streamed."""
    study = _owned(session, study_id, owner)
    return _tar_download(study, session, "checkpoint", f"slimscout-{study.id}-checkpoint")


@router.get("/{study_id}/recovered-checkpoint", response_model=None,
            responses={200: {"content": {"application/x-tar": {}}},
                       404: {"model": Message, "description": "no such study, or no recovered checkpoint"}})
def recovered_checkpoint(study_id: str, session: SessionDep, owner: OwnerDep) -> Response:
    """The winner after recovery (spec.recover_steps; slimscout layout, config document and manifest with
    the recovery's settings inside) as a tar archive, streamed."""
    study = _owned(session, study_id, owner)
    return _tar_download(study, session, "recovered-checkpoint", f"slimscout-{study.id}-recovered")


@router.post("/{study_id}/cancel", response_model=StudyPublic,
             responses={**NOT_FOUND, 409: {"model": Message, "description": "the study already finished"}})
def cancel(study_id: str, session: SessionDep, owner: OwnerDep) -> StudyPublic:
    """Cancel a queued or running study; workers stop picking it up."""
    study = _owned(session, study_id, owner)
    if study.status is StudyStatus.CANCELLED:
        return StudyPublic.of(study)
    try:
        cancelled = set_status(session, study_id=study.id, status=StudyStatus.CANCELLED)
    except IllegalTransitionError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    if cancelled is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"study {shown(study_id)} not found")
    # Commit before answering: the session's own commit runs after the response is sent, too late to
    # tell the client that the database went away (a 503 then, not a 200 for a cancel that never was).
    session.commit()
    return StudyPublic.of(cancelled)


@router.delete("/{study_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
               responses={**NOT_FOUND, 409: {"model": Message, "description": "the study is running"}})
def delete(study_id: str, session: SessionDep, owner: OwnerDep, optuna: OptunaDep) -> Response:
    """Delete a study that is not running, with its Optuna study and trials; 409 while it runs.

    Refused while running rather than cancelled on the way: a worker is writing to it, and a
    delete should not stop a search as a side effect. Cancel it first (``POST .../cancel``); once its
    worker lets go (the status leaves ``running``), delete it. Artifact files stay on disk.
    """
    study = _owned(session, study_id, owner)
    try:
        deleted = delete_study(session, study_id=study.id)
    except StudyRunningError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    if deleted is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"study {shown(study_id)} not found")
    session.commit()  # the row first: once it is gone no worker claims the study, so its Optuna study is free
    _delete_optuna_study(optuna, deleted.optuna_study_name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _delete_optuna_study(store: OptunaDep, name: str) -> None:
    import optuna

    try:
        optuna.delete_study(study_name=name, storage=store.storage)
    except KeyError:  # never created (a worker would have, on claiming it)
        pass
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("Optuna study %s of a deleted study left behind (%s)", name, describe(exc))
