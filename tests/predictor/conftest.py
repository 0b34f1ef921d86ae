"""Shared fixtures: the tiny model's session and proxy, and a generator of search-like configs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from compress.catalog import load_model
from compress.config import LayerConfig, LowRankSpec, QuantSpec, SparsitySpec
from compress.session import ModelSession
from predictor.proxy import LayerProxy

ConfigLayers = dict[str, LayerConfig]
OPERATORS = ["sparsity", "lowrank", "quant", "sparsity+quant", "dense"]


@pytest.fixture(scope="session")
def session(tmp_path_factory: pytest.TempPathFactory) -> ModelSession:
    return ModelSession(load_model("tiny-llama"), cache_dir=tmp_path_factory.mktemp("predictor-cache"),
                        calibration_tokens=512)


@pytest.fixture(scope="session")
def proxy(session: ModelSession) -> LayerProxy:
    return LayerProxy(session)


def random_config(session: ModelSession, rng: np.random.Generator) -> ConfigLayers:
    """A mixed config around a random compression level, as a search would propose."""
    level = rng.uniform(0.2, 0.7)
    layers: ConfigLayers = {}
    for layer in session.layers:
        op = rng.choice(OPERATORS, p=[0.35, 0.3, 0.1, 0.15, 0.1])
        x = float(np.clip(level + rng.normal(0, 0.15), 0.0, 0.9))
        cfg = LayerConfig(
            lowrank=LowRankSpec(max(1, int(layer.full_rank * (1 - x)))) if op == "lowrank" else None,
            sparsity=SparsitySpec(round(x, 3)) if "sparsity" in op else None,
            quant=QuantSpec(int(rng.choice([4, 8])), 32) if "quant" in op else None,
        )
        if not cfg.is_dense:
            layers[layer.name] = cfg
    return layers


@pytest.fixture(scope="session")
def make_configs(session: ModelSession) -> Callable[[int, int], list[ConfigLayers]]:
    def make(n: int, seed: int) -> list[ConfigLayers]:
        rng = np.random.default_rng(seed)
        return [random_config(session, rng) for _ in range(n)]
    return make
