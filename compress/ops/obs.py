"""The optimal-brain-surgeon sweep shared by the reconstruction operators (SparseGPT, GPTQ).

For a linear layer y = W x, the layer-wise output error ||(W - Ŵ) X||² has Hessian H ∝ XᵀX, the
calibration Gram matrix. The reconstructions sweep the inputs left to right and need, for each
column, the row of the upper Cholesky factor of H⁻¹ (the error of column j spreads to the later
columns through it). Scaling H does not change the result, so the raw Gram is used as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from common.errors import ConfigError

_MAX_DAMP_TRIES = 6
# Up to this many inputs the factorisation runs in float64 (an [in, in] matrix: 128 MB at 4096);
# wider layers (a 1B Llama's 8192-input down_proj: 0.5 GB per float64 matrix) run in float32, as
# the reference SparseGPT and GPTQ code does for every layer. Forced on 21 layers of smollm2-135m,
# the float32 factor changed the relative output error by at most 8e-5 of itself (SparseGPT, keep
# 0.5) and 3e-4 (GPTQ 4-bit): bench/results/memory/precision.json.
FLOAT64_MAX_INPUTS = 4096


def factor_dtype(inputs: int) -> torch.dtype:
    """The dtype the inverse Hessian of a layer with ``inputs`` inputs is factored in."""
    return torch.float64 if inputs <= FLOAT64_MAX_INPUTS else torch.float32


class GramSpentError(ConfigError):
    """H did not factor at the first damping and was being factored in the caller's Gram (``overwrite``):
    there is nothing left to retry from. Call again on a fresh copy of the Gram without ``overwrite``."""


@dataclass(frozen=True)
class InverseHessian:
    factor: Tensor  # [in, in] float32, upper-triangular Cholesky factor of (H + λI)⁻¹
    dead: Tensor  # [in] bool: inputs that are zero on every calibration token
    damp: float  # the λ / mean(diag H) finally used (raised ×10 until H + λI factors)
    perm: Tensor | None = None  # the input order it was factored in (GPTQ's act-order), if not the natural one


def check_hessian_shape(weight: Tensor, hessian: Tensor | InverseHessian) -> None:
    """ValueError unless ``hessian`` (a Gram, or its factor) is [in, in] for the 2-D ``weight`` [out, in]."""
    shape = hessian.factor.shape if isinstance(hessian, InverseHessian) else hessian.shape
    if weight.dim() != 2 or shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"hessian must be [{weight.shape[-1]}, {weight.shape[-1]}] for weight "
                         f"{tuple(weight.shape)}, got {tuple(shape)}")


def inverse_hessian_factor(gram: Tensor, *, percdamp: float = 0.01, perm: Tensor | None = None,
                           overwrite: bool = False) -> InverseHessian:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = ``percdamp`` · mean(diag H).

    Dead inputs (zero diagonal) get H_jj = 1, so they are independent of everything and cost
    nothing to change. If H + λI is still not positive definite (a Gram of fewer tokens than
    inputs, rounding), λ is raised tenfold, a few times, before giving up with a ConfigError.
    ``perm`` reorders the inputs first (GPTQ's act-order). The factorisation runs in
    ``factor_dtype(in)``.

    Memory: one [in, in] matrix of that dtype besides ``gram``: the Cholesky factor, the inverse
    and its factor are each computed in place, in H's memory (a few MB of LAPACK workspace). With
    ``overwrite`` (the caller no longer needs the Gram), H is formed in ``gram``'s own memory when it
    already has that dtype and no ``perm`` is given: nothing more than the Gram, which then holds the
    returned factor. A failed try cannot be retried then: ``GramSpentError``.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"hessian must be square [in, in], got shape {tuple(gram.shape)}")
    if percdamp <= 0:
        raise ValueError(f"percdamp must be > 0, got {percdamp}")
    dtype = factor_dtype(gram.shape[0])
    dead = gram.diagonal() <= 0
    if perm is not None:
        dead = dead[perm]
    in_place = overwrite and perm is None and gram.dtype == dtype
    h: Tensor | None = _prepared_hessian(gram, dead, perm, dtype, in_place=in_place)
    assert h is not None
    undamped = h.diagonal().clone()  # each try damps this diagonal afresh
    mean = float(undamped.mean())
    damp = percdamp
    info = torch.zeros((), dtype=torch.int32, device=gram.device)
    for _ in range(_MAX_DAMP_TRIES):
        if h is None:  # the last try overwrote H: H again, from the Gram
            if in_place:
                raise GramSpentError("hessian", f"the damped calibration Hessian did not factor at damping "
                                                f"{damp / 10:g} ({dtype}) and its Gram was overwritten")
            h = _prepared_hessian(gram, dead, perm, dtype, in_place=False)
        h.diagonal().copy_(undamped + damp * mean)
        # H is symmetric, so h.mT holds it column-major, as LAPACK works: each step runs in that
        # memory (into a row-major h, torch would go by a temporary copy of the whole matrix).
        a = h.mT
        torch.linalg.cholesky_ex(a, out=(a, info))
        if int(info) == 0:
            torch.cholesky_inverse(a, out=a)
            torch.linalg.cholesky_ex(a, upper=True, out=(a, info))
            if int(info) == 0:
                return InverseHessian(a.float(), dead, damp, perm)
        h = None
        damp *= 10.0
    raise ConfigError("hessian", f"the calibration Hessian is not positive definite even with damping {damp / 10:g}")


def _prepared_hessian(gram: Tensor, dead: Tensor, perm: Tensor | None, dtype: torch.dtype, *,
                      in_place: bool) -> Tensor:
    """H in ``dtype`` (a fresh copy, or ``gram`` itself when ``in_place``), permuted, dead inputs cut loose."""
    h = gram.detach() if in_place else gram.detach().to(dtype, copy=True)
    if perm is not None:
        h = h[perm][:, perm]
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h.diagonal()[dead] = 1.0
    return h


class ColumnGrid(Protocol):
    """A quantisation grid the sweep rounds each column onto (``compress.ops.gptq.GroupGrid``)."""

    group_size: int
    static: bool

    def fit(self, group: int, values: Tensor) -> None: ...

    def quantize(self, values: Tensor, column: int) -> Tensor: ...


def obs_sweep(
    weight: Tensor,
    inverse: InverseHessian,
    *,
    blocksize: int,
    prune_per_row: int | None = None,
    nm: tuple[int, int] | None = None,
    grid: ColumnGrid | None = None,
    columns: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Prune and/or quantise ``weight`` column by column, spreading each column's error to the later ones.

    Returns (new weight, keep mask), both in the sweep's column order. The loop is the one of
    SparseGPT / GPTQ (Frantar & Alistarh): within a block of ``blocksize`` columns the update is
    applied eagerly, to the later blocks lazily, once per block.

    Unstructured masks (``prune_per_row`` zeros in every row) are chosen per block, adaptively:
    at the start of each block every row ranks its remaining columns by w² / [H⁻¹]_jj² on the
    weights updated so far, and prunes in this block those of its ``remaining`` lowest that fall
    in it. Each row thus gets exactly its count (the accounting counts zeros per row), while the
    choice still follows the updated weights, as SparseGPT's block-wise selection does. (SparseGPT
    itself thresholds each block over all its rows, which gives rows unequal counts.) Dead inputs
    score lowest: on the calibration data they cost nothing to remove. N:M masks are chosen per run
    of M columns when the sweep reaches it. ``columns`` maps sweep positions to the grid's column
    indices (act-order); ``grid`` rounds the kept weights onto the quantisation grid.
    """
    w = weight.detach().to(torch.float32, copy=True)  # one copy, whatever the weight's dtype
    rows, cols = w.shape
    hinv = inverse.factor.to(w.device)
    diag = hinv.diagonal()
    keep = torch.ones((rows, cols), dtype=torch.bool, device=w.device)
    remaining = None
    if prune_per_row is not None:
        if not 0 <= prune_per_row <= cols:
            raise ValueError(f"prune_per_row must be in [0, {cols}], got {prune_per_row}")
        remaining = torch.full((rows,), prune_per_row, dtype=torch.long, device=w.device)
    dead = inverse.dead.to(w.device)
    if nm is not None and blocksize % nm[1]:
        raise ValueError(f"blocksize {blocksize} must be a multiple of M={nm[1]}")
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        prune1 = torch.zeros((rows, count), dtype=torch.bool, device=w.device)
        if remaining is not None:
            prune1 = _block_prune(w[:, i1:], diag[i1:], dead[i1:], count, remaining)
            remaining -= prune1.sum(dim=1)
        for i in range(count):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                score = w1[:, i : i + m].square() / diag[i1 + i : i1 + i + m].square()[None, :]
                low = torch.topk(score, m - n, dim=1, largest=False).indices
                prune1[:, i : i + m].scatter_(1, low, True)
            column = i1 + i if columns is None else int(columns[i1 + i])
            if grid is not None and not grid.static and column % grid.group_size == 0:
                span = w1[:, i : i + grid.group_size].masked_fill(prune1[:, i : i + grid.group_size], 0.0)
                grid.fit(column // grid.group_size, span)
            w_col = w1[:, i]
            q = w_col.masked_fill(prune1[:, i], 0.0)
            if grid is not None:
                q = grid.quantize(q, column)
            q1[:, i] = q
            err = (w_col - q) / h1[i, i]
            w1[:, i:] -= err[:, None] * h1[i, i:][None, :]
            err1[:, i] = err
        w[:, i1:i2] = q1
        keep[:, i1:i2] = ~prune1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w, keep


_RANK_ELEMENTS = 1 << 22  # weights ranked at once: a few [rows, cols] int64 temporaries would be 0.4 GB at 2048x8192


def _block_prune(w: Tensor, diag: Tensor, dead: Tensor, count: int, remaining: Tensor) -> Tensor:
    """Which of the first ``count`` columns of ``w`` each row prunes: those among its ``remaining``
    lowest w² / [H⁻¹]_jj² (dead inputs lowest, ties by position). Ranked a band of rows at a time
    (each row on its own, so the result is the same), to bound the sort's temporaries."""
    rows, cols = w.shape
    prune = torch.empty((rows, count), dtype=torch.bool, device=w.device)
    band = max(1, _RANK_ELEMENTS // cols)
    scale = diag.square()[None, :]
    for r1 in range(0, rows, band):
        r2 = min(r1 + band, rows)
        score = w[r1:r2].square() / scale
        score[:, dead] = -1.0
        order = torch.argsort(score, dim=1, stable=True)
        positions = torch.arange(cols, device=w.device).expand_as(order)
        ranks = torch.empty_like(order).scatter_(1, order, positions)
        prune[r1:r2] = ranks[:, :count] < remaining[r1:r2, None]
    return prune
