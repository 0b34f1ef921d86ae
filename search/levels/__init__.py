"""The level spaces ``evolve`` searches, one per operator family (``compress.registry``'s families).

- ``sparsity``: pruned weights per row, one step of the same count of weights for every layer
  (``SparsityLevels``; EvoPress's grid).
- ``lowrank``: a rank per layer; pairs of layers trade an exact count of weights (``RankLevels``).
- ``quant`` (a budget in bits): a bit width per layer; pairs move one width each way with exactly
  equal stored bits (``BitsLevels``).

Each keeps the budget's exact count (kept weights, or stored bits) unchanged by every mutation.
N:M sparsity has one level below dense and is not searched; neither are mixed operator lists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from common.errors import ConfigError
from compress.registry import Family, operator_info
from search.levels.base import Levels
from search.levels.bits import BitsLevels
from search.levels.lowrank import RankLevels
from search.levels.sparsity import SparsityLevels
from search.space import SearchSpace

__all__ = ["LEVEL_SPACES", "BitsLevels", "Levels", "RankLevels", "SparsityLevels", "level_space"]

#: operator family -> the level space of a study whose one per-layer operator is of that family
LEVEL_SPACES: Mapping[Family, Callable[[SearchSpace, int], Levels]] = MappingProxyType({
    "sparsity": SparsityLevels.of,
    "lowrank": RankLevels.of,
    "quant": BitsLevels.of,
})


def level_space(space: SearchSpace, levels: int, *, screened: bool = False) -> Levels:
    """The level space of ``space``'s operator; a ConfigError for operators no space searches, or for
    screening (``screened``: ``screen_factor`` > 1) a space the ranker cannot featurise."""
    families = sorted({operator_info(op).family for op in space.param_ops})
    if len(space.param_ops) != 1 or families[0] not in LEVEL_SPACES:
        raise ConfigError("strategy", "evolve searches the levels of one operator of the families "
                                      f"{', '.join(LEVEL_SPACES)}; got {', '.join(space.param_ops)} "
                                      f"({', '.join(families)})")
    found = LEVEL_SPACES[families[0]](space, levels)
    if screened and not found.screenable:
        raise ConfigError("screen_factor", f"evolve screens only sparsity levels (the ranker's damage features are "
                                           f"sparsity's); use screen_factor 1 with {space.param_ops[0]}")
    return found
