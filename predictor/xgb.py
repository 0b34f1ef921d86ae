"""XGBoost accuracy predictor for 10–100 measured configs: a bootstrap ensemble of ridge + boosted residual.

Each of ``n_models`` members is fitted on one bootstrap resample (as sample weights) of the measured
pairs and is the sum of

* a ridge regression on all features (standardized; its strength chosen once on the whole data by
  leave-one-out error with the one-standard-error rule, at least 10). The proxy features are close
  to linear in the target (HIGGS' linearity theorem: the loss increase is about a weighted sum of
  per-layer relative errors), so a linear model gets most of the signal from very few samples, and
* a small, strongly regularized XGBoost model (depth 2, 200 trees, learning rate 0.05) fitted on the
  ridge's residuals, which picks up what is not linear (saturation, blow-up at high error,
  interactions). With ``stack`` the trees also see the member's ridge prediction as one more
  feature, so a nonlinear function of the linear score takes few splits.

``linear_base=False`` drops the ridge (plain boosted trees). ``tests/predictor/linear_base_study.py``
measures both on synthetic tasks built from the tiny model's real proxies (y = 2 + f(sum of
per-layer sensitivity × error) + noise, f linear, convex or exponential, 5 seeds, 200 held-out
configs). Ridge + residual had the lower held-out MAE at every training size and shape (linear f:
0.023 vs 0.045 at 10 samples, 0.018 vs 0.023 at 40, 0.017 vs 0.018 at 160) and the higher or equal
Spearman up to 40 samples (0.97 vs 0.92 at 10; 0.98 vs 0.97 at 40); from 80 samples on the two rank
about equally (0.976–0.988 both). Stacking made no measurable difference on those tasks (it helped a
little in an earlier run on an exaggerated, strongly convex f); it costs one column, so it stays on.

The mean over members is the prediction and their standard deviation the uncertainty; because
every member carries its own ridge, members disagree more the further a config lies from the data,
which trees alone (constant outside the data) would not show. Everything is seeded: the same
data and seed give the same predictions.

Warm start: pass ``prior=`` a predictor fitted on another study of the same model and data; the
ensemble then learns the correction ``y - prior.predict(X)`` and predictions add the prior back.
Features never depend on the budget or granularity, so a prior from one budget applies to another.

Base margin: ``base_column=i`` adds feature ``i`` to every prediction and learns ``y - X[:, i]``,
as XGBoost's ``base_margin`` does; with the log additive estimate of ``predictor.damage`` as that
column (and a log target), the ridge and the trees learn only how the measured damage departs from
the sum of the per-layer solo damages (the interactions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import xgboost as xgb
from sklearn.linear_model import Ridge, RidgeCV

from .base import Predictor, check_X, check_Xy

# Ridge strengths tried (features standardized, so alpha counts pseudo-samples). The floor of 10 keeps
# the ridge from nearly interpolating when there are about as many samples as features, where the
# leave-one-out choice is noisiest; the boosted residual recovers what the stronger shrinkage leaves.
RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(1, 4, 19))
DEFAULT_ALPHA = 10.0  # below 3 samples leave-one-out cannot choose one
MAX_BIN = 64  # histogram bins per feature: exact below 64 distinct values, and faster than 256


@dataclass(frozen=True)
class XGBParams:
    n_models: int = 8
    max_depth: int = 2
    n_estimators: int = 200
    learning_rate: float = 0.05
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    min_child_weight: float = 2.0
    reg_lambda: float = 5.0
    reg_alpha: float = 0.0
    linear_base: bool = True
    stack: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_models", "max_depth", "n_estimators"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < self.learning_rate <= 1:
            raise ValueError(f"learning_rate must be in (0, 1], got {self.learning_rate!r}")
        for name in ("subsample", "colsample_bytree"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
        for name in ("min_child_weight", "reg_lambda", "reg_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class _Linear:
    """y ≈ impute(X) @ coef + intercept, in the original feature units."""

    coef: np.ndarray
    intercept: float

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X @ self.coef + self.intercept, dtype=np.float64)


def _standardize(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    return mean, np.where(scale > 1e-12, scale, 1.0)


def _loo_alpha(Z: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> float:
    """Ridge strength by leave-one-out error (scikit-learn's closed form), with the one-standard-error rule.

    The strongest ``alpha`` whose LOO error is within one standard error of the best: with about as
    many samples as (collinear) features the plain minimum is noisy and sometimes picks a nearly
    unregularized fit whose bootstrap members then scatter widely.
    """
    n = Z.shape[0]
    if n < 3:
        return DEFAULT_ALPHA
    grid = sorted(float(a) for a in alphas)
    losses = RidgeCV(alphas=grid, store_cv_results=True).fit(Z, y).cv_results_.T  # squared LOO errors [alpha, n]
    mean = losses.mean(axis=1)
    best = int(np.argmin(mean))
    limit = mean[best] + losses[best].std(ddof=1) / np.sqrt(n)
    return max(alpha for alpha, loss in zip(grid, mean, strict=True) if loss <= limit)


def _weighted_ridge(Z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    model = Ridge(alpha=alpha).fit(Z, y, sample_weight=w)
    return np.asarray(model.coef_, dtype=np.float64), float(model.intercept_)


class XGBPredictor(Predictor):
    """Bootstrap ensemble of (ridge + XGBoost residual) models; see the module docstring."""

    def __init__(self, *, n_models: int = 8, max_depth: int = 2, n_estimators: int = 200,
                 learning_rate: float = 0.05, subsample: float = 0.8, colsample_bytree: float = 0.8,
                 min_child_weight: float = 2.0, reg_lambda: float = 5.0, reg_alpha: float = 0.0,
                 linear_base: bool = True, stack: bool = True, seed: int = 0, prior: Predictor | None = None,
                 feature_names: Sequence[str] | None = None, base_column: int | None = None) -> None:
        self.params = XGBParams(n_models, max_depth, n_estimators, learning_rate, subsample, colsample_bytree,
                                min_child_weight, reg_lambda, reg_alpha, linear_base, stack, seed)
        self.prior = prior
        if base_column is not None and (isinstance(base_column, bool) or base_column < 0):
            raise ValueError(f"base_column must be a feature index, got {base_column!r}")
        self.base_column = base_column
        self.feature_names = list(feature_names) if feature_names is not None else None
        self.n_features: int | None = None
        self.n_train = 0
        self.alpha: float | None = None
        self._impute: np.ndarray | None = None
        self._linear: list[_Linear] = []
        self._boosters: list[xgb.Booster | None] = []

    @property
    def is_fitted(self) -> bool:
        return self.n_features is not None

    def _offset(self, X: np.ndarray) -> np.ndarray:
        offset = self.prior.predict(X) if self.prior is not None else np.zeros(X.shape[0])
        if self.base_column is not None:
            if self.base_column >= X.shape[1]:
                raise ValueError(f"base_column {self.base_column} is not a column of X ({X.shape[1]} features)")
            base = X[:, self.base_column]
            if np.isnan(base).any():
                raise ValueError("the base column must not be NaN")
            offset = offset + base
        return offset

    def fit(self, X: np.ndarray, y: np.ndarray) -> Self:
        X, y = check_Xy(X, y)
        n, d = X.shape
        if self.feature_names is not None and len(self.feature_names) != d:
            raise ValueError(f"X has {d} features but {len(self.feature_names)} feature names were given")
        p = self.params
        target = y - self._offset(X)
        with np.errstate(all="ignore"):
            impute = np.nanmean(X, axis=0)
        impute = np.where(np.isfinite(impute), impute, 0.0)
        Xi = np.where(np.isnan(X), impute, X)
        mean, scale = _standardize(Xi)
        Z = (Xi - mean) / scale
        self.alpha = _loo_alpha(Z, target, RIDGE_ALPHAS) if p.linear_base else None

        rng = np.random.default_rng(p.seed)
        linear: list[_Linear] = []
        boosters: list[xgb.Booster | None] = []
        for member in range(p.n_models):
            counts = rng.multinomial(n, np.full(n, 1.0 / n)) if p.n_models > 1 else np.ones(n)
            weights = counts.astype(np.float64)
            if self.alpha is not None:
                beta, intercept = _weighted_ridge(Z, target, weights, self.alpha)
                coef = beta / scale
                base = _Linear(coef, intercept - float(mean @ coef))
            else:
                base = _Linear(np.zeros(d), float(weights @ target) / float(weights.sum()))
            residual = target - base(Xi)
            booster = None
            if n >= 3:
                data = xgb.DMatrix(self._tree_input(X, base(Xi)), residual, weight=weights, nthread=1)
                booster = xgb.train(self._booster_params(p.seed * 1009 + member), data, p.n_estimators)
            linear.append(base)
            boosters.append(booster)
        self._impute, self._linear, self._boosters = impute, linear, boosters
        self.n_features, self.n_train = d, n
        return self

    def _booster_params(self, seed: int) -> dict[str, Any]:
        p = self.params
        return {"objective": "reg:squarederror", "eta": p.learning_rate, "max_depth": p.max_depth,
                "subsample": p.subsample, "colsample_bytree": p.colsample_bytree,
                "min_child_weight": p.min_child_weight, "lambda": p.reg_lambda, "alpha": p.reg_alpha,
                "base_score": 0.0, "tree_method": "hist", "max_bin": MAX_BIN, "nthread": 1, "seed": seed}

    def _tree_input(self, X: np.ndarray, linear: np.ndarray) -> np.ndarray:
        """The trees see the features and, when stacking, the member's linear prediction as one more."""
        if self.params.stack and self.params.linear_base:
            return np.column_stack([X, linear])
        return X

    def _members(self, X: np.ndarray) -> np.ndarray:
        """``[n_models, n]``: each member's prediction (prior included)."""
        if self._impute is None or self.n_features is None:
            raise ValueError("the predictor is not fitted (call fit or load)")
        X = check_X(X, self.n_features)
        Xi = np.where(np.isnan(X), self._impute, X)
        out = np.empty((len(self._linear), X.shape[0]))
        for i, (base, booster) in enumerate(zip(self._linear, self._boosters, strict=True)):
            linear = base(Xi)
            out[i] = linear
            if booster is not None and X.shape[0]:
                out[i] += booster.inplace_predict(self._tree_input(X, linear)).astype(np.float64)
        return out + self._offset(X)[None, :]

    def predict_with_uncertainty(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        members = self._members(X)
        return members.mean(axis=0), members.std(axis=0)
