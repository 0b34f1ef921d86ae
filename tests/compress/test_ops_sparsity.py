"""Pruning scores and masks: exact counts, the right weights, the shared rounding rule."""

from __future__ import annotations

import pytest
import torch

from common.errors import ConfigError
from compress.ops import (
    magnitude_score,
    nm_mask,
    pruned_mass,
    pruned_per_row,
    row_ranks,
    unstructured_mask,
    wanda_score,
)


def test_row_ranks_orders_each_row_ascending() -> None:
    torch.manual_seed(0)
    score = torch.rand(7, 13)
    ranks = row_ranks(score)
    assert ranks.dtype == torch.int32 and ranks.shape == score.shape
    assert torch.equal(ranks.sort(dim=1).values, torch.arange(13, dtype=torch.int32).expand(7, 13))
    assert torch.equal(ranks.argsort(dim=1), score.argsort(dim=1))
    ties = row_ranks(torch.zeros(2, 5))  # ties break by column, still a permutation
    assert torch.equal(ties, torch.arange(5, dtype=torch.int32).expand(2, 5))


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 0.7, 0.95])
@pytest.mark.parametrize("cols", [10, 37, 64])
def test_unstructured_mask_prunes_exact_count_of_lowest(ratio: float, cols: int) -> None:
    torch.manual_seed(cols)
    weight = torch.randn(9, cols)
    score = magnitude_score(weight)
    keep = unstructured_mask(row_ranks(score), ratio)
    pruned = pruned_per_row(cols, ratio)
    assert pruned == round(ratio * cols)
    assert torch.equal((~keep).sum(dim=1), torch.full((9,), pruned))
    if 0 < pruned < cols:  # what is pruned scores below what is kept, row by row
        worst_kept = score.masked_fill(~keep, float("inf")).amin(dim=1)
        best_pruned = score.masked_fill(keep, float("-inf")).amax(dim=1)
        assert torch.all(best_pruned <= worst_kept)


def test_unstructured_mask_accepts_compact_cached_ranks() -> None:
    torch.manual_seed(1)
    ranks = row_ranks(torch.rand(4, 100))
    assert torch.equal(unstructured_mask(ranks.to(torch.int16), 0.3), unstructured_mask(ranks, 0.3))


@pytest.mark.parametrize(("n", "m"), [(1, 4), (2, 4), (4, 8), (3, 16)])
def test_nm_mask_keeps_n_highest_per_group(n: int, m: int) -> None:
    torch.manual_seed(m)
    score = torch.rand(6, 4 * m)
    keep = nm_mask(score, n, m)
    groups, kept = score.reshape(6, 4, m), keep.reshape(6, 4, m)
    assert torch.equal(kept.sum(dim=2), torch.full((6, 4), n))
    worst_kept = groups.masked_fill(~kept, float("inf")).amin(dim=2)
    best_pruned = groups.masked_fill(kept, float("-inf")).amax(dim=2)
    assert torch.all(best_pruned <= worst_kept)


def test_nm_mask_rejects_rows_not_divisible_by_m() -> None:
    with pytest.raises(ConfigError, match="in_features=90") as info:
        nm_mask(torch.rand(4, 90), 2, 4)
    assert info.value.field == "pattern"
    with pytest.raises(ValueError):
        nm_mask(torch.rand(4, 8), 0, 4)


def test_wanda_keeps_high_input_norm_columns() -> None:
    torch.manual_seed(2)
    weight = torch.sign(torch.randn(32, 64)) * (0.5 + torch.rand(32, 64))  # |w| within 3x of each other
    input_norm = torch.ones(64)
    loud = torch.arange(0, 64, 2)
    input_norm[loud] = 10.0  # half of the inputs are 10x louder
    score = wanda_score(weight, input_norm)
    for keep in (unstructured_mask(row_ranks(score), 0.5), nm_mask(score, 2, 4)):
        assert keep[:, loud].all() and not keep[:, loud + 1].any()
    magnitude = unstructured_mask(row_ranks(magnitude_score(weight)), 0.5)
    assert not magnitude[:, loud].all()


def test_wanda_beats_magnitude_on_output_error() -> None:
    torch.manual_seed(3)
    weight = torch.randn(64, 128)
    x = torch.randn(1024, 128) * torch.logspace(-1, 1, 128)[torch.randperm(128)]  # uneven input scales
    input_norm = x.norm(dim=0)

    def output_error(keep: torch.Tensor) -> float:
        return float(((weight * ~keep) @ x.T).square().sum() / (weight @ x.T).square().sum())

    for ratio in (0.3, 0.5):
        wanda = unstructured_mask(row_ranks(wanda_score(weight, input_norm)), ratio)
        magnitude = unstructured_mask(row_ranks(magnitude_score(weight)), ratio)
        assert output_error(wanda) < 0.7 * output_error(magnitude)
        # pruned_mass of the Wanda score is the output error for uncorrelated inputs, within sampling noise
        mass = pruned_mass(wanda_score(weight, input_norm), wanda)
        assert mass == pytest.approx(output_error(wanda), rel=0.15)


def test_pruned_mass() -> None:
    score = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]])
    keep = torch.tensor([[False, True, True], [True, True, False]])
    assert pruned_mass(score, keep) == pytest.approx((1 + 16) / (1 + 4 + 9 + 16))
    assert pruned_mass(score, torch.ones_like(keep)) == 0.0
    assert pruned_mass(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool)) == 0.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="input_norm"):
        wanda_score(torch.randn(4, 8), torch.ones(4))
    with pytest.raises(ValueError, match="ratio"):
        pruned_per_row(10, 1.5)
    with pytest.raises(ValueError, match="2-D"):
        row_ranks(torch.rand(3))
