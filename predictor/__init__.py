"""Accuracy predictor: config features, the XGBoost predictor, screening and its quality report.

``FeatureBuilder`` and ``LayerProxy`` need torch (through ``compress``); they are imported on first
use so that importing ``predictor`` for a saved model or a report (as the API does) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Predictor
from .report import cross_validated_quality
from .screen import screen, shrink_ranges
from .xgb import XGBPredictor

if TYPE_CHECKING:
    from .features import FeatureBuilder, LayerProxy

__all__ = [
    "FeatureBuilder",
    "LayerProxy",
    "Predictor",
    "XGBPredictor",
    "cross_validated_quality",
    "screen",
    "shrink_ranges",
]


def __getattr__(name: str) -> Any:
    if name in ("FeatureBuilder", "LayerProxy"):
        from . import features

        return getattr(features, name)
    raise AttributeError(f"module 'predictor' has no attribute {name!r}")
