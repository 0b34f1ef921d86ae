"""XGBPredictor on a synthetic task with a known answer; persistence, determinism, uncertainty, warm start."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy.stats import spearmanr

from compress.config import LayerConfig
from compress.session import ModelSession
from predictor.features import FeatureBuilder
from predictor.proxy import LayerProxy
from predictor.xgb import XGBPredictor

ConfigLayers = dict[str, LayerConfig]
N_TRAIN = 40


@pytest.fixture(scope="module")
def task(session: ModelSession, proxy: LayerProxy,
         make_configs: Callable[[int, int], list[ConfigLayers]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X, y (noisy) and the noiseless answer for 240 configs: a convex function of weighted errors."""
    rng = np.random.default_rng(11)
    weight = {layer.name: float(rng.lognormal(0.0, 0.6)) * (1.5 if layer.type in ("down", "v") else 1.0)
              for layer in session.layers}
    configs = make_configs(240, 5)
    z = np.array([sum(weight[n] * e for n, e in proxy.errors(cfg).items()) for cfg in configs]) / 8.0
    answer = 2.0 + 0.3 * z + 0.2 * z**2
    X = FeatureBuilder(session.layers, proxy).matrix(configs)
    return X, answer + rng.normal(0.0, 0.03, size=answer.shape), answer


def test_beats_the_mean_on_held_out_data(task: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    X, y, answer = task
    model = XGBPredictor(seed=0).fit(X[:N_TRAIN], y[:N_TRAIN])
    predicted = model.predict(X[N_TRAIN:])
    mae = float(np.mean(np.abs(predicted - answer[N_TRAIN:])))
    mean_mae = float(np.mean(np.abs(y[:N_TRAIN].mean() - answer[N_TRAIN:])))
    assert spearmanr(predicted, answer[N_TRAIN:]).statistic > 0.85
    assert mae < 0.5 * mean_mae


def test_linear_base_is_no_worse_than_trees_alone(task: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """The design choice of xgb.py, kept as a regression check at a small sample size."""
    X, y, answer = task
    n = 20
    errors = {}
    for linear_base in (True, False):
        predicted = XGBPredictor(seed=0, linear_base=linear_base).fit(X[:n], y[:n]).predict(X[N_TRAIN:])
        errors[linear_base] = float(np.mean(np.abs(predicted - answer[N_TRAIN:])))
    assert errors[True] <= errors[False]


def test_deterministic_for_a_seed(task: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    X, y, _ = task
    one = XGBPredictor(seed=3).fit(X[:30], y[:30]).predict_with_uncertainty(X[30:60])
    two = XGBPredictor(seed=3).fit(X[:30], y[:30]).predict_with_uncertainty(X[30:60])
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    other = XGBPredictor(seed=4).fit(X[:30], y[:30]).predict(X[30:60])
    assert not np.array_equal(one[0], other)


def test_uncertainty_grows_away_from_the_data() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    y = X @ rng.normal(size=6) + 0.3 * np.sin(3 * X[:, 0]) + rng.normal(0, 0.05, 40)
    model = XGBPredictor(seed=0).fit(X, y)
    _, near = model.predict_with_uncertainty(rng.normal(size=(50, 6)))
    _, far = model.predict_with_uncertainty(rng.normal(size=(50, 6)) + 6.0)
    _, farther = model.predict_with_uncertainty(rng.normal(size=(50, 6)) + 12.0)
    assert np.median(far) > 2 * np.median(near)
    assert np.median(farther) > np.median(far)


def test_uncertainty_on_configs(task: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Trained on mild compression only, the ensemble is least sure about the harshest configs."""
    X, y, _ = task
    total = X[:, 0]  # "keep"
    mild = np.argsort(-total)[:60]
    harsh = np.argsort(total)[:30]
    _, std = XGBPredictor(seed=0).fit(X[mild], y[mild]).predict_with_uncertainty(X)
    assert np.median(std[harsh]) > np.median(std[mild])


def test_warm_start_from_a_prior(task: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """A predictor from another study (here: the same task, shifted) seeds a study with few samples."""
    X, y, answer = task
    prior = XGBPredictor(seed=0).fit(X[:120], y[:120])
    shifted = y + 0.4  # another budget/granularity: same features, different level
    few = slice(120, 126)
    warm = XGBPredictor(seed=0, prior=prior).fit(X[few], shifted[few])
    cold = XGBPredictor(seed=0).fit(X[few], shifted[few])
    held = slice(140, 240)
    truth = answer[held] + 0.4
    warm_mae = float(np.mean(np.abs(warm.predict(X[held]) - truth)))
    cold_mae = float(np.mean(np.abs(cold.predict(X[held]) - truth)))
    assert warm_mae < 0.75 * cold_mae


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_tiny_training_sets(n: int) -> None:
    rng = np.random.default_rng(n)
    X, y = rng.normal(size=(n, 4)), rng.normal(size=n)
    mean, std = XGBPredictor(seed=0).fit(X, y).predict_with_uncertainty(rng.normal(size=(7, 4)))
    assert mean.shape == std.shape == (7,) and np.isfinite(mean).all() and (std >= 0).all()


def test_missing_features_are_allowed() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    X[::3, 2] = np.nan
    model = XGBPredictor(seed=0).fit(X, X[:, 0] * 2)
    assert np.isfinite(model.predict(np.array([[0.5, 0.0, np.nan]]))).all()


def test_bad_input() -> None:
    model = XGBPredictor()
    with pytest.raises(ValueError, match="not fitted"):
        model.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="rows"):
        model.fit(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        model.fit(np.zeros((3, 2)), np.array([1.0, np.nan, 2.0]))
    model.fit(np.arange(12.0).reshape(4, 3), np.arange(4.0))
    with pytest.raises(ValueError, match="features"):
        model.predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="max_depth"):
        XGBPredictor(max_depth=0)
