"""``random``: uniform random knobs, seeded per worker."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from search.spec import StudySpec
from search.strategy_registry import NothingToPrepare, Proposer


@dataclass(frozen=True)
class RandomStrategy(NothingToPrepare):
    def sampler(self, spec: StudySpec, worker_index: int = 0) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=spec.seed + 1000 * worker_index)

    def proposer(self) -> Proposer | None:
        return None


STRATEGY = RandomStrategy()
