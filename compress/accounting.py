"""Exact parameter and byte accounting of a per-layer compression config.

This module is the project's definition of ``params_kept`` and ``bytes``. Every count equals what the
operators in ``compress.ops`` produce. Within a layer the operators apply in a fixed order: low rank,
then sparsity, then quantization.

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
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from common.errors import ConfigError

from .config import LayerConfig, QuantSpec, SparsitySpec
from .layers import LinearLayer
from .ops.sparsity import pruned_per_row

DENSE_BYTES_PER_PARAM = 2
SCALE_BYTES = 2  # one fp16 scale per quantization group
OUTLIER_BYTES = 2  # SDQ outliers are kept at 16 bits


@dataclass(frozen=True)
class LayerCost:
    params: int
    bytes: int

    def __add__(self, other: LayerCost) -> LayerCost:
        return LayerCost(self.params + other.params, self.bytes + other.bytes)


def _bytes(bits: int) -> int:
    return -(-bits // 8)


def _index_bits(m: int) -> int:
    return math.ceil(math.log2(m))


def stored_shapes(layer: LinearLayer, cfg: LayerConfig | None) -> list[tuple[int, int]]:
    """The (rows, cols) of each matrix a layer stores under ``cfg``: the weight, or its two factors."""
    out, inp = layer.out_features, layer.in_features
    if cfg is None or cfg.lowrank is None:
        return [(out, inp)]
    rank = cfg.lowrank.rank
    if rank > layer.full_rank:
        raise ConfigError("lowrank.rank", f"rank {rank} exceeds the full rank {layer.full_rank} "
                                          f"of layer {layer.name} ({out}x{inp})")
    if rank * (inp + out) < inp * out:
        return [(out, rank), (rank, inp)]
    return [(out, inp)]


def _describe(layer: LinearLayer, rows: int, cols: int) -> str:
    if (rows, cols) == (layer.out_features, layer.in_features):
        return f"layer {layer.name} has in_features={cols}"
    return f"layer {layer.name} (in_features={layer.in_features}) stores a {rows}x{cols} low-rank factor"


def _matrix_cost(layer: LinearLayer, rows: int, cols: int,
                 sparsity: SparsitySpec | None, quant: QuantSpec | None) -> LayerCost:
    index_bytes = 0
    nm = sparsity.nm if sparsity is not None else None
    if sparsity is None:
        kept = rows * cols
    elif nm is None:
        pruned = pruned_per_row(cols, sparsity.ratio)
        kept = rows * (cols - pruned)
        index_bytes = _bytes(rows * cols) if pruned else 0
    else:
        n, m = nm
        if cols % m:
            raise ConfigError("sparsity.pattern", f"{sparsity.pattern} needs rows whose length is a multiple "
                                                  f"of {m}; {_describe(layer, rows, cols)}")
        kept = rows * cols // m * n
        index_bytes = _bytes(kept * _index_bits(m))

    if quant is None:
        value_bytes = DENSE_BYTES_PER_PARAM * kept
    else:
        value_bytes = _bytes(kept * quant.bits) + SCALE_BYTES * rows * math.ceil(cols / quant.group_size)
        outlier_nm = quant.outlier_nm
        if outlier_nm is not None:
            n, m = outlier_nm
            if cols % m:
                raise ConfigError("quant.outliers", f"{quant.outliers} needs rows whose length is a multiple "
                                                    f"of {m}; {_describe(layer, rows, cols)}")
            outliers = rows * cols // m * n
            value_bytes += OUTLIER_BYTES * outliers + _bytes(outliers * _index_bits(m))
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
