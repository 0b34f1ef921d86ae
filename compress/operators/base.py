"""The handler interface: what an operator needs, how it computes a layer, what it costs, its error proxy.

One handler per method (``compress.registry.METHODS``), one class per slot of a layer entry:

- ``LowRankHandler``: builds a layer's SVD-style factors once (cached by the session per method);
  any rank is then a slice.
- ``SparsityHandler``: turns a stored matrix into its sparse version at a setting
  (``SparsitySpec``: ratio and pattern). ``ScoreSparsity`` is the family whose mask comes from a
  per-weight score (Wanda, magnitude): the session caches its per-row score order and the proxy
  tabulates pruned-energy curves from it. A reconstruction operator (SparseGPT) subclasses
  ``SparsityHandler`` directly: ``sparsify`` may load its result from a per-level database kept
  in ``ctx.handler_cache(self.name)`` and built in ``warm``.
- ``QuantHandler``: the dequantized matrix at a ``QuantSpec``, and the integer grid it is stored as.

The cost (``cost``/``stored_shapes``) is the accounting of the stored format. It is the same for
every method of a slot today, so it lives on the base classes; a method with another format
overrides it. The error proxy (``predictor.proxy``) tabulates curves from a score handler's
``score`` and a quant handler's ``quantize``; for any other sparsity handler it takes the exact
relative output error ``output_error`` = ``tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)`` on the calibration Gram G.

The maths are the pure functions of ``compress.ops``; handlers only choose and compose them.
Handlers never import the session: they receive it as a ``LayerContext``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Protocol

from torch import Tensor

from common.errors import ConfigError
from compress.calibration import CalibrationStats
from compress.config import LowRankSpec, QuantSpec, SparsitySpec
from compress.layers import LinearLayer
from compress.ops import QuantizedWeight, SVDFactors, nm_mask, pruned_per_row, row_ranks, unstructured_mask

DENSE_BYTES_PER_PARAM = 2
SCALE_BYTES = 2  # one fp16 scale per quantization group
OUTLIER_BYTES = 2  # SDQ outliers are kept at 16 bits


class LayerContext(Protocol):
    """What a handler may ask of the model session (``compress.session.ModelSession``)."""

    layers: list[LinearLayer]

    @property
    def cache_dir(self) -> Path:
        """This model's and calibration data's cache directory (handlers may keep files under it)."""
        ...

    def stats(self) -> CalibrationStats: ...

    def dense_weight(self, name: str) -> Tensor: ...

    def handler_cache(self, owner: str) -> dict[str, object]: ...


def bytes_of(bits: int) -> int:
    return -(-bits // 8)


def index_bits(m: int) -> int:
    return math.ceil(math.log2(m))


class LowRankHandler(ABC):
    """A truncated factorisation ``left [out, k] @ right [k, in]`` whose rank-r slice is the setting."""

    slot: ClassVar[str] = "lowrank"

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    @abstractmethod
    def needs_stats(self) -> bool:
        """Whether building the factors needs the calibration Gram matrices."""

    @abstractmethod
    def factors(self, weight: Tensor, gram: Tensor | None) -> SVDFactors:
        """All the layer's factors (``gram`` is given when ``needs_stats``)."""

    def stored_shapes(self, layer: LinearLayer, spec: LowRankSpec) -> list[tuple[int, int]]:
        """Two factors when they are smaller than the weight, else the rank-truncated weight (dense)."""
        out, inp = layer.out_features, layer.in_features
        rank = spec.rank
        if rank > layer.full_rank:
            raise ConfigError("lowrank.rank", f"rank {rank} exceeds the full rank {layer.full_rank} "
                                              f"of layer {layer.name} ({out}x{inp})")
        if rank * (inp + out) < inp * out:
            return [(out, rank), (rank, inp)]
        return [(out, inp)]


class SparsityHandler(ABC):
    """Zeroes a share of a stored matrix's weights (unstructured per row, or N:M)."""

    slot: ClassVar[str] = "sparsity"
    ranked: ClassVar[bool] = False  # True: a per-row score order exists (session fast path, proxy curves)
    #: True: ``warm`` computes and keeps each (layer, setting) result, a level-database entry (SparseGPT);
    #: a level search builds the entries around its seeds before its first trial (``search.strategies.evolve``)
    levelled: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def needs_stats(self) -> bool:
        return False

    def warm(self, ctx: LayerContext, name: str, spec: SparsitySpec) -> None:  # noqa: B027 - a hook
        """Build or load what ``sparsify`` needs for layer ``name`` at ``spec`` (e.g. its entries of a
        per-level database). Called for every layer entry of a config before it is applied and timed,
        so keep it idempotent and cheap once done; ``sparsify`` must still work unwarmed (build
        lazily). Empty by default."""

    @abstractmethod
    def sparsify(self, ctx: LayerContext, name: str, matrix: Tensor, spec: SparsitySpec, *,
                 col_norm: Tensor | None = None, ranks: Tensor | None = None) -> Tensor:
        """``matrix`` (the layer's weight, or one of its factors) with the pruned weights zeroed.

        ``col_norm`` is the norm of each input of ``matrix`` on the calibration data (given when
        ``needs_stats``); ``ranks`` the cached per-row ranks of the dense weight, when they apply.
        """

    def cost(self, layer: LinearLayer, rows: int, cols: int, spec: SparsitySpec) -> tuple[int, int]:
        """(stored weights, index bytes) of a ``rows x cols`` matrix under ``spec``.

        Unstructured: a 1-bit mask over the matrix (none when nothing is pruned); N:M:
        ``ceil(log2(m))`` bits per kept weight, rows whose length is a multiple of m.
        """
        nm = spec.nm
        if nm is None:
            pruned = pruned_per_row(cols, spec.ratio)
            return rows * (cols - pruned), (bytes_of(rows * cols) if pruned else 0)
        n, m = nm
        if cols % m:
            raise ConfigError("sparsity.pattern", f"{spec.pattern} needs rows whose length is a multiple "
                                                  f"of {m}; {describe(layer, rows, cols)}")
        kept = rows * cols // m * n
        return kept, bytes_of(kept * index_bits(m))


class ScoreSparsity(SparsityHandler):
    """Keeps the highest-scored weights: per row (unstructured) or per run of M inputs (N:M)."""

    ranked = True

    @abstractmethod
    def score(self, matrix: Tensor, col_norm: Tensor | None) -> Tensor:
        """The per-weight score of ``matrix`` [rows, cols]; ``col_norm`` [cols] when ``needs_stats``."""

    def sparsify(self, ctx: LayerContext, name: str, matrix: Tensor, spec: SparsitySpec, *,
                 col_norm: Tensor | None = None, ranks: Tensor | None = None) -> Tensor:
        if spec.ratio == 0:
            return matrix
        if ranks is not None:
            return matrix.masked_fill(~unstructured_mask(ranks, spec.ratio), 0.0)
        score = self.score(matrix, col_norm)
        nm = spec.nm
        if nm is None:
            return matrix.masked_fill(~unstructured_mask(row_ranks(score), spec.ratio), 0.0)
        try:
            return matrix.masked_fill(~nm_mask(score, *nm), 0.0)
        except ConfigError as exc:
            raise ConfigError(f"layers.{name}.sparsity.pattern", exc.reason) from None


class QuantHandler(ABC):
    """Stores a matrix in fewer bits; ``quantize`` returns what a Linear computes with (dequantized),
    ``grid`` the integers and scales it is stored as."""

    slot: ClassVar[str] = "quant"
    symmetric: ClassVar[bool] = True  # the grid's zero point is fixed at 2^(bits-1) (nothing stored for it)
    levelled: ClassVar[bool] = False  # as ``SparsityHandler.levelled`` (GPTQ)

    def __init__(self, name: str) -> None:
        self.name = name

    def warm(self, ctx: LayerContext, name: str, spec: QuantSpec) -> None:  # noqa: B027 - a hook
        """Build or load what ``quantize`` needs for layer ``name`` at ``spec`` (as ``SparsityHandler.warm``)."""

    @abstractmethod
    def quantize(self, ctx: LayerContext | None, name: str, matrix: Tensor, spec: QuantSpec) -> Tensor:
        """The dequantized ``matrix`` (float32) of layer ``name`` (or one of its factors)."""

    @abstractmethod
    def grid(self, ctx: LayerContext, name: str, matrix: Tensor, spec: QuantSpec) -> QuantizedWeight:
        """What ``quantize`` dequantizes, as stored: codes, per-group scales and zero points, with
        ``grid(...).dequantize()`` equal to ``quantize(...)`` bit for bit and ``symmetric`` the
        handler's. For exports that write the integers (``compress.export_ct``). Whole groups of a
        layer's weight only, no SDQ outliers (a ``ValueError``: the caller checks first)."""

    def value_bytes(self, layer: LinearLayer, rows: int, cols: int, kept: int, spec: QuantSpec) -> int:
        """Bytes of ``kept`` values of a ``rows x cols`` matrix: codes, one fp16 scale per group, and
        SDQ outliers (16 bit plus ``ceil(log2(m))`` index bits each)."""
        value_bytes = bytes_of(kept * spec.bits) + SCALE_BYTES * rows * math.ceil(cols / spec.group_size)
        outlier_nm = spec.outlier_nm
        if outlier_nm is not None:
            n, m = outlier_nm
            if cols % m:
                raise ConfigError("quant.outliers", f"{spec.outliers} needs rows whose length is a multiple "
                                                    f"of {m}; {describe(layer, rows, cols)}")
            outliers = rows * cols // m * n
            value_bytes += OUTLIER_BYTES * outliers + bytes_of(outliers * index_bits(m))
        return value_bytes


def describe(layer: LinearLayer, rows: int, cols: int) -> str:
    if (rows, cols) == (layer.out_features, layer.in_features):
        return f"layer {layer.name} has in_features={cols}"
    return f"layer {layer.name} (in_features={layer.in_features}) stores a {rows}x{cols} low-rank factor"


def output_error(weight: Tensor, approx: Tensor, gram: Tensor) -> float:
    """``tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)``: the exact relative output error on the calibration inputs."""
    w, g = weight.double(), gram.double()
    delta = w - approx.double()
    total = float(((w @ g) * w).sum())
    err = float(((delta @ g) * delta).sum())
    return min(max(err / total, 0.0), 1.0) if total > 0 else 0.0


__all__ = [
    "DENSE_BYTES_PER_PARAM",
    "OUTLIER_BYTES",
    "SCALE_BYTES",
    "LayerContext",
    "LowRankHandler",
    "QuantHandler",
    "ScoreSparsity",
    "SparsityHandler",
    "bytes_of",
    "describe",
    "index_bits",
    "output_error",
]
