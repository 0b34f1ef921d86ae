"""Weight quantization: symmetric round-to-nearest per group, and SDQ (N:M outliers kept in 16 bits).

Both return the dequantized float32 weight ("fake quantization"): the numerics of the stored format,
in a matrix any Linear can use. Storage cost is counted in ``compress.accounting``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import ConfigError

from .sparsity import nm_mask


def fake_quant(weight: Tensor, bits: int, group_size: int) -> Tensor:
    """Quantize each run of ``group_size`` inputs of each row to ``bits``-bit symmetric integer codes.

    scale = max|w| / (2^(bits-1) - 1) per group (the last group of a row may be shorter); an all-zero
    group stays zero.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    if bits < 2:
        raise ValueError(f"bits must be >= 2, got {bits}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    rows, cols = weight.shape
    group_size = min(group_size, cols)  # a group longer than the row is the row (and must not pad to its size)
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().float()
    pad = -cols % group_size
    groups = F.pad(w, (0, pad)).reshape(rows, -1, group_size)  # zero padding never changes max|w|
    scale = groups.abs().amax(dim=2, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round(groups / scale), -qmax, qmax)
    return (codes * scale).reshape(rows, -1)[:, :cols].contiguous()


def sdq(weight: Tensor, bits: int, group_size: int, n: int, m: int, score: Tensor | None = None) -> Tensor:
    """SDQ: keep the N:M-structured top-``score`` weights (default |w|) exactly, fake-quantize the rest."""
    try:
        outliers = nm_mask(weight.abs() if score is None else score, n, m)
    except ConfigError as exc:
        raise ConfigError("outliers", exc.reason) from None
    w = weight.detach().float()
    inliers = fake_quant(torch.where(outliers, torch.zeros_like(w), w), bits, group_size)
    return torch.where(outliers, w, inliers)


def quant_error(weight: Tensor, dequantized: Tensor) -> float:
    """||W - Q||² / ||W||² (0 for a zero weight reproduced exactly)."""
    w = weight.double()
    err = float((w - dequantized.double()).square().sum())
    total = float(w.square().sum())
    if total == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / total
