from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from compress.config import LayerConfig, LowRankSpec, SparsitySpec
from compress.layer_scan import LayerDamage
from compress.operators.base import output_error
from compress.session import ModelSession
from predictor.damage import DamageFeatures, GramCurves
from predictor.features import FeatureBuilder
from predictor.proxy import LayerProxy

ConfigLayers = dict[str, LayerConfig]


@pytest.fixture(scope="module")
def gram(session: ModelSession, proxy: LayerProxy) -> GramCurves:
    return GramCurves(session, proxy)


def _solo(session: ModelSession) -> LayerDamage:
    """Synthetic solo curves: layer i is (i+1) times as sensitive as layer 0."""
    return LayerDamage(session.layers, {layer.name: {0.2: 0.5 * (i + 1), 0.4: 0.2 * (i + 1), 0.6: 0.05 * (i + 1)}
                                        for i, layer in enumerate(session.layers)})


def test_gram_curve_is_the_exact_output_error_on_the_grid(session: ModelSession, gram: GramCurves) -> None:
    layer = session.layers[3]
    for count in (13, 32):  # grid points of the 64-wide layer: round(64 · k/10)
        ratio = count / layer.in_features
        cfg = LayerConfig(sparsity=SparsitySpec(ratio, "wanda"))
        exact = output_error(session.compressed_weight(layer.name, LayerConfig()),
                             session.compressed_weight(layer.name, cfg), session.stats().gram(layer.name))
        assert gram.error(layer.name, cfg) == pytest.approx(exact, rel=1e-3, abs=1e-6)
    errors = [gram.error(layer.name, LayerConfig(sparsity=SparsitySpec(r, "wanda"))) for r in (0.2, 0.4, 0.6, 0.8)]
    assert errors == sorted(errors) and errors[0] > 0
    assert gram.error(layer.name, None) == 0.0
    lowrank = LayerConfig(lowrank=LowRankSpec(4))
    proxy = gram.fallback
    assert proxy is not None and gram.error(layer.name, lowrank) == proxy.error(layer.name, lowrank)


def test_gram_tables_are_cached_on_disk(session: ModelSession, gram: GramCurves) -> None:
    gram.error(session.layers[0].name, LayerConfig(sparsity=SparsitySpec(0.5, "wanda")))
    assert list(session.cache_dir.glob("gram-errors-*.json"))
    again = GramCurves(session)
    name = session.layers[0].name
    cfg = LayerConfig(sparsity=SparsitySpec(0.5, "wanda"))
    assert again.error(name, cfg) == gram.error(name, cfg)
    with pytest.raises(ValueError, match="fallback"):
        again.error(name, LayerConfig(lowrank=LowRankSpec(4)))


def test_damage_features_follow_the_config(session: ModelSession, gram: GramCurves) -> None:
    damage = DamageFeatures(session.layers, gram=gram, solo=_solo(session))
    builder = FeatureBuilder(session.layers, None, damage=damage)
    names = builder.names()
    assert len(set(names)) == len(names) and "add/log" in names and "gram/scaled_log" in names

    def config(ratios: list[float]) -> ConfigLayers:
        return {layer.name: LayerConfig(sparsity=SparsitySpec(r, "wanda"))
                for layer, r in zip(session.layers, ratios, strict=True)}

    n = len(session.layers)
    mild, harsh = builder.features(config([0.375] * n)), builder.features(config([0.625] * n))  # exact counts
    assert harsh.shape == (len(names),)
    for feature in ("add/log", "gram/log", "gram/scaled_log", "add/max"):
        assert harsh[names.index(feature)] > mild[names.index(feature)]
    # the additive estimate is the sum of the solo curves at each layer's keep
    keep = np.array([0.625] * n)
    assert np.exp(mild[names.index("add/log")]) == pytest.approx(_solo(session).per_layer(keep).sum(), rel=1e-4)
    # the same budget moved towards the more sensitive layers scores lower
    towards = config([0.625 if i < n // 2 else 0.375 for i in range(n)])
    away = config([0.375 if i < n // 2 else 0.625 for i in range(n)])
    add = names.index("add/log")
    assert builder.features(towards)[add] < builder.features(away)[add]
    dense = builder.features({})
    assert dense[names.index("gram/max")] == 0.0 and dense[names.index("add/max")] == 0.0


def test_damage_features_need_something_and_the_same_layers(session: ModelSession) -> None:
    with pytest.raises(ValueError, match="needs"):
        DamageFeatures(session.layers)
    with pytest.raises(ValueError, match="same layers"):
        DamageFeatures(session.layers[:2], solo=_solo(session))
    only_solo = DamageFeatures(session.layers, solo=_solo(session))
    assert not any(name.startswith("gram/") for name in only_solo.names())


def test_top_quarter_spearman_and_base_column(session: ModelSession, gram: GramCurves,
                                              make_configs: Callable[[int, int], list[ConfigLayers]]) -> None:
    from predictor import XGBPredictor, cross_validated_quality

    solo = _solo(session)
    builder = FeatureBuilder(session.layers, None, damage=DamageFeatures(session.layers, solo=solo))
    rng = np.random.default_rng(0)
    configs = [{layer.name: LayerConfig(sparsity=SparsitySpec(round(float(rng.uniform(0.3, 0.7)), 2), "wanda"))
                for layer in session.layers} for _ in range(24)]
    X = builder.matrix(configs)
    base = builder.names().index("add/log")
    y = X[:, base] + 0.3 + rng.normal(0, 0.01, len(configs))  # the additive estimate, off by a constant
    quality = cross_validated_quality(X, y, lambda: XGBPredictor(n_models=2, base_column=base))
    assert quality["n_top"] == 6
    assert quality["spearman"] > 0.9 and quality["spearman_top"] > 0.5
    fitted = XGBPredictor(n_models=2, base_column=base).fit(X, y)
    assert np.abs(fitted.predict(X) - y).mean() < 0.05
    with pytest.raises(ValueError, match="base_column"):
        XGBPredictor(base_column=X.shape[1]).fit(X, y)
