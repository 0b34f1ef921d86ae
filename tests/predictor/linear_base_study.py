"""The measurement behind XGBPredictor's defaults (not collected by pytest; ~5 min on 2 cores).

    python tests/predictor/linear_base_study.py

Synthetic tasks built from the tiny model's real proxies: 400 search-like configs, y = 2 +
f(sum of per-layer sensitivity × error / 8) + N(0, 0.03), f linear, convex or exponential, with
random per-layer sensitivities; train on n configs, score on 200 held-out ones; 5 seeds.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from conftest import random_config

from compress.catalog import load_model
from compress.session import ModelSession
from predictor.features import FeatureBuilder
from predictor.proxy import LayerProxy
from predictor.xgb import XGBPredictor

VARIANTS = {"ridge+xgb": {"stack": False}, "ridge+xgb stacked": {}, "xgb only": {"linear_base": False}}
SIZES = (10, 20, 40, 80, 160)


def main() -> None:
    session = ModelSession(load_model("tiny-llama"), cache_dir=Path(tempfile.mkdtemp()),
                           calibration_tokens=512)
    proxy = LayerProxy(session)
    rng = np.random.default_rng(7)
    configs = [random_config(session, rng) for _ in range(400)]
    X = FeatureBuilder(session.layers, proxy).matrix(configs)
    errors = [proxy.errors(cfg) for cfg in configs]
    shapes = {"linear": lambda z: 0.5 * z, "convex": lambda z: 0.3 * z + 0.2 * z**2,
              "exponential": lambda z: 0.4 * z * np.exp(0.3 * z)}
    for kind, f in shapes.items():
        for n in SIZES:
            scores: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
            for seed in range(5):
                task_rng = np.random.default_rng(1000 + seed)
                sens = {layer.name: float(task_rng.lognormal(0, 0.6)) for layer in session.layers}
                z = np.array([sum(sens[k] * v for k, v in e.items()) for e in errors]) / 8.0
                extra = np.array([0.3 * max(e.values()) if kind == "exponential" else 0.0 for e in errors])
                answer = 2.0 + f(z) + extra
                y = answer + np.random.default_rng(seed).normal(0, 0.03, answer.shape)
                order = np.random.default_rng(seed).permutation(len(configs))
                train, test = order[:n], order[200:]
                for name, kwargs in VARIANTS.items():
                    pred = XGBPredictor(seed=seed, **kwargs).fit(X[train], y[train]).predict(X[test])  # type: ignore[arg-type]
                    scores[name].append((float(spearmanr(pred, answer[test]).statistic),
                                         float(np.mean(np.abs(pred - answer[test])))))
            means = {name: np.mean(np.array(v), axis=0) for name, v in scores.items()}
            line = " | ".join(f"{name}: rho {rho:.3f} mae {mae:.4f}" for name, (rho, mae) in means.items())
            print(f"{kind:11s} n={n:3d}  {line}", flush=True)


if __name__ == "__main__":
    main()
