from __future__ import annotations

import numpy as np
import pytest

from compress.accounting import model_cost
from compress.baselines import owl
from compress.catalog import load_model
from compress.session import ModelSession
from search.space import SearchSpace
from search.spec import GRANULARITIES


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> ModelSession:
    return ModelSession(load_model("tiny-llama"), cache_dir=tmp_path_factory.mktemp("c"), calibration_tokens=256)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize(
    ("budget", "operators"), [(0.4, ["wanda"]), (0.7, ["svd-whitened"]), (0.5, ["wanda", "svd-whitened", "int8"])]
)
def test_every_point_meets_the_budget(
    session: ModelSession, granularity: str, budget: float, operators: list[str]
) -> None:
    space = SearchSpace(session.layers, budget, operators, granularity, "tiny-llama")
    rng = np.random.default_rng(0)
    for _ in range(5):
        config = space.config(space.sample(rng))
        kept = model_cost(session.layers, config.layers).params / session.params_linear
        assert abs(kept - budget) <= 0.005 * budget
        assert config.meta["granularity"] == granularity


def test_knobs_change_the_allocation(session: ModelSession) -> None:
    space = SearchSpace(session.layers, 0.5, ["wanda"], "type-block", "tiny-llama")
    flat = {name: 0.0 for name in space.knob_names()}
    tilted = dict(flat, type_down=2.0, type_q=-2.0)
    keep = space.allocation(tilted).keep
    down = [keep[layer.name] for layer in session.layers if layer.type == "down"]
    q = [keep[layer.name] for layer in session.layers if layer.type == "q"]
    assert min(down) > max(q)


def test_mixed_operators_are_chosen_per_type(session: ModelSession) -> None:
    space = SearchSpace(session.layers, 0.5, ["wanda", "svd-whitened"], "type", "tiny-llama")
    params = {name: 0.0 for name in space.knob_names()} | {f"op_{t}": "wanda" for t in space.types}
    params["op_up"] = "svd-whitened"
    config = space.config(params)
    for name, layer_cfg in config.layers.items():
        assert (layer_cfg.lowrank is not None) == name.endswith("up_proj")


def test_fit_params_reproduces_a_baseline_profile(session: ModelSession) -> None:
    space = SearchSpace(session.layers, 0.5, ["wanda"], "block", "tiny-llama")
    baseline = owl(session, 0.5, ["wanda"])
    fitted = space.allocation(space.fit_params(baseline.allocation.keep)).keep
    target = np.array([baseline.allocation.keep[layer.name] for layer in session.layers])
    got = np.array([fitted[layer.name] for layer in session.layers])
    assert np.corrcoef(target, got)[0, 1] > 0.8
