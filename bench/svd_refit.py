"""Does refitting whitened SVD's second factor lower the output error (issue 17)?

Whitened SVD (SVD-LLM) truncates ``W S`` where ``S S^T = G + λI`` is the damped calibration Gram:
its rank-r product ``L R`` is optimal for the *damped* Gram. With ``R`` fixed, the left factor
that is least-squares optimal on the undamped calibration Gram ``G`` has a closed form,
``L* = W G R^T (R G R^T)^{-1}``. On the calibration inputs it can only lower the error; whether it
does on held-out inputs is the question. Per layer: relative output error
``tr((W - A) G (W - A)^T) / tr(W G W^T)`` on the calibration and the holdout Grams, for the whitened
product and the refit one, at the rank a uniform keep fraction gives.

Usage: python -m bench.svd_refit [--keep 0.8] [--every 3] [--holdout-tokens 4096]
       (→ bench/results/reconstruction/svd-refit-<keep>.json)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from compress.calibration import collect_stats
from compress.data import token_stream
from compress.ops.lowrank import svd_factors
from compress.session import ModelSession

OUT = Path(__file__).resolve().parent / "results" / "reconstruction"


def relative_error(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    diff = weight - approx
    return float(torch.trace(diff @ gram @ diff.T) / torch.trace(weight @ gram @ weight.T))


def refit_left(weight: torch.Tensor, right: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """argmin_L tr((W - L R) G (W - L R)^T) for fixed R: W G R^T (R G R^T)^{-1}."""
    return torch.linalg.solve((right @ gram @ right.T).T, (weight @ gram @ right.T).T).T


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--keep", type=float, default=0.8)
    parser.add_argument("--every", type=int, default=3, help="every k-th block (all of its layers)")
    parser.add_argument("--holdout-tokens", type=int, default=4096)
    args = parser.parse_args()
    start = time.perf_counter()
    session = ModelSession.open(args.model)
    calib = session.stats()
    holdout_ids = token_stream("lee-news", "holdout", session.loaded.tokenizer).ids[: args.holdout_tokens]
    layers = [layer for layer in session.layers if int(layer.name.split(".")[2]) % args.every == 0]
    holdout = collect_stats(session.model, session.layers, holdout_ids)
    rows: list[dict[str, Any]] = []
    for layer in layers:
        w = session.dense_weight(layer.name).double()
        g_cal, g_hold = calib.gram(layer.name).double(), holdout.gram(layer.name).double()
        out_f, in_f = w.shape
        rank = int(args.keep * out_f * in_f / (out_f + in_f))
        factors = svd_factors(w, g_cal)
        left, right = factors.left[:, :rank].double(), factors.right[:rank].double()
        whitened = left @ right
        refit = refit_left(w, right, g_cal) @ right
        rows.append({"layer": layer.name, "rank": rank,
                     "calibration": {"whitened": relative_error(w, whitened, g_cal),
                                     "refit": relative_error(w, refit, g_cal)},
                     "holdout": {"whitened": relative_error(w, whitened, g_hold),
                                 "refit": relative_error(w, refit, g_hold)}})
        r = rows[-1]
        print(f"{layer.name:40s} r={rank:4d} cal {r['calibration']['whitened']:.4f}->{r['calibration']['refit']:.4f}"
              f"  holdout {r['holdout']['whitened']:.4f}->{r['holdout']['refit']:.4f}", flush=True)

    def ratio(split: str) -> list[float]:
        return sorted(r[split]["refit"] / r[split]["whitened"] for r in rows)

    summary = {split: {"median_ratio": ratio(split)[len(rows) // 2], "min": ratio(split)[0], "max": ratio(split)[-1],
                       "layers_lower": sum(x < 1 for x in ratio(split))} for split in ("calibration", "holdout")}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"svd-refit-{args.keep}.json"
    path.write_text(json.dumps({"model": args.model, "keep": args.keep, "layers": len(rows), "summary": summary,
                                "seconds": time.perf_counter() - start, "rows": rows}, indent=1) + "\n")
    print(json.dumps(summary, indent=1), "->", path)


if __name__ == "__main__":
    main()
