"""Group-wise round-to-nearest quantization and SDQ: error bounds, exact outliers, no NaN."""

from __future__ import annotations

import pytest
import torch

from common.errors import ConfigError
from compress.ops import fake_quant, nm_mask, quant_error, rtn_grid, sdq


def _reference(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Loop-by-loop symmetric RTN, the definition fake_quant must match."""
    qmax = 2 ** (bits - 1) - 1
    out = torch.empty_like(weight)
    for start in range(0, weight.shape[1], group_size):
        group = weight[:, start:start + group_size]
        scale = group.abs().amax(dim=1, keepdim=True) / qmax
        scale[scale == 0] = 1.0
        out[:, start:start + group_size] = torch.clamp(torch.round(group / scale), -qmax, qmax) * scale
    return out


@pytest.mark.parametrize(("bits", "group_size", "cols"),
                         [(8, 128, 256), (4, 32, 100), (4, 7, 30), (4, 512, 64)])
def test_matches_reference_including_short_last_group(bits: int, group_size: int, cols: int) -> None:
    torch.manual_seed(cols)
    weight = torch.randn(5, cols)
    q = fake_quant(weight, bits, group_size)
    assert q.dtype == torch.float32 and q.shape == weight.shape
    torch.testing.assert_close(q, _reference(weight, bits, group_size), atol=0, rtol=0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_the_stored_grid_dequantizes_to_fake_quant_around_a_fixed_zero_point(bits: int) -> None:
    torch.manual_seed(bits)
    weight = torch.randn(6, 96)
    weight[0, :32] = 0.0  # an all-zero group
    grid = rtn_grid(weight, bits, 32)
    assert grid.symmetric and grid.codes.dtype == torch.uint8 and grid.scales.shape == (6, 3)
    assert bool((grid.zeros == 2 ** (bits - 1)).all())
    assert int(grid.codes.min()) >= 1 and int(grid.codes.max()) <= 2**bits - 1  # codes -q..q around the midpoint
    assert torch.equal(grid.dequantize(), fake_quant(weight, bits, 32))
    with pytest.raises(ValueError, match="whole groups"):
        rtn_grid(weight, bits, 64)


def test_each_group_uses_at_most_2_pow_bits_minus_1_levels() -> None:
    torch.manual_seed(0)
    q = fake_quant(torch.randn(8, 256), 4, 64)
    for group in q.reshape(8, 4, 64).reshape(-1, 64):
        assert group.unique().numel() <= 15


def test_error_bounds_on_gaussian_weights() -> None:
    torch.manual_seed(1)
    weight = torch.randn(256, 512)
    assert quant_error(weight, fake_quant(weight, 8, 128)) < 1e-4  # SQNR > 40 dB
    assert quant_error(weight, fake_quant(weight, 4, 128)) < 2e-2  # ~1.4e-2: SQNR ~ 18.5 dB
    assert quant_error(weight, fake_quant(weight, 4, 32)) < 1e-2
    assert quant_error(weight, fake_quant(weight, 4, 32)) < quant_error(weight, fake_quant(weight, 4, 128))


def test_zeros_stay_zero_and_no_nan() -> None:
    weight = torch.randn(4, 64)
    weight[:, :32] = 0.0  # whole zero groups
    weight[1, 40] = 0.0
    weight[3] = 0.0  # a zero row
    for bits in (4, 8):
        q = fake_quant(weight, bits, 32)
        assert torch.isfinite(q).all()
        assert torch.all(q[weight == 0] == 0)
    assert torch.equal(fake_quant(torch.zeros(3, 10), 4, 4), torch.zeros(3, 10))


def test_sdq_keeps_outliers_exact_and_beats_plain_int4() -> None:
    torch.manual_seed(2)
    weight = torch.distributions.StudentT(3.0).sample((128, 256))  # heavy-tailed, like LLM weights
    q = sdq(weight, 4, 128, 1, 8)
    outliers = nm_mask(weight.abs(), 1, 8)
    assert torch.equal(q[outliers], weight[outliers])
    inliers = fake_quant(weight * ~outliers, 4, 128)
    assert torch.equal(q[~outliers], inliers[~outliers])
    plain = quant_error(weight, fake_quant(weight, 4, 128))
    assert quant_error(weight, q) < 0.5 * plain
    gaussian = torch.randn(128, 256)
    plain = quant_error(gaussian, fake_quant(gaussian, 4, 128))
    assert quant_error(gaussian, sdq(gaussian, 4, 128, 1, 8)) < plain


def test_sdq_custom_score_and_sparse_input() -> None:
    torch.manual_seed(3)
    weight = torch.randn(8, 32)
    score = torch.rand(8, 32)
    q = sdq(weight, 4, 16, 2, 4, score=score)
    keep = nm_mask(score, 2, 4)
    assert torch.equal(q[keep], weight[keep])
    sparse = weight * nm_mask(weight.abs(), 2, 4)
    assert torch.all(sdq(sparse, 4, 16, 1, 8)[sparse == 0] == 0)


def test_sdq_rejects_rows_not_divisible_by_m() -> None:
    with pytest.raises(ConfigError, match="in_features=30") as info:
        sdq(torch.randn(4, 30), 4, 16, 1, 8)
    assert info.value.field == "outliers"


def test_quant_error_and_bad_arguments() -> None:
    w = torch.tensor([[3.0, 4.0]])
    assert quant_error(w, torch.tensor([[3.0, 3.0]])) == pytest.approx(1 / 25)
    assert quant_error(torch.zeros(2, 2), torch.zeros(2, 2)) == 0.0
    with pytest.raises(ValueError, match="bits"):
        fake_quant(w, 1, 2)
    with pytest.raises(ValueError, match="group_size"):
        fake_quant(w, 4, 0)


def test_a_group_longer_than_the_row_is_the_row() -> None:
    """A hostile config's group_size of 10**30 quantizes per row; it used to pad each row to that length."""
    weight = torch.randn(4, 48, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fake_quant(weight, 8, 10**30), fake_quant(weight, 8, 48))
    assert torch.equal(sdq(weight, 4, 10**18, 2, 4), sdq(weight, 4, 48, 2, 4))
