"""Multi-budget requests: a list of budgets is a group of ordinary single-budget specs."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from common.errors import ConfigError
from search.budgets import BudgetGroup, build_request, parse_request
from search.spec import StudySpec

BASE: dict[str, Any] = {"model_id": "tiny-llama", "n_trials": 12}


def test_a_list_of_budgets_is_one_spec_per_budget_sharing_every_other_field() -> None:
    group = parse_request(BASE | {"budget": [0.3, 0.5, 0.7]})
    assert isinstance(group, BudgetGroup)
    assert group.field == "budget" and group.budgets == [0.3, 0.5, 0.7]
    assert group.specs == tuple(StudySpec(model_id="tiny-llama", n_trials=12, budget=b) for b in (0.3, 0.5, 0.7))
    assert group.to_dict() == StudySpec(**BASE, budget=0.3).to_dict() | {"budget": [0.3, 0.5, 0.7]}
    bits = parse_request(BASE | {"budget_bits": [3.5, 4.25], "operators": ["gptq"]})
    assert isinstance(bits, BudgetGroup) and bits.field == "budget_bits" and bits.budgets == [3.5, 4.25]
    assert [spec.budget_ratio for spec in bits.specs] == [3.5 / 16, 4.25 / 16]


def test_a_single_budget_is_the_plain_spec() -> None:
    assert parse_request(BASE | {"budget": 0.5}) == StudySpec(**BASE, budget=0.5)


@pytest.mark.parametrize(("budgets", "locs", "needle"), [
    ([0.5, 0.3], [("budget", 1)], "sorted ascending and distinct (0.5 then 0.3)"),
    ([0.3, 0.3], [("budget", 1)], "sorted ascending and distinct"),
    ([0.3, 1.5], [("budget", 1)], "less than or equal to 1"),
    ([0.0, 0.5], [("budget", 0)], "greater than 0"),
    ([], [("budget",)], "at least 1 item"),
    ([0.1 * i for i in range(1, 18)], [("budget",)], "at most 16 items"),
    (["0.3"], [("budget", 0)], "valid number"),
    ([True], [("budget", 0)], "valid number"),
])
def test_a_bad_list_names_the_field_and_the_budget(budgets: list[Any], locs: list[tuple[Any, ...]],
                                                    needle: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_request(BASE | {"budget": budgets})
    assert [e["loc"] for e in caught.value.errors()] == locs
    assert needle in caught.value.errors()[0]["msg"]


def test_the_shared_fields_are_checked_once_beside_the_budgets() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_request(BASE | {"budget": [0.3, 2.0, 3.0], "n_trials": 0})
    assert [e["loc"] for e in caught.value.errors()] == [("n_trials",), ("budget", 1), ("budget", 2)]
    with pytest.raises(ValidationError) as bad_list:
        parse_request(BASE | {"budget": "many", "granularity": "nope"})
    assert {e["loc"] for e in bad_list.value.errors()} == {("budget",), ("granularity",)}
    with pytest.raises(ValidationError, match="quantizers only"):
        parse_request(BASE | {"budget_bits": [3.5, 4.0], "operators": ["wanda"]})
    for bits in (3.5, [3.5, 4.0]):  # the default operators (wanda) are checked too, not only given ones
        with pytest.raises(ValidationError, match="quantizers only"):
            parse_request(BASE | {"budget_bits": bits})
    with pytest.raises(ValidationError, match="exactly one of budget"):
        parse_request(BASE | {"budget": [0.3, 0.5], "budget_bits": 4.0, "operators": ["gptq"]})


def test_build_names_the_first_bad_budget() -> None:
    with pytest.raises(ConfigError, match=r"budget\.1.*ascending"):
        build_request(model_id="tiny-llama", budget=[0.6, 0.4])
