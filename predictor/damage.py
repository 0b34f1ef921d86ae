"""Per-layer damage of a config, as fixed-length features: exact Gram output errors and solo KLs.

``GramCurves``: for score-based unstructured sparsity (Wanda, magnitude), each layer's exact relative
output error ``tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)`` on the session's calibration Grams, tabulated once on a grid
of pruned-per-row counts (``GRID`` points from none to all, one matmul each) and interpolated; ``LayerProxy``'s diagonal
estimate ignores the input correlations this keeps. Other settings (low rank, quantization,
reconstruction) take ``LayerProxy.error``, which is already exact or closed-form for them. The
tables are cached as JSON next to the session's other scans (``compress.scan_cache``).

``DamageFeatures`` aggregates, for one config, the per-layer Gram errors and the per-layer solo KLs
of ``compress.layer_scan`` (``LayerDamage``) into a fixed-length vector (see ``names``). Its first
feature, ``add/log``, is the log of the additive estimate (the sum of the solo KLs at each layer's
keep): the predictor's base (``XGBPredictor(base_column=0)``), so the learned part is the log-ratio
of the measured KL to the additive estimate, i.e. the interactions.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from compress.budget import layer_config
from compress.config import LayerConfig
from compress.layer_scan import LayerDamage
from compress.layers import PROJECTION_TYPES, LinearLayer
from compress.operators import sparsity_handler
from compress.ops import pruned_per_row
from compress.scan_cache import read_scan, scan_path, write_scan
from compress.session import ModelSession

from .proxy import LayerErrors

GRID = 11  # pruned fractions 0, 0.1, ..., 1
DEPTH_RANGES = 5
_EPS = 1e-6


class GramCurves:
    """Exact per-layer relative output errors of ranked unstructured sparsity, tabulated (see module)."""

    def __init__(self, session: ModelSession, fallback: LayerErrors | None = None, *, grid: int = GRID) -> None:
        if grid < 2:
            raise ValueError(f"grid must be >= 2, got {grid}")
        self.session = session
        self.fallback = fallback
        self.grid = grid
        self._tables: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    def _table(self, kind: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per layer: pruned-per-row counts on the grid and the exact relative error at each."""
        if kind not in self._tables:
            path = scan_path(self.session, "gram-errors", {"score": kind, "grid": self.grid})
            stored = read_scan(path)
            if stored is None:
                stored = {name: self._curve(name, kind) for name in self.session.by_name}
                write_scan(path, stored)
            self._tables[kind] = {name: (np.asarray(c[0], dtype=np.float64), np.asarray(c[1], dtype=np.float64))
                                  for name, c in stored.items()}
        return self._tables[kind]

    def _curve(self, name: str, kind: str) -> list[list[float]]:
        weight = self.session.compressed_weight(name, LayerConfig()).detach().float()
        gram = self.session.stats().gram(name).float()
        ranks = self.session.ranks(kind)[name]
        counts = np.unique(np.round(np.linspace(0, weight.shape[1], self.grid)).astype(np.int64))
        total = float(((weight @ gram) * weight).sum())
        errors = np.zeros(len(counts))
        for i, count in enumerate(counts[1:], start=1):
            delta = torch.where(ranks >= int(count), torch.zeros((), dtype=weight.dtype), weight)
            errors[i] = float(((delta @ gram) * delta).sum()) / total if total > 0 else 0.0
        errors = np.clip(np.maximum.accumulate(errors), 0.0, 1.0)
        return [counts.astype(float).tolist(), errors.tolist()]

    def error(self, name: str, cfg: LayerConfig | None) -> float:
        """Relative output error of layer ``name`` under ``cfg`` (0 when dense)."""
        if cfg is None or cfg.is_dense:
            return 0.0
        sp = cfg.sparsity
        if (sp is not None and cfg.lowrank is None and cfg.quant is None and sp.nm is None
                and sparsity_handler(sp.score).ranked):
            counts, errors = self._table(sp.score)[name]
            return float(np.interp(pruned_per_row(self.session.by_name[name].in_features, sp.ratio), counts, errors))
        if self.fallback is None:
            raise ValueError(f"no exact table for {name}'s setting {cfg} and no fallback proxy")
        return self.fallback.error(name, cfg)


class DamageFeatures:
    """Per-config damage features from per-layer Gram errors and solo KLs (either may be absent)."""

    def __init__(self, layers: list[LinearLayer], *, gram: LayerErrors | None = None,
                 solo: LayerDamage | None = None, operator: str = "wanda",
                 depth_ranges: int = DEPTH_RANGES) -> None:
        if gram is None and solo is None:
            raise ValueError("DamageFeatures needs Gram errors, solo KLs or both")
        if solo is not None and [layer.name for layer in solo.layers] != [layer.name for layer in layers]:
            raise ValueError("the solo damage curves must cover the same layers, in the same order")
        self.layers, self.gram, self.solo = layers, gram, solo
        present = {layer.type for layer in layers}
        self.types = [t for t in PROJECTION_TYPES if t in present] + sorted(present - set(PROJECTION_TYPES))
        self._type_of = np.array([self.types.index(layer.type) for layer in layers])
        blocks = sorted({layer.block for layer in layers})
        chunks = np.array_split(np.array(blocks), min(depth_ranges, len(blocks)))
        self.depth_labels = [f"{chunk[0]}-{chunk[-1]}" for chunk in chunks]
        where = {int(b): i for i, chunk in enumerate(chunks) for b in chunk}
        self._depth_of = np.array([where[layer.block] for layer in layers])
        self._params = np.array([layer.params for layer in layers], dtype=np.float64)
        self._unit = self._per_unit(operator) if gram is not None and solo is not None else None

    def _per_unit(self, operator: str) -> np.ndarray:
        """Each layer's solo KL per unit of Gram error, both at its lowest scanned keep under ``operator``."""
        assert self.gram is not None and self.solo is not None
        unit = np.zeros(len(self.layers))
        for i, layer in enumerate(self.layers):
            keep = self.solo.lowest_level(i)
            err = self.gram.error(layer.name, layer_config(layer, keep, operator))
            unit[i] = float(self.solo.of_layer(i, keep)) / err if err > 0 else 0.0
        return unit

    def names(self) -> list[str]:
        groups = [f"type={t}" for t in self.types] + [f"depth={d}" for d in self.depth_labels]
        names: list[str] = []
        if self.solo is not None:
            names += ["add/log", "add/max", "add/top5"] + [f"add/{g}" for g in groups]
        if self.gram is not None:
            names += ["gram/log", "gram/max", "gram/top5"] + [f"gram/{g}" for g in groups]
            if self.solo is not None:
                names += ["gram/scaled_log"]
        return names

    def _groups(self, values: np.ndarray) -> list[np.ndarray]:
        return [np.bincount(self._type_of, values, len(self.types)),
                np.bincount(self._depth_of, values, len(self.depth_labels))]

    @staticmethod
    def _summary(values: np.ndarray) -> list[float]:
        top = np.sort(values)[-5:]
        return [float(np.log(values.sum() + _EPS)), float(values.max()), float(top.sum())]

    def features(self, config_layers: Mapping[str, LayerConfig], kept: np.ndarray) -> np.ndarray:
        """The vector in ``names()`` order; ``kept`` is each layer's kept parameters (layer order)."""
        parts: list[np.ndarray | list[float]] = []
        solo = gram = None
        if self.solo is not None:
            solo = self.solo.per_layer(kept / self._params)
            parts += [self._summary(solo), *self._groups(solo)]
        if self.gram is not None:
            gram = np.array([self.gram.error(layer.name, config_layers.get(layer.name)) for layer in self.layers])
            parts += [self._summary(gram), *self._groups(gram)]
            if self._unit is not None:
                # Each layer's solo KL per unit of Gram error times its Gram error now: an additive
                # estimate whose shape between the scanned levels follows the exact Gram curve.
                parts.append([float(np.log(float(self._unit @ gram) + _EPS))])
        return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])
