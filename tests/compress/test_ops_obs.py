"""The inverse Hessian factor: float64 when narrow, float32 when wide, in place when asked, shared by levels."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from common.errors import ConfigError
from compress.ops import gptq, sparsegpt
from compress.ops import obs as obs_module
from compress.ops.gptq import act_order_perm
from compress.ops.obs import FLOAT64_MAX_INPUTS, GramSpentError, factor_dtype, inverse_hessian_factor, obs_sweep
from tests.compress._recon import correlated_problem, output_error


def test_narrow_layers_factor_in_float64_wide_ones_in_float32() -> None:
    assert factor_dtype(576) == factor_dtype(1536) == factor_dtype(FLOAT64_MAX_INPUTS) == torch.float64
    assert factor_dtype(FLOAT64_MAX_INPUTS + 1) == factor_dtype(8192) == torch.float32


def test_float32_factor_prunes_as_well_as_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    weight, x, gram = correlated_problem(cols=256)
    in64 = inverse_hessian_factor(gram, percdamp=0.1)
    monkeypatch.setattr(obs_module, "FLOAT64_MAX_INPUTS", 128)  # 256 inputs count as wide now
    in32 = inverse_hessian_factor(gram, percdamp=0.1)
    assert in64.factor.dtype == in32.factor.dtype == torch.float32  # handed out in float32 either way
    assert not torch.equal(in32.factor, in64.factor)  # computed in another precision
    assert torch.allclose(in32.factor, in64.factor, rtol=1e-3, atol=1e-6 * float(in64.factor.abs().max()))
    error64 = output_error(weight, sparsegpt(weight, in64, sparsity=0.5), x)
    error32 = output_error(weight, sparsegpt(weight, in32, sparsity=0.5), x)
    assert abs(error32 - error64) < 1e-3 * error64


@pytest.mark.parametrize("threshold", [FLOAT64_MAX_INPUTS, 64])  # float64 (a copy either way), float32 (in place)
def test_overwrite_gives_the_same_factor_and_uses_the_gram_only_when_it_can(
        monkeypatch: pytest.MonkeyPatch, threshold: int) -> None:
    monkeypatch.setattr(obs_module, "FLOAT64_MAX_INPUTS", threshold)
    _, _, gram = correlated_problem(cols=128)
    gram[:, 3] = gram[3, :] = 0.0  # a dead input
    expected = inverse_hessian_factor(gram, percdamp=0.01)
    owned = gram.clone()
    got = inverse_hessian_factor(owned, percdamp=0.01, overwrite=True)
    assert torch.equal(got.factor, expected.factor) and torch.equal(got.dead, expected.dead)
    assert torch.equal(owned, gram) == (threshold == FLOAT64_MAX_INPUTS)  # float32 in place: the Gram is spent
    assert (got.factor.data_ptr() == owned.data_ptr()) == (threshold != FLOAT64_MAX_INPUTS)  # ... on the factor
    permuted = gram.clone()
    perm = act_order_perm(gram)
    inverse_hessian_factor(permuted, percdamp=0.01, perm=perm, overwrite=True)
    assert torch.equal(permuted, gram)  # a permuted H is a copy anyway


Cholesky = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _failing(real: Cholesky, fails: Callable[[bool, int], bool]) -> Cholesky:
    """``torch.linalg.cholesky_ex`` that reports failure (without computing) where ``fails(upper, call)``."""
    calls = [0]

    def fake(a: torch.Tensor, *, upper: bool = False, out: tuple[torch.Tensor, torch.Tensor] | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
        calls[0] += 1
        if fails(upper, calls[0]):
            if out is not None:
                out[1].fill_(1)
                return out
            return a.clone(), torch.tensor(1)
        return real(a, upper=upper, out=out)

    return fake


def test_damping_is_raised_from_the_undamped_diagonal_each_try(monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, gram = correlated_problem(cols=64)
    monkeypatch.setattr(torch.linalg, "cholesky_ex", _failing(torch.linalg.cholesky_ex,
                                                              lambda upper, call: call == 1))
    result = inverse_hessian_factor(gram, percdamp=0.01)
    monkeypatch.undo()  # (only the fake was set here)
    assert result.damp == pytest.approx(0.1)
    assert torch.equal(result.factor, inverse_hessian_factor(gram, percdamp=0.1).factor)  # H rebuilt, damped afresh


@pytest.mark.parametrize("stage_fails", ["cholesky", "inverse's factor"])
def test_a_failed_try_in_the_grams_own_memory_is_a_spent_gram(monkeypatch: pytest.MonkeyPatch,
                                                               stage_fails: str) -> None:
    monkeypatch.setattr(obs_module, "FLOAT64_MAX_INPUTS", 16)  # float32: H in the Gram's memory
    _, _, gram = correlated_problem(cols=64)
    failing = _failing(torch.linalg.cholesky_ex, lambda upper, call: upper == (stage_fails != "cholesky"))
    monkeypatch.setattr(torch.linalg, "cholesky_ex", failing)
    with pytest.raises(GramSpentError, match="overwritten"):
        inverse_hessian_factor(gram.clone(), percdamp=0.01, overwrite=True)
    with pytest.raises(ConfigError, match="not positive definite"):  # without overwrite: H rebuilt, damping raised
        inverse_hessian_factor(gram, percdamp=0.01)


def test_a_prepared_factor_gives_the_operators_own_result() -> None:
    weight, _, gram = correlated_problem(cols=128)
    shared = inverse_hessian_factor(gram, percdamp=0.1)
    for sparsity in (0.3, 0.5, 0.7):
        assert torch.equal(sparsegpt(weight, shared, sparsity=sparsity), sparsegpt(weight, gram, sparsity=sparsity,
                                                                                      percdamp=0.1))
    for bits in (3, 4):
        assert torch.equal(gptq(weight, shared, bits=bits, group_size=32).weight,
                           gptq(weight, gram, bits=bits, group_size=32, percdamp=0.1).weight)
    ordered = inverse_hessian_factor(gram, percdamp=0.1, perm=act_order_perm(gram))
    assert torch.equal(gptq(weight, ordered, bits=4, group_size=32, act_order=True).weight,
                       gptq(weight, gram, bits=4, group_size=32, act_order=True, percdamp=0.1).weight)
    with pytest.raises(ValueError, match="act_order=True"):
        gptq(weight, shared, bits=4, group_size=32, act_order=True)
    with pytest.raises(ValueError, match="act_order=False"):
        gptq(weight, ordered, bits=4, group_size=32)
    with pytest.raises(ValueError, match="permuted"):
        sparsegpt(weight, ordered, sparsity=0.5)


def test_ranking_in_bands_of_rows_prunes_the_same_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    weight, _, gram = correlated_problem(rows=37, cols=96)
    inverse = inverse_hessian_factor(gram, percdamp=0.01)
    whole, keep = obs_sweep(weight, inverse, blocksize=32, prune_per_row=40)
    monkeypatch.setattr(obs_module, "_RANK_ELEMENTS", 96 * 5)  # five rows at a time, a ragged last band
    banded, banded_keep = obs_sweep(weight, inverse, blocksize=32, prune_per_row=40)
    assert torch.equal(keep, banded_keep) and torch.equal(whole, banded)
    assert ((~keep).sum(dim=1) == 40).all()


def test_the_factor_is_the_references_upper_cholesky_of_the_damped_inverse() -> None:
    _, _, gram = correlated_problem(cols=96)
    h = gram.double()
    h.diagonal().add_(0.01 * float(h.diagonal().mean()))
    reference = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    assert torch.equal(inverse_hessian_factor(gram, percdamp=0.01).factor, reference)
