"""Request and response bodies of the HTTP API (separate from the table classes in storage/)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

Operator = Literal["wanda", "magnitude", "svd", "svd-whitened", "nm-2:4", "nm-4:8", "int8", "int4", "sdq"]
Granularity = Literal["uniform", "type", "block", "type-block", "layer"]
Objective = Literal["ppl", "kl", "cosine"]
OPERATORS: tuple[str, ...] = get_args(Operator)
GRANULARITIES: tuple[str, ...] = get_args(Granularity)


class StudyCreate(BaseModel):
    """What a user asks for. Limits that depend on the server's settings are checked in the route."""

    model_config = ConfigDict(extra="forbid")

    model_id: Annotated[str, Field(min_length=1, max_length=1024)]
    budget: Annotated[float, Field(gt=0.0, le=1.0, description="kept fraction of linear-layer parameters")]
    operators: Annotated[list[Operator], Field(min_length=1, max_length=len(OPERATORS))] = ["wanda"]
    granularity: Granularity = "type-block"
    n_trials: Annotated[int, Field(ge=1)] = 100
    dataset: Annotated[str, Field(min_length=1, max_length=256)] = "lee-news"
    eval_tokens: Annotated[int, Field(ge=2)] = 2048
    objective: Objective = "kl"
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    warm_start: bool = Field(
        default=True, description="start the accuracy predictor from earlier studies on this server with the same "
                                  "model, dataset, eval_tokens and objective (any budget or granularity)")
    trust_remote_code: bool = Field(
        default=False, description="the model needs its own Python code; refused unless the operator set "
                                   "SLIMSCOUT_TRUST_REMOTE_CODE (the workers' setting decides, not this field)")

    @field_validator("model_id", "dataset")
    @classmethod
    def _printable(cls, text: str) -> str:
        control = next((ch for ch in text if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0), None)
        if control is not None:
            raise ValueError(f"control characters are not allowed (found U+{ord(control):04X})")
        return text

    @field_validator("operators")
    @classmethod
    def _no_repeats(cls, operators: list[str]) -> list[str]:
        repeated = sorted({op for op in operators if operators.count(op) > 1})
        if repeated:
            raise ValueError(f"operators listed more than once: {', '.join(repeated)}")
        return operators


class Point(BaseModel):
    """One measured configuration: a trial's numbers."""

    trial: int | None = None
    value: float | None = None
    ppl: float | None = None
    kl: float | None = None
    keep_ratio: float | None = None
    source: str | None = None


class StudyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    status: str
    model_id: str
    dataset: str
    split: str
    budget: float
    operators: list[str]
    granularity: str
    n_trials: int
    eval_tokens: int
    objective: str
    seed: int
    warm_start: bool
    optuna_study_name: str
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


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


class StudyDetail(StudyPublic):
    counts: TrialCounts
    progress: Progress
    best: Point | None
    baselines: dict[str, Point]
    predictor: dict[str, Any] | None = Field(description="summary.predictor (spearman, mae, n_train, ...)")
    holdout: dict[str, Any] | None
    summary: dict[str, Any] = Field(description="the rest of the summary workers wrote")
    has_checkpoint: bool


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


class Message(BaseModel):
    """The body of an error other than a validation error."""

    detail: str


class Health(BaseModel):
    status: Literal["ok", "error"]
    database: str
