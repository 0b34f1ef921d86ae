"""The ``sparsegpt`` operator: registered, budget-exact, rebuilds the output better than Wanda, cached."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.errors import ConfigError
from compress.baselines import uniform as uniform_baseline
from compress.catalog import load_model
from compress.config import CompressionConfig, LayerConfig, LowRankSpec, SparsitySpec
from compress.operators.base import output_error
from compress.operators.sparsegpt import DAMPENING, HANDLER, setting_key
from compress.ops import pruned_per_row, sparsegpt
from compress.session import ModelSession


@pytest.fixture
def session(tmp_path: Path) -> ModelSession:
    return ModelSession(load_model("tiny-llama"), cache_dir=tmp_path)


def uniform(session: ModelSession, score: str, ratio: float, pattern: str = "unstructured") -> CompressionConfig:
    return CompressionConfig("tiny-llama", {layer.name: LayerConfig(sparsity=SparsitySpec(ratio, score, pattern))
                                            for layer in session.layers})


def test_applied_weights_are_the_operator_on_the_dense_gram_with_exact_counts(session: ModelSession) -> None:
    config = uniform(session, "sparsegpt", 0.5)
    with session.applied(config):
        for layer in session.layers:
            weight = session.modules[layer.name].weight
            expected = sparsegpt(session.dense_weight(layer.name), session.stats().gram(layer.name), sparsity=0.5,
                                 percdamp=DAMPENING)
            assert torch.equal(weight, expected)
            zeros = (weight == 0).sum(dim=1)
            assert torch.all(zeros == pruned_per_row(layer.in_features, 0.5))


def test_it_rebuilds_each_layers_output_better_than_wanda(session: ModelSession) -> None:
    stats = session.stats()
    for score in ("wanda", "sparsegpt"):
        with session.applied(uniform(session, score, 0.6)):
            errors = [output_error(session.dense_weight(n), m.weight, stats.gram(n))
                      for n, m in session.modules.items()]
        if score == "wanda":
            wanda = errors
    assert all(s < w for s, w in zip(errors, wanda, strict=True))


def test_n_m_patterns_keep_n_of_every_m(session: ModelSession) -> None:
    with session.applied(uniform(session, "sparsegpt", 0.5, "2:4")):
        for layer in session.layers:
            groups = (session.modules[layer.name].weight != 0).reshape(layer.out_features, -1, 4)
            assert torch.all(groups.sum(dim=2) == 2)


def test_results_are_cached_on_disk_and_reused_by_another_session(session: ModelSession, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = uniform(session, "sparsegpt", 0.4)
    with session.applied(config):
        first = {n: m.weight.clone() for n, m in session.modules.items()}
    files = sorted((session.cache_dir / "sparsegpt").glob("*.safetensors"))
    assert len(files) == len(session.layers)
    layer = session.layers[0]
    assert files and any(setting_key(layer.in_features, SparsitySpec(0.4, "sparsegpt")) in f.name for f in files)

    import compress.operators.sparsegpt as module

    def must_not_run(*_: object, **__: object) -> torch.Tensor:
        raise AssertionError("recomputed a cached layer")

    monkeypatch.setattr(module, "sparsegpt", must_not_run)
    other = ModelSession(load_model("tiny-llama"), cache_dir=tmp_path)
    with other.applied(config):
        for name, module_ in other.modules.items():
            assert torch.equal(module_.weight, first[name])


def test_low_rank_factors_are_refused_by_name(session: ModelSession) -> None:
    name = session.layers[0].name
    config = CompressionConfig("tiny-llama", {name: LayerConfig(lowrank=LowRankSpec(8),
                                                                sparsity=SparsitySpec(0.5, "sparsegpt"))})
    with pytest.raises(ConfigError, match=rf"layers\.{name}\.sparsity\.score: sparsegpt prunes a layer's dense"):
        session.apply(config)
    assert HANDLER.name == "sparsegpt"


def test_a_uniform_baseline_meets_the_budget(session: ModelSession) -> None:
    config = uniform_baseline(session, 0.4, ["sparsegpt"]).config
    cost = session.cost(config)
    assert cost.params / session.params_linear == pytest.approx(0.4, rel=0.005)
    assert {cfg.sparsity.score for cfg in config.layers.values() if cfg.sparsity} == {"sparsegpt"}
