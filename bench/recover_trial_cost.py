"""What one trial of the recovery-aware objective costs, against a plain ``kl`` trial, on one config.

Measures, on the same config and tokens: the plain measurement (``eval_tokens`` of forward), then the
``kl-recovered`` extra (``compress.recover.distil`` for ``--steps`` steps of 512 tokens, then the
same tokens again), as wall seconds and CPU seconds of this process (CPU seconds are less distorted by
other processes on a shared machine), with the KL before and after.

Usage: python -m bench.recover_trial_cost --model smollm2-135m --budget 0.4 --steps 8 --tokens 512 --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from compress.baselines import build_baseline
from compress.recover import RecoverSettings, distil, peak_rss_mb
from compress.session import ModelSession

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, dict[str, float]]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budget", type=float, default=0.4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    session = ModelSession.open(args.model)
    config = build_baseline("uniform", session, args.budget, ["wanda"]).config
    evaluator = session.evaluator(split="search", tokens=args.tokens)
    evaluator.reference()  # the dense reference is cached on disk once per study, not per trial
    with session.applied(config):
        plain, plain_cost = timed(evaluator.evaluate)
    student, distil_cost = timed(lambda: distil(session, config, RecoverSettings(steps=args.steps)))
    recovered, again_cost = timed(lambda: evaluator.evaluate(student))
    result = {"model": args.model, "config": f"uniform wanda keep {args.budget}", "eval_tokens": args.tokens,
              "steps": args.steps, "tokens_per_step": 512, "omp_threads": os.environ.get("OMP_NUM_THREADS"),
              "loadavg": Path("/proc/loadavg").read_text().split()[:3],
              "plain": {"kl": plain.kl, "ppl": plain.ppl, **plain_cost},
              "distil": distil_cost, "recovered_eval": again_cost,
              "recovered": {"kl": recovered.kl, "ppl": recovered.ppl}, "peak_rss_mb": peak_rss_mb()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
