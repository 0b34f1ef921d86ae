"""How good the predictor is on the data it has: K-fold cross-validation, as the dashboard shows it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from sklearn.model_selection import KFold

from .base import Predictor, check_Xy

MIN_SAMPLES = 3


def cross_validated_quality(X: np.ndarray, y: np.ndarray, predictor_factory: Callable[[], Predictor],
                            folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Out-of-fold quality of ``predictor_factory()`` on ``(X, y)``, JSON-ready.

    Returns ``{"spearman", "mae", "n_train", "folds", "pairs"}``: Spearman rank correlation and mean
    absolute error of the out-of-fold predictions, the number of measured samples (what the deployed
    predictor is trained on), the number of folds used (``min(folds, n)``), and ``pairs`` =
    ``[[predicted, measured], ...]`` in the order of ``y``. With fewer than 3 samples, or when a
    correlation is undefined (constant values), the statistics are ``None``.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    X, y = check_Xy(X, y)
    n = y.shape[0]
    result: dict[str, Any] = {"spearman": None, "mae": None, "n_train": n, "folds": 0, "pairs": []}
    if n < MIN_SAMPLES:
        return result
    n_folds = min(folds, n)
    order = np.random.default_rng(seed).permutation(n)
    predicted = np.empty(n)
    for _, held_at in KFold(n_folds).split(order):  # contiguous folds of the shuffled order
        held = order[held_at]
        train = np.setdiff1d(order, held)
        model = predictor_factory().fit(X[train], y[train])
        predicted[held] = model.predict(X[held])
    result["folds"] = n_folds
    result["mae"] = float(np.mean(np.abs(predicted - y)))
    if np.ptp(predicted) > 0 and np.ptp(y) > 0:
        rho = float(spearmanr(predicted, y).statistic)
        result["spearman"] = rho if np.isfinite(rho) else None
    result["pairs"] = [[float(p), float(m)] for p, m in zip(predicted, y, strict=True)]
    return result
