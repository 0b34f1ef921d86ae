"""screen, shrink_ranges and cross_validated_quality."""

from __future__ import annotations

from typing import Self

import numpy as np
import pytest

from predictor.base import Predictor
from predictor.report import cross_validated_quality
from predictor.screen import screen, shrink_ranges
from predictor.xgb import XGBPredictor


class Fixed(Predictor):
    """Predicts column 0 with uncertainty column 1."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> Self:
        return self

    def predict_with_uncertainty(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return X[:, 0].copy(), X[:, 1].copy()


def candidates() -> np.ndarray:
    mean = np.array([1.0, 0.5, 3.0, 0.7, 2.0, 5.0, 0.9, 4.0])
    std = np.array([0.0, 0.0, 1.5, 0.0, 0.1, 0.0, 0.0, 2.5])
    return np.column_stack([mean, std])


def test_exploits_the_best_and_explores_by_lower_confidence_bound() -> None:
    picks = screen(candidates(), Fixed(), k=4, explore_share=0.25, rng=np.random.default_rng(0))
    assert picks[:3] == [1, 3, 6]  # best three by mean
    assert picks[3] == 7  # lcb: 4 - 2·2.5 = -1 beats 3 - 2·1.5 = 0 (index 2) and the rest
    assert len(set(picks)) == len(picks) == 4


@pytest.mark.parametrize("k", [0, 1, 2, 5, 8, 20])
@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_returns_k_unique_indices_including_the_best(k: int, share: float) -> None:
    X = candidates()
    picks = screen(X, Fixed(), k, share, np.random.default_rng(1))
    assert len(picks) == len(set(picks)) == min(k, len(X))
    assert all(isinstance(i, int) and 0 <= i < len(X) for i in picks)
    if k:
        assert picks[0] == int(np.argmin(X[:, 0]))


def test_with_a_real_predictor() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    model = XGBPredictor(seed=0).fit(X, X[:, 0] + 0.1 * rng.normal(size=30))
    pool = rng.normal(size=(200, 4))
    picks = screen(pool, model, 10, rng=np.random.default_rng(0))
    assert len(set(picks)) == 10 and int(np.argmin(model.predict(pool))) in picks
    assert picks == screen(pool, model, 10, rng=np.random.default_rng(0))


def test_screen_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k must"):
        screen(candidates(), Fixed(), -1)
    with pytest.raises(ValueError, match="explore_share"):
        screen(candidates(), Fixed(), 2, 1.5)


def test_shrink_ranges_contains_the_best() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(-2, 2, size=(50, 3))
    scores = (values[:, 0] - 1.0) ** 2 + 0.1 * values[:, 1] + rng.normal(0, 0.01, 50)
    bounds = [(-2.0, 2.0)] * 3
    ranges = shrink_ranges(values, scores, quantile=0.3, margin=0.1, bounds=bounds)
    top = values[np.argsort(scores)[:15]]
    for j, (low, high) in enumerate(ranges):
        assert -2.0 <= low <= top[:, j].min() and top[:, j].max() <= high <= 2.0
    assert ranges[0][1] - ranges[0][0] < 2.5  # the knob that matters shrinks
    assert ranges[0][0] == pytest.approx(max(-2.0, top[:, 0].min() - 0.4))


def test_shrink_ranges_edges() -> None:
    values = np.array([[0.0], [1.0], [2.0], [3.0]])
    scores = np.array([5.0, np.nan, 1.0, 2.0])
    assert shrink_ranges(values, scores, quantile=0.01, margin=0.0) == [(2.0, 2.0)]
    assert shrink_ranges(values, scores, quantile=0.5, margin=0.5, bounds=[(0.0, 3.0)]) == [(0.5, 3.0)]
    with pytest.raises(ValueError, match="rows"):
        shrink_ranges(values, scores[:2])
    with pytest.raises(ValueError, match="finite"):
        shrink_ranges(values, np.full(4, np.nan))


def test_cross_validated_quality() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 5))
    y = X @ np.array([1.0, -0.5, 0.2, 0.0, 0.0]) + rng.normal(0, 0.05, 30)
    def factory() -> XGBPredictor:
        return XGBPredictor(seed=0, n_models=4, n_estimators=100)

    quality = cross_validated_quality(X, y, factory, folds=5, seed=0)
    assert set(quality) == {"spearman", "spearman_top", "n_top", "mae", "n_train", "folds", "pairs"}
    assert quality["n_train"] == 30 and quality["folds"] == 5 and len(quality["pairs"]) == 30
    assert quality["spearman"] > 0.9 and quality["mae"] < 0.3
    assert [m for _, m in quality["pairs"]] == pytest.approx(list(y))
    assert quality == cross_validated_quality(X, y, factory, folds=5, seed=0)


def test_cross_validated_quality_with_too_little_data() -> None:
    quality = cross_validated_quality(np.zeros((2, 3)), np.array([1.0, 2.0]), lambda: XGBPredictor())
    assert quality["spearman"] is None and quality["mae"] is None and quality["n_train"] == 2
    constant = cross_validated_quality(np.zeros((4, 2)), np.ones(4), lambda: XGBPredictor(), folds=2)
    assert constant["spearman"] is None and constant["mae"] == pytest.approx(0.0, abs=1e-6)
