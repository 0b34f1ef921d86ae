"""What ``evolve`` needs of a level space: read a config, mutate it budget-exactly, write it back."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from compress.budget import Allocation
from compress.config import CompressionConfig, LayerConfig


class Levels(Protocol):
    """Per-layer integer levels of one operator; a mutation never changes the budget's exact count.

    ``screenable``: whether ``predictor.rank.ConfigRanker`` can featurise these configs (evolve's
    ``screen_factor`` > 1 is refused otherwise).
    """

    @property
    def screenable(self) -> bool: ...

    def on_grid(self, config: CompressionConfig) -> bool:
        """Whether every layer of ``config`` sits on a level of this space (a parent must)."""
        ...

    def read(self, config: CompressionConfig) -> np.ndarray:
        """The level of each layer in ``config``."""
        ...

    def cost(self, levels: np.ndarray) -> int:
        """The exact count the budget is in (kept weights, or stored bits)."""
        ...

    def mutate(self, levels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random budget-neutral move of a few layers (``cost`` unchanged, asserted)."""
        ...

    def around(self, levels: np.ndarray, radius: int) -> list[np.ndarray]:
        """``levels`` with every layer moved by each of -radius..radius of its own steps, clipped to its
        range (duplicates dropped): together, each layer's settings within ``radius`` moves of ``levels``,
        what a level database holds around a parent. Not budget-exact: only the layers' settings count."""
        ...

    def allocation(self, levels: np.ndarray) -> Allocation:
        """The allocation ``search.space.enqueue_exact`` turns into the config of ``levels``."""
        ...

    def layer_configs(self, levels: np.ndarray) -> dict[str, LayerConfig]:
        """The per-layer settings of the config ``levels`` is measured as."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the study's ``evolve`` attribute shows of the grid (JSON)."""
        ...


def distinct(vectors: Iterable[np.ndarray]) -> list[np.ndarray]:
    """The level vectors in order, each once."""
    return list({v.tobytes(): v for v in vectors}.values())
