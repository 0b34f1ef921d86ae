"""Request and response bodies of the HTTP API (separate from the table classes in storage/)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, Field

from search.budgets import BUDGET_FIELDS, MAX_BUDGETS, BudgetField
from search.spec import StudySpec
from storage import Study, StudyGroup


def _study_request_schema() -> dict[str, Any]:
    """The body of POST /v1/studies: StudySpec's JSON schema with each budget also a list (``search.budgets``)."""
    schema = StudySpec.model_json_schema()
    for field in BUDGET_FIELDS:
        budget = schema["properties"][field]
        number = budget["anyOf"][0]
        budget["anyOf"] = [number, {"type": "array", "items": number, "minItems": 1, "maxItems": MAX_BUDGETS},
                           {"type": "null"}]
        budget["description"] += "; or a list of them, ascending, for one study per budget (a group)"
    return schema | {"title": "StudyRequest"}


STUDY_REQUEST_SCHEMA = _study_request_schema()


class Point(BaseModel):
    """One measured configuration: a trial's numbers."""

    trial: int | None = None
    value: float | None = None
    ppl: float | None = None
    kl: float | None = None
    keep_ratio: float | None = None
    source: str | None = None


class StudyPublic(BaseModel):
    """A study: its state, and the spec it was created with as stored (every option, defaults filled in)."""

    id: str
    status: str
    spec: StudySpec
    optuna_study_name: str
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @classmethod
    def of(cls, study: Study) -> Self:
        return cls(id=study.id, status=study.status.value, spec=StudySpec.from_dict(study.spec),
                   optuna_study_name=study.optuna_study_name, error=study.error, created_at=study.created_at,
                   started_at=study.started_at, finished_at=study.finished_at, updated_at=study.updated_at)


class StudyListItem(StudyPublic):
    best: Point | None = Field(default=None, description="summary.best, as the workers last wrote it")


class StudyList(BaseModel):
    total: int
    offset: int
    limit: int
    studies: list[StudyListItem]


class TrialCounts(BaseModel):
    n_complete: int = 0
    n_running: int = 0
    n_waiting: int = 0
    n_failed: int = 0
    n_pruned: int = 0


class Progress(BaseModel):
    done: int = Field(description="complete + pruned trials")
    total: int = Field(description="the study's n_trials")
    fraction: float
    mean_trial_s: float | None = Field(description="mean duration of completed trials")
    active_workers: int
    eta_s: float | None


class SetupProgress(BaseModel):
    """The study's setup (baselines, their scans, the caches they build), as its worker last wrote it."""

    step: str | None = Field(description="the step running (or, once finished, the last one), e.g. 'sensitivity scan'")
    done: int = Field(description="units of the step done (blocks, layers, forward passes, training steps)")
    total: int = Field(description="units of the step in all")
    fraction: float = Field(description="done / total (0 while total is 0)")
    seconds: float = Field(description="since the setup started")
    finished: bool = Field(description="the setup is over: its baselines are enqueued")


class StudyDetail(StudyPublic):
    counts: TrialCounts
    progress: Progress
    setup: SetupProgress | None = Field(default=None, description="null until a worker starts setting the study up")
    best: Point | None
    baselines: dict[str, Point]
    predictor: dict[str, Any] | None = Field(description="summary.predictor (spearman, mae, n_train, ...)")
    holdout: dict[str, Any] | None
    summary: dict[str, Any] = Field(description="the rest of the summary workers wrote")
    has_checkpoint: bool
    has_recovered_checkpoint: bool = Field(default=False, description="spec.recover_steps: the recovered winner "
                                           "downloads from /v1/studies/{id}/recovered-checkpoint")


class GroupMember(BaseModel):
    """One budget of a group: its study (an ordinary one, under /v1/studies/{study_id}) and how it stands."""

    budget: float = Field(description="in the group's unit: a kept fraction (budget) or bits per weight (budget_bits)")
    study_id: str
    status: str
    progress: Progress | None = Field(default=None, description="null in the answer to the POST")
    best: Point | None = None
    holdout: dict[str, Any] | None = Field(default=None, description="the study's summary.holdout, once completed")
    has_checkpoint: bool = Field(default=False, description="download from /v1/studies/{study_id}/checkpoint")


class StudyGroupPublic(BaseModel):
    """The studies one request over a list of budgets created, one per budget, in ascending budget order."""

    id: str
    status: str = Field(description="the members' status when they agree; else running while any is queued or "
                                    "running, failed or cancelled once all finished and one did not complete; "
                                    "deleted once every member was deleted")
    budget_field: BudgetField
    budgets: list[float]
    spec: dict[str, Any] = Field(description="the request: the members' shared spec with the list of budgets")
    created_at: datetime
    per_budget: list[GroupMember] = Field(description="members deleted on their own are left out")

    @classmethod
    def of(cls, group: StudyGroup, members: list[GroupMember], status: str) -> Self:
        field: BudgetField = "budget_bits" if isinstance(group.spec.get("budget_bits"), list) else "budget"
        return cls(id=group.id, status=status, budget_field=field, budgets=group.spec[field], spec=group.spec,
                   created_at=group.created_at, per_budget=members)


class TrialPublic(BaseModel):
    number: int
    state: str
    value: float | None
    ppl: float | None
    kl: float | None
    keep_ratio: float | None
    source: str | None
    predicted: float | None
    duration_s: float | None
    worker: str | None
    params_kept: int | None
    bytes: int | None
    n_tokens: int | None
    datetime_start: datetime | None
    datetime_complete: datetime | None


class TrialPage(BaseModel):
    total: int
    offset: int
    limit: int
    trials: list[TrialPublic]


class LayerProfile(BaseModel):
    """Per-layer keep ratio of the best config, by block, one trace per projection type."""

    trial: int | None
    source: Literal["meta.layer_keep", "derived", "none"]
    blocks: list[int]
    traces: dict[str, list[float | None]]
    other: dict[str, float | None] = Field(description="layers outside numbered blocks (e.g. lm_head)")


class CatalogModel(BaseModel):
    model_id: str
    kind: str
    description: str


class LocalModel(BaseModel):
    model_id: str
    root: str


class ModelsPublic(BaseModel):
    catalog: list[CatalogModel]
    model_roots: list[str]
    local: list[LocalModel]
    operators: list[str]
    granularities: list[str]
    strategies: list[str]


class Message(BaseModel):
    """The body of an error other than a validation error."""

    detail: str


class Health(BaseModel):
    status: Literal["ok", "error"]
    database: str
