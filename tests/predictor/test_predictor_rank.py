from __future__ import annotations

import numpy as np
import pytest

from compress.config import LayerConfig, SparsitySpec
from compress.session import ModelSession
from predictor.rank import ConfigRanker


def _uniform(session: ModelSession, ratio: float) -> dict[str, LayerConfig]:
    return {layer.name: LayerConfig(sparsity=SparsitySpec(ratio, "wanda")) for layer in session.layers}


def test_ranks_by_damage_before_and_by_measurements_after(session: ModelSession) -> None:
    ranker = ConfigRanker.for_session(session, 0.5, ["wanda"], min_pairs=4)
    assert not ranker.uses_solo  # no per-layer scan in this cache: the Gram errors are the base
    configs = [_uniform(session, r) for r in (0.2, 0.4, 0.6, 0.8)]
    before = ranker.rank(configs)
    assert list(np.argsort(before)) == [0, 1, 2, 3]
    rng = np.random.default_rng(0)
    measured = [_uniform(session, float(r)) for r in rng.uniform(0.1, 0.9, 12)]
    ratios = [next(iter(c.values())).sparsity.ratio for c in measured]  # type: ignore[union-attr]
    ranker.observe(measured, [float(np.exp(3 * r)) for r in ratios])  # damage grows with sparsity
    assert ranker.n_observed == 12
    after = ranker.rank(configs)
    assert list(np.argsort(after)) == [0, 1, 2, 3]
    assert after[3] == pytest.approx(2.4, abs=0.4)  # on the log-objective scale now


def test_bad_measurements(session: ModelSession) -> None:
    ranker = ConfigRanker.for_session(session, 0.5, ["wanda"])
    with pytest.raises(ValueError, match="positive"):
        ranker.observe([_uniform(session, 0.5)], [0.0])
    with pytest.raises(ValueError, match="values"):
        ranker.observe([_uniform(session, 0.5)], [])
