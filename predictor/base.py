"""The accuracy predictor's base class: config features → predicted objective (lower is better).

An implementation has two abstract methods: ``fit`` and ``predict_with_uncertainty``. Predictors
live for a study's run (refitted as measurements arrive); they are not saved.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Self

import numpy as np


class Predictor(ABC):
    """Learns config features ``X [n, d]`` → measured objective ``y [n]`` (e.g. log-perplexity or KL)."""

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray) -> Self:
        """Fit on measured pairs; returns self."""

    @abstractmethod
    def predict_with_uncertainty(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std), each ``[n]``: the prediction and how unsure the model is about it."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_with_uncertainty(X)[0]


def check_X(X: np.ndarray, n_features: int | None = None) -> np.ndarray:
    """``X`` as a float64 ``[n, d]`` array (NaN allowed: a missing feature); ValueError otherwise."""
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"X must be a 2-D [n_samples, n_features] array, got shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"X has {arr.shape[1]} features, the predictor was fitted on {n_features}")
    if np.isinf(arr).any():
        raise ValueError("X contains inf")
    return arr


def check_Xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    arr = check_X(X)
    target = np.asarray(y, dtype=np.float64).reshape(-1)
    if target.shape[0] != arr.shape[0]:
        raise ValueError(f"X has {arr.shape[0]} rows but y has {target.shape[0]} values")
    if arr.shape[0] == 0:
        raise ValueError("cannot fit on zero samples")
    if not np.isfinite(target).all():
        raise ValueError("y must be finite (drop failed or pruned trials before fitting)")
    return arr, target
