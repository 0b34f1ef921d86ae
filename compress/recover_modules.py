"""Trainable stand-ins for compressed linear layers that keep a config's structure exactly.

Recovery (``compress.recover``) trains the compressed model, but the result must still be the
config: the same zeros, the same ranks, weights on the same quantization grid. Each compressed
layer is swapped for one of two modules whose forward pass *is* the compressed layer:

``MaskedLinear`` (an ``nn.Linear``)
    a layer stored as one [out, in] matrix; computes with ``Q(weight * mask)``.
``FactoredLinear`` (a ``compress.export.LowRankLinear``)
    a layer stored as two factors ``down`` [r, in] and ``up`` [out, r], trained as factors; each
    factor computes with ``Q(factor * mask)``. The rank is the module's shape, so it cannot change.

``mask`` is the fixed keep-mask of the sparsity operator (None when the layer is not pruned); the
forward product already zeroes the gradient of pruned weights, and ``project_()`` re-masks the
latent weights after every optimizer step so that weight decay or numerical noise can never revive
them. ``Q`` is the config's fake quantization (``compress.ops.fake_quant`` / ``sdq``, the exact
numerics the search measured) with a straight-through estimator: the forward pass sees grid values,
the backward pass treats ``Q`` as the identity. ``bake()`` returns plain modules holding
``Q(weight * mask)``, which is what the export writes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compress.config import QuantSpec
from compress.export import LowRankLinear
from compress.ops import fake_quant, sdq


def quantize(weight: Tensor, spec: QuantSpec) -> Tensor:
    """The config's quantization of ``weight`` (values on the grid, as floats; no gradient)."""
    nm = spec.outlier_nm
    if nm is None:
        return fake_quant(weight, spec.bits, spec.group_size)
    return sdq(weight, spec.bits, spec.group_size, *nm)


def constrained(weight: Tensor, mask: Tensor | None, quant: QuantSpec | None) -> Tensor:
    """``Q(weight * mask)`` in the forward pass; straight-through (identity) for ``Q`` in the backward."""
    if mask is not None:
        weight = weight * mask
    if quant is None:
        return weight
    grid = quantize(weight.detach(), quant).to(weight.dtype)
    return weight + (grid - weight).detach()


def _mask_buffer(mask: Tensor | None, like: Tensor) -> Tensor | None:
    if mask is None:
        return None
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight {tuple(like.shape)}")
    return mask.to(device=like.device, dtype=like.dtype)


class MaskedLinear(nn.Linear):
    """A dense-stored compressed layer: computes with ``Q(weight * mask)``."""

    mask: Tensor | None

    def __init__(self, weight: Tensor, bias: Tensor | None, *, mask: Tensor | None,
                 quant: QuantSpec | None) -> None:
        out_features, in_features = weight.shape
        super().__init__(in_features, out_features, bias=bias is not None, dtype=weight.dtype,
                         device=weight.device)
        with torch.no_grad():
            self.weight.copy_(weight)
            if bias is not None:
                self.bias.copy_(bias)
        self.register_buffer("mask", _mask_buffer(mask, self.weight), persistent=False)
        self.quant = quant

    def effective_weight(self) -> Tensor:
        return constrained(self.weight, self.mask, self.quant)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    @torch.no_grad()
    def project_(self) -> None:
        """Zero the pruned latent weights again (after an optimizer step)."""
        if self.mask is not None:
            self.weight.mul_(self.mask)

    @torch.no_grad()
    def bake(self) -> nn.Linear:
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          dtype=self.weight.dtype, device=self.weight.device)
        plain.weight.copy_(self.effective_weight())
        if self.bias is not None:
            plain.bias.copy_(self.bias)
        plain.requires_grad_(False)
        return plain


class FactoredLinear(LowRankLinear):
    """A factored compressed layer ``up(down(x))``: each factor computes with ``Q(factor * mask)``."""

    down_mask: Tensor | None
    up_mask: Tensor | None

    def __init__(self, up: Tensor, down: Tensor, bias: Tensor | None, *, up_mask: Tensor | None,
                 down_mask: Tensor | None, quant: QuantSpec | None) -> None:
        out_features, rank = up.shape
        if down.shape[0] != rank:
            raise ValueError(f"factors do not chain: up {tuple(up.shape)}, down {tuple(down.shape)}")
        super().__init__(int(down.shape[1]), int(out_features), int(rank), bias=bias is not None,
                         dtype=up.dtype, device=up.device)
        with torch.no_grad():
            self.up.weight.copy_(up)
            self.down.weight.copy_(down)
            if bias is not None:
                self.up.bias.copy_(bias)
        self.register_buffer("up_mask", _mask_buffer(up_mask, self.up.weight), persistent=False)
        self.register_buffer("down_mask", _mask_buffer(down_mask, self.down.weight), persistent=False)
        self.quant = quant

    def effective_factors(self) -> tuple[Tensor, Tensor]:
        """``up`` [out, r] and ``down`` [r, in] as the layer computes with them."""
        return (constrained(self.up.weight, self.up_mask, self.quant),
                constrained(self.down.weight, self.down_mask, self.quant))

    def forward(self, x: Tensor) -> Tensor:
        up, down = self.effective_factors()
        return F.linear(F.linear(x, down), up, self.up.bias)

    @torch.no_grad()
    def project_(self) -> None:
        if self.up_mask is not None:
            self.up.weight.mul_(self.up_mask)
        if self.down_mask is not None:
            self.down.weight.mul_(self.down_mask)

    @torch.no_grad()
    def bake(self) -> LowRankLinear:
        plain = LowRankLinear(self.in_features, self.out_features, self.rank, bias=self.up.bias is not None,
                              dtype=self.up.weight.dtype, device=self.up.weight.device)
        up, down = self.effective_factors()
        plain.up.weight.copy_(up)
        plain.down.weight.copy_(down)
        if self.up.bias is not None:
            plain.up.bias.copy_(self.up.bias)
        plain.requires_grad_(False)
        return plain


ConstrainedLayer = MaskedLinear | FactoredLinear
