"""Numerics of plain and whitened truncated SVD."""

from __future__ import annotations

import pytest
import torch

from compress.ops import SVDFactors, lowrank_params, lowrank_weight, svd_factors, tail_energy


def _correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """[n, d] inputs whose features are strongly correlated and unevenly scaled, as in a real LM."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, d, generator=gen) * torch.logspace(0, -2, d)
    mixing = torch.linalg.qr(torch.randn(d, d, generator=gen))[0]
    return latent @ mixing.T


def _output_error(weight: torch.Tensor, approx: torch.Tensor, x: torch.Tensor) -> float:
    """||(W - W') X^T||² / ||W X^T||², in float64."""
    w, a, xd = weight.double(), approx.double(), x.double()
    return float(((w - a) @ xd.T).square().sum() / (w @ xd.T).square().sum())


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
def test_full_rank_reproduces_weight(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    weight = torch.randn(*shape)
    x = _correlated_inputs(200, shape[1])
    for gram in (None, x.T @ x):
        factors = svd_factors(weight, gram)
        k = min(shape)
        assert factors.left.shape == (shape[0], k) and factors.right.shape == (k, shape[1])
        assert factors.left.dtype == factors.right.dtype == factors.sigma.dtype == torch.float32
        assert torch.all(factors.sigma[:-1] >= factors.sigma[1:])
        torch.testing.assert_close(lowrank_weight(factors, k), weight, atol=1e-4, rtol=1e-4)
        assert tail_energy(factors, k) == 0.0


def test_plain_rank_r_is_frobenius_optimal_and_matches_tail_energy() -> None:
    torch.manual_seed(1)
    weight = torch.randn(30, 50)
    factors = svd_factors(weight)
    for rank in (1, 5, 17):
        approx = lowrank_weight(factors, rank)
        assert torch.linalg.matrix_rank(approx) == rank
        measured = float((weight - approx).square().sum() / weight.square().sum())
        assert tail_energy(factors, rank) == pytest.approx(measured, rel=1e-4)


def test_whitened_beats_plain_on_output_error() -> None:
    torch.manual_seed(2)
    weight = torch.randn(48, 64)
    x = _correlated_inputs(512, 64)
    plain, whitened = svd_factors(weight), svd_factors(weight, x.T @ x, damp=1e-6)
    for rank in (4, 8, 16, 32):
        err_plain = _output_error(weight, lowrank_weight(plain, rank), x)
        err_white = _output_error(weight, lowrank_weight(whitened, rank), x)
        assert err_white < 0.8 * err_plain, (rank, err_white, err_plain)


@pytest.mark.parametrize("damp", [1e-6, 1e-2])
def test_whitened_tail_energy_is_relative_output_error(damp: float) -> None:
    torch.manual_seed(3)
    weight = torch.randn(40, 56)
    x = _correlated_inputs(400, 56)
    gram = x.T @ x
    factors = svd_factors(weight, gram, damp=damp)
    # Exact against the damped Gram matrix the factors were built from: ||E S||² = tr(E (G + λI) E^T).
    lam = damp * float(gram.diagonal().double().mean())
    damped = gram.double() + lam * torch.eye(56, dtype=torch.float64)
    for rank in (2, 10, 30):
        err = (weight - lowrank_weight(factors, rank)).double()
        w = weight.double()
        measured = float(torch.trace(err @ damped @ err.T) / torch.trace(w @ damped @ w.T))
        assert tail_energy(factors, rank) == pytest.approx(measured, rel=1e-3)
        if damp == 1e-6:  # and, with little damping, against the calibration outputs themselves
            assert tail_energy(factors, rank) == pytest.approx(
                _output_error(weight, lowrank_weight(factors, rank), x), rel=1e-3)


def test_singular_gram_is_damped_until_cholesky_succeeds() -> None:
    torch.manual_seed(4)
    weight = torch.randn(16, 32)
    x = torch.randn(8, 32)  # 8 tokens: the Gram matrix has rank 8 < 32
    factors = svd_factors(weight, x.T @ x, damp=0.0)
    assert all(torch.isfinite(t).all() for t in (factors.left, factors.right, factors.sigma))
    torch.testing.assert_close(lowrank_weight(factors, 16), weight, atol=1e-3, rtol=1e-3)
    zero = svd_factors(weight, torch.zeros(32, 32))  # no calibration signal at all: still finite
    torch.testing.assert_close(lowrank_weight(zero, 16), weight, atol=1e-4, rtol=1e-4)


def test_bad_arguments() -> None:
    weight = torch.randn(8, 12)
    factors = svd_factors(weight)
    assert isinstance(factors, SVDFactors) and factors.max_rank == 8
    with pytest.raises(ValueError, match="rank"):
        lowrank_weight(factors, 9)
    with pytest.raises(ValueError, match="rank"):
        tail_energy(factors, -1)
    with pytest.raises(ValueError, match="gram"):
        svd_factors(weight, torch.eye(8))
    with pytest.raises(ValueError, match="2-D"):
        svd_factors(torch.randn(8))
    with pytest.raises(ValueError, match="not positive definite"):
        svd_factors(weight, torch.full((12, 12), float("nan")))


def test_lowrank_params() -> None:
    assert lowrank_params(in_features=576, out_features=1536, rank=64) == 64 * (576 + 1536)
    assert lowrank_params(576, 1536, 576) == 576 * 1536  # factoring would cost more: stored dense
    assert lowrank_params(100, 100, 50) == 100 * 100  # a tie is stored dense too
    assert lowrank_params(100, 100, 49) == 49 * 200
