"""GPTQ (Frantar et al. 2023): quantise a layer column by column, each rounding error compensated by
the later columns through the calibration Hessian (``compress.ops.gptq``).

Like SparseGPT, the result is not a function of the weight alone: each (layer, bits, group size)
is computed once from the dense weight and the calibration Gram of the DENSE model's inputs (so any
mix of per-layer bit widths plugs together) and kept on disk as integer codes and scales
(``<stats cache>/gptq/<layer>-b<bits>-g<group>-d<damp>.safetensors``, ``compress.operators.layer_cache``),
then dequantised bit for bit on load.

The grid is symmetric per group (``compress.ops.gptq``'s default), the grid RTN uses, so the stored
format and its cost are RTN's: codes plus one fp16 scale per group (the zero point is the fixed
midpoint 2^(bits-1); ``grid`` hands codes and scales to the compressed-tensors export). The group
size must divide the layer's inputs (GPTQ sweeps whole groups): ``compress.budget`` picks
``default_group_size`` per layer (128 where it divides, else 64). Dampening 0.1 of the mean Hessian
diagonal: on smollm2-135m it beat RTN on the holdout text where 0.01 fitted the calibration text too
closely.

Scope: a layer's dense weight. Sparse or low-rank layers are refused (the column updates would fill
pruned weights back in, and a factor has no Gram of its own inputs here).
"""

from __future__ import annotations

import torch
from torch import Tensor

from common.errors import ConfigError
from compress.config import QuantSpec
from compress.layers import LinearLayer
from compress.operators.base import LayerContext, QuantHandler, describe
from compress.operators.layer_cache import layer_result
from compress.ops import QuantizedWeight, gptq

DAMPENING = 0.1  # fraction of the mean Hessian diagonal added to it


def setting_key(spec: QuantSpec) -> str:
    return f"b{spec.bits}-g{spec.group_size}-d{DAMPENING}"


class GPTQQuant(QuantHandler):
    levelled = True

    def warm(self, ctx: LayerContext, name: str, spec: QuantSpec) -> None:
        self._stored(ctx, name, spec)

    def _stored(self, ctx: LayerContext, name: str, spec: QuantSpec) -> QuantizedWeight:
        dense = ctx.dense_weight(name)

        def compute() -> dict[str, Tensor]:
            try:
                q = gptq(dense, ctx.stats().gram(name), bits=spec.bits, group_size=spec.group_size,
                         percdamp=DAMPENING).quantized
            except ConfigError as exc:
                raise ConfigError(f"layers.{name}.quant.{exc.field}", exc.reason) from None
            return {"codes": q.codes, "scales": q.scales, "zeros": q.zeros}

        stored = layer_result(ctx, self.name, "gptq", name, setting_key(spec), compute)
        return QuantizedWeight(stored["codes"], stored["scales"], stored["zeros"], spec.bits, spec.group_size,
                               symmetric=True)  # gptq's default grid, as computed above

    def _dense_only(self, ctx: LayerContext | None, name: str, matrix: Tensor) -> LayerContext:
        if ctx is None:
            raise ConfigError(f"layers.{name}.quant.method", "gptq needs the model's calibration statistics")
        dense = ctx.dense_weight(name)
        if matrix is not dense and not (matrix.shape == dense.shape and torch.equal(matrix, dense)):
            raise ConfigError(f"layers.{name}.quant.method", _DENSE_ONLY)
        return ctx

    def quantize(self, ctx: LayerContext | None, name: str, matrix: Tensor, spec: QuantSpec) -> Tensor:
        return self._stored(self._dense_only(ctx, name, matrix), name, spec).dequantize()

    def grid(self, ctx: LayerContext, name: str, matrix: Tensor, spec: QuantSpec) -> QuantizedWeight:
        return self._stored(self._dense_only(ctx, name, matrix), name, spec)

    def value_bytes(self, layer: LinearLayer, rows: int, cols: int, kept: int, spec: QuantSpec) -> int:
        """RTN's format (codes and one fp16 scale per group); only a whole dense weight in whole groups."""
        if (rows, cols) != (layer.out_features, layer.in_features) or kept != rows * cols:
            raise ConfigError("quant.method", _DENSE_ONLY)
        if cols % spec.group_size:
            raise ConfigError("quant.group_size", f"gptq needs whole groups: {spec.group_size} does not divide "
                                                  f"the inputs; {describe(layer, rows, cols)}")
        if spec.outliers is not None:
            raise ConfigError("quant.outliers", "gptq keeps no outliers (use the rtn method for SDQ)")
        return super().value_bytes(layer, rows, cols, kept, spec)


_DENSE_ONLY = ("gptq quantises a layer's whole dense weight; it cannot stack on sparsity or low rank "
               "(use int4 / int8 / sdq there)")

HANDLER = GPTQQuant("gptq")
