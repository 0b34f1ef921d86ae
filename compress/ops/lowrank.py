"""Low-rank factorization of a linear weight: plain truncated SVD or SVD-LLM style whitened SVD.

The factors are computed once per layer (they are the expensive part) and cached; every rank is then
a slice. Whitening with the Cholesky factor ``S`` of the input Gram matrix ``X^T X`` makes the
singular values measure the layer's *output* error on the calibration inputs::

    ||(W - W_r) X^T||_F^2 / ||W X^T||_F^2 == sum(sigma[r:]^2) / sum(sigma^2)

(exact for the damped Gram matrix actually factored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_CHOLESKY_RETRIES = 4


@dataclass(frozen=True)
class SVDFactors:
    """``left[:, :r] @ right[:r]`` is the best rank-r approximation of W (in the whitened metric if any)."""

    left: Tensor  # [out, k] = U·diag(σ)
    right: Tensor  # [k, in]  (= Vt, or Vt·S^{-1} when whitened)
    sigma: Tensor  # [k], descending

    @property
    def max_rank(self) -> int:
        return int(self.sigma.shape[0])


def _check_weight(weight: Tensor) -> None:
    if weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D [out, in] matrix, got shape {tuple(weight.shape)}")


def _whitening_factor(gram: Tensor, damp: float) -> Tensor:
    """Lower-triangular S with S S^T = gram + λI, λ = damp·mean(diag(gram)), raising λ ×10 on failure."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    scale = float(gram.diagonal().mean())
    if not scale > 0.0:  # an all-zero (or NaN) Gram matrix: damp relative to 1
        scale = 1.0
    lam = damp * scale
    for _ in range(_CHOLESKY_RETRIES):
        factor, info = torch.linalg.cholesky_ex(gram + lam * eye)
        if int(info) == 0:
            return factor
        lam = lam * 10.0 if lam > 0 else 1e-6 * scale
    raise ValueError(f"input Gram matrix is not positive definite even with damping {lam / 10.0:g}; "
                     "does it contain NaN or inf?")


def svd_factors(weight: Tensor, gram: Tensor | None = None, damp: float = 1e-2) -> SVDFactors:
    """Full SVD factors of ``weight`` [out, in]; whitened by the input Gram matrix [in, in] when given.

    Computed in float64, returned in float32 on the weight's device.
    """
    _check_weight(weight)
    if damp < 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    w = weight.detach().to(torch.float64)
    if gram is None:
        u, sigma, vt = torch.linalg.svd(w, full_matrices=False)
        right = vt
    else:
        n_in = w.shape[1]
        if tuple(gram.shape) != (n_in, n_in):
            raise ValueError(f"gram must be [{n_in}, {n_in}] for a weight with in={n_in}, "
                             f"got shape {tuple(gram.shape)}")
        g = gram.detach().to(device=w.device, dtype=torch.float64)
        s = _whitening_factor((g + g.T) / 2, damp)
        u, sigma, vt = torch.linalg.svd(w @ s, full_matrices=False)
        right = torch.linalg.solve_triangular(s, vt, upper=False, left=False)  # vt @ S^{-1}
    left = u * sigma[None, :]
    return SVDFactors(left=left.float(), right=right.float(), sigma=sigma.float())


def _check_rank(factors: SVDFactors, rank: int) -> None:
    if not 0 <= rank <= factors.max_rank:
        raise ValueError(f"rank must be in [0, {factors.max_rank}], got {rank}")


def lowrank_weight(factors: SVDFactors, rank: int) -> Tensor:
    """The rank-``rank`` approximation of W as a dense float32 [out, in] matrix."""
    _check_rank(factors, rank)
    return factors.left[:, :rank] @ factors.right[:rank]


def tail_energy(factors: SVDFactors, rank: int) -> float:
    """sum σ[rank:]² / sum σ²: relative squared error of the rank-``rank`` approximation.

    For whitened factors it is the relative squared output error on the calibration inputs.
    """
    _check_rank(factors, rank)
    energy = factors.sigma.double().square()
    total = float(energy.sum())
    return float(energy[rank:].sum()) / total if total > 0 else 0.0


def lowrank_params(in_features: int, out_features: int, rank: int) -> int:
    """Weights stored at ``rank``: two factors when that is smaller than the dense matrix, else dense."""
    return min(rank * (in_features + out_features), in_features * out_features)
