from __future__ import annotations

import numpy as np
import pytest

from common.errors import BudgetError, ConfigError
from compress.accounting import model_cost
from compress.budget import (
    LayerArrays,
    check_operators,
    kept_params,
    layer_config,
    logit_family,
    project_to_budget,
)
from compress.config import QuantSpec
from compress.layers import linear_layers


@pytest.fixture(scope="module")
def layers(tiny_llama):  # type: ignore[no-untyped-def]
    return linear_layers(tiny_llama.model)


@pytest.mark.parametrize("operator", ["wanda", "magnitude", "svd", "svd-whitened", "nm-2:4"])
def test_closed_form_cost_equals_accounting(layers, operator: str) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    keep = rng.uniform(0.05, 1.0, len(layers))
    kinds = np.full(len(layers), {"wanda": 0, "magnitude": 0, "svd": 1, "svd-whitened": 1, "nm-2:4": 2}[operator])
    if operator == "nm-2:4":
        keep = np.where(keep < 0.7, 0.5, 1.0)
    configs = {layer.name: layer_config(layer, float(k), operator) for layer, k in zip(layers, keep, strict=True)}
    exact = model_cost(layers, {n: c for n, c in configs.items() if not c.is_dense}).params
    assert int(kept_params(LayerArrays.of(layers), keep, kinds).sum()) == exact


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("operator", ["wanda", "svd-whitened"])
def test_projection_lands_within_half_a_percent(layers, budget: float, operator: str) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    allocation = project_to_budget(
        layers, logit_family(rng.uniform(0.1, 0.9, len(layers))), budget, {layer.name: operator for layer in layers}
    )
    configs = allocation.layer_configs(layers)
    exact = model_cost(layers, configs).params / sum(layer.params for layer in layers)
    assert exact == pytest.approx(allocation.keep_ratio)
    assert abs(exact - budget) <= 0.005 * budget


def test_projection_keeps_the_shape(layers) -> None:  # type: ignore[no-untyped-def]
    raw = np.linspace(0.2, 0.8, len(layers))
    allocation = project_to_budget(layers, logit_family(raw), 0.5, {layer.name: "wanda" for layer in layers})
    keeps = [allocation.keep[layer.name] for layer in layers]
    assert keeps[0] < keeps[-1]


def test_unreachable_budgets_are_refused(layers) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BudgetError, match="out of reach"):
        project_to_budget(
            layers, logit_family(np.full(len(layers), 0.5)), 0.2, {layer.name: "nm-2:4" for layer in layers}
        )
    with pytest.raises(BudgetError):
        project_to_budget(
            layers, logit_family(np.full(len(layers), 0.5)), 1.5, {layer.name: "wanda" for layer in layers}
        )


def test_operator_lists_are_checked() -> None:
    assert check_operators(["wanda", "int8"]) == (["wanda"], QuantSpec(8, 128))
    assert check_operators(["svd", "sdq", "nm-2:4"]) == (["svd", "nm-2:4"], QuantSpec(4, 128, "1:8"))
    assert check_operators(["magnitude"]) == (["magnitude"], None)
    with pytest.raises(ConfigError, match="unknown operator 'prune'"):
        check_operators(["prune"])
    assert check_operators(["int8"]) == (["int8"], None)  # quantizers only: a budget in bits
    assert check_operators(["gptq", "int4"]) == (["gptq", "int4"], None)
    with pytest.raises(ConfigError, match="at most one quantizer"):
        check_operators(["wanda", "int8", "int4"])


@pytest.mark.parametrize("operator", ["gptq", "int4", "int8"])
@pytest.mark.parametrize("bits", [2.5, 3.5, 4.5, 6.0])
def test_a_budget_in_bits_is_met_in_exactly_counted_bits(  # type: ignore[no-untyped-def]
        layers, operator: str, bits: float) -> None:
    from compress.accounting import bits_per_weight

    ops = {layer.name: operator for layer in layers}
    for raw in (np.full(len(layers), 0.3), np.linspace(0.1, 0.9, len(layers))):
        allocation = project_to_budget(layers, logit_family(raw), bits / 16, ops)
        configs = allocation.layer_configs(layers)
        assert allocation.bits_per_weight == bits_per_weight(layers, configs)
        assert allocation.bits_per_weight == pytest.approx(bits, rel=0.005)
        assert allocation.keep_ratio == 1.0  # quantizers keep every weight
        assert {cfg.quant.method for cfg in configs.values() if cfg.quant} == {"gptq" if operator == "gptq" else "rtn"}


def test_a_layer_takes_the_widest_bit_width_that_fits_its_share(layers) -> None:  # type: ignore[no-untyped-def]
    down = next(layer for layer in layers if layer.type == "down")  # 128 inputs: gptq groups of 128
    assert layer_config(down, 4.2 / 16, "gptq").quant == QuantSpec(4, 128, method="gptq")  # 4.125 fits
    assert layer_config(down, 4.1 / 16, "gptq").quant == QuantSpec(3, 128, method="gptq")
    assert layer_config(down, 1.0 / 16, "gptq").quant == QuantSpec(2, 128, method="gptq")  # none fits: narrowest
    assert layer_config(down, 1.0, "gptq").is_dense
    with pytest.raises(BudgetError, match="bits per weight"):
        project_to_budget(layers, logit_family(np.full(len(layers), 0.3)), 1.5 / 16,
                          {layer.name: "gptq" for layer in layers})
