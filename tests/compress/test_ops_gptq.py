"""GPTQ: values on the stored grid, lower output error than round-to-nearest, act-order, damping."""

from __future__ import annotations

import pytest
import torch

from common.errors import ConfigError
from compress.ops import default_group_size, fake_quant, gptq, pack_codes, unpack_codes
from tests.compress._recon import correlated_problem, output_error


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_beats_rtn_and_lies_on_its_grid(bits: int, act_order: bool) -> None:
    weight, x, gram = correlated_problem()
    result = gptq(weight, gram, bits=bits, group_size=32, act_order=act_order)
    q = result.quantized
    assert torch.equal(q.dequantize(), result.weight)
    assert q.scales.shape == (48, 4) and q.codes.dtype == torch.uint8
    qmax = 2 ** (bits - 1) - 1
    assert (q.codes.int() - q.zeros.int().repeat_interleave(32, dim=1)).abs().max() <= qmax
    for group in range(4):  # each group holds at most 2^bits - 1 distinct values
        assert all(row.unique().numel() <= 2 * qmax + 1 for row in result.weight[:, group * 32:(group + 1) * 32])
    assert output_error(weight, result.weight, x) < output_error(weight, fake_quant(weight, bits, 32), x)


def test_act_order_lowers_the_error_here() -> None:
    weight, x, gram = correlated_problem(seed=3)
    plain = gptq(weight, gram, bits=3, group_size=32).weight
    ordered = gptq(weight, gram, bits=3, group_size=32, act_order=True).weight
    assert output_error(weight, ordered, x) < output_error(weight, plain, x)


def test_asymmetric_grid_with_zero_points() -> None:
    weight, x, gram = correlated_problem()
    result = gptq(weight, gram, bits=4, group_size=64, symmetric=False)
    assert torch.equal(result.quantized.dequantize(), result.weight)
    assert int(result.quantized.codes.max()) <= 15
    assert output_error(weight, result.weight, x) < output_error(weight, fake_quant(weight, 4, 64), x)


@pytest.mark.parametrize("static_groups", [True, False])
def test_identity_hessian_is_round_to_nearest(static_groups: bool) -> None:
    weight, _, _ = correlated_problem()
    result = gptq(weight, torch.eye(128), bits=4, group_size=64, static_groups=static_groups)
    assert torch.equal(result.weight, fake_quant(weight, 4, 64))


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_dynamic_groups_also_beat_rtn(bits: int) -> None:
    weight, x, gram = correlated_problem()
    result = gptq(weight, gram, bits=bits, group_size=32, static_groups=False)
    assert torch.equal(result.quantized.dequantize(), result.weight)
    assert output_error(weight, result.weight, x) < output_error(weight, fake_quant(weight, bits, 32), x)


def test_singular_hessian_and_dead_inputs() -> None:
    weight, x, _ = correlated_problem(cols=64, tokens=8)
    x[:, 3] = 0.0
    result = gptq(weight, x.T @ x, bits=4, group_size=32, percdamp=1e-9)
    assert torch.isfinite(result.weight).all()
    assert torch.equal(result.quantized.dequantize(), result.weight)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packing_round_trips(bits: int) -> None:
    codes = torch.randint(0, 2**bits, (5, 77), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (5, -(-77 * bits // 8))
    assert torch.equal(unpack_codes(packed, bits, 77), codes)


def test_group_sizes() -> None:
    assert default_group_size(576) == 64
    assert default_group_size(1536) == 128
    assert default_group_size(4096) == 128
    with pytest.raises(ConfigError, match="group_size"):
        default_group_size(100)
    weight, _, gram = correlated_problem(cols=96)
    with pytest.raises(ConfigError, match="does not divide"):
        gptq(weight, gram, bits=4, group_size=64)
    with pytest.raises(ConfigError, match="bits"):
        gptq(weight, gram, bits=5, group_size=32)
