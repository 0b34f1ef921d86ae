"""Multi-budget studies: one request over a list of budgets, run as one ordinary study per budget.

A request whose ``budget`` (or ``budget_bits``) is a list, e.g. ``{"budget": [0.3, 0.5, 0.7]}``, is a
``BudgetGroup``: one ``StudySpec`` per budget, every other field shared. Each child is a plain
single-budget study (same spec JSON, same storage rows, same worker path), so nothing downstream
knows about groups; what the children share is the storage and the per-model disk caches
(calibration, scans, factors), which are keyed by model and data, not by budget. A request with one
number is a ``StudySpec`` exactly as before.

The list is checked here: strict numbers, 1 to ``MAX_BUDGETS`` of them, strictly ascending (sorted
and distinct); each budget is then checked by ``StudySpec`` itself, and an error about the i-th
budget is located at ``(field, i)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from common.errors import ConfigError
from compress.registry import DENSE_BITS
from search.spec import StudySpec

MAX_BUDGETS = 16
BudgetField = Literal["budget", "budget_bits"]
BUDGET_FIELDS: tuple[BudgetField, ...] = ("budget", "budget_bits")

#: A budget of each kind that every spec accepts (nothing kept out, dense bits).
STAND_IN: dict[BudgetField, float] = {"budget": 1.0, "budget_bits": DENSE_BITS}
_NUMBERS = TypeAdapter(Annotated[list[float], Field(min_length=1, max_length=MAX_BUDGETS)])


@dataclass(frozen=True)
class BudgetGroup:
    """The single-budget specs of a multi-budget request, in ascending budget order."""

    field: BudgetField
    specs: tuple[StudySpec, ...]

    @property
    def budgets(self) -> list[float]:
        return [budget_of(spec) for spec in self.specs]

    def to_dict(self) -> dict[str, Any]:
        """The request as one spec document: the first child's fields with the list of budgets."""
        return self.specs[0].to_dict() | {self.field: self.budgets}


def budget_of(spec: StudySpec) -> float:
    """The budget in the unit it was given: a kept fraction, or bits per weight."""
    value = spec.budget if spec.budget is not None else spec.budget_bits
    assert value is not None  # StudySpec._one_budget
    return value


def _listed_field(raw: Mapping[str, Any]) -> BudgetField | None:
    return next((name for name in BUDGET_FIELDS if isinstance(raw.get(name), list)), None)


def _details(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[InitErrorDetails]:
    return [InitErrorDetails(type=e["type"], loc=(*prefix, *e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
            for e in exc.errors()]


def _list_errors(field: str, value: Any) -> tuple[list[float], list[InitErrorDetails]]:
    """The list's numbers (strict, as StudySpec's) and its errors: not a list of numbers, too long, unsorted."""
    try:
        numbers = _NUMBERS.validate_python(value, strict=True)
    except ValidationError as exc:
        return [], _details(exc, (field,))
    for i, (low, high) in enumerate(pairwise(numbers), start=1):
        if high <= low:
            error = PydanticCustomError("budgets_not_ascending",
                                        "budgets must be sorted ascending and distinct ({previous} then {value})",
                                        {"previous": low, "value": high})
            return numbers, [InitErrorDetails(type=error, loc=(field, i), input=high)]
    return numbers, []


def parse_request(raw: Any) -> StudySpec | BudgetGroup:
    """A study request: a ``StudySpec`` for one budget, a ``BudgetGroup`` for a list.

    Raises pydantic's ValidationError, every problem located by field (``("budget", 2)`` for the third
    budget), as ``StudySpec.model_validate`` does for a single budget.
    """
    field = _listed_field(raw) if isinstance(raw, Mapping) else None
    if field is None:
        return StudySpec.model_validate(raw)
    numbers, errors = _list_errors(field, raw[field])
    specs: list[StudySpec] = []
    # No usable list: the shared fields are still checked, at a budget that is valid whatever they are.
    for i, number in enumerate(numbers or [STAND_IN[field]]):
        try:
            specs.append(StudySpec.model_validate({**raw, field: number}))
        except ValidationError as exc:
            for detail in _details(exc):
                if detail["loc"][:1] == (field,):
                    errors.append({**detail, "loc": (field, i, *detail["loc"][1:])})
                elif i == 0:
                    errors.append(detail)  # the shared fields' errors, once
    if errors:
        raise ValidationError.from_exception_data(StudySpec.__name__, errors)
    return BudgetGroup(field=field, specs=tuple(specs))


def build_request(**fields: Any) -> StudySpec | BudgetGroup:
    """``parse_request`` from Python values (the CLI's); a ConfigError naming the first bad field."""
    try:
        return parse_request(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "spec"
        raise ConfigError(field, first["msg"]) from None
