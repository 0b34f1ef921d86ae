"""Search spaces: a few knobs → per-layer keep ratios → a budget-exact config.

210 linear layers cannot be searched as 210 free dimensions with ~100 evaluations, so a
granularity ties layers together. Knobs are offsets in logit space around the budget; the
budget projection (one global shift, bisected) then makes every point feasible:

- ``uniform``: no knob (the uniform allocation).
- ``type``: one knob per projection type (q, k, v, o, gate, up, down).
- ``block``: a depth profile, piecewise linear through ``DEPTH_POINTS`` control points.
- ``type-block`` (default): type knobs + depth profile, added in logit space (factorized).
- ``layer``: one knob per layer.

With several parameter-reducing operators, each projection type also picks its operator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from common.errors import ConfigError
from compress.budget import Allocation, check_operators, logit, project_to_budget, sigmoid
from compress.config import CompressionConfig
from compress.layers import PROJECTION_TYPES, LinearLayer
from search.spec import DEFAULT_GRANULARITY, GRANULARITIES

DEPTH_POINTS = 5
KNOB_RANGE = (-2.5, 2.5)


@dataclass
class SearchSpace:
    layers: Sequence[LinearLayer]
    budget: float
    operators: Sequence[str]
    granularity: str = DEFAULT_GRANULARITY
    model_id: str = ""

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ConfigError("granularity", f"must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        self.param_ops, self.quant = check_operators(self.operators)
        self.types = [t for t in PROJECTION_TYPES if any(layer.type == t for layer in self.layers)]
        self.types += sorted({layer.type for layer in self.layers} - set(self.types))
        blocks = sorted({layer.block for layer in self.layers})
        self.n_blocks = len(blocks)
        self.depth = np.array([blocks.index(layer.block) / max(1, self.n_blocks - 1) for layer in self.layers])
        self.type_index = np.array([self.types.index(layer.type) for layer in self.layers])
        self.low, self.high = KNOB_RANGE

    # -- the knobs ---------------------------------------------------------------------------
    def knob_names(self) -> list[str]:
        names: list[str] = []
        if self.granularity in ("type", "type-block"):
            names += [f"type_{t}" for t in self.types]
        if self.granularity in ("block", "type-block"):
            names += [f"depth_{i}" for i in range(DEPTH_POINTS)]
        if self.granularity == "layer":
            names += [f"layer_{i}" for i in range(len(self.layers))]
        return names

    def operator_names(self) -> list[str]:
        return [f"op_{t}" for t in self.types] if len(self.param_ops) > 1 else []

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        dists: dict[str, optuna.distributions.BaseDistribution] = {
            name: optuna.distributions.FloatDistribution(self.low, self.high) for name in self.knob_names()
        }
        for name in self.operator_names():
            dists[name] = optuna.distributions.CategoricalDistribution(list(self.param_ops))
        return dists

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        params: dict[str, Any] = {name: trial.suggest_float(name, self.low, self.high) for name in self.knob_names()}
        for name in self.operator_names():
            params[name] = trial.suggest_categorical(name, list(self.param_ops))
        return params

    def sample(
        self, rng: np.random.Generator, ranges: Mapping[str, tuple[float, float]] | None = None
    ) -> dict[str, Any]:
        """A random point (for screening), optionally within shrunk knob ranges."""
        params: dict[str, Any] = {}
        for name in self.knob_names():
            lo, hi = (ranges or {}).get(name, (self.low, self.high))
            params[name] = float(rng.uniform(lo, hi))
        for name in self.operator_names():
            params[name] = str(rng.choice(self.param_ops))
        return params

    def perturb(self, params: Mapping[str, Any], rng: np.random.Generator, scale: float = 0.35) -> dict[str, Any]:
        out = dict(params)
        for name in self.knob_names():
            out[name] = float(np.clip(float(params.get(name, 0.0)) + rng.normal(0, scale), self.low, self.high))
        for name in self.operator_names():
            if rng.random() < 0.15:
                out[name] = str(rng.choice(self.param_ops))
        return out

    # -- knobs → allocation → config ---------------------------------------------------------
    def raw_logits(self, params: Mapping[str, Any]) -> np.ndarray:
        offsets = np.zeros(len(self.layers))
        if self.granularity in ("type", "type-block"):
            type_knobs = np.array([float(params[f"type_{t}"]) for t in self.types])
            offsets += type_knobs[self.type_index]
        if self.granularity in ("block", "type-block"):
            points = np.array([float(params[f"depth_{i}"]) for i in range(DEPTH_POINTS)])
            offsets += np.interp(self.depth, np.linspace(0, 1, DEPTH_POINTS), points)
        if self.granularity == "layer":
            offsets += np.array([float(params[f"layer_{i}"]) for i in range(len(self.layers))])
        return np.asarray(logit(self.budget)) + offsets

    def layer_operators(self, params: Mapping[str, Any]) -> dict[str, str]:
        if len(self.param_ops) == 1:
            return {layer.name: self.param_ops[0] for layer in self.layers}
        return {layer.name: str(params[f"op_{layer.type}"]) for layer in self.layers}

    def allocation(self, params: Mapping[str, Any]) -> Allocation:
        base = self.raw_logits(params)
        return project_to_budget(self.layers, lambda t: sigmoid(base + t), self.budget, self.layer_operators(params))

    def config(self, params: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> CompressionConfig:
        allocation = self.allocation(params)
        return to_config(self, allocation, {"method": "search", **(meta or {})})

    # -- a given allocation (a baseline) → the nearest knobs ----------------------------------
    def fit_params(self, keep: Mapping[str, float], operators: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Least-squares knobs whose logit profile is closest to a per-layer keep (for seeding)."""
        target = np.asarray(logit(np.array([keep[layer.name] for layer in self.layers]))) - np.asarray(
            logit(self.budget)
        )
        columns: list[np.ndarray] = []
        names = self.knob_names()
        if self.granularity in ("type", "type-block"):
            columns += [(self.type_index == i).astype(float) for i in range(len(self.types))]
        if self.granularity in ("block", "type-block"):
            grid = np.linspace(0, 1, DEPTH_POINTS)
            columns += [np.interp(self.depth, grid, np.eye(DEPTH_POINTS)[i]) for i in range(DEPTH_POINTS)]
        if self.granularity == "layer":
            columns += [np.eye(len(self.layers))[i] for i in range(len(self.layers))]
        params: dict[str, Any] = {}
        if columns:
            design = np.stack(columns, axis=1)
            solution, *_ = np.linalg.lstsq(design, target, rcond=None)
            if self.granularity == "type-block":  # both sets can shift; centre the depth profile
                shift = solution[len(self.types) :].mean()
                solution[len(self.types) :] -= shift
                solution[: len(self.types)] += shift
            params = {name: float(np.clip(v, self.low, self.high)) for name, v in zip(names, solution, strict=True)}
        for name in self.operator_names():
            op_type = name.removeprefix("op_")
            chosen = [operators[layer.name] for layer in self.layers if layer.type == op_type] if operators else []
            params[name] = chosen[0] if chosen else self.param_ops[0]
        return params


def enqueue_exact(
    study: optuna.Study, space: SearchSpace, allocation: Allocation, user_attrs: Mapping[str, Any]
) -> None:
    """Enqueue ``allocation`` itself, not the nearest point of the knob space.

    The trial is measured from its config document (``seed_config``, which ``search.measure_trial``
    reads); its knobs (the least-squares fit) are only what the sampler sees. ``user_attrs`` must
    name the ``source``.
    """
    config = to_config(space, allocation, {"source": user_attrs["source"]})
    study.enqueue_trial(space.fit_params(allocation.keep, allocation.operators),
                        user_attrs={**user_attrs, "seed_config": config.to_dict()})


def to_config(space: SearchSpace, allocation: Allocation, meta: Mapping[str, Any]) -> CompressionConfig:
    return CompressionConfig(
        space.model_id,
        allocation.layer_configs(space.layers, space.quant),
        {
            **meta,
            "budget": space.budget,
            "operators": list(space.operators),
            "granularity": space.granularity,
            "keep_ratio": allocation.keep_ratio,
            **({} if allocation.bits_per_weight is None else {"bits_per_weight": allocation.bits_per_weight}),
            "layer_keep": {name: round(k, 6) for name, k in allocation.keep.items()},
        },
    )
