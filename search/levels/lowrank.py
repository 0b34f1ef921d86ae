"""Low-rank levels: a config is a rank per layer; pairs of layers trade an exact count of weights.

A rank of a layer costs ``u = in + out`` weights (its two factors), and ``u`` differs by shape
(smollm2-135m: q/o 1152, k/v 768, gate/up/down 2112). One step for every layer, as sparsity has,
would be the least common multiple of all of them: 25,344 weights, i.e. 22 ranks of q/o, 33 of k/v
(of 115 at keep 0.8, 143 before they are stored dense) and 12 of the MLP's: too coarse for k/v. So
each *pair* trades its own amount instead: a giver ``a`` and a taker ``b`` exchange
``L = m · lcm(u_a, u_b)`` weights, ``L / u_a`` ranks down and ``L / u_b`` up, with
``m = max(1, round(target / lcm(u_a, u_b)))`` and ``target`` EvoPress's step before rounding
(``KeepGrid.target_weights``; 8,294 weights at keep 0.8 and 4 levels). On smollm2 at keep 0.8 that is
q/o↔q/o 7 ranks each, k/v↔k/v 11, MLP↔MLP 4, q/o↔k/v 8 and 12, q/o↔MLP 11 and 6, k/v↔MLP 11 and 4:
every move is about the same count of weights, and every exchange is exact by construction.

Range: from the least rank ``compress.budget`` gives (keep ``MIN_KEEP``: ``floor(0.02 · in · out / u)``,
at least 1) to the layer's break-even rank ``ceil(in · out / u)``, which stands for *dense*: at and
above it ``compress.accounting`` stores the truncated weight as one dense matrix, so higher ranks
(up to the full rank) cost the same and only lose accuracy. Where ``u`` divides ``in · out``
(smollm2's q/o/k/v: 288 and 144) dense is exactly that many ranks and moves to and from it are as
any other; where it does not (the MLP: 884,736 = 418 · 2112 + 1,920), dense breaks the pattern and
``PairedLevels`` finds such a layer no partner: a dense MLP layer of the parent stays dense.

Screening (``screen_factor`` > 1) is refused: ``predictor.rank``'s damage features are sparsity's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from common.errors import ConfigError
from compress.budget import LOWRANK_OPERATORS, MIN_KEEP, Allocation
from compress.config import CompressionConfig, LayerConfig, QuantSpec
from compress.layers import LinearLayer
from compress.leveldb import KeepGrid
from search.levels.exchange import PairedLevels
from search.space import SearchSpace


class RankLevels(PairedLevels):
    """Per-layer ranks in ``[min rank, break-even]`` (break-even: dense), exchanged in exact pairs."""

    screenable = False

    def __init__(self, layers: Sequence[LinearLayer], operator: str, target: float,
                 quant: QuantSpec | None = None) -> None:
        self.layers = list(layers)
        self.operator = operator
        self.quant = quant
        self.target = target
        self.params = np.array([layer.params for layer in self.layers], dtype=np.int64)
        self.unit = np.array([layer.in_features + layer.out_features for layer in self.layers], dtype=np.int64)
        self.lo = np.maximum(1, np.floor(MIN_KEEP * self.params / self.unit)).astype(np.int64)
        self.hi = -(-self.params // self.unit)  # ceil: the break-even rank, stored dense
        lcm = np.lcm.outer(self.unit, self.unit)
        self.exchange = lcm * np.maximum(1, np.round(target / lcm)).astype(np.int64)  # weights a pair trades

    @classmethod
    def of(cls, space: SearchSpace, levels: int) -> RankLevels:
        operator = space.param_ops[0]
        if len(space.param_ops) != 1 or operator not in LOWRANK_OPERATORS:
            raise ConfigError("strategy", f"low-rank levels need one low-rank operator "
                                          f"({', '.join(LOWRANK_OPERATORS)}), got {', '.join(space.param_ops)}")
        layers = list(space.layers)
        return cls(layers, operator, KeepGrid(space.budget, levels).target_weights(layers), space.quant)

    def costs(self, index: np.ndarray, values: np.ndarray) -> np.ndarray:
        return np.minimum(values * self.unit[index], self.params[index])

    def steps(self, giver: int) -> tuple[np.ndarray, np.ndarray]:
        trade = self.exchange[giver]
        return trade // self.unit[giver], trade // self.unit

    def on_grid(self, config: CompressionConfig) -> bool:
        return True  # every rank is a level (a parent below the least rank only takes)

    def read(self, config: CompressionConfig) -> np.ndarray:
        """Each layer's rank in ``config``; dense or absent layers: the break-even rank."""
        out = self.hi.copy()
        for i, layer in enumerate(self.layers):
            entry = config.layers.get(layer.name)
            if entry is not None and entry.lowrank is not None:
                out[i] = min(entry.lowrank.rank, int(self.hi[i]))
        return out

    def allocation(self, ranks: np.ndarray) -> Allocation:
        # half a weight above the rank's cost, so that compress.budget.layer_config's floor gives the rank back
        keep = np.where(ranks >= self.hi, 1.0, (ranks * self.unit + 0.5) / self.params)
        return Allocation({layer.name: float(k) for layer, k in zip(self.layers, keep, strict=True)},
                          {layer.name: self.operator for layer in self.layers},
                          self.cost(ranks), int(self.params.sum()), 0.0)

    def layer_configs(self, ranks: np.ndarray) -> dict[str, LayerConfig]:
        return self.allocation(ranks).layer_configs(self.layers, self.quant)

    def describe(self) -> dict[str, Any]:
        return {"kind": "rank", "target_weights": round(self.target, 1)}
