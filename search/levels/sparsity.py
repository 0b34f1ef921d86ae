"""Unstructured-sparsity levels: pruned weights per row, moved in steps of the same count of weights.

A level is ``step`` weights, the same count for every layer (``compress.leveldb.KeepGrid.resolved_step``,
EvoPress's budget-neutral step), so a mutation that moves ``n = min(U{1,3}, U{1,3})`` random layers
one level down and ``n`` others one level up keeps the kept-parameter count exactly (asserted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import ConfigError
from compress.budget import MIN_KEEP, SPARSITY_OPERATORS, Allocation
from compress.config import CompressionConfig, LayerConfig, QuantSpec
from compress.layers import LinearLayer
from compress.leveldb import KeepGrid
from search.levels.base import distinct
from search.space import SearchSpace


@dataclass(frozen=True)
class SparsityLevels:
    """Per-layer pruned weights per row, moved in steps of the same count of weights for every layer."""

    layers: Sequence[LinearLayer]
    operator: str
    step: int
    rows: np.ndarray = field(repr=False)
    cols: np.ndarray = field(repr=False)
    quant: QuantSpec | None = None
    screenable: bool = True  # predictor.rank's damage features are sparsity's

    @classmethod
    def of(cls, space: SearchSpace, levels: int) -> SparsityLevels:
        if len(space.param_ops) != 1 or space.param_ops[0] not in SPARSITY_OPERATORS:
            raise ConfigError("strategy", "evolve searches unstructured-sparsity levels: one sparsity operator "
                                          f"({', '.join(SPARSITY_OPERATORS)}), got {', '.join(space.param_ops)}")
        layers = list(space.layers)
        step = KeepGrid(space.budget, levels).resolved_step(layers)
        return cls(layers, space.param_ops[0], step, np.array([layer.out_features for layer in layers]),
                   np.array([layer.in_features for layer in layers]), space.quant)

    @property
    def per_row(self) -> np.ndarray:
        return self.step // self.rows

    @property
    def max_pruned(self) -> np.ndarray:
        return np.floor((1.0 - MIN_KEEP) * self.cols).astype(np.int64)

    def on_grid(self, config: CompressionConfig) -> bool:
        return True  # any whole count of pruned weights per row is a level (moves keep their offset)

    def read(self, config: CompressionConfig) -> np.ndarray:
        """The pruned weights per row of each layer in ``config`` (dense or absent layers: 0)."""
        out = np.zeros(len(self.layers), dtype=np.int64)
        for i, layer in enumerate(self.layers):
            entry = config.layers.get(layer.name)
            if entry is not None and entry.sparsity is not None:
                out[i] = round(entry.sparsity.ratio * layer.in_features)
        return out

    def kept(self, pruned: np.ndarray) -> int:
        return int((self.rows * (self.cols - pruned)).sum())

    def cost(self, levels: np.ndarray) -> int:
        return self.kept(levels)

    def mutate(self, pruned: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``n = min(U{1,3}, U{1,3})`` layers one level down, ``n`` others one level up; the same kept count."""
        n = int(min(rng.integers(1, 4), rng.integers(1, 4)))
        can_down = np.flatnonzero(pruned + self.per_row <= self.max_pruned)
        down = rng.choice(can_down, size=min(n, len(can_down)), replace=False)
        can_up = np.setdiff1d(np.flatnonzero(pruned - self.per_row >= 0), down)
        up = rng.choice(can_up, size=min(len(down), len(can_up)), replace=False)
        down = down[: len(up)]
        child = pruned.copy()
        child[down] += self.per_row[down]
        child[up] -= self.per_row[up]
        assert self.kept(child) == self.kept(pruned), "a level swap changed the budget"
        return child

    def around(self, pruned: np.ndarray, radius: int) -> list[np.ndarray]:
        shifted = (np.clip(pruned + k * self.per_row, 0, self.max_pruned) for k in range(-radius, radius + 1))
        return distinct(shifted)

    def allocation(self, pruned: np.ndarray) -> Allocation:
        keep = (self.cols - pruned) / self.cols
        return Allocation({layer.name: float(k) for layer, k in zip(self.layers, keep, strict=True)},
                          {layer.name: self.operator for layer in self.layers},
                          self.kept(pruned), int((self.rows * self.cols).sum()), 0.0)

    def layer_configs(self, pruned: np.ndarray) -> dict[str, LayerConfig]:
        """The per-layer settings of the config ``pruned`` is measured as (``search.space.to_config``'s)."""
        return self.allocation(pruned).layer_configs(self.layers, self.quant)

    def describe(self) -> dict[str, Any]:
        return {"step_weights": self.step}
