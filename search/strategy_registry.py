"""The search strategies by name: a torch-free registry, each strategy's code (``search/strategies/``)
loaded on first use. The registry lives beside the package, not in it, so that the spec can read
the names while the strategies' code imports the spec (no import cycle).

A strategy decides what the shared Optuna queue measures next, in two ways it may combine:

- ``sampler``: the Optuna sampler every worker asks when the queue is empty;
- ``proposer``: a callable a worker runs when the queue is empty, before asking, that enqueues
  configs it picked (``proposer(study, spec, bench, counts)``); None for plain samplers.

Its own setup work, if any, goes in ``prepare``, which the study's setup runs after the baseline
seeds are built and before the first trial, reporting its progress like the rest of the setup
(``evolve`` builds the level database around its seeds there). ``NothingToPrepare`` is the no-op.

Adding a strategy is one module in ``search/strategies/`` exposing ``STRATEGY`` (a
:class:`Strategy`) plus its line in ``STRATEGIES``. Study specs, the CLI and the API take their
vocabulary from ``STRATEGY_NAMES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from common.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from common.progress import StepProgress
    from compress.config import CompressionConfig
    from search.context import Workbench
    from search.spec import StudySpec

#: ``proposer(study, spec, bench, counts)``: enqueue the next configs to measure; returns how many.
Proposer = Callable[..., int]


class Strategy(Protocol):
    def sampler(self, spec: StudySpec, worker_index: int = 0) -> optuna.samplers.BaseSampler: ...

    def proposer(self) -> Proposer | None: ...

    def prepare(self, spec: StudySpec, bench: Workbench, seeds: Sequence[CompressionConfig],
                progress: StepProgress | None = None) -> None:
        """Setup work before the first trial, given the study's baseline seed configs; idempotent
        (a setup cut short runs again)."""
        ...


class NothingToPrepare:
    """``Strategy.prepare`` for the strategies with no setup work of their own."""

    def prepare(self, spec: StudySpec, bench: Workbench, seeds: Sequence[CompressionConfig],
                progress: StepProgress | None = None) -> None:
        return None


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    module: str
    summary: str


STRATEGIES: dict[str, StrategyInfo] = {
    info.name: info
    for info in (
        StrategyInfo("guided", "search.strategies.guided",
                     "TPE proposes; the XGBoost predictor screens candidates and enqueues the best few"),
        StrategyInfo("tpe", "search.strategies.tpe", "Optuna's multivariate TPE sampler"),
        StrategyInfo("random", "search.strategies.random", "uniform random knobs"),
        StrategyInfo("evolve", "search.strategies.evolve",
                     "EvoPress-style (1+λ) evolution over per-layer levels (sparsity, rank or bit width), "
                     "multi-fidelity selection"),
    )
}
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)


def get_strategy(name: str) -> Strategy:
    """The strategy ``name`` (its module imported now); a ConfigError naming the known ones otherwise."""
    info = STRATEGIES.get(name)
    if info is None:
        raise ConfigError("strategy", f"unknown strategy {name!r} (one of {', '.join(STRATEGY_NAMES)})")
    module: Any = importlib.import_module(info.module)
    strategy: Strategy = module.STRATEGY
    return strategy
