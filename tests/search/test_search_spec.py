"""The study spec: strict types, one set of defaults, vocabularies from the registries, torch-free."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from common.errors import ConfigError
from search.spec import StudySpec
from search.strategy_registry import STRATEGY_NAMES, get_strategy

REPO = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {"model_id": "tiny-llama", "budget": 0.5}


@pytest.mark.parametrize(("override", "field"), [
    ({"budget": True}, "budget"),
    ({"budget": "0.4"}, "budget"),
    ({"n_trials": True}, "n_trials"),
    ({"n_trials": "10"}, "n_trials"),
    ({"seed": 1.0}, "seed"),
    ({"prune": "yes"}, "prune"),
    ({"operators": "wanda"}, "operators"),
    ({"operators": ["wanda", "int8", "int4"]}, "operators"),
    ({"operators": ["sdq"]}, "operators"),
    ({"objective": "cosine"}, "objective"),
    ({"model_id": "tiny-bert", "objective": "cosine", "dataset": "hf:a/.."}, "dataset"),
    ({"dataset": "hf:../etc"}, "dataset"),
    ({"strategy": "evolution"}, "strategy"),
    ({"screen_factor": 0}, "screen_factor"),
    ({"screen_factor": 2.0}, "screen_factor"),
    ({"strategy": "evolve", "operators": ["svd-whitened"], "screen_factor": 4}, "screen_factor"),
    ({"strategy": "evolve", "budget": None, "budget_bits": 3.5, "operators": ["gptq"], "screen_factor": 2},
     "screen_factor"),
    ({"baselines": ["owl", "owl"]}, "baselines"),
    ({"recover_minutes": 15.0}, "recover_minutes"),  # a time budget for a recovery not asked for
    ({"recover_steps": 100, "recover_minutes": 0}, "recover_minutes"),
    ({"extra": 1}, "extra"),
])
def test_strict_fields_are_refused_by_name(override: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        StudySpec.model_validate(BASE | override)
    assert {str(error["loc"][0]) for error in info.value.errors()} == {field}


def test_an_integer_budget_is_a_number_and_an_encoder_may_use_cosine() -> None:
    assert StudySpec.model_validate(BASE | {"budget": 1}).budget == 1.0
    spec = StudySpec(model_id="tiny-bert", budget=0.5, objective="cosine", dataset="hf:wikitext:wikitext-2-raw-v1")
    assert spec.objective == "cosine"


def test_a_recovery_may_have_a_time_budget() -> None:
    spec = StudySpec.model_validate(BASE | {"recover_steps": 1000, "recover_minutes": 15})
    assert (spec.recover_steps, spec.recover_minutes) == (1000, 15.0)


def test_evolve_screens_sparsity_only() -> None:
    assert StudySpec(**BASE, strategy="evolve", operators=["wanda", "int8"], screen_factor=4).screen_factor == 4
    assert StudySpec(**BASE, strategy="evolve", operators=["svd"], screen_factor=1).operators == ["svd"]
    assert StudySpec(**BASE, strategy="tpe", operators=["svd"], screen_factor=4).screen_factor == 4  # unused


def test_the_stored_json_round_trips_and_ignores_dropped_fields() -> None:
    spec = StudySpec(**BASE, strategy="tpe", baselines=[], prune=False)
    assert StudySpec.from_dict(spec.to_dict()) == spec
    assert StudySpec.from_dict(spec.to_dict() | {"retired_option": 3}) == spec
    # Rows stored before strategy existed were guided studies: the default fills in.
    assert StudySpec.from_dict({"model_id": "tiny-llama", "budget": 0.5}).strategy == "guided"


def test_build_names_the_field_for_the_cli() -> None:
    with pytest.raises(ConfigError, match="budget"):
        StudySpec.build(model_id="tiny-llama", budget=2.0)


def test_every_strategy_name_loads_a_strategy() -> None:
    for name in STRATEGY_NAMES:
        strategy = get_strategy(name)
        assert strategy.sampler(StudySpec(**BASE)) is not None
    assert (get_strategy("guided").proposer() is not None, get_strategy("tpe").proposer()) == (True, None)
    with pytest.raises(ConfigError, match="strategy"):
        get_strategy("evolution")


def test_the_spec_and_the_strategy_names_import_without_torch_or_optuna() -> None:
    code = ("import sys, search.spec, search.strategy_registry; "
            "print(sorted(m for m in ('torch', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"


def test_a_budget_in_bits_takes_quantizers_only_and_exactly_one_budget_is_given() -> None:
    spec = StudySpec.model_validate({"model_id": "tiny-llama", "budget_bits": 3.5, "operators": ["gptq"]})
    assert (spec.budget, spec.budget_bits, spec.budget_ratio) == (None, 3.5, 3.5 / 16)
    assert StudySpec.from_dict(spec.to_dict()) == spec
    assert StudySpec.model_validate(BASE).budget_ratio == 0.5
    with pytest.raises(ValidationError, match="quantizers only") as info:
        StudySpec.model_validate({"model_id": "tiny-llama", "budget_bits": 3.5, "operators": ["wanda", "int4"]})
    assert info.value.errors()[0]["loc"] == ("operators",)
    with pytest.raises(ValidationError, match="exactly one"):
        StudySpec.model_validate({"model_id": "tiny-llama", "budget": 0.5, "budget_bits": 4.0, "operators": ["gptq"]})
    with pytest.raises(ValidationError) as neither:
        StudySpec.model_validate({"model_id": "tiny-llama", "operators": ["gptq"]})
    assert [(e["loc"], e["type"]) for e in neither.value.errors()] == [(("budget",), "missing")]
    with pytest.raises(ConfigError, match="budget_bits"):
        StudySpec.build(model_id="tiny-llama", budget_bits=17.0, operators=["gptq"])


def test_softlms_is_asked_for_by_name_and_only_seeds_low_rank_studies() -> None:
    """SoftLMs trains (tens of passes): not a default seed; a study of sparsity drops it."""
    from search.setup import applicable_baselines

    assert "softlms" not in StudySpec(**BASE).baselines
    asked = {**BASE, "baselines": ["uniform", "owl", "softlms"]}
    assert applicable_baselines(StudySpec(**asked, operators=["wanda"])) == ["uniform", "owl"]
    assert applicable_baselines(StudySpec(**asked, operators=["svd-whitened"])) == ["uniform", "softlms"]


def test_the_json_schema_asks_for_one_budget_as_the_validator_does() -> None:
    """Clients (and the API fuzz test's generator) read the schema: a body without a budget is not valid there."""
    schema = StudySpec.model_json_schema()
    assert sorted(alt["required"] for alt in schema["anyOf"]) == [["budget"], ["budget_bits"]]
    assert not {"budget", "budget_bits"} & set(schema.get("required", []))
