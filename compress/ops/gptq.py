"""GPTQ: quantise a linear weight column by column, each rounding error compensated by the later columns.

The grid is per group of ``group_size`` consecutive inputs of a row: symmetric (codes -q..q around a
fixed zero point, the grid of ``fake_quant``; the default, so GPTQ and RTN store exactly the same
thing) or asymmetric min-max with a zero point per group, as GPTQ's reference code uses. The
result is both the dequantised float weight and what storing it takes: integer codes, scales and
zero points; ``QuantizedWeight.dequantize`` reproduces the float weight bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from common.errors import ConfigError

from .obs import InverseHessian, check_hessian_shape, inverse_hessian_factor, obs_sweep

GPTQ_BITS: tuple[int, ...] = (2, 3, 4, 8)
GROUP_SIZES: tuple[int, ...] = (128, 64)


def default_group_size(in_features: int) -> int:
    """128 where it divides ``in_features``, else 64 (smollm2's 576 and 1536 take 64 and 128)."""
    for size in GROUP_SIZES:
        if in_features % size == 0:
            return size
    raise ConfigError("group_size", f"no group size in {GROUP_SIZES} divides in_features={in_features}")


@dataclass(frozen=True)
class QuantizedWeight:
    """What a quantised weight stores: codes in [0, 2^bits), and per group a scale and a zero point.

    ``symmetric``: the grid's zero point is fixed at 2^(bits-1) in every group (so it need not be
    stored; an export writes signed codes ``codes - 2^(bits-1)`` and scales only); otherwise each
    group has its own fitted zero point.
    """

    codes: Tensor  # uint8 [out, in]
    scales: Tensor  # float32 [out, in // group_size]
    zeros: Tensor  # uint8 [out, in // group_size]
    bits: int
    group_size: int
    symmetric: bool

    def dequantize(self) -> Tensor:
        zeros = self.zeros.float().repeat_interleave(self.group_size, dim=1)
        scales = self.scales.repeat_interleave(self.group_size, dim=1)
        return (self.codes.float() - zeros) * scales

    def packed(self) -> Tensor:
        """The codes as a bit stream, ``bits`` per code, row after row (uint8 [out, ceil(in·bits/8)])."""
        return pack_codes(self.codes, self.bits)


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Pack each row of uint8 codes < 2^bits into a little-endian bit stream of bytes."""
    rows, cols = codes.shape
    shifts = torch.arange(bits, dtype=torch.uint8, device=codes.device)
    stream = ((codes.to(torch.uint8)[:, :, None] >> shifts) & 1).reshape(rows, cols * bits)
    stream = torch.nn.functional.pad(stream, (0, -stream.shape[1] % 8)).reshape(rows, -1, 8)
    weights = (2 ** torch.arange(8, device=codes.device)).to(torch.uint8)
    return (stream * weights).sum(dim=2, dtype=torch.uint8)


def unpack_codes(packed: Tensor, bits: int, cols: int) -> Tensor:
    """Inverse of ``pack_codes``."""
    rows = packed.shape[0]
    stream = ((packed[:, :, None] >> torch.arange(8, dtype=torch.uint8, device=packed.device)) & 1).reshape(rows, -1)
    stream = stream[:, : cols * bits].reshape(rows, cols, bits)
    weights = (2 ** torch.arange(bits, device=packed.device)).to(torch.uint8)
    return (stream * weights).sum(dim=2, dtype=torch.uint8)


class GroupGrid:
    """Per-(row, group) scales and zero points, fitted as the sweep reaches each group; records the codes."""

    def __init__(self, rows: int, cols: int, bits: int, group_size: int, *, symmetric: bool, device: torch.device):
        if bits not in GPTQ_BITS:
            raise ConfigError("bits", f"must be one of {GPTQ_BITS}, got {bits}")
        if group_size < 1 or cols % group_size:
            raise ConfigError("group_size", f"{group_size} does not divide in_features={cols}")
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric
        self.static = False
        self.scales = torch.ones((rows, cols // group_size), dtype=torch.float32, device=device)
        self.zeros = torch.zeros((rows, cols // group_size), dtype=torch.float32, device=device)
        self.codes = torch.zeros((rows, cols), dtype=torch.uint8, device=device)

    def fit(self, group: int, values: Tensor) -> None:
        if self.symmetric:
            qmax = 2 ** (self.bits - 1) - 1
            scale = values.abs().amax(dim=1) / qmax
            zero = torch.full_like(scale, 2 ** (self.bits - 1))
        else:
            lo = values.amin(dim=1).clamp_max(0.0)
            hi = values.amax(dim=1).clamp_min(0.0)
            flat = (lo == 0) & (hi == 0)
            lo, hi = torch.where(flat, -1.0, lo), torch.where(flat, 1.0, hi)
            scale = (hi - lo) / (2**self.bits - 1)
            zero = torch.round(-lo / scale)
        self.scales[:, group] = torch.where(scale > 0, scale, torch.ones_like(scale))
        self.zeros[:, group] = zero

    def fit_all(self, weight: Tensor) -> None:
        """Fit every group on ``weight`` up front (act-order: groups stay in the original column order)."""
        for group in range(self.scales.shape[1]):
            self.fit(group, weight[:, group * self.group_size : (group + 1) * self.group_size])
        self.static = True

    def quantize(self, values: Tensor, column: int) -> Tensor:
        group = column // self.group_size
        scale, zero = self.scales[:, group], self.zeros[:, group]
        if self.symmetric:
            qmax = 2 ** (self.bits - 1) - 1
            code = torch.clamp(torch.round(values / scale), -qmax, qmax) + zero
        else:
            code = torch.clamp(torch.round(values / scale) + zero, 0, 2**self.bits - 1)
        self.codes[:, column] = code.to(torch.uint8)
        return (code - zero) * scale

    def result(self) -> QuantizedWeight:
        return QuantizedWeight(self.codes, self.scales, self.zeros.to(torch.uint8), self.bits, self.group_size,
                               symmetric=self.symmetric)


@dataclass(frozen=True)
class GPTQResult:
    weight: Tensor  # float32 [out, in], exactly ``quantized.dequantize()``
    quantized: QuantizedWeight


def act_order_perm(hessian: Tensor) -> Tensor:
    """GPTQ's act-order: the inputs by decreasing Hessian diagonal (largest activations first)."""
    return torch.argsort(hessian.diagonal(), descending=True, stable=True)


def gptq(
    weight: Tensor,
    hessian: Tensor | InverseHessian,
    *,
    bits: int,
    group_size: int,
    act_order: bool = False,
    static_groups: bool = True,
    blocksize: int = 128,
    percdamp: float = 0.01,
    symmetric: bool = True,
) -> GPTQResult:
    """GPTQ of ``weight`` [out, in] given the calibration Gram ``hessian`` [in, in].

    ``static_groups`` fits every group's scale on the original weights up front; otherwise (as in
    GPTQ's reference code) each group is fitted when the sweep reaches it, on the weights updated so
    far. Static is the default: on correlated random layers it is as good at 4 bits and better at 2
    and 3 (the updates inflate the later groups' ranges; symmetric 2-bit dynamic can lose to RTN).
    ``act_order`` sweeps the inputs by decreasing Hessian diagonal (largest activations first); it
    needs static groups, which stay in the original column order, so the stored format is one
    scale per run of ``group_size`` inputs either way.

    ``hessian``: the calibration Gram, or its ``inverse_hessian_factor`` already computed (with
    ``perm=act_order_perm(gram)`` for ``act_order``; ``percdamp`` is then the one it was computed
    with, and several bit widths of a layer share it).
    """
    if act_order and not static_groups:
        raise ValueError("act_order needs static_groups (the groups stay in the original column order)")
    prepared = hessian if isinstance(hessian, InverseHessian) else None
    check_hessian_shape(weight, hessian)
    if prepared is not None and (prepared.perm is not None) != act_order:
        raise ValueError(f"act_order={act_order} needs an inverse Hessian factored "
                         f"{'in act-order' if act_order else 'in the natural input order'}")
    rows, cols = weight.shape
    grid = GroupGrid(rows, cols, bits, group_size, symmetric=symmetric, device=weight.device)
    blocksize = -(-blocksize // group_size) * group_size  # a group never straddles two blocks
    w = weight.detach().float()
    if static_groups:
        grid.fit_all(w)
    if prepared is None:
        assert isinstance(hessian, Tensor)
        perm = act_order_perm(hessian).cpu() if act_order else None
        prepared = inverse_hessian_factor(hessian, percdamp=percdamp, perm=perm)
    if not act_order:
        out, _ = obs_sweep(w, prepared, blocksize=blocksize, grid=grid)
    else:
        assert prepared.perm is not None
        perm = prepared.perm.to(weight.device)
        swept, _ = obs_sweep(w[:, perm], prepared, blocksize=blocksize, grid=grid, columns=perm)
        out = torch.empty_like(swept)
        out[:, perm] = swept
    quantized = grid.result()
    dequantized = quantized.dequantize()
    if not torch.equal(dequantized, out):  # the sweep's own rounding and the stored grid must agree
        raise AssertionError("GPTQ's swept weight differs from its stored grid")
    return GPTQResult(dequantized, quantized)
