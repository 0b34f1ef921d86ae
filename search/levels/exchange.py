"""Budget-exact mutations where a level costs a different amount in each layer: paired exchanges.

Sparsity can give every layer a level of the same count of weights, so any layer down and any
other up keeps the budget. A rank or a bit width costs what the layer's shape makes it cost (a rank
``in + out`` weights, a bit ``in · out`` bits plus nothing, a move to or from dense something else),
so here a move is a *pair*: a giver goes down and a taker goes up by level changes whose exact
costs cancel. ``PairedLevels.mutate`` draws ``n = min(U{1,3}, U{1,3})`` disjoint pairs (as
EvoPress's n down and n up); a subclass says what a level costs in a layer (``costs``) and by how
many levels a giver and each candidate taker move (``steps``). A pair is taken only when the two
costs are exactly equal, computed, not assumed, so a level whose cost breaks the pattern (dense
above a rank's break-even point, say) simply finds no partner; the total is asserted unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from search.levels.base import distinct


class PairedLevels(ABC):
    """Per-layer integer levels in ``[lo, hi]`` with exact per-layer costs; mutations swap cost in pairs."""

    lo: np.ndarray
    hi: np.ndarray

    @abstractmethod
    def costs(self, index: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Exact cost of layers ``index`` at levels ``values`` (each within its layer's ``[lo, hi]``)."""

    @abstractmethod
    def steps(self, giver: int) -> tuple[np.ndarray, np.ndarray]:
        """For a giver and each layer as its taker: (levels the giver goes down, levels the taker goes up)."""

    def around(self, levels: np.ndarray, radius: int) -> list[np.ndarray]:
        """``Levels.around``: each layer moved by -radius..radius of its smallest move, within ``[lo, hi]``."""
        unit = self.unit_move()
        return distinct(np.clip(levels + k * unit, self.lo, self.hi) for k in range(-radius, radius + 1))

    def unit_move(self) -> np.ndarray:
        """Each layer's smallest move as a giver, in levels (the pair moves are symmetric: a taker's too)."""
        return np.array([int(np.min(self.steps(i)[0])) for i in range(len(self.lo))], dtype=np.int64)

    def cost(self, levels: np.ndarray) -> int:
        return int(self.costs(np.arange(len(levels)), levels).sum())

    def mutate(self, levels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``n = min(U{1,3}, U{1,3})`` disjoint pairs, each giver down and taker up by equal exact costs."""
        n = int(min(rng.integers(1, 4), rng.integers(1, 4)))
        child = levels.copy()
        free = np.ones(len(levels), dtype=bool)
        for _ in range(n):
            pair = self._pair(child, free, rng)
            if pair is None:
                break
            giver, down, taker, up = pair
            child[giver] -= down
            child[taker] += up
            free[[giver, taker]] = False
        assert self.cost(child) == self.cost(levels), "a level exchange changed the budget"
        return child

    def _pair(self, levels: np.ndarray, free: np.ndarray,
              rng: np.random.Generator) -> tuple[int, int, int, int] | None:
        """A random giver (the first, in a random order, that has a partner) and a random exact partner."""
        index = np.arange(len(levels))
        for giver in rng.permutation(np.flatnonzero(free)):
            down, up = self.steps(int(giver))
            lowered = levels[giver] - down
            raised = levels + up
            ok = free & (index != giver) & (lowered >= self.lo[giver]) & (raised <= self.hi)
            if not ok.any():
                continue
            at = np.full(len(levels), giver)
            given = self.costs(at, np.full(len(levels), levels[giver])) - self.costs(
                at, np.clip(lowered, self.lo[giver], self.hi[giver]))
            taken = self.costs(index, np.clip(raised, self.lo, self.hi)) - self.costs(index, levels)
            ok &= (given > 0) & (given == taken)
            if ok.any():
                taker = int(rng.choice(np.flatnonzero(ok)))
                return int(giver), int(down[taker]), taker, int(up[taker])
        return None
