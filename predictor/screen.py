"""Screening: which candidate configs workers should measure, and where the search should look next.

``screen`` spends most of a measurement batch on the candidates predicted best (exploitation) and
the rest on those that could be best if the predictor is wrong about them: the lowest
lower-confidence bound ``mean - kappa·std`` among the others (exploration). ``shrink_ranges``
prunes the search space to the region spanned by the best configurations measured so far.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import Predictor

LCB_KAPPA = 2.0


def _order(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices by ascending value; NaN last; ties broken at random (by ``rng``), reproducibly."""
    tiebreak = rng.permutation(values.shape[0])
    keyed = np.where(np.isnan(values), np.inf, values)
    return np.lexsort((tiebreak, keyed))


def screen(candidates_X: np.ndarray, predictor: Predictor, k: int, explore_share: float = 0.25,
           rng: np.random.Generator | None = None, *, kappa: float = LCB_KAPPA) -> list[int]:
    """Indices (no duplicates) of the ``min(k, n)`` candidates to measure; lower objective is better.

    ``k - n_explore`` by predicted mean (so the best predicted is always in), then ``n_explore =
    round(k·explore_share)`` (at most ``k - 1``) by lower-confidence bound ``mean - kappa·std`` among
    the rest. Exploited ones come first, each part in its own order.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if not 0.0 <= explore_share <= 1.0:
        raise ValueError(f"explore_share must be in [0, 1], got {explore_share!r}")
    rng = rng if rng is not None else np.random.default_rng(0)
    X = np.asarray(candidates_X, dtype=np.float64)
    n = X.shape[0] if X.ndim == 2 else 0
    if X.ndim != 2:
        raise ValueError(f"candidates_X must be 2-D [n_candidates, n_features], got shape {X.shape}")
    k = min(int(k), n)
    if k == 0:
        return []
    mean, std = predictor.predict_with_uncertainty(X)
    n_explore = min(round(k * explore_share), k - 1)
    exploit = [int(i) for i in _order(mean, rng)[: k - n_explore]]
    if n_explore == 0:
        return exploit
    taken = np.zeros(n, dtype=bool)
    taken[exploit] = True
    lcb = np.where(taken, np.nan, mean - kappa * std)
    explore = [int(i) for i in _order(lcb, rng)[:n_explore]]
    return exploit + explore


def shrink_ranges(knob_values: np.ndarray, scores: np.ndarray, quantile: float = 0.3, margin: float = 0.1,
                  bounds: Sequence[tuple[float, float]] | None = None) -> list[tuple[float, float]]:
    """Per knob, the [min, max] spanned by the best ``quantile`` of configs (lowest scores), widened.

    Each side is widened by ``margin`` times the knob's original width and clipped to its original
    bounds: ``bounds`` when given (one ``(low, high)`` per knob), else the range of all ``knob_values``.
    Rows with a non-finite score (failed trials) are ignored; at least one row is always kept.
    """
    values = np.asarray(knob_values, dtype=np.float64)
    score = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.ndim != 2:
        raise ValueError(f"knob_values must be 2-D [n_configs, n_knobs], got shape {values.shape}")
    if score.shape[0] != values.shape[0]:
        raise ValueError(f"knob_values has {values.shape[0]} rows but scores has {score.shape[0]}")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    d = values.shape[1]
    if bounds is not None:
        original = np.asarray(bounds, dtype=np.float64)
        if original.shape != (d, 2) or (original[:, 0] > original[:, 1]).any():
            raise ValueError(f"bounds must be {d} (low, high) pairs with low <= high")
    ok = np.isfinite(score) & np.isfinite(values).all(axis=1)
    if not ok.any():
        raise ValueError("no configuration with a finite score and finite knob values")
    values, score = values[ok], score[ok]
    if bounds is None:
        original = np.stack([values.min(axis=0), values.max(axis=0)], axis=1)
    n_top = max(1, int(np.ceil(quantile * values.shape[0])))
    top = values[np.argsort(score, kind="stable")[:n_top]]
    width = original[:, 1] - original[:, 0]
    low = np.clip(top.min(axis=0) - margin * width, original[:, 0], original[:, 1])
    high = np.clip(top.max(axis=0) + margin * width, original[:, 0], original[:, 1])
    return [(float(lo), float(hi)) for lo, hi in zip(low, high, strict=True)]
