"""Screening per-layer configs with the damage features: ``ConfigRanker.rank(configs) -> scores``.

For a search over per-layer levels (``evolve``): before measuring offspring, score them and measure
the best. Until ``min_pairs`` configs have been measured the score is the log additive estimate
(sum of per-layer solo KLs; or, without a per-layer scan, the log sum of exact Gram errors); after
that it is an ``XGBPredictor`` fitted on log(measured objective) with the additive estimate as its
base margin, refitted lazily when new measurements arrived. Lower scores are better.

    ranker = ConfigRanker.for_session(session, budget, operators)
    scores = ranker.rank([config.layers for config in offspring])
    ranker.observe(measured_layers, measured_kls)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from compress.config import LayerConfig
from compress.layer_scan import LAYER_SCAN_TOKENS, LayerDamage, cached_layer_scan
from compress.session import ModelSession

from .damage import DamageFeatures, GramCurves
from .features import FeatureBuilder
from .proxy import LayerProxy
from .xgb import XGBPredictor

MIN_PAIRS = 8
ConfigLayers = Mapping[str, LayerConfig]


def damage_builder(session: ModelSession, budget: float, operators: Sequence[str], *,
                   dataset: str = "lee-news", tokens: int = LAYER_SCAN_TOKENS) -> FeatureBuilder:
    """The ranker's feature builder for ``session`` (building it tabulates the Gram errors: build it
    once per model and make a fresh ``ConfigRanker`` on it per ranking)."""
    proxy = LayerProxy(session)
    curves = cached_layer_scan(session, budget, operators, tokens=tokens, dataset=dataset)
    solo = LayerDamage(session.layers, curves) if curves is not None else None
    damage = DamageFeatures(session.layers, gram=GramCurves(session, proxy), solo=solo, operator=operators[0])
    return FeatureBuilder(session.layers, proxy, damage=damage)


class ConfigRanker:
    """Scores configs (lower is better) from damage features and the measurements seen so far."""

    def __init__(self, builder: FeatureBuilder, *, min_pairs: int = MIN_PAIRS, seed: int = 0) -> None:
        names = builder.names()
        base = next((name for name in ("add/log", "gram/log") if name in names), None)
        if base is None:
            raise ValueError("the feature builder needs damage features (predictor.damage.DamageFeatures)")
        self.builder = builder
        self.base_column = names.index(base)
        self.uses_solo = base == "add/log"
        self.min_pairs, self.seed = min_pairs, seed
        self._X: list[np.ndarray] = []
        self._y: list[float] = []
        self._model: XGBPredictor | None = None

    @classmethod
    def for_session(cls, session: ModelSession, budget: float, operators: Sequence[str], *,
                    dataset: str = "lee-news", tokens: int = LAYER_SCAN_TOKENS, **kwargs: int) -> ConfigRanker:
        """Features from the session's caches: Gram errors always, solo KLs if the per-layer scan was run."""
        return cls(damage_builder(session, budget, operators, dataset=dataset, tokens=tokens), **kwargs)

    def observe(self, configs: Sequence[ConfigLayers], values: Sequence[float]) -> None:
        """Record measured objectives (KL or perplexity; positive) of ``configs``."""
        if len(configs) != len(values):
            raise ValueError(f"{len(configs)} configs but {len(values)} values")
        for cfg, value in zip(configs, values, strict=True):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"measured values must be positive and finite, got {value!r}")
            self._X.append(self.builder.features(cfg))
            self._y.append(math.log(value))
        self._model = None

    @property
    def n_observed(self) -> int:
        return len(self._y)

    def rank(self, configs: Sequence[ConfigLayers]) -> np.ndarray:
        """``[len(configs)]`` scores, comparable with each other (log objective scale once fitted)."""
        X = self.builder.matrix(configs)
        if self.n_observed < self.min_pairs:
            return X[:, self.base_column].copy()
        if self._model is None:
            self._model = XGBPredictor(seed=self.seed, base_column=self.base_column).fit(
                np.stack(self._X), np.array(self._y))
        return self._model.predict(X)
