"""Pruning scores and keep-masks for a linear weight [out, in].

Scores compare weights within a row (one output), as in Wanda. ``row_ranks`` turns a score into a
per-row order once; the unstructured mask for any ratio is then a single comparison, so it is what
caches keep. ``pruned_per_row`` is the one rounding rule shared by the masks and by the accounting.
"""

from __future__ import annotations

import torch
from torch import Tensor

from common.errors import ConfigError


def magnitude_score(weight: Tensor) -> Tensor:
    """|W|."""
    return weight.abs()


def wanda_score(weight: Tensor, input_norm: Tensor) -> Tensor:
    """|W| · ||X_j||: ``input_norm`` [in] is the L2 norm of each input feature over the calibration tokens."""
    if weight.dim() != 2 or input_norm.shape != (weight.shape[1],):
        raise ValueError(f"input_norm must have shape [{weight.shape[-1]}] for weight {tuple(weight.shape)}, "
                         f"got {tuple(input_norm.shape)}")
    return weight.abs() * input_norm.to(device=weight.device, dtype=weight.dtype)[None, :]


def row_ranks(score: Tensor) -> Tensor:
    """int32 [out, in]: the rank of each score within its row, 0 = smallest; ties broken by column."""
    if score.dim() != 2:
        raise ValueError(f"score must be 2-D [out, in], got shape {tuple(score.shape)}")
    order = torch.argsort(score, dim=1, stable=True)
    positions = torch.arange(score.shape[1], dtype=torch.int32, device=score.device).expand_as(order)
    return torch.empty(score.shape, dtype=torch.int32, device=score.device).scatter_(1, order, positions)


def pruned_per_row(in_features: int, ratio: float) -> int:
    """Weights zeroed in each row of length ``in_features`` at sparsity ``ratio``."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sparsity ratio must be in [0, 1], got {ratio}")
    return round(ratio * in_features)


def unstructured_mask(ranks: Tensor, ratio: float) -> Tensor:
    """Keep-mask (bool) zeroing the ``pruned_per_row`` lowest-scored weights of every row."""
    return ranks >= pruned_per_row(int(ranks.shape[1]), ratio)


def nm_mask(score: Tensor, n: int, m: int) -> Tensor:
    """Keep-mask (bool) keeping the ``n`` highest scores in each run of ``m`` consecutive inputs."""
    if score.dim() != 2:
        raise ValueError(f"score must be 2-D [out, in], got shape {tuple(score.shape)}")
    if not 0 < n <= m:
        raise ValueError(f"N:M needs 0 < N <= M, got {n}:{m}")
    rows, cols = score.shape
    if cols % m:
        raise ConfigError("pattern", f"{n}:{m} needs in_features divisible by {m}; "
                                     f"this layer is {rows}x{cols} (in_features={cols})")
    groups = score.reshape(rows, cols // m, m)
    top = torch.topk(groups, n, dim=2).indices
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=score.device).scatter_(2, top, True)
    return keep.reshape(rows, cols)


def pruned_mass(score: Tensor, keep_mask: Tensor) -> float:
    """Share of sum(score²) that the mask removes: a proxy of the relative output error."""
    energy = score.double().square()
    total = float(energy.sum())
    return float(energy[~keep_mask].sum()) / total if total > 0 else 0.0
