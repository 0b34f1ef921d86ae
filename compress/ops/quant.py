"""Weight quantization: symmetric round-to-nearest per group, and SDQ (N:M outliers kept in 16 bits).

Both return the dequantized float32 weight ("fake quantization"): the numerics of the stored format,
in a matrix any Linear can use. Storage cost is counted in ``compress.accounting``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import ConfigError

from .gptq import QuantizedWeight
from .sparsity import nm_mask


def quantize_groups(weight: Tensor, bits: int, group_size: int) -> tuple[Tensor, Tensor]:
    """Symmetric round-to-nearest codes of each run of ``group_size`` inputs of each row.

    Returns ``codes`` (int8, [out, in]) and ``scale`` (float32, [out, ceil(in / group_size)]) with
    scale = max|w| / (2^(bits-1) - 1) per group (the last group of a row may be shorter; an all-zero
    group gets scale 1 and codes 0). ``codes * scale`` (each scale repeated over its group) is exactly
    what :func:`fake_quant` returns, so an export can store the integers and their scales.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8], got {bits}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    rows, cols = weight.shape
    group_size = min(group_size, cols)  # a group longer than the row is the row (and must not pad to its size)
    qmax = 2 ** (bits - 1) - 1
    pad = -cols % group_size
    groups = F.pad(weight.detach().float(), (0, pad)).reshape(rows, -1, group_size)  # zero padding keeps max|w|
    scale = groups.abs().amax(dim=2, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round(groups / scale), -qmax, qmax)
    return codes.reshape(rows, -1)[:, :cols].to(torch.int8).contiguous(), scale.squeeze(2)


def dequantize_groups(codes: Tensor, scale: Tensor, group_size: int) -> Tensor:
    """float32 ``codes * scale`` with each group's scale repeated over its inputs (inverse of quantize_groups)."""
    cols = codes.shape[1]
    group_size = min(group_size, cols)
    return (codes.float() * scale.repeat_interleave(group_size, dim=1)[:, :cols]).contiguous()


def rtn_grid(weight: Tensor, bits: int, group_size: int) -> QuantizedWeight:
    """:func:`quantize_groups` as a stored grid: codes offset by the fixed zero point 2^(bits-1).

    Whole groups only (``group_size`` must divide the inputs); ``dequantize()`` equals
    :func:`fake_quant` bit for bit (both compute ``code * scale`` in float32).
    """
    if weight.dim() != 2 or weight.shape[1] % group_size:
        raise ValueError(f"a grid needs whole groups: {group_size} does not divide the inputs of "
                         f"{tuple(weight.shape)}")
    codes, scales = quantize_groups(weight, bits, group_size)
    zero = 2 ** (bits - 1)
    return QuantizedWeight((codes.to(torch.int16) + zero).to(torch.uint8), scales,
                           torch.full_like(scales, zero, dtype=torch.uint8), bits, group_size, symmetric=True)


def fake_quant(weight: Tensor, bits: int, group_size: int) -> Tensor:
    """The dequantized weight of :func:`quantize_groups`: ``bits``-bit symmetric codes per group of inputs."""
    codes, scale = quantize_groups(weight, bits, group_size)
    return dequantize_groups(codes, scale, group_size)


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
