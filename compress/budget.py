"""Per-layer keep ratios → budget-exact layer configs.

The operators come from ``compress.registry``, by family: ``sparsity`` (unstructured, e.g.
``wanda`` / ``magnitude``), ``lowrank`` (``svd`` / ``svd-whitened``), ``nm`` (N:M sparsity, a
fixed keep of N/M or dense: ``nm-2:4`` / ``nm-4:8``) reduce a layer's parameters; ``quant``
operators (``int8`` / ``int4`` / ``sdq``) quantize what is stored on top (bytes, not params). A
keep ratio becomes a setting of the operator's method by exact rounding (whole weights per row,
whole ranks); the tables below are derived from the registry, never written here.

``project_to_budget`` finds one global scalar ``t`` by bisection so that the configs of a
monotone family ``keep(t)`` meet the budget: every config that reaches a worker is feasible by
construction. Costs are computed in closed form with numpy (microseconds per step) and agree with
``compress.accounting`` exactly (tested).

**Budgets in bits.** An operator list of quantizers only is a budget in bits: the budget is then
the fraction of the dense 16 bits per linear-layer weight (``budget_bits / 16``), a layer's "keep"
is its share of 16 bits, and it takes the widest of its operator's bit widths (the method's
``bits`` in the registry, the operator's other settings kept) whose exact stored bits per weight
(``compress.accounting``: codes, scales, outliers) fit under ``16 * keep``, or the narrowest when
none fits; keep 1 leaves it dense. The same projection then meets the budget in stored bits, so
every baseline and search space works unchanged.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.errors import BudgetError, ConfigError
from compress.accounting import layer_cost
from compress.config import LayerConfig, LowRankSpec, QuantSpec, SparsitySpec, parse_nm
from compress.layers import LinearLayer
from compress.ops import default_group_size
from compress.registry import DENSE_BITS, method_info, operators_of
from compress.registry import OPERATORS as REGISTRY

# operator -> the method its layer entries name
SPARSITY_OPERATORS: dict[str, str] = {name: REGISTRY[name].method for name in operators_of("sparsity")}
LOWRANK_OPERATORS: dict[str, str] = {name: REGISTRY[name].method for name in operators_of("lowrank")}
# operator -> (N, M), and the method it prunes with
NM_OPERATORS: dict[str, tuple[int, int]] = {
    name: parse_nm(str(REGISTRY[name].preset["pattern"]), "pattern") for name in operators_of("nm")
}
NM_METHODS: dict[str, str] = {name: REGISTRY[name].method for name in operators_of("nm")}
QUANT_OPERATORS: dict[str, QuantSpec] = {
    name: QuantSpec(**REGISTRY[name].preset, method=REGISTRY[name].method)  # type: ignore[arg-type]
    for name in operators_of("quant")
}
# Quant methods whose group size is chosen per layer (their operators' presets name none).
PER_LAYER_GROUPS = frozenset(REGISTRY[name].method for name in operators_of("quant")
                             if "group_size" not in REGISTRY[name].preset)
PARAM_OPERATORS = (*SPARSITY_OPERATORS, *LOWRANK_OPERATORS, *NM_OPERATORS)
OPERATORS = (*PARAM_OPERATORS, *QUANT_OPERATORS)
MIN_KEEP = 0.02
BUDGET_TOLERANCE = 0.005  # relative


def check_operators(operators: Sequence[str]) -> tuple[list[str], QuantSpec | None]:
    """Split an operator list into the per-layer operators and the quantizer stacked on them.

    With a parameter-reducing operator (a keep budget): those, and at most one quantizer that can
    stack on them. Quantizers only (a budget in bits): the quantizers are the per-layer operators,
    nothing is stacked.
    """
    unknown = [op for op in operators if op not in OPERATORS]
    if unknown:
        raise ConfigError("operators", f"unknown operator {unknown[0]!r} (one of {', '.join(OPERATORS)})")
    param_ops = [op for op in operators if op in PARAM_OPERATORS]
    quant_ops = [op for op in operators if op in QUANT_OPERATORS]
    if not operators:
        raise ConfigError("operators", "need at least one operator")
    if not param_ops:
        return quant_ops, None
    if len(quant_ops) > 1:
        raise ConfigError("operators", f"at most one quantizer, got {', '.join(quant_ops)}")
    if quant_ops and not method_info("quant", QUANT_OPERATORS[quant_ops[0]].method).stacks:
        raise ConfigError("operators", f"{quant_ops[0]} quantises whole dense layers: it cannot stack on "
                                       f"{', '.join(param_ops)} (use it alone, under a budget in bits)")
    return param_ops, QUANT_OPERATORS[quant_ops[0]] if quant_ops else None


def is_bits_budget(operators: Sequence[str]) -> bool:
    """Quantizers only: the budget is a fraction of the dense 16 bits per weight, not of the parameters."""
    return bool(operators) and all(op in QUANT_OPERATORS for op in operators)


def layer_quant(layer: LinearLayer, quant: QuantSpec) -> QuantSpec:
    """``quant`` for ``layer``: a method that needs whole groups gets ``default_group_size`` of its inputs."""
    if quant.method in PER_LAYER_GROUPS:
        group = default_group_size(layer.in_features)
        if group != quant.group_size:
            return _quant(quant.bits, group, quant.outliers, quant.method)
    return quant


@functools.lru_cache(maxsize=1 << 12)
def _quant(bits: int, group_size: int, outliers: str | None, method: str) -> QuantSpec:
    return QuantSpec(bits, group_size, outliers, method)


@functools.lru_cache(maxsize=1 << 12)
def bits_levels(layer: LinearLayer, operator: str) -> tuple[tuple[int, QuantSpec], ...]:
    """(stored bits, setting) of ``layer`` at each of ``operator``'s bit widths, cheapest first."""
    preset = QUANT_OPERATORS[operator]
    levels = []
    for bits in method_info("quant", preset.method).bits:
        spec = layer_quant(layer, _quant(bits, preset.group_size, preset.outliers, preset.method))
        levels.append((8 * layer_cost(layer, LayerConfig(quant=spec)).bytes, spec))
    return tuple(sorted(levels, key=lambda level: level[0]))


def _bits_level(layer: LinearLayer, operator: str, keep: float) -> QuantSpec:
    """The widest level whose bits per weight fit under ``DENSE_BITS * keep`` (else the narrowest)."""
    levels = bits_levels(layer, operator)
    fits = [spec for bits, spec in levels if bits <= DENSE_BITS * keep * layer.params]
    return fits[-1] if fits else levels[0][1]


class BitsTable:
    """Exact stored bits of each layer at each level (dense last), for the projection of a bits budget."""

    def __init__(self, layers: Sequence[LinearLayer], operators: Sequence[str]) -> None:
        tables = [bits_levels(layer, op) for layer, op in zip(layers, operators, strict=True)]
        width = max(len(table) for table in tables) + 1
        self.params = np.array([layer.params for layer in layers], dtype=np.int64)
        self.bits = np.full((len(layers), width), np.iinfo(np.int64).max, dtype=np.int64)
        self.count = np.array([len(table) + 1 for table in tables])
        for i, table in enumerate(tables):
            self.bits[i, : len(table) + 1] = [*(bits for bits, _ in table), DENSE_BITS * self.params[i]]

    def level(self, keep: np.ndarray) -> np.ndarray:
        """Each layer's level index under ``_bits_level``'s rule (the last one, dense, at keep 1)."""
        fits = self.bits[:, :-1] <= (DENSE_BITS * keep * self.params)[:, None]
        index = np.maximum(fits.sum(axis=1) - 1, 0)
        return np.where(keep >= 1.0, self.count - 1, np.minimum(index, self.count - 2))

    def cost(self, keep: np.ndarray) -> np.ndarray:
        """Stored bits per layer."""
        return self.bits[np.arange(len(keep)), self.level(keep)]

    def refine(self, keep: np.ndarray, target: float) -> tuple[np.ndarray, int]:
        """Move single layers one level up or down while that brings the total closer to ``target``.

        The bisection moves layers in tied groups (a block's layers share a keep), whose steps can
        be too coarse for the tolerance; single-layer steps are not.
        """
        rows = np.arange(len(keep))
        level = self.level(keep)
        kept = int(self.bits[rows, level].sum())
        while True:
            current = self.bits[rows, level]
            up = np.where(level + 1 < self.count, self.bits[rows, np.minimum(level + 1, self.count - 1)] - current, 0)
            down = np.where(level > 0, self.bits[rows, np.maximum(level - 1, 0)] - current, 0)
            gaps = np.abs(kept + np.concatenate([up, down]) - target)
            best = int(np.argmin(gaps))
            if gaps[best] >= abs(kept - target):
                break
            i, step = best % len(keep), (1 if best < len(keep) else -1)
            kept += int(up[i] if step == 1 else down[i])
            level[i] += step
        chosen = self.bits[rows, level]
        # the keep of a level: just above its bits, so that _bits_level picks it again
        keep = np.where(level == self.count - 1, 1.0, (chosen + 0.5) / (DENSE_BITS * self.params))
        return keep, kept


@dataclass(frozen=True)
class LayerArrays:
    """Layer shapes as numpy arrays, for vectorized cost computation."""

    rows: np.ndarray
    cols: np.ndarray

    @classmethod
    def of(cls, layers: Sequence[LinearLayer]) -> LayerArrays:
        return cls(
            np.array([layer.out_features for layer in layers], dtype=np.int64),
            np.array([layer.in_features for layer in layers], dtype=np.int64),
        )

    @property
    def params(self) -> np.ndarray:
        return self.rows * self.cols


def _sparse_pruned(cols: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return np.clip(np.round((1.0 - keep) * cols), 0, cols - 1).astype(np.int64)


def _ranks(arrays: LayerArrays, keep: np.ndarray) -> np.ndarray:
    full = np.minimum(arrays.rows, arrays.cols)
    return np.clip(np.floor(keep * arrays.params / (arrays.rows + arrays.cols)), 1, full).astype(np.int64)


def kept_params(arrays: LayerArrays, keep: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Exact stored parameters per layer. kinds: 0 sparse, 1 low rank, 2 N:M (keep is N/M or 1)."""
    dense = arrays.params
    sparse = arrays.rows * (arrays.cols - _sparse_pruned(arrays.cols, keep))
    ranks = _ranks(arrays, keep)
    lowrank = np.where(ranks * (arrays.rows + arrays.cols) < dense, ranks * (arrays.rows + arrays.cols), dense)
    nm = np.where(keep < 1.0, np.round(dense * keep), dense).astype(np.int64)
    out = np.where(kinds == 0, sparse, np.where(kinds == 1, lowrank, nm))
    return np.where(keep >= 1.0, dense, out)


def layer_config(layer: LinearLayer, keep: float, operator: str, quant: QuantSpec | None = None) -> LayerConfig:
    """The setting of ``operator`` that keeps ``keep`` of the layer (rounded as ``kept_params`` does).

    A quantizer as ``operator`` (a budget in bits): ``keep`` is the layer's share of 16 bits per weight.
    """
    if quant is not None:
        quant = layer_quant(layer, quant)
    if keep >= 1.0:
        return _layer(None, None, quant)
    if operator in QUANT_OPERATORS:
        return _layer(None, None, _bits_level(layer, operator, keep))
    # Scalar twins of _sparse_pruned and _ranks (same rounding): a search builds ~10^5 of these per round.
    if operator in SPARSITY_OPERATORS:
        cols = layer.in_features
        pruned = min(max(round((1.0 - keep) * cols), 0), cols - 1)
        ratio = pruned / cols
        return _layer(None, _sparsity(ratio, SPARSITY_OPERATORS[operator], "unstructured") if pruned else None, quant)
    if operator in LOWRANK_OPERATORS:
        full = min(layer.out_features, layer.in_features)
        rank = min(max(math.floor(keep * layer.params / (layer.in_features + layer.out_features)), 1), full)
        if rank * (layer.in_features + layer.out_features) >= layer.params:
            return _layer(None, None, quant)
        return _layer(_lowrank(rank, LOWRANK_OPERATORS[operator]), None, quant)
    if operator in NM_OPERATORS:
        n, m = NM_OPERATORS[operator]
        return _layer(None, _sparsity(1 - n / m, NM_METHODS[operator], f"{n}:{m}"), quant)
    raise ConfigError("operators", f"unknown operator {operator!r}")


# The settings are frozen and validated on construction (a few µs each): memoized, since a search
# asks for the same few thousand settings ~10^5 times per round.
@functools.lru_cache(maxsize=1 << 16)
def _sparsity(ratio: float, method: str, pattern: str) -> SparsitySpec:
    return SparsitySpec(ratio, method, pattern)


@functools.lru_cache(maxsize=1 << 16)
def _lowrank(rank: int, method: str) -> LowRankSpec:
    return LowRankSpec(rank, method)


@functools.lru_cache(maxsize=1 << 16)
def _layer(lowrank: LowRankSpec | None, sparsity: SparsitySpec | None, quant: QuantSpec | None) -> LayerConfig:
    return LayerConfig(lowrank=lowrank, sparsity=sparsity, quant=quant)


def _kinds(operators: Sequence[str]) -> np.ndarray:
    """0 sparse, 1 low rank, 2 N:M, 3 a quantizer (a budget in bits)."""
    return np.array([0 if op in SPARSITY_OPERATORS else 1 if op in LOWRANK_OPERATORS else 2 if op in NM_OPERATORS
                     else 3 for op in operators])


@dataclass(frozen=True)
class Allocation:
    """A budget-exact per-layer allocation: keep ratio and operator per layer, and its exact cost."""

    keep: dict[str, float]
    operators: dict[str, str]
    params_kept: int
    params_linear: int
    t: float
    bits: int | None = None  # a budget in bits: the stored bits of the linear layers

    @property
    def keep_ratio(self) -> float:
        return self.params_kept / self.params_linear

    @property
    def bits_per_weight(self) -> float | None:
        return None if self.bits is None else self.bits / self.params_linear

    def layer_configs(self, layers: Sequence[LinearLayer], quant: QuantSpec | None = None) -> dict[str, LayerConfig]:
        configs = {
            layer.name: layer_config(layer, self.keep[layer.name], self.operators[layer.name], quant)
            for layer in layers
        }
        return {name: cfg for name, cfg in configs.items() if not cfg.is_dense}


def project_to_budget(
    layers: Sequence[LinearLayer],
    family: Callable[[float], np.ndarray],
    budget: float,
    operators: Mapping[str, str],
    *,
    lo: float = -30.0,
    hi: float = 30.0,
    tolerance: float = BUDGET_TOLERANCE,
) -> Allocation:
    """Bisect ``t`` so that ``family(t)`` (per-layer keep, increasing in t) meets ``budget`` exactly.

    N:M layers take keep N/M when their keep falls below 1 (else dense). Raises BudgetError when no t
    reaches the budget within ``tolerance``.
    """
    if not 0.0 < budget <= 1.0:
        raise BudgetError(f"budget must be in (0, 1], got {budget}")
    arrays = LayerArrays.of(layers)
    ops = [operators[layer.name] for layer in layers]
    bits = is_bits_budget(ops)
    kinds = _kinds(ops)
    nm_keep = np.array([NM_OPERATORS[op][0] / NM_OPERATORS[op][1] if op in NM_OPERATORS else 0.0 for op in ops])
    params = int(arrays.params.sum())
    if bits:
        table = BitsTable(layers, ops)
        layer_costs = table.cost
        total, unit = DENSE_BITS * params, DENSE_BITS
    else:
        def layer_costs(keep: np.ndarray) -> np.ndarray:
            return kept_params(arrays, keep, kinds)

        total, unit = params, 1
    target = budget * total

    def keep_at(t: float) -> np.ndarray:
        keep = np.clip(family(t), MIN_KEEP, 1.0)
        return np.where(kinds == 2, np.where(keep < 1.0, nm_keep, 1.0), keep)

    def cost(t: float) -> int:
        return int(layer_costs(keep_at(t)).sum())

    def reach(value: int) -> str:
        return f"{value / params:.3f} bits per weight" if bits else f"keep ratio {value / total:.3f}"

    if cost(hi) < target * (1 - tolerance) or cost(lo) > target * (1 + tolerance):
        raise BudgetError(
            f"budget {budget * unit:g}{' bits per weight' if bits else ''} is out of reach with operators "
            f"{sorted(set(ops))} (reachable: {reach(cost(lo))} to {reach(cost(hi))})"
        )
    for _ in range(100):
        mid = (lo + hi) / 2
        if cost(mid) > target:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-9:
            break
    keep, kept = _settle(keep_at(lo), keep_at(hi), layer_costs, target)
    if bits and abs(kept - target) > tolerance * target:
        keep, kept = table.refine(keep, target)
    if abs(kept - target) > tolerance * target:
        raise BudgetError(
            f"budget {budget * unit:g}: the closest feasible allocation reaches {reach(kept)} "
            f"({'bit widths' if bits else 'N:M layers'} come in steps; add a finer operator)"
        )
    return Allocation(
        {layer.name: float(k) for layer, k in zip(layers, keep, strict=True)},
        {layer.name: op for layer, op in zip(layers, ops, strict=True)},
        params if bits else kept,
        params,
        (lo + hi) / 2,
        kept if bits else None,
    )


def _settle(
    keep_lo: np.ndarray, keep_hi: np.ndarray, layer_costs: Callable[[np.ndarray], np.ndarray], target: float
) -> tuple[np.ndarray, int]:
    """Between the two sides of the bisection, move layers one by one from the lower to the higher
    setting while that brings the cost closer to the target (many layers can step at the same t)."""
    cost_lo = layer_costs(keep_lo)
    step = layer_costs(keep_hi) - cost_lo
    keep, kept = keep_lo.copy(), int(cost_lo.sum())
    for i in np.argsort(step, kind="stable"):
        if step[i] > 0 and abs(kept + step[i] - target) < abs(kept - target):
            keep[i], kept = keep_hi[i], kept + int(step[i])
    return keep, kept


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def logit_family(raw_keep: np.ndarray) -> Callable[[float], np.ndarray]:
    """keep(t) = sigmoid(logit(raw) + t): the shape of ``raw_keep``, moved to the budget by t."""
    base = logit(raw_keep)
    return lambda t: sigmoid(base + t)
