"""The registry is the one vocabulary: every name resolves to a handler, and budget's tables derive from it."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from compress import budget, registry
from compress.config import QuantSpec
from compress.operators import lowrank_handler, quant_handler, score_handler, sparsity_handler
from compress.operators.base import LowRankHandler, QuantHandler, ScoreSparsity, SparsityHandler

_KIND = {"lowrank": LowRankHandler, "sparsity": SparsityHandler, "quant": QuantHandler}
_LOOKUP = {"lowrank": lowrank_handler, "sparsity": sparsity_handler, "quant": quant_handler}


@pytest.mark.parametrize(("slot", "name"), list(registry.METHODS))
def test_every_method_resolves_to_a_handler_of_its_slot(slot: registry.Slot, name: str) -> None:
    handler = _LOOKUP[slot](name)
    assert isinstance(handler, _KIND[slot])
    assert handler.name == name


def test_budget_tables_are_the_registry_by_family() -> None:
    sparsity = {"wanda", "magnitude", "sparsegpt"}
    assert set(budget.SPARSITY_OPERATORS) == set(registry.operators_of("sparsity")) == sparsity
    assert set(budget.LOWRANK_OPERATORS) == set(registry.operators_of("lowrank")) == {"svd", "svd-whitened"}
    assert budget.NM_OPERATORS == {"nm-2:4": (2, 4), "nm-4:8": (4, 8), "sparsegpt-2:4": (2, 4),
                                   "sparsegpt-4:8": (4, 8)}
    quant = {"int8": QuantSpec(8, 128), "int4": QuantSpec(4, 128), "sdq": QuantSpec(4, 128, "1:8"),
             "gptq": QuantSpec(4, 128, method="gptq")}  # gptq's group size is chosen per layer (layer_quant)
    assert quant == budget.QUANT_OPERATORS
    assert {"gptq"} == budget.PER_LAYER_GROUPS
    assert set(budget.OPERATORS) == set(registry.OPERATOR_NAMES)
    assert set(budget.PARAM_OPERATORS) == {n for n, info in registry.OPERATORS.items() if info.reduces_params}


def test_every_operator_names_a_registered_method_of_its_slot() -> None:
    for info in registry.OPERATORS.values():
        assert (info.slot, info.method) in registry.METHODS


def test_unknown_names_are_config_errors_naming_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        sparsity_handler("random")
    assert info.value.field == "score"
    with pytest.raises(ConfigError) as info:
        lowrank_handler("qr")
    assert info.value.field == "method"
    with pytest.raises(ConfigError) as info:
        quant_handler("awq")
    assert info.value.field == "method"
    with pytest.raises(ConfigError, match="unknown operator 'prune'"):
        registry.operator_info("prune")


def test_score_methods_are_score_handlers() -> None:
    assert isinstance(score_handler("wanda"), ScoreSparsity)
    assert score_handler("wanda").needs_stats and not score_handler("magnitude").needs_stats
