"""Can the predictor rank the configs a per-layer search proposes? Measured pairs, then cross-validation.

``measure``: a fixed set of budget-exact Wanda configs on smollm2-135m at one keep budget, built as
a per-layer level search would propose them (level-swap mutation chains from the uniform and the
additive allocations: each step moves min(U{1,3}, U{1,3}) layers one KeepGrid level down and as many
up, as EvoPress does; and random allocations, many swaps away from uniform), each measured by KL to
the dense model on the search split. Pairs are appended to a JSON file as they come (a rerun skips
those measured), so the set is reproducible and resumable.

``report``: cross-validated Spearman (all pairs and the best quarter) of the old features (keep
ratios, the diagonal proxy, the block scan when cached) against the new damage features
(``predictor.damage``: exact Gram errors, per-layer solo KLs, the additive estimate as base).

``holdout``: holdout perplexity of the uniform / sensitivity / additive baselines.

    OMP_NUM_THREADS=1 nice -n 5 python -m bench.predictor_pairs measure --budget 0.4
    python -m bench.predictor_pairs report --budget 0.4
    OMP_NUM_THREADS=1 nice -n 5 python -m bench.predictor_pairs holdout --budget 0.4
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from compress.baselines import build_baseline, cached_scan
from compress.config import CompressionConfig, LayerConfig, SparsitySpec
from compress.layer_scan import LayerDamage, cached_layer_scan
from compress.leveldb import KeepGrid
from compress.ops import pruned_per_row
from compress.session import ModelSession
from predictor import XGBPredictor, cross_validated_quality
from predictor.damage import DamageFeatures, GramCurves
from predictor.features import FeatureBuilder
from predictor.proxy import LayerProxy

MODEL = "smollm2-135m"
OPERATORS = ["wanda"]
RESULTS = Path("bench/results/predictor")
CHAINS = {"uniform": 4, "additive": 2}  # mutation chains per parent
CHAIN_LENGTH = 7
RANDOM = 11


def _pairs_path(budget: float) -> Path:
    return RESULTS / f"pairs-keep{budget}.json"


def _config(session: ModelSession, pruned: list[int]) -> CompressionConfig:
    layers = {
        layer.name: LayerConfig(sparsity=SparsitySpec(p / layer.in_features, "wanda"))
        for layer, p in zip(session.layers, pruned, strict=True) if p > 0
    }
    return CompressionConfig(MODEL, layers)


def _mutate(pruned: list[int], per_row: list[int], cols: list[int], rng: random.Random) -> list[int]:
    """EvoPress's level swap: n = min(U{1,3}, U{1,3}) layers one level down, as many one level up."""
    n = min(rng.randint(1, 3), rng.randint(1, 3))
    out = list(pruned)
    for _ in range(1000):
        down = rng.sample(range(len(out)), n)
        up = rng.sample([i for i in range(len(out)) if i not in down], n)
        if all(out[i] + per_row[i] <= cols[i] - 1 for i in down) and all(out[i] - per_row[i] >= 0 for i in up):
            for i in down:
                out[i] += per_row[i]
            for i in up:
                out[i] -= per_row[i]
            return out
    raise RuntimeError("no feasible level swap")


def candidate_set(session: ModelSession, budget: float, *, with_additive: bool) -> list[dict[str, Any]]:
    """The configs to measure, as ``{"name", "source", "pruned": [per-row pruned count per layer]}``."""
    layers = session.layers
    step = KeepGrid(budget).resolved_step(layers)
    per_row = [step // layer.out_features for layer in layers]
    cols = [layer.in_features for layer in layers]
    uniform = [pruned_per_row(layer.in_features, 1.0 - budget) for layer in layers]
    parents = {"uniform": uniform}
    if with_additive:
        keep = build_baseline("additive", session, budget, OPERATORS).allocation.keep
        parents["additive"] = [pruned_per_row(layer.in_features, 1.0 - keep[layer.name]) if keep[layer.name] < 1
                               else 0 for layer in layers]
    out = []
    for name, parent in parents.items():
        rng = random.Random(f"{name}-{budget}")
        out.append({"name": name, "source": name, "pruned": parent})
        for chain in range(CHAINS[name]):
            current = parent
            for i in range(CHAIN_LENGTH):
                current = _mutate(current, per_row, cols, rng)
                out.append({"name": f"{name}-c{chain}-m{i + 1}", "source": f"{name}-mutation", "pruned": current})
    rng = random.Random(f"random-{budget}")
    for i in range(RANDOM):
        current = uniform
        for _ in range(rng.randint(20, 120)):
            current = _mutate(current, per_row, cols, rng)
        out.append({"name": f"random-{i}", "source": "random", "pruned": current})
    return out


def measure(args: argparse.Namespace) -> None:
    session = ModelSession.open(MODEL)
    path = _pairs_path(args.budget)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else []
    done = {r["name"] for r in rows}
    with_additive = cached_layer_scan(session, args.budget, OPERATORS) is not None
    evaluator = session.evaluator(split="search", tokens=args.tokens)
    for cand in candidate_set(session, args.budget, with_additive=with_additive):
        if cand["name"] in done:
            continue
        config = _config(session, cand["pruned"])
        keep = session.cost(config).params / session.params_linear
        start = time.perf_counter()
        with session.applied(config):
            metrics = evaluator.evaluate()
        row = {**cand, "kl": metrics.kl, "ppl": metrics.ppl, "keep": keep, "tokens": args.tokens,
               "seconds": time.perf_counter() - start}
        rows.append(row)
        path.write_text(json.dumps(rows))
        print(json.dumps({k: v for k, v in row.items() if k != "pruned"}), flush=True)


def _builders(session: ModelSession, budget: float) -> dict[str, FeatureBuilder]:
    proxy = LayerProxy(session)
    scan = cached_scan(session, budget, OPERATORS)
    curves = cached_layer_scan(session, budget, OPERATORS)  # None when the per-layer scan was not run
    solo = LayerDamage(session.layers, curves) if curves is not None else None
    gram = GramCurves(session, proxy)
    return {
        "old": FeatureBuilder(session.layers, proxy, block_damage=scan),
        "new": FeatureBuilder(session.layers, proxy, block_damage=scan,
                              damage=DamageFeatures(session.layers, gram=gram, solo=solo)),
    }


def report(args: argparse.Namespace) -> None:
    session = ModelSession.open(MODEL)
    rows = json.loads(_pairs_path(args.budget).read_text())
    configs = [_config(session, r["pruned"]).layers for r in rows]
    y = np.log(np.array([r["kl"] for r in rows]))
    result: dict[str, Any] = {"budget": args.budget, "pairs": len(rows), "target": "log KL", "variants": {}}
    builders = _builders(session, args.budget)
    for name, builder in builders.items():
        X = builder.matrix(configs)
        names = builder.names()
        variants = {name: lambda: XGBPredictor(seed=0)}
        base_name = next((f for f in ("add/log", "gram/log") if f in names), None)  # as ConfigRanker picks
        if base_name is not None:
            base = names.index(base_name)
            variants[f"{name}+base:{base_name}"] = lambda base=base: XGBPredictor(seed=0, base_column=base)  # type: ignore[misc]
        for feature in ("add/log", "gram/scaled_log", "gram/log", "err/total"):
            if feature in names and f"raw:{feature}" not in result["variants"]:
                result["variants"][f"raw:{feature}"] = _raw(X[:, names.index(feature)], y)
        for label, factory in variants.items():
            runs = [cross_validated_quality(X, y, factory, seed=seed) for seed in range(args.seeds)]
            result["variants"][label] = {
                key: float(np.mean([r[key] for r in runs if r[key] is not None]))
                for key in ("spearman", "spearman_top", "mae")
            } | {"n_top": runs[0]["n_top"], "folds": runs[0]["folds"], "seeds": args.seeds}
    result["block_scan"] = scan_is_missing(builders["old"]) is False
    result["layer_scan"] = "add/log" in builders["new"].names()
    out = RESULTS / f"report-keep{args.budget}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def scan_is_missing(builder: FeatureBuilder) -> bool:
    return "scan/sum" not in builder.names()


def _raw(score: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """A feature used directly as the ranking (no fitting): Spearman over all and the best quarter."""
    from scipy.stats import spearmanr

    top = np.argsort(y)[: max(3, int(np.ceil(0.25 * len(y))))]
    return {"spearman": float(spearmanr(score, y).statistic),
            "spearman_top": float(spearmanr(score[top], y[top]).statistic)}


def holdout(args: argparse.Namespace) -> None:
    session = ModelSession.open(MODEL)
    out = RESULTS / f"holdout-keep{args.budget}.json"
    rows: list[dict[str, Any]] = json.loads(out.read_text()) if out.is_file() else []
    done = {(r["method"], r["budget"]) for r in rows}
    evaluator = session.evaluator(split="holdout", tokens=args.tokens)
    for method in args.methods.split(","):
        if (method, args.budget) in done:
            continue
        kwargs: dict[str, Any] = {}
        if method == "additive" and args.levels:
            kwargs["levels"] = [float(x) for x in args.levels.split(",")]
        start = time.perf_counter()
        result = build_baseline(method, session, args.budget, OPERATORS, **kwargs)
        built = time.perf_counter() - start
        with session.applied(result.config):
            metrics = evaluator.evaluate()
        row = {"method": method, "budget": args.budget, "ppl": metrics.ppl, "kl": metrics.kl,
               "tokens": args.tokens, "keep": result.allocation.keep_ratio, "scan_evaluations": result.evaluations,
               "scan_seconds": result.seconds, "build_seconds": built, **kwargs}
        rows.append(row)
        out.write_text(json.dumps(rows, indent=2))
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    m = sub.add_parser("measure")
    m.add_argument("--budget", type=float, default=0.4)
    m.add_argument("--tokens", type=int, default=1024)
    m.set_defaults(run=measure)
    r = sub.add_parser("report")
    r.add_argument("--budget", type=float, default=0.4)
    r.add_argument("--seeds", type=int, default=3, help="cross-validation fold shuffles averaged")
    r.set_defaults(run=report)
    h = sub.add_parser("holdout")
    h.add_argument("--budget", type=float, default=0.4)
    h.add_argument("--tokens", type=int, default=4096)
    h.add_argument("--methods", default="uniform,sensitivity,additive")
    h.add_argument("--levels", default="", help="additive: scan levels (default: the budget's)")
    h.set_defaults(run=holdout)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
