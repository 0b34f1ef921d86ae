"""Config → fixed-length feature vector for the accuracy predictor.

For one model the vector has a fixed length and order (``names()``), and it depends only on the
config (and the optional per-trial knobs), never on the study's budget or granularity, so a
predictor trained in one study can seed another on the same model and data. Features:

* ``keep`` and ``bytes``: kept parameters / dense parameters and stored bytes / dense bytes over
  all compressible layers (``compress.accounting.layer_cost``);
* ``keep/type=T``: keep ratio per projection type (q, k, v, o, gate, up, down), and
  ``keep/depth=A-B``: per range of blocks (``depth_ranges`` equal ranges); these are parameter-
  weighted (kept / params of the group);
* with a proxy: ``err/type=T`` and ``err/depth=A-B``, sums of per-layer relative output errors;
  ``err/total``; ``err/weighted`` = sum of sensitivity × error; ``err/max``;
* with measured block damage (the sensitivity scan: KL of each block compressed alone at a few keep
  levels): ``scan/sum``, the sum over blocks of that damage interpolated at the block's keep (an
  additive estimate of the config's KL), its log, and ``scan/max``;
* with ``damage`` (``predictor.damage.DamageFeatures``): per-layer exact Gram output errors and
  per-layer solo KLs, aggregated (``add/log``, the log additive estimate, is the predictor's base);
* ``frac/lowrank``, ``frac/sparsity``, ``frac/quant``, ``frac/dense``: share of layers using each;
* ``knob/NAME`` for each of ``knob_names`` (NaN where a trial lacks it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from common.errors import ConfigError
from compress.accounting import DENSE_BYTES_PER_PARAM, layer_cost
from compress.config import LayerConfig
from compress.layers import PROJECTION_TYPES, LinearLayer

from .damage import DamageFeatures
from .proxy import LayerErrors, LayerProxy

__all__ = ["FeatureBuilder", "LayerErrors", "LayerProxy"]

DEPTH_RANGES = 5
OPERATORS: tuple[str, ...] = ("lowrank", "sparsity", "quant")
_MEMO_SIZE = 1 << 18


class FeatureBuilder:
    """Builds the feature vector of a config's ``layers`` for one model (see the module docstring)."""

    def __init__(self, layers: list[LinearLayer], proxy: LayerErrors | None,
                 sensitivity: Mapping[str, float] | None = None, *, knob_names: Sequence[str] | None = None,
                 depth_ranges: int = DEPTH_RANGES,
                 block_damage: Mapping[int, Mapping[float, float]] | None = None,
                 damage: DamageFeatures | None = None) -> None:
        if not layers:
            raise ValueError("a FeatureBuilder needs at least one layer")
        if depth_ranges < 1:
            raise ValueError(f"depth_ranges must be >= 1, got {depth_ranges}")
        self.layers = list(layers)
        self.proxy = proxy
        self.knob_names = list(knob_names or [])
        if len(set(self.knob_names)) != len(self.knob_names):
            raise ValueError(f"knob_names has duplicates: {self.knob_names}")
        self._index = {layer.name: i for i, layer in enumerate(self.layers)}
        self.sensitivity = self._sensitivity(sensitivity)

        present = {layer.type for layer in self.layers}
        self.types = [t for t in PROJECTION_TYPES if t in present] + sorted(present - set(PROJECTION_TYPES))
        self._type_of = np.array([self.types.index(layer.type) for layer in self.layers])
        blocks = sorted({layer.block for layer in self.layers})
        ranges = np.array_split(np.array(blocks), min(depth_ranges, len(blocks)))
        self.depth_labels = [f"{chunk[0]}-{chunk[-1]}" for chunk in ranges]
        range_of_block = {int(block): i for i, chunk in enumerate(ranges) for block in chunk}
        self._depth_of = np.array([range_of_block[layer.block] for layer in self.layers])
        self._params = np.array([layer.params for layer in self.layers], dtype=np.float64)
        self._type_params = np.bincount(self._type_of, self._params, len(self.types))
        self._depth_params = np.bincount(self._depth_of, self._params, len(self.depth_labels))
        self._cost_memo: dict[tuple[str, LayerConfig], tuple[int, int]] = {}
        self._blocks = blocks
        self._block_of = np.array([blocks.index(layer.block) for layer in self.layers])
        self._block_params = np.bincount(self._block_of, self._params, len(blocks))
        self._damage = self._damage_curves(block_damage) if block_damage else None
        if damage is not None and [layer.name for layer in damage.layers] != [layer.name for layer in self.layers]:
            raise ValueError("the damage features must cover the same layers, in the same order")
        self.damage = damage

    def _damage_curves(self, block_damage: Mapping[int, Mapping[float, float]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per block (in ``self._blocks`` order): keep levels and damage, with no damage at keep 1."""
        missing = [b for b in self._blocks if b not in block_damage]
        if missing:
            raise ValueError(f"block_damage lacks block(s) {missing[:3]}")
        curves = []
        for block in self._blocks:
            points = [*sorted((float(k), float(v)) for k, v in block_damage[block].items() if k < 1.0), (1.0, 0.0)]
            curves.append((np.array([k for k, _ in points]), np.array([v for _, v in points])))
        return curves

    def _scan_damage(self, kept: np.ndarray) -> np.ndarray:
        """Each block's measured damage at its keep ratio; below the lowest level, the first slope goes on."""
        keep = np.bincount(self._block_of, kept, len(self._blocks)) / self._block_params
        assert self._damage is not None
        out = np.empty(len(self._blocks))
        for i, (xs, ys) in enumerate(self._damage):
            if keep[i] < xs[0] and len(xs) > 1:
                slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
                out[i] = ys[0] + slope * (keep[i] - xs[0])
            else:
                out[i] = np.interp(keep[i], xs, ys)
        return np.maximum(out, 0.0)

    def _sensitivity(self, sensitivity: Mapping[str, float] | None) -> np.ndarray:
        """Per-layer weights in layer order: given ones, missing layers at the mean given (1 if none)."""
        if not sensitivity:
            return np.ones(len(self.layers))
        unknown = sorted(set(sensitivity) - set(self._index))
        if unknown:
            raise ValueError(f"sensitivity names {len(unknown)} unknown layer(s), e.g. {unknown[0]!r}")
        values = {name: float(value) for name, value in sensitivity.items()}
        if not all(np.isfinite(v) for v in values.values()):
            raise ValueError("sensitivity values must be finite")
        default = float(np.mean(list(values.values())))
        return np.array([values.get(layer.name, default) for layer in self.layers])

    def names(self) -> list[str]:
        names = ["keep", "bytes"]
        names += [f"keep/type={t}" for t in self.types] + [f"keep/depth={d}" for d in self.depth_labels]
        if self.proxy is not None:
            names += [f"err/type={t}" for t in self.types] + [f"err/depth={d}" for d in self.depth_labels]
            names += ["err/total", "err/weighted", "err/max"]
        if self._damage is not None:
            names += ["scan/sum", "scan/log", "scan/max"]
        if self.damage is not None:
            names += self.damage.names()
        names += [f"frac/{op}" for op in OPERATORS] + ["frac/dense"]
        return names + [f"knob/{k}" for k in self.knob_names]

    def _cost(self, layer: LinearLayer, cfg: LayerConfig) -> tuple[int, int]:
        key = (layer.name, cfg)
        cost = self._cost_memo.get(key)
        if cost is None:
            try:
                counted = layer_cost(layer, cfg)
            except ConfigError as exc:
                raise ConfigError(f"layers.{layer.name}.{exc.field}", exc.reason) from None
            cost = (counted.params, counted.bytes)
            if len(self._cost_memo) >= _MEMO_SIZE:
                self._cost_memo.clear()
            self._cost_memo[key] = cost
        return cost

    def features(self, config_layers: Mapping[str, LayerConfig],
                 knobs: Mapping[str, float | int | bool] | None = None) -> np.ndarray:
        """1-D float64 vector in ``names()`` order for a config's ``layers`` (absent layers are dense)."""
        unknown = [name for name in config_layers if name not in self._index]
        if unknown:
            raise ConfigError(f"layers.{unknown[0]}", "not a compressible linear layer of this model")
        n = len(self.layers)
        kept = self._params.copy()
        stored = self._params * DENSE_BYTES_PER_PARAM
        err = np.zeros(n)
        uses = np.zeros((len(OPERATORS), n))
        for name, cfg in config_layers.items():
            if cfg.is_dense:
                continue
            i = self._index[name]
            layer = self.layers[i]
            kept[i], stored[i] = self._cost(layer, cfg)
            uses[:, i] = [cfg.lowrank is not None, cfg.sparsity is not None, cfg.quant is not None]
            if self.proxy is not None:
                err[i] = self.proxy.error(name, cfg)

        total_params = float(self._params.sum())
        parts = [
            [float(kept.sum()) / total_params, float(stored.sum()) / (DENSE_BYTES_PER_PARAM * total_params)],
            np.bincount(self._type_of, kept, len(self.types)) / self._type_params,
            np.bincount(self._depth_of, kept, len(self.depth_labels)) / self._depth_params,
        ]
        if self.proxy is not None:
            parts += [np.bincount(self._type_of, err, len(self.types)),
                      np.bincount(self._depth_of, err, len(self.depth_labels)),
                      [float(err.sum()), float(self.sensitivity @ err), float(err.max())]]
        if self._damage is not None:
            damage = self._scan_damage(kept)
            parts.append([float(damage.sum()), float(np.log(damage.sum() + 1e-6)), float(damage.max())])
        if self.damage is not None:
            parts.append(self.damage.features(config_layers, kept))
        parts += [uses.mean(axis=1), [1.0 - float(uses.any(axis=0).mean())]]
        parts.append(self._knobs(knobs))
        return np.concatenate([np.asarray(part, dtype=np.float64) for part in parts])

    def _knobs(self, knobs: Mapping[str, float | int | bool] | None) -> np.ndarray:
        values = np.full(len(self.knob_names), np.nan)
        for i, name in enumerate(self.knob_names):
            if knobs is None or name not in knobs or knobs[name] is None:
                continue
            value = knobs[name]
            if isinstance(value, str) or not isinstance(value, int | float | np.number):
                raise ValueError(f"knob {name!r} must be a number (encode categorical knobs), got {value!r}")
            values[i] = float(value)
        return values

    def matrix(self, configs: Sequence[Mapping[str, LayerConfig]],
               knobs: Sequence[Mapping[str, float | int | bool] | None] | None = None) -> np.ndarray:
        """``[len(configs), len(names())]``: ``features`` of each config (with its knobs, if given)."""
        if knobs is not None and len(knobs) != len(configs):
            raise ValueError(f"{len(configs)} configs but {len(knobs)} knob dicts")
        rows = [self.features(cfg, knobs[i] if knobs is not None else None) for i, cfg in enumerate(configs)]
        return np.stack(rows) if rows else np.zeros((0, len(self.names())))
