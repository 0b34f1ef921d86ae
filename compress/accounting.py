"""Exact parameter and byte accounting of a per-layer compression config.

This module is the project's definition of ``params_kept`` and ``bytes``: it sums what each
operator's handler (``compress.operators``) says its stored format costs, and every count equals
what the operators in ``compress.ops`` produce. The rules below are those of today's handlers.
Within a layer the operators apply in a fixed order: low rank, then sparsity, then quantization.

Stored matrices
    dense (no low rank): the weight ``[out, in]``.
    low rank ``r`` (``r <= min(in, out)``, else ``ConfigError("lowrank.rank")``): two factors
    ``left [out, r]`` and ``right [r, in]`` when ``r * (in + out) < in * out``; otherwise the
    rank-truncated weight is stored as one dense ``[out, in]`` matrix.

For each stored matrix of ``rows x cols``:

params (stored weights)
    no sparsity: ``rows * cols``.
    unstructured, ratio ``s``: ``rows * (cols - pruned_per_row(cols, s))`` — every row loses
    exactly ``pruned_per_row(cols, s) = round(s * cols)`` weights, each factor on its own row length.
    N:M: ``rows * cols * n / m``; ``cols % m != 0`` raises ``ConfigError("sparsity.pattern")``.
    Quantization never changes params: a weight whose code rounds to 0 is still stored.

bytes (each term rounded up to whole bytes per matrix)
    values: 2 bytes per stored weight (16 bit), or ``bits / 8`` when quantized.
    sparsity index: unstructured → a 1-bit mask over the whole matrix, ``ceil(rows * cols / 8)``
    (none when ``pruned_per_row`` is 0: nothing is pruned, the matrix is stored dense);
    N:M → ``ceil(log2(m))`` bits per kept weight.
    quantization scales: one fp16 scale per group, ``2 * rows * ceil(cols / group_size)``.
    SDQ outliers ``n:m``: ``rows * cols * n / m`` outliers stored additionally at 16 bits plus
    ``ceil(log2(m))`` index bits each; ``cols % m != 0`` raises ``ConfigError("quant.outliers")``.

A layer absent from a config is dense: ``params = in * out``, ``bytes = 2 * params``.

Bits per weight (``bits_per_weight``)
    ``8 * bytes / params_linear``: every stored bit of the compressible linear layers (values,
    scales, outlier values and their indices, sparsity masks or N:M indices, dense layers at 16
    bits) over the number of weights of the DENSE linear layers, so a sparse or low-rank layer is
    charged per weight of the original layer. Embeddings and the LM head are not counted. The
    quantisers' grids are symmetric (RTN, and GPTQ as registered): the zero point is fixed at
    ``2^(bits-1)`` and stores nothing; the scales are fp16, one per group of ``group_size`` inputs
    of a row (a row's last group may be shorter, RTN only). Each term is rounded up to whole bytes
    per matrix, as above.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from common.errors import ConfigError

from .config import LayerConfig, QuantSpec, SparsitySpec
from .layers import LinearLayer
from .operators import lowrank_handler, quant_handler, sparsity_handler
from .operators.base import DENSE_BYTES_PER_PARAM, OUTLIER_BYTES, SCALE_BYTES

__all__ = ["DENSE_BYTES_PER_PARAM", "OUTLIER_BYTES", "SCALE_BYTES", "LayerCost", "bits_per_weight", "layer_cost",
           "model_cost", "stored_shapes"]


@dataclass(frozen=True)
class LayerCost:
    params: int
    bytes: int

    def __add__(self, other: LayerCost) -> LayerCost:
        return LayerCost(self.params + other.params, self.bytes + other.bytes)


def stored_shapes(layer: LinearLayer, cfg: LayerConfig | None) -> list[tuple[int, int]]:
    """The (rows, cols) of each matrix a layer stores under ``cfg``: the weight, or its two factors."""
    if cfg is None or cfg.lowrank is None:
        return [(layer.out_features, layer.in_features)]
    return lowrank_handler(cfg.lowrank.method).stored_shapes(layer, cfg.lowrank)


def _matrix_cost(layer: LinearLayer, rows: int, cols: int,
                 sparsity: SparsitySpec | None, quant: QuantSpec | None) -> LayerCost:
    if sparsity is None:
        kept, index_bytes = rows * cols, 0
    else:
        kept, index_bytes = sparsity_handler(sparsity.score).cost(layer, rows, cols, sparsity)
    if quant is None:
        value_bytes = DENSE_BYTES_PER_PARAM * kept
    else:
        value_bytes = quant_handler(quant.method).value_bytes(layer, rows, cols, kept, quant)
    return LayerCost(kept, value_bytes + index_bytes)

def layer_cost(layer: LinearLayer, cfg: LayerConfig | None) -> LayerCost:
    """Stored weights and bytes of one linear layer under ``cfg`` (``None`` = dense)."""
    if cfg is None or cfg.is_dense:
        return LayerCost(layer.params, DENSE_BYTES_PER_PARAM * layer.params)
    total = LayerCost(0, 0)
    for rows, cols in stored_shapes(layer, cfg):
        total = total + _matrix_cost(layer, rows, cols, cfg.sparsity, cfg.quant)
    return total


def model_cost(layers: list[LinearLayer], config_layers: dict[str, LayerConfig]) -> LayerCost:
    """Sum of ``layer_cost`` over the compressible layers; layers absent from the config are dense.

    Errors of one layer's entry name it in full, e.g. ``layers.<name>.lowrank.rank``.
    """
    known = {layer.name for layer in layers}
    for name in config_layers:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else f" (it has {len(known)} such layers)"
            raise ConfigError(f"layers.{name}", f"not a compressible linear layer of this model{hint}")
    total = LayerCost(0, 0)
    for layer in layers:
        try:
            total = total + layer_cost(layer, config_layers.get(layer.name))
        except ConfigError as exc:
            raise ConfigError(f"layers.{layer.name}.{exc.field}", exc.reason) from None
    return total


def bits_per_weight(layers: list[LinearLayer], config_layers: dict[str, LayerConfig]) -> float:
    """Average stored bits per weight of the linear layers under a config (the convention above)."""
    return 8 * model_cost(layers, config_layers).bytes / sum(layer.params for layer in layers)
