"""How good the predictor is on the data it has: K-fold cross-validation, as the dashboard shows it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from sklearn.model_selection import KFold

from .base import Predictor, check_Xy

MIN_SAMPLES = 3


TOP_SHARE = 0.25


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.shape[0] < MIN_SAMPLES or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    rho = float(spearmanr(a, b).statistic)
    return rho if np.isfinite(rho) else None


def cross_validated_quality(X: np.ndarray, y: np.ndarray, predictor_factory: Callable[[], Predictor],
                            folds: int = 5, seed: int = 0, top_share: float = TOP_SHARE) -> dict[str, Any]:
    """Out-of-fold quality of ``predictor_factory()`` on ``(X, y)``, JSON-ready.

    Returns ``{"spearman", "spearman_top", "n_top", "mae", "n_train", "folds", "pairs"}``: Spearman
    rank correlation of the out-of-fold predictions with the measured values over all samples and
    over the best ``top_share`` of them by measured value (lowest y; ``n_top`` of them, at least 3:
    can the predictor order the configs that matter?), mean absolute error, the number of measured
    samples (what the deployed predictor is trained on), the number of folds used (``min(folds,
    n)``), and ``pairs`` =
    ``[[predicted, measured], ...]`` in the order of ``y``. With fewer than 3 samples, or when a
    correlation is undefined (constant values), the statistics are ``None``.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if not 0.0 < top_share <= 1.0:
        raise ValueError(f"top_share must be in (0, 1], got {top_share}")
    X, y = check_Xy(X, y)
    n = y.shape[0]
    result: dict[str, Any] = {"spearman": None, "spearman_top": None, "n_top": 0, "mae": None, "n_train": n,
                              "folds": 0, "pairs": []}
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
    result["spearman"] = _spearman(predicted, y)
    top = np.argsort(y, kind="stable")[: max(MIN_SAMPLES, int(np.ceil(top_share * n)))]
    result["n_top"] = int(top.shape[0])
    result["spearman_top"] = _spearman(predicted[top], y[top])
    result["pairs"] = [[float(p), float(m)] for p, m in zip(predicted, y, strict=True)]
    return result
