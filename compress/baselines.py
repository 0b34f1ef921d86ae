"""The baselines every search result is judged against, each a budget-exact config.

- ``uniform``: the same keep ratio in every layer.
- ``owl``: outlier-weighted layer-wise sparsity (Yin et al. 2024). A block's outlier ratio D is the
  share of its Wanda scores |W|·‖X‖ above M times the block mean; keep ratios are D rescaled to
  a spread of 2λ around the budget (defaults M=5, λ=0.08), so outlier-rich blocks keep more.
- ``sensitivity``: ASVD-style. Each block is compressed alone at a few keep levels and measured
  (KL to dense on a small token budget); then one global threshold τ on the measured damage is
  bisected so that every block takes the smallest keep whose damage stays under τ. The scan's
  forward passes are counted and cached per (model, data, operator, levels).
- ``additive``: each layer is compressed alone at a few keep levels and measured
  (``compress.layer_scan``); the allocation minimises the sum of those per-layer KLs under the
  budget by dynamic programming over per-layer keep levels, then one logit shift makes it exact.
- ``softlms``: learned ranks (Bhatnagar et al. 2024, ``compress.softlms``): a soft threshold on each
  layer's whitened singular values, trained by distillation while the soft kept count is held on the
  budget. Low-rank operators only; its training passes are counted and cached like the scan's.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from common.errors import ConfigError
from compress.baseline_methods import BASELINE_METHODS
from compress.budget import Allocation, check_operators, layer_config, logit_family, project_to_budget
from compress.config import CompressionConfig
from compress.layer_scan import LAYER_SCAN_TOKENS, LayerDamage, additive_allocation, layer_scan
from compress.scan_cache import read_scan, scan_path, write_scan
from compress.session import ModelSession
from compress.softlms import SoftLMsSettings, learned_thresholds, lowrank_operator, project_ranks

log = logging.getLogger(__name__)
METHODS = BASELINE_METHODS


@dataclass
class BaselineResult:
    method: str
    allocation: Allocation
    config: CompressionConfig
    evaluations: int = 0  # forward passes spent (sensitivity scan), in evaluations of ``scan_tokens``
    scan_tokens: int = 0
    seconds: float = 0.0
    details: dict[str, object] = field(default_factory=dict)


def _config(
    session: ModelSession, method: str, allocation: Allocation, operators: Sequence[str], budget: float
) -> CompressionConfig:
    _, quant = check_operators(operators)
    layers = allocation.layer_configs(session.layers, quant)
    meta = {
        "method": f"baseline:{method}",
        "budget": budget,
        "operators": list(operators),
        "keep_ratio": allocation.keep_ratio,
        **({} if allocation.bits_per_weight is None else {"bits_per_weight": allocation.bits_per_weight}),
        "layer_keep": {name: round(k, 6) for name, k in allocation.keep.items()},
    }
    return CompressionConfig(session.loaded.model_id, layers, meta)


def _block_operator(session: ModelSession, operators: Sequence[str]) -> dict[str, str]:
    param_ops, _ = check_operators(operators)
    return {layer.name: param_ops[0] for layer in session.layers}


def uniform(session: ModelSession, budget: float, operators: Sequence[str]) -> BaselineResult:
    ops = _block_operator(session, operators)
    allocation = project_to_budget(session.layers, logit_family(np.full(len(session.layers), budget)), budget, ops)
    return BaselineResult("uniform", allocation, _config(session, "uniform", allocation, operators, budget))


def owl_outlier_ratios(session: ModelSession, m: float = 5.0) -> dict[int, float]:
    """Per block: the share of Wanda scores above m × the block's mean score."""
    by_block: dict[int, list[str]] = {}
    for layer in session.layers:
        by_block.setdefault(layer.block, []).append(layer.name)
    ratios = {}
    for block, names in sorted(by_block.items()):
        scores = [session.score("wanda", name).flatten() for name in names]
        flat = np.concatenate([s.float().cpu().numpy() for s in scores])
        ratios[block] = float((flat > m * flat.mean()).mean())
    return ratios


def owl(
    session: ModelSession, budget: float, operators: Sequence[str], *, m: float = 5.0, lam: float = 0.08
) -> BaselineResult:
    ratios = owl_outlier_ratios(session, m)
    values = np.array(list(ratios.values()))
    spread = values.max() - values.min()
    scaled = (values - values.min()) / (spread if spread > 0 else 1.0) * 2 * lam
    block_keep = dict(zip(ratios, scaled - scaled.mean() + budget, strict=True))
    raw = np.array([block_keep[layer.block] for layer in session.layers])
    allocation = project_to_budget(session.layers, logit_family(raw), budget, _block_operator(session, operators))
    result = BaselineResult("owl", allocation, _config(session, "owl", allocation, operators, budget))
    result.details = {"outlier_ratio": ratios, "m": m, "lambda": lam}
    return result


def sensitivity_levels(budget: float) -> list[float]:
    return sorted({round(min(0.95, max(0.05, budget * f)), 4) for f in (0.5, 0.75, 1.0, 1.5)})


def _scan_path(session: ModelSession, budget: float, operators: Sequence[str], tokens: int, dataset: str) -> Path:
    ops = _block_operator(session, operators)
    levels = sensitivity_levels(budget)
    key = {"op": sorted(set(ops.values())), "levels": levels, "tokens": tokens, "dataset": dataset}
    return scan_path(session, "sensitivity", key)


def cached_scan(
    session: ModelSession, budget: float, operators: Sequence[str], *, tokens: int = 512, dataset: str = "lee-news"
) -> dict[int, dict[float, float]] | None:
    """The stored sensitivity scan ({block: {keep: kl}}), or None when it was never run (never runs one)."""
    cached = read_scan(_scan_path(session, budget, operators, tokens, dataset))
    if cached is None:
        return None
    return {int(b): {float(k): v for k, v in d.items()} for b, d in cached["kl"].items()}


def sensitivity_scan(
    session: ModelSession,
    budget: float,
    operators: Sequence[str],
    *,
    tokens: int = 512,
    dataset: str = "lee-news",
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[dict[int, dict[float, float]], int, float]:
    """KL of each block compressed alone at each level: {block: {keep: kl}}, evaluations, seconds.

    Cached on disk per (model, data, operator, levels, tokens); a cache hit costs no forward pass.
    """
    ops = _block_operator(session, operators)
    levels = sensitivity_levels(budget)
    path = _scan_path(session, budget, operators, tokens, dataset)
    cached = cached_scan(session, budget, operators, tokens=tokens, dataset=dataset)
    if cached is not None:
        return cached, 0, 0.0
    _, quant = check_operators(operators)
    evaluator = session.evaluator(dataset=dataset, split="search", tokens=tokens)
    blocks = sorted({layer.block for layer in session.layers})
    start = time.perf_counter()
    curves: dict[int, dict[float, float]] = {}
    total, done = len(blocks) * len(levels), 0
    if on_step:
        on_step(done, total)
    for block in blocks:
        members = [layer for layer in session.layers if layer.block == block]
        curves[block] = {}
        for keep in levels:
            layers = {layer.name: layer_config(layer, keep, ops[layer.name], quant) for layer in members}
            config = CompressionConfig(session.loaded.model_id, {n: c for n, c in layers.items() if not c.is_dense})
            with session.applied(config):
                metrics = evaluator.evaluate()
            curves[block][keep] = float(metrics.kl or 0.0)
            done += 1
            if on_step:
                on_step(done, total)
    seconds = time.perf_counter() - start
    write_scan(path, {"kl": curves, "levels": levels, "tokens": tokens, "seconds": seconds})
    return curves, total, seconds


def _keep_under(curve: dict[float, float], tau: float) -> float:
    """Smallest keep whose (log-interpolated) damage is at most tau; damage at keep 1 is 0."""
    points = [*sorted(curve.items()), (1.0, 0.0)]
    for (k0, d0), (k1, d1) in itertools.pairwise(points):
        if d0 <= tau:
            return k0
        if d1 <= tau:  # interpolate between k0 (too damaging) and k1 (fine)
            frac = (d0 - tau) / (d0 - d1) if d0 > d1 else 1.0
            return k0 + frac * (k1 - k0)
    return 1.0


def sensitivity(
    session: ModelSession,
    budget: float,
    operators: Sequence[str],
    *,
    tokens: int = 512,
    dataset: str = "lee-news",
    on_step: Callable[[int, int], None] | None = None,
) -> BaselineResult:
    curves, evaluations, seconds = sensitivity_scan(
        session, budget, operators, tokens=tokens, dataset=dataset, on_step=on_step
    )
    blocks = [layer.block for layer in session.layers]
    damage_scale = max(max(c.values()) for c in curves.values()) or 1.0

    def family(t: float) -> np.ndarray:
        tau = damage_scale * float(np.exp(t))  # t in log-damage: monotone, keep grows as tau shrinks
        block_keep = {b: _keep_under(curve, tau) for b, curve in curves.items()}
        return np.array([block_keep[b] for b in blocks])

    allocation = project_to_budget(
        session.layers, lambda t: family(-t), budget, _block_operator(session, operators), lo=-5.0, hi=25.0
    )
    result = BaselineResult(
        "sensitivity",
        allocation,
        _config(session, "sensitivity", allocation, operators, budget),
        evaluations,
        tokens,
        seconds,
        {"curves": curves},
    )
    return result


def additive(
    session: ModelSession,
    budget: float,
    operators: Sequence[str],
    *,
    tokens: int = LAYER_SCAN_TOKENS,
    dataset: str = "lee-news",
    levels: Sequence[float] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> BaselineResult:
    """Minimise the sum of per-layer solo KLs (``compress.layer_scan``) under the exact budget."""
    scan = layer_scan(session, budget, operators, tokens=tokens, dataset=dataset, levels=levels, on_step=on_step)
    keep = additive_allocation(LayerDamage(session.layers, scan.curves), budget)
    # The DP's allocation is budget-exact up to its discretization; one logit shift makes it exact.
    allocation = project_to_budget(session.layers, logit_family(keep), budget, _block_operator(session, operators))
    return BaselineResult(
        "additive",
        allocation,
        _config(session, "additive", allocation, operators, budget),
        scan.evaluations,
        tokens,
        scan.seconds,
        {"levels": scan.levels},
    )


def softlms(
    session: ModelSession,
    budget: float,
    operators: Sequence[str],
    *,
    steps: int = SoftLMsSettings.steps,
    tokens: int = SoftLMsSettings.tokens,
    dataset: str = "lee-news",
    on_step: Callable[[int, int], None] | None = None,
) -> BaselineResult:
    settings = SoftLMsSettings(steps=steps, tokens=tokens, dataset=dataset)
    run = learned_thresholds(session, budget, operators, settings, on_step)
    allocation = project_ranks(session, run, budget, lowrank_operator(operators))
    passes = 0 if run.cached else run.steps
    return BaselineResult(
        "softlms",
        allocation,
        _config(session, "softlms", allocation, operators, budget),
        passes,
        run.tokens,
        0.0 if run.cached else run.seconds,
        {"thresholds": run.thresholds, "history": run.history, "cached": run.cached,
         "forward_passes": 0 if run.cached else run.forward_passes,
         "backward_passes": 0 if run.cached else run.backward_passes, "settings": asdict(settings)},
    )


def build_baseline(
    method: str, session: ModelSession, budget: float, operators: Sequence[str], **kwargs: object
) -> BaselineResult:
    if method == "uniform":
        return uniform(session, budget, operators)
    if method == "owl":
        return owl(session, budget, operators)
    if method == "sensitivity":
        return sensitivity(session, budget, operators, **kwargs)  # type: ignore[arg-type]
    if method == "additive":
        return additive(session, budget, operators, **kwargs)  # type: ignore[arg-type]
    if method == "softlms":
        return softlms(session, budget, operators, **kwargs)  # type: ignore[arg-type]
    raise ConfigError("method", f"unknown baseline {method!r} (one of {', '.join(METHODS)})")
