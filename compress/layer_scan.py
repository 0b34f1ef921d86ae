"""Per-layer solo sensitivity: each linear layer compressed alone at a few keep levels, measured as KL.

The block scan of ``compress.baselines`` compresses whole blocks; this one compresses one layer at a
time (every other layer dense) and measures the KL to the dense model on few tokens, so that an
additive estimate of a config's damage, ``sum over layers of f_layer(keep_layer)``, is available
for any per-layer allocation: the ``additive`` baseline minimises it under the budget, and the
predictor uses it as its base. Cost: ``layers × levels`` forward passes of ``tokens`` tokens, once
per (model, calibration data, operator, levels, tokens, dataset), then a JSON file in the session's
cache directory (``compress.scan_cache``).

``LayerDamage`` turns the measured points into curves, made non-increasing in keep first (a few
measurements at high keep are below the KL's noise floor): log-linear in keep between the levels
and below the lowest (the first segment's log-slope goes on: damage grows about exponentially as a
layer loses weights), and quadratic in the pruned share from the highest level to (1, 0) (a dense
layer does no damage; a small weight change does damage of second order).
``additive_allocation`` minimises the sum of the curves under the budget by dynamic programming.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.budget import MIN_KEEP, check_operators, layer_config
from compress.config import CompressionConfig, QuantSpec
from compress.layers import LinearLayer
from compress.scan_cache import read_scan, scan_path, write_scan
from compress.session import ModelSession

LAYER_SCAN_TOKENS = 128
# Levels as multiples of the budget. On smollm2-135m (210 layers) each level costs 210 forward passes
# of LAYER_SCAN_TOKENS: 2.6 s each at a load average of 6-8 on 2 cores, 10-18 s at 20-30 (BENCHMARKS.md).
LEVEL_FACTORS = (0.5, 1.0, 1.5)
KEEP_GRID = np.round(np.arange(MIN_KEEP, 1.0 + 1e-9, 0.01), 4)  # where the additive allocation may put a layer
DP_UNITS = 2000  # the budget in units of 1/2000 of the linear parameters

FLOOR = 1e-6  # the log-linear interpolation needs positive damage; KL below this is noise
Curves = dict[str, dict[float, float]]  # layer name -> {keep: KL}


def layer_scan_levels(budget: float) -> list[float]:
    """The keep levels a layer is measured at for ``budget``: around it, within [0.05, 0.95]."""
    return sorted({round(min(0.95, max(0.05, budget * f)), 4) for f in LEVEL_FACTORS})


@dataclass(frozen=True)
class LayerScan:
    curves: Curves
    evaluations: int  # forward passes of ``tokens`` tokens spent now (0 on a cache hit)
    seconds: float  # spent now
    tokens: int
    levels: list[float]


def _operator(operators: Sequence[str]) -> tuple[str, QuantSpec | None]:
    param_ops, quant = check_operators(operators)
    return param_ops[0], quant


def _path(session: ModelSession, operators: Sequence[str], levels: Sequence[float], tokens: int, dataset: str) -> Path:
    op, quant = _operator(operators)
    key = {"op": op, "quant": repr(quant), "levels": list(levels), "tokens": tokens, "dataset": dataset}
    return scan_path(session, "layer-sensitivity", key)


def cached_layer_scan(session: ModelSession, budget: float, operators: Sequence[str], *,
                      tokens: int = LAYER_SCAN_TOKENS, dataset: str = "lee-news",
                      levels: Sequence[float] | None = None) -> Curves | None:
    """The stored per-layer scan, or None when it was never run (never runs one)."""
    levels = list(levels) if levels is not None else layer_scan_levels(budget)
    stored = read_scan(_path(session, operators, levels, tokens, dataset))
    if stored is None:
        return None
    return {name: {float(k): float(v) for k, v in curve.items()} for name, curve in stored["kl"].items()}


def layer_scan(session: ModelSession, budget: float, operators: Sequence[str], *,
               tokens: int = LAYER_SCAN_TOKENS, dataset: str = "lee-news", levels: Sequence[float] | None = None,
               on_step: Callable[[int, int], None] | None = None) -> LayerScan:
    """KL of each layer compressed alone at each level (cached on disk; a cache hit costs nothing)."""
    levels = list(levels) if levels is not None else layer_scan_levels(budget)
    if not levels or any(not 0.0 < k < 1.0 for k in levels):
        raise ValueError(f"levels must be keep fractions in (0, 1), got {levels}")
    cached = cached_layer_scan(session, budget, operators, tokens=tokens, dataset=dataset, levels=levels)
    if cached is not None:
        return LayerScan(cached, 0, 0.0, tokens, levels)
    op, quant = _operator(operators)
    evaluator = session.evaluator(dataset=dataset, split="search", tokens=tokens)
    start = time.perf_counter()
    curves: Curves = {}
    total, done = len(session.layers) * len(levels), 0
    if on_step:
        on_step(done, total)
    for layer in session.layers:
        curves[layer.name] = {}
        for keep in levels:
            cfg = layer_config(layer, keep, op, quant)
            config = CompressionConfig(session.loaded.model_id, {} if cfg.is_dense else {layer.name: cfg})
            with session.applied(config):
                curves[layer.name][keep] = float(evaluator.evaluate().kl or 0.0)
            done += 1
            if on_step:
                on_step(done, total)
    seconds = time.perf_counter() - start
    write_scan(_path(session, operators, levels, tokens, dataset),
               {"kl": curves, "levels": levels, "tokens": tokens, "seconds": seconds, "evaluations": total})
    return LayerScan(curves, total, seconds, tokens, levels)


class LayerDamage:
    """Per-layer damage curves f_l(keep) from a scan, evaluated for whole allocations at once."""

    def __init__(self, layers: Sequence[LinearLayer], curves: Mapping[str, Mapping[float, float]]) -> None:
        missing = [layer.name for layer in layers if layer.name not in curves]
        if missing:
            raise ValueError(f"the scan lacks {len(missing)} layer(s), e.g. {missing[0]!r}")
        self.layers = list(layers)
        self._xs: list[np.ndarray] = []
        self._ys: list[np.ndarray] = []
        for layer in self.layers:
            points = sorted((float(k), max(float(v), 0.0)) for k, v in curves[layer.name].items() if k < 1.0)
            xs = np.array([k for k, _ in points] + [1.0])
            ys = np.array([v for _, v in points] + [0.0])
            self._xs.append(xs)
            self._ys.append(np.maximum.accumulate(ys[::-1])[::-1])  # non-increasing in keep

    def lowest_level(self, i: int) -> float:
        """The lowest keep layer ``i`` was measured at."""
        return float(self._xs[i][0])

    def of_layer(self, i: int, keep: np.ndarray | float) -> np.ndarray:
        """f_i at ``keep`` (any shape): log-linear through the levels and below, quadratic to 0 at keep 1."""
        xs, ys = self._xs[i], self._ys[i]
        keep = np.asarray(keep, dtype=np.float64)
        if len(xs) == 2:  # one level: quadratic in the pruned share, through it and (1, 0)
            return ys[0] * np.square((1.0 - keep) / (1.0 - xs[0]))
        logs = np.log(np.maximum(ys[:-1], FLOOR))
        slope = (logs[1] - logs[0]) / (xs[1] - xs[0])
        inside = np.exp(np.interp(keep, xs[:-1], logs))
        below = np.exp(logs[0] + slope * (keep - xs[0]))
        top = ys[-2] * np.square((1.0 - keep) / (1.0 - xs[-2]))
        return np.where(keep < xs[0], below, np.where(keep > xs[-2], top, inside))

    def per_layer(self, keep: np.ndarray) -> np.ndarray:
        """``[L]``: each layer's damage at its keep (``keep`` in layer order)."""
        return np.array([float(self.of_layer(i, k)) for i, k in enumerate(keep)])

    def table(self, grid: np.ndarray = KEEP_GRID) -> np.ndarray:
        """``[L, len(grid)]``: every layer's damage at every keep of ``grid``."""
        return np.stack([self.of_layer(i, grid) for i in range(len(self.layers))])


def additive_allocation(damage: LayerDamage, budget: float, *, grid: np.ndarray = KEEP_GRID,
                        units: int = DP_UNITS) -> np.ndarray:
    """Per-layer keep (layer order) minimising the sum of the layers' damages with kept params <= budget.

    Dynamic programming over the layers, with each layer's keep on ``grid`` and the parameter budget
    counted in ``units`` equal parts of all the layers' parameters: exact for that discretization,
    whatever the curves' shape (a Lagrangian relaxation would be exact only for convex curves, and
    jumps between the vertices of piecewise curves). Cost: layers × len(grid) × units additions.
    """
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    table = damage.table(grid)
    params = np.array([layer.params for layer in damage.layers], dtype=np.float64)
    cost = np.rint(params[:, None] * grid[None, :] / params.sum() * units).astype(np.int64)
    target = round(budget * units)
    best = np.full(target + 1, np.inf)
    best[0] = 0.0
    choices = np.zeros((len(params), target + 1), dtype=np.int32)
    for i in range(len(params)):
        new = np.full(target + 1, np.inf)
        pick = np.zeros(target + 1, dtype=np.int32)
        for k in range(len(grid)):
            c = int(cost[i, k])
            if c > target:
                continue
            candidate = best[: target + 1 - c] + table[i, k]
            better = candidate < new[c:]
            new[c:][better] = candidate[better]
            pick[c:][better] = k
        best, choices[i] = new, pick
    if not np.isfinite(best).any():
        raise ValueError(f"budget {budget} is below the grid's smallest keep in every layer")
    b = int(np.argmin(best))
    keep = np.empty(len(params))
    for i in range(len(params) - 1, -1, -1):
        k = int(choices[i, b])
        keep[i] = grid[k]
        b -= int(cost[i, k])
    return keep
