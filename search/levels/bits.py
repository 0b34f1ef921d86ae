"""Bit-width levels for a budget in bits: a config is a bit width per layer, moved in exact pairs.

A budget in bits is counted exactly (``compress.accounting``: codes, per-group fp16 scales, SDQ
outliers and their indices; the zero point is fixed and stores nothing). A layer's levels are its
operator's bit widths (``compress.budget.bits_levels``; gptq and RTN: 2, 3, 4, 8) and dense (16 bits,
what a bits budget's projection gives a layer at keep 1), cheapest first. A move is one level: a
giver one width narrower and a taker one width wider, paired only when the two stored-bit changes
are exactly equal (``PairedLevels``). Between two quantised widths a layer's scales cancel, so
such a change is ``Δbits · in · out``: layers of the same size moving by the same bit delta in
opposite directions (smollm2-135m has three sizes: q/o, k/v, the MLP's); to or from dense the
scales count too, so those pairs are layers of the same shape and group size. Exactness is computed
from the stored bits, never assumed, and the total is asserted unchanged.

Every projection of a bits budget (uniform, OWL, sensitivity) gives each layer one of these
levels, so its baselines are on the grid; ``on_grid`` still checks a parent (a config another
operator or group size wrote is not). Screening (``screen_factor`` > 1) is refused:
``predictor.rank``'s damage features are sparsity's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from common.errors import ConfigError
from compress.budget import QUANT_OPERATORS, Allocation, bits_levels
from compress.config import CompressionConfig, LayerConfig, QuantSpec
from compress.layers import LinearLayer
from compress.registry import DENSE_BITS
from search.levels.exchange import PairedLevels
from search.space import SearchSpace


class BitsLevels(PairedLevels):
    """Per-layer level index into (the operator's bit widths, dense), exchanged one level at a time in exact pairs."""

    screenable = False

    def __init__(self, layers: Sequence[LinearLayer], operator: str) -> None:
        self.layers = list(layers)
        self.operator = operator
        self.settings: list[tuple[QuantSpec, ...]] = []
        tables: list[list[int]] = []
        for layer in self.layers:
            levels = bits_levels(layer, operator)
            self.settings.append(tuple(spec for _, spec in levels))
            tables.append([*(bits for bits, _ in levels), DENSE_BITS * layer.params])
        width = max(len(table) for table in tables)
        self.bits = np.full((len(tables), width), np.iinfo(np.int64).max, dtype=np.int64)
        for i, table in enumerate(tables):
            self.bits[i, : len(table)] = table
        self.params = np.array([layer.params for layer in self.layers], dtype=np.int64)
        self.lo = np.zeros(len(tables), dtype=np.int64)
        self.hi = np.array([len(table) - 1 for table in tables], dtype=np.int64)  # the last level: dense
        self._ones = np.ones(len(tables), dtype=np.int64)

    @classmethod
    def of(cls, space: SearchSpace, levels: int) -> BitsLevels:
        if len(space.param_ops) != 1 or space.param_ops[0] not in QUANT_OPERATORS or space.quant is not None:
            raise ConfigError("strategy", f"bit-width levels need a budget in bits with one quantizer "
                                          f"({', '.join(QUANT_OPERATORS)}), got {', '.join(space.operators)}")
        return cls(space.layers, space.param_ops[0])

    def costs(self, index: np.ndarray, values: np.ndarray) -> np.ndarray:
        return self.bits[index, values]

    def steps(self, giver: int) -> tuple[np.ndarray, np.ndarray]:
        return self._ones, self._ones

    def _level(self, i: int, config: CompressionConfig) -> int | None:
        entry = config.layers.get(self.layers[i].name)
        if entry is None or entry.is_dense:
            return int(self.hi[i])
        if entry.quant is None or entry.sparsity is not None or entry.lowrank is not None:
            return None
        return next((j for j, spec in enumerate(self.settings[i]) if spec == entry.quant), None)

    def on_grid(self, config: CompressionConfig) -> bool:
        return all(self._level(i, config) is not None for i in range(len(self.layers)))

    def read(self, config: CompressionConfig) -> np.ndarray:
        """Each layer's level index (dense or absent: the last); a ConfigError for a setting off the grid."""
        out = np.zeros(len(self.layers), dtype=np.int64)
        for i, layer in enumerate(self.layers):
            level = self._level(i, config)
            if level is None:
                raise ConfigError(f"layers.{layer.name}", f"not one of {self.operator}'s bit-width levels")
            out[i] = level
        return out

    def widths(self, levels: np.ndarray) -> np.ndarray:
        """Each layer's bit width (``DENSE_BITS`` for dense)."""
        return np.array([DENSE_BITS if level == self.hi[i] else self.settings[i][level].bits
                         for i, level in enumerate(levels)])

    def allocation(self, levels: np.ndarray) -> Allocation:
        stored = self.costs(np.arange(len(levels)), levels)
        # half a bit above the level's stored bits, so that compress.budget's projection picks it again
        keep = np.where(levels >= self.hi, 1.0, (stored + 0.5) / (DENSE_BITS * self.params))
        params = int(self.params.sum())
        return Allocation({layer.name: float(k) for layer, k in zip(self.layers, keep, strict=True)},
                          {layer.name: self.operator for layer in self.layers}, params, params, 0.0, int(stored.sum()))

    def layer_configs(self, levels: np.ndarray) -> dict[str, LayerConfig]:
        return self.allocation(levels).layer_configs(self.layers)

    def describe(self) -> dict[str, Any]:
        return {"kind": "bits", "widths": sorted({spec.bits for specs in self.settings for spec in specs})}
