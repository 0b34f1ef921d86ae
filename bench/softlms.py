"""SoftLMs against the other low-rank allocations at one budget, on holdout (issue 16).

In one process (the model loaded once): the SoftLMs baseline (its cost in forward/backward passes
and seconds), uniform, sensitivity, and optionally given configs (e.g. a search's winner), each
measured on the holdout split; one JSON per method under bench/results/softlms/ as it finishes.

Usage: python -m bench.softlms --budget 0.8 [--steps 16 --tokens 256] [--holdout-tokens 4096]
       [--methods softlms,uniform,sensitivity] [--extra NAME=CONFIG ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "results" / "softlms"


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--operator", default="svd-whitened")
    parser.add_argument("--budget", type=float, required=True)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--holdout-tokens", type=int, default=4096)
    parser.add_argument("--methods", default="softlms,uniform,sensitivity")
    parser.add_argument("--extra", nargs="*", default=[], help="NAME=CONFIG documents measured the same way")
    args = parser.parse_args()

    from compress.baselines import build_baseline
    from compress.config import CompressionConfig, load_config
    from compress.session import ModelSession

    OUT.mkdir(parents=True, exist_ok=True)
    session = ModelSession.open(args.model)
    holdout = session.evaluator(split="holdout", tokens=args.holdout_tokens)
    ops = [args.operator]

    def measure(name: str, config: CompressionConfig, extra: dict[str, Any]) -> None:
        start = time.perf_counter()
        session.warm(config)
        with session.applied(config):
            metrics = holdout.evaluate()
        payload = {"name": name, "model": args.model, "operator": args.operator, "budget": args.budget,
                   "keep_ratio": session.cost(config).params / session.params_linear,
                   "holdout_tokens": args.holdout_tokens, "holdout": {"ppl": metrics.ppl, "kl": metrics.kl},
                   "eval_s": time.perf_counter() - start, "loadavg_end": _load(),
                   "omp_threads": os.environ.get("OMP_NUM_THREADS"), **extra}
        (OUT / f"{args.operator}-{args.budget}-{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
        config.save(OUT / f"{args.operator}-{args.budget}-{name}.config.json")
        print(f"{name}: holdout ppl {metrics.ppl:.2f} kl {metrics.kl:.4f}", flush=True)

    for method in [m for m in args.methods.split(",") if m]:
        kwargs: dict[str, Any] = {"steps": args.steps, "tokens": args.tokens} if method == "softlms" else {}
        if method == "softlms":
            kwargs["on_step"] = lambda done, total: print(f"softlms step {done}/{total} {time.strftime('%X')}",
                                                          flush=True)
        start, load_start = time.perf_counter(), _load()
        result = build_baseline(method, session, args.budget, ops, **kwargs)
        cost = {"build_s": time.perf_counter() - start, "evaluations": result.evaluations,
                "scan_tokens": result.scan_tokens, "method_seconds": result.seconds, "loadavg_start": load_start}
        if method == "softlms":
            cost.update({k: result.details[k] for k in ("forward_passes", "backward_passes", "cached", "settings",
                                                          "history")})
        measure(method, result.config, {"cost": cost})
    for pair in args.extra:
        name, path = pair.split("=", 1)
        measure(name, load_config(path), {"config": path})


if __name__ == "__main__":
    main()
