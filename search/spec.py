"""What a study searches: the one spec every entry point builds, torch-free.

``StudySpec`` is the API's request body, what the CLI's arguments parse into, and the JSON stored
for a study (the ``spec`` column of ``slimscout_studies`` and the Optuna study's user attribute
``slimscout``). Its vocabularies come from the registries: operators from ``compress.registry``,
baselines from ``compress.baseline_methods``, strategies from ``search.strategy_registry``; granularities
and objectives are defined here. Types are strict: ``true`` is not a number, ``"0.4"`` is not a
float, and an unknown field is an error.

Checks that need the server's settings (trial and token limits, model and data roots) are the
API's (``api/validation.py``); a check that needs the model's kind is made here when the model is a
catalog entry (known without loading it).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from common.errors import ConfigError
from compress.baseline_methods import BASELINE_METHODS, DEFAULT_BASELINES
from compress.catalog_entries import CATALOG
from compress.registry import DENSE_BITS, EXPORT_FORMATS, OPERATOR_NAMES, check_budget_kind, operator_info
from search.strategy_registry import STRATEGY_NAMES

GRANULARITIES: tuple[str, ...] = ("uniform", "type", "block", "type-block", "layer")
DEFAULT_GRANULARITY = "type-block"
# cosine: 1 - cosine to the dense embeddings (encoders); kl-recovered: KL after a short distillation.
OBJECTIVES: tuple[str, ...] = ("ppl", "kl", "cosine", "kl-recovered")
#: Objectives that make sense per model kind (a causal LM has no sentence embedding to compare; an
#: encoder's recovery distils embeddings, not next-token distributions).
KIND_OBJECTIVES: dict[str, tuple[str, ...]] = {"causal-lm": ("ppl", "kl", "kl-recovered"),
                                               "encoder": ("ppl", "kl", "cosine")}
#: Objectives measured after distilling each candidate briefly -> the plain metric streamed (and pruned
#: on) before the distillation, so that a candidate that trails on it never pays for the distillation.
RECOVERED_OBJECTIVES: dict[str, str] = {"kl-recovered": "kl"}
#: ``hf:NAME[/SUB][:CONFIG]``; no component may be only dots (``hf:a/..`` names no data set).
HUB_DATASET = re.compile(r"^hf:(?!\.+(?:[/:]|$))[A-Za-z0-9][\w.\-]*(/(?!\.+(?:[:]|$))[\w.\-]+)?(:(?!\.+$)[\w.\-]+)?$")
MAX_SEED = 2**31 - 1
MAX_SCREEN_FACTOR = 64

if TYPE_CHECKING:
    Operator = str
    Granularity = str
    Objective = str
    Strategy = str
    Baseline = str
    ExportFormat = str
else:
    Operator = Literal[OPERATOR_NAMES]
    Granularity = Literal[GRANULARITIES]
    Objective = Literal[OBJECTIVES]
    Strategy = Literal[STRATEGY_NAMES]
    Baseline = Literal[BASELINE_METHODS]
    ExportFormat = Literal[EXPORT_FORMATS]


def _no_repeats(field: str, items: list[str]) -> list[str]:
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise ValueError(f"{field} listed more than once: {', '.join(repeated)}")
    return items


class StudySpec(BaseModel):
    """Every option of a study, with the one set of defaults."""

    # The schema says what _one_budget checks: one budget at least (both at once is refused too).
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, json_schema_extra={"anyOf": [
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in ("budget", "budget_bits")]})

    model_id: Annotated[str, Field(min_length=1, max_length=1024,
                                   description="a catalog name, or a model directory inside a model root")]
    budget: Annotated[float | None, Field(gt=0.0, le=1.0, description=(
        "kept fraction of linear-layer parameters (give this or budget_bits)"))] = None
    budget_bits: Annotated[float | None, Field(gt=0.0, le=DENSE_BITS, description=(
        "average stored bits per linear-layer weight, every overhead counted (give this or budget); "
        "quantizers only, the bit width chosen per layer"))] = None
    operators: Annotated[list[Operator], Field(min_length=1, max_length=len(OPERATOR_NAMES), validate_default=True,
                                               description="with budget: at least one parameter-reducing "
                                                           "operator, at most one quantizer; with budget_bits: "
                                                           "quantizers only")] = ["wanda"]
    granularity: Granularity = DEFAULT_GRANULARITY
    n_trials: Annotated[int, Field(ge=1, description="real evaluations, baselines included")] = 100
    eval_tokens: Annotated[int, Field(ge=2, description="tokens per evaluation")] = 2048
    objective: Annotated[Objective, Field(description=(
        "kl or ppl for causal LMs; cosine (1 - cosine to the dense embeddings) for encoders; kl-recovered "
        "(causal LMs): KL after distilling the candidate for recover_trial_steps steps, for users who will "
        "recover the winner (plain KL is measured first, chunk by chunk, and a candidate pruned on it never "
        "pays for the distillation)"))] = "kl"
    dataset: Annotated[str, Field(min_length=1, max_length=256)] = "lee-news"
    split: Annotated[str, Field(pattern=r"^[a-z]+$", max_length=64)] = "search"
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    strategy: Annotated[Strategy, Field(description="guided: the XGBoost predictor screens candidates; "
                                                    "tpe / random: plain samplers; evolve: EvoPress-style "
                                                    "evolution over per-layer levels of one operator "
                                                    "(unstructured sparsity, low rank, or bit widths under "
                                                    "budget_bits)")] = "guided"
    baselines: Annotated[list[Baseline], Field(max_length=len(BASELINE_METHODS))] = list(DEFAULT_BASELINES)
    sensitivity_tokens: Annotated[int, Field(ge=2)] = 512
    holdout_tokens: Annotated[int, Field(ge=2, description="tokens of the holdout re-measurement")] = 4096
    prune: Annotated[bool, Field(description="stop a sampled candidate early when it trails its peers")] = True
    warm_start: Annotated[bool, Field(description=(
        "guided only: start the accuracy predictor from earlier studies in the same storage with the same "
        "model, dataset, split, eval_tokens and objective. Off by default, so that a spec and its seed "
        "decide the trials: with it on, the same spec runs differently on a storage with history."))] = False
    screen_factor: Annotated[int, Field(ge=1, le=MAX_SCREEN_FACTOR, description=(
        "evolve with a sparsity operator only (refused for low rank and bits): draw this many times a "
        "generation's offspring and measure only the ones the damage "
        "predictor (predictor.rank.ConfigRanker, fitted on the study's cheapest-fidelity measurements) ranks "
        "best; until it has enough measurements, the first ones drawn. 1 (the default): measure every "
        "offspring drawn; on smollm2-135m screening (4) led at 40 trials and ended worse at 121"))] = 1
    export_format: Annotated[ExportFormat | None, Field(description=(
        "write the winner's checkpoint in this layout when the study completes (downloaded from "
        "/v1/studies/{id}/checkpoint); compressed-tensors stores what it cannot pack (low rank, SDQ "
        "outliers) as dense matrices. None: the config document only"))] = None
    recover_steps: Annotated[int | None, Field(ge=1, le=10_000, description=(
        "recover the winner after the search: distil the dense model into it for this many steps "
        "(compress.recover; masks, ranks and quantisation grids kept), measure it on holdout (the summary's "
        "recovery.holdout_before / holdout_after) and keep it as the study's recovered checkpoint "
        "(/v1/studies/{id}/recovered-checkpoint). None: no recovery"))] = None
    recover_minutes: Annotated[float | None, Field(gt=0.0, le=24 * 60, description=(
        "a time budget for the winner's recovery (needs recover_steps, its most steps): the learning-rate "
        "schedule spans the steps that fit, refitted at every evaluation from the seconds per step so far, "
        "and training stops there with its best evaluated state. None: exactly recover_steps steps"))] = None
    recover_train_extra: Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(
        max_length=8, description=(
            "more corpora (same forms as dataset) whose calibration splits join the dataset's as the "
            "recovery's training text, each step drawing its corpus uniformly (recover_steps and "
            "kl-recovered); e.g. [\"enwiki\"]: 160k tokens against lee-news' 14k"))] = []
    recover_trial_steps: Annotated[int, Field(ge=1, le=1000, description=(
        "objective kl-recovered only: distillation steps (512 calibration tokens each) per candidate "
        "before its KL is measured"))] = 8
    trust_remote_code: Annotated[bool, Field(description=(
        "the model needs its own Python code; refused unless the operator set SLIMSCOUT_TRUST_REMOTE_CODE "
        "(the workers' setting decides, not this field)"))] = False

    @field_validator("model_id", "dataset")
    @classmethod
    def _printable(cls, text: str) -> str:
        control = next((ch for ch in text if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0), None)
        if control is not None:
            raise ValueError(f"control characters are not allowed (found U+{ord(control):04X})")
        return text

    @field_validator("dataset")
    @classmethod
    def _hub_name(cls, dataset: str) -> str:
        if dataset.startswith("hf:") and not HUB_DATASET.match(dataset):
            raise ValueError("expected hf:NAME[/SUB][:CONFIG] (letters, digits, '_', '.', '-'; no '..' parts)")
        return dataset

    @field_validator("recover_minutes")
    @classmethod
    def _minutes_of_a_recovery(cls, minutes: float | None, info: ValidationInfo) -> float | None:
        if minutes is not None and info.data.get("recover_steps") is None:
            raise ValueError("a time budget for the winner's recovery needs recover_steps (its most steps)")
        return minutes

    @field_validator("recover_train_extra")
    @classmethod
    def _extra_corpora(cls, names: list[str], info: ValidationInfo) -> list[str]:
        _no_repeats("recover_train_extra", names)
        for name in names:
            cls._printable(name)
            cls._hub_name(name)
        if info.data.get("dataset") in names:
            raise ValueError("names the study's own dataset (its calibration split trains already)")
        return names

    @field_validator("operators")
    @classmethod
    def _operator_set(cls, operators: list[str], info: ValidationInfo) -> list[str]:
        _no_repeats("operators", operators)
        bits, keep = (info.data.get(name) is not None for name in ("budget_bits", "budget"))  # validated first
        try:
            if bits != keep:  # else _one_budget says so
                check_budget_kind(operators, bits=bits)
        except ConfigError as exc:
            raise ValueError(exc.reason) from None
        families = [operator_info(op).family for op in operators]
        quantizers = [op for op, family in zip(operators, families, strict=True) if family == "quant"]
        if len(quantizers) > 1 and len(quantizers) < len(operators):
            raise ValueError(f"at most one quantizer, got {', '.join(quantizers)}")
        return operators

    @field_validator("screen_factor")
    @classmethod
    def _screened_levels(cls, factor: int, info: ValidationInfo) -> int:
        """evolve screens with ``predictor.rank``, whose damage features are unstructured sparsity's
        (``search.levels`` refuses the other level spaces too; this says so before any setup)."""
        families = {operator_info(op).family for op in info.data.get("operators") or []}
        per_layer = families - {"quant"} or families  # a stacked quantizer is not what evolve moves
        if factor > 1 and info.data.get("strategy") == "evolve" and per_layer and per_layer != {"sparsity"}:
            raise ValueError(f"evolve screens only unstructured-sparsity levels, not {', '.join(sorted(per_layer))}; "
                             "use 1")
        return factor

    @model_validator(mode="wrap")
    @classmethod
    def _one_budget(cls, data: Any, handler: ModelWrapValidatorHandler[StudySpec]) -> StudySpec:
        """Exactly one budget. Neither is reported as ``budget`` missing, beside the other fields' errors."""
        if isinstance(data, dict) and data.get("budget") is None and data.get("budget_bits") is None:
            missing = InitErrorDetails(type="missing", loc=("budget",), input=data)
            try:
                handler(data)
            except ValidationError as exc:
                others = [InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"], ctx=e.get("ctx", {}))
                          for e in exc.errors()]
                raise ValidationError.from_exception_data(cls.__name__, [*others, missing]) from None
            raise ValidationError.from_exception_data(cls.__name__, [missing])
        spec = handler(data)
        if spec.budget is not None and spec.budget_bits is not None:
            raise ValueError("give exactly one of budget (kept fraction of parameters) and budget_bits")
        return spec

    @property
    def budget_ratio(self) -> float:
        """The budget as a fraction: of the parameters, or (budget_bits) of the dense 16 bits per weight."""
        if self.budget_bits is not None:
            return self.budget_bits / DENSE_BITS
        assert self.budget is not None  # _one_budget
        return self.budget

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, baselines: list[str]) -> list[str]:
        return _no_repeats("baselines", baselines)

    @field_validator("objective")
    @classmethod
    def _objective_fits_the_model(cls, objective: str, info: ValidationInfo) -> str:
        entry = CATALOG.get(info.data.get("model_id", ""))  # model_id is validated first (field order)
        if entry is not None and objective not in KIND_OBJECTIVES[entry.kind]:
            raise ValueError(f"objective {objective!r} does not apply to {entry.model_id} (a {entry.kind}; "
                             f"use one of {', '.join(KIND_OBJECTIVES[entry.kind])})")
        return objective

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON (every field, defaults included)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StudySpec:
        """A stored spec back; fields an older version stored and this one dropped are ignored."""
        return cls.model_validate({key: value for key, value in raw.items() if key in cls.model_fields})

    @classmethod
    def build(cls, **fields: Any) -> StudySpec:
        """A spec from Python values (the CLI's); a ConfigError naming the first bad field otherwise."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "spec"
            raise ConfigError(field, first["msg"]) from None
