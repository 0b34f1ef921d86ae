"""FeatureBuilder: fixed layout, deterministic, and faithful to the accounting and the proxy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from common.errors import ConfigError
from compress.accounting import model_cost
from compress.config import LayerConfig, LowRankSpec, QuantSpec, SparsitySpec
from compress.session import ModelSession
from predictor.features import FeatureBuilder
from predictor.proxy import LayerProxy

ConfigLayers = dict[str, LayerConfig]


def test_same_config_same_vector(session: ModelSession, proxy: LayerProxy,
                                 make_configs: Callable[[int, int], list[ConfigLayers]]) -> None:
    first = FeatureBuilder(session.layers, proxy, knob_names=["a", "b"])
    second = FeatureBuilder(session.layers, LayerProxy(session), knob_names=["a", "b"])
    for cfg in make_configs(5, 0):
        knobs = {"b": 0.5, "a": -1.0, "extra": 3.0}
        one = first.features(cfg, knobs)
        assert one.dtype == np.float64 and one.shape == (len(first.names()),)
        np.testing.assert_array_equal(one, first.features(cfg, knobs))
        np.testing.assert_array_equal(one, second.features(dict(reversed(list(cfg.items()))), knobs))
    assert first.names() == second.names()


def test_layout(session: ModelSession, proxy: LayerProxy) -> None:
    names = FeatureBuilder(session.layers, proxy, knob_names=["lr", "x"]).names()
    assert names[:2] == ["keep", "bytes"]
    assert [n for n in names if n.startswith("keep/type=")] == [f"keep/type={t}" for t in
                                                                 ("q", "k", "v", "o", "gate", "up", "down")]
    assert [n for n in names if n.startswith("keep/depth=")] == ["keep/depth=0-0", "keep/depth=1-1",
                                                                  "keep/depth=2-2", "keep/depth=3-3"]
    assert {"err/total", "err/weighted", "err/max", "frac/lowrank", "frac/dense"} <= set(names)
    assert names[-2:] == ["knob/lr", "knob/x"]
    assert len(set(names)) == len(names)
    without = FeatureBuilder(session.layers, None).names()
    assert not any(n.startswith("err/") for n in without)
    assert len(FeatureBuilder(session.layers, None, depth_ranges=2).names()) == len(without) - 2


def test_dense_config(session: ModelSession, proxy: LayerProxy) -> None:
    builder = FeatureBuilder(session.layers, proxy)
    features = dict(zip(builder.names(), builder.features({}), strict=True))
    assert features["keep"] == features["bytes"] == 1.0
    assert features["err/total"] == features["err/max"] == 0.0
    assert features["frac/dense"] == 1.0 and features["frac/sparsity"] == 0.0


def test_values_follow_accounting_and_proxy(session: ModelSession, proxy: LayerProxy,
                                            make_configs: Callable[[int, int], list[ConfigLayers]]) -> None:
    rng = np.random.default_rng(3)
    sensitivity = {layer.name: float(rng.uniform(0.1, 3.0)) for layer in session.layers}
    builder = FeatureBuilder(session.layers, proxy, sensitivity)
    for cfg in make_configs(3, 1):
        features = dict(zip(builder.names(), builder.features(cfg), strict=True))
        cost = model_cost(session.layers, cfg)
        assert features["keep"] == pytest.approx(cost.params / session.params_linear)
        assert features["bytes"] == pytest.approx(cost.bytes / (2 * session.params_linear))
        errors = proxy.errors(cfg)
        assert features["err/total"] == pytest.approx(sum(errors.values()))
        assert features["err/weighted"] == pytest.approx(sum(sensitivity[n] * e for n, e in errors.items()))
        assert features["err/max"] == pytest.approx(max(errors.values()))
        down = sum(e for n, e in errors.items() if n.endswith("down_proj"))
        assert features["err/type=down"] == pytest.approx(down)
        assert sum(features[f"err/depth={b}-{b}"] for b in range(4)) == pytest.approx(features["err/total"])
        n_sparse = sum(c.sparsity is not None for c in cfg.values())
        assert features["frac/sparsity"] == pytest.approx(n_sparse / len(session.layers))


def test_keep_ratios_by_group(session: ModelSession) -> None:
    builder = FeatureBuilder(session.layers, None)
    half = {layer.name: LayerConfig(sparsity=SparsitySpec(0.5))
            for layer in session.layers if layer.type == "up"}
    features = dict(zip(builder.names(), builder.features(half), strict=True))
    assert features["keep/type=up"] == pytest.approx(0.5)
    assert features["keep/type=down"] == 1.0
    assert 0.5 < features["keep/depth=0-0"] < 1.0


def test_knobs(session: ModelSession) -> None:
    builder = FeatureBuilder(session.layers, None, knob_names=["alpha", "beta"])
    tail = builder.features({}, {"alpha": 2})[-2:]
    assert tail[0] == 2.0 and np.isnan(tail[1])
    assert np.isnan(builder.features({})[-2:]).all()
    with pytest.raises(ValueError, match="must be a number"):
        builder.features({}, {"alpha": "wanda"})  # type: ignore[dict-item]


def test_matrix_stacks_rows(session: ModelSession, proxy: LayerProxy,
                            make_configs: Callable[[int, int], list[ConfigLayers]]) -> None:
    builder = FeatureBuilder(session.layers, proxy)
    configs = make_configs(4, 2)
    matrix = builder.matrix(configs)
    assert matrix.shape == (4, len(builder.names()))
    np.testing.assert_array_equal(matrix[2], builder.features(configs[2]))
    assert builder.matrix([]).shape == (0, len(builder.names()))


def test_bad_input(session: ModelSession, proxy: LayerProxy) -> None:
    builder = FeatureBuilder(session.layers, proxy)
    with pytest.raises(ConfigError, match="not a compressible"):
        builder.features({"model.layers.7.mlp.up_proj": LayerConfig(quant=QuantSpec())})
    with pytest.raises(ConfigError, match=r"lowrank\.rank"):
        builder.features({"model.layers.0.mlp.up_proj": LayerConfig(lowrank=LowRankSpec(1000))})
    with pytest.raises(ValueError, match="unknown layer"):
        FeatureBuilder(session.layers, proxy, {"nope": 1.0})
    with pytest.raises(ValueError, match="duplicates"):
        FeatureBuilder(session.layers, proxy, knob_names=["a", "a"])


def test_scan_damage_interpolates_the_measured_block_curves(session: ModelSession) -> None:
    blocks = sorted({layer.block for layer in session.layers})
    # Block b loses (b + 1) at keep 0.5 and 2 (b + 1) at keep 0.25; no damage dense.
    damage = {b: {0.25: 2.0 * (b + 1), 0.5: 1.0 * (b + 1)} for b in blocks}
    builder = FeatureBuilder(session.layers, None, block_damage=damage)
    names = builder.names()
    assert {"scan/sum", "scan/log", "scan/max"} <= set(names)

    def scan(layers: ConfigLayers) -> dict[str, float]:
        values = dict(zip(names, builder.features(layers), strict=True))
        return {k: v for k, v in values.items() if k.startswith("scan/")}

    assert scan({})["scan/sum"] == 0.0
    last = blocks[-1]
    half_last = {layer.name: LayerConfig(sparsity=SparsitySpec(0.5)) for layer in session.layers if layer.block == last}
    assert scan(half_last)["scan/sum"] == pytest.approx(last + 1)
    assert scan(half_last)["scan/max"] == pytest.approx(last + 1)
    # Below the lowest level the first segment's slope goes on: keep 0.125 → 2 + (2 - 1) / 0.25 * 0.125 = 2.5 per unit.
    eighth = {layer.name: LayerConfig(sparsity=SparsitySpec(0.875)) for layer in session.layers}
    assert scan(eighth)["scan/sum"] == pytest.approx(2.5 * sum(b + 1 for b in blocks))
    with pytest.raises(ValueError, match="lacks block"):
        FeatureBuilder(session.layers, None, block_damage={blocks[0]: {0.5: 1.0}})
