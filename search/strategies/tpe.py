"""``tpe``: Optuna's multivariate TPE sampler; constant liar keeps concurrent workers apart."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from search.spec import StudySpec
from search.strategy_registry import NothingToPrepare, Proposer


def tpe_sampler(spec: StudySpec, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """Seeded per worker (``seed + 1000 * worker_index``): the same spec proposes the same trials."""
    return optuna.samplers.TPESampler(seed=spec.seed + 1000 * worker_index, multivariate=True,
                                      n_startup_trials=8, constant_liar=True)


@dataclass(frozen=True)
class TPEStrategy(NothingToPrepare):
    def sampler(self, spec: StudySpec, worker_index: int = 0) -> optuna.samplers.BaseSampler:
        return tpe_sampler(spec, worker_index)

    def proposer(self) -> Proposer | None:
        return None


STRATEGY = TPEStrategy()
