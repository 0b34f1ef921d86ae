"""The accuracy predictor's base class: config features → predicted objective (lower is better).

An implementation has few abstract methods: ``fit``, ``predict_with_uncertainty``, and the two halves
of persistence (``_save_to`` writes its files into a directory and returns its JSON metadata,
``_load_from`` rebuilds it). ``save``/``load`` handle the common part: a directory holding
``predictor.json`` (versioned, with the implementation's ``kind``) next to whatever native JSON
files the implementation writes (XGBoost boosters). Loading goes through an allowlist of registered
kinds; nothing is ever pickled.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self, cast

import numpy as np

FORMAT_V1 = "slimscout.predictor/v1"
META_FILE = "predictor.json"

_REGISTRY: dict[str, type[Predictor]] = {}


class Predictor(ABC):
    """Learns config features ``X [n, d]`` → measured objective ``y [n]`` (e.g. log-perplexity or KL)."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
                raise TypeError(f"predictor kind {cls.kind!r} is already registered by {_REGISTRY[cls.kind]}")
            _REGISTRY[cls.kind] = cls

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray) -> Self:
        """Fit on measured pairs; returns self."""

    @abstractmethod
    def predict_with_uncertainty(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std), each ``[n]``: the prediction and how unsure the model is about it."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_with_uncertainty(X)[0]

    # -- persistence ---------------------------------------------------------------------------
    @abstractmethod
    def _save_to(self, directory: Path) -> dict[str, Any]:
        """Write the implementation's own files into ``directory``; return its JSON-able metadata."""

    @classmethod
    @abstractmethod
    def _load_from(cls, directory: Path, meta: dict[str, Any]) -> Self:
        """Rebuild from ``directory`` and the metadata ``_save_to`` returned."""

    def save(self, path: str | Path) -> None:
        """Save into the directory ``path`` (created if needed): ``predictor.json`` and native model files."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT_V1, "kind": self.kind, **self._save_to(directory)}
        tmp = directory / f".{META_FILE}.tmp"
        tmp.write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        tmp.replace(directory / META_FILE)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Load a predictor saved by ``save``; on the base class, whichever registered kind it is."""
        directory = Path(path)
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{directory} holds no saved predictor ({META_FILE} is missing)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{directory / META_FILE} is not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_V1:
            raise ValueError(f"{directory / META_FILE}: format must be {FORMAT_V1!r}")
        kind = meta.get("kind")
        impl = _REGISTRY.get(kind) if isinstance(kind, str) else None
        if impl is None:
            raise ValueError(f"{directory / META_FILE}: unknown predictor kind {kind!r} "
                             f"(known: {', '.join(sorted(_REGISTRY))})")
        if not issubclass(impl, cls):
            raise ValueError(f"{directory} holds a {impl.__name__}, not a {cls.__name__}")
        return cast(Self, impl._load_from(directory, meta))


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
