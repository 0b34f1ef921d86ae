"""Config documents for "does the allocation still matter after recovery?" (issue 16).

Writes, for one model and operator, the allocations bench/recover_allocations.sh recovers: the
baselines at the study budget (uniform, OWL, sensitivity), OWL with a wider spread, uniform at
neighbouring budgets, and random per-block allocations at the study budget (seeded, budget-exact).
The search winner comes from ``slimscout search --out`` (the shell script runs it).

Usage: python -m bench.recover_allocations OUT_DIR [--budget 0.4] [--operator wanda] [--random 2]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from compress.baselines import BaselineResult, _block_operator, _config, owl, sensitivity, uniform
from compress.budget import logit_family, project_to_budget
from compress.session import ModelSession


def random_allocation(session: ModelSession, budget: float, operators: list[str], seed: int) -> BaselineResult:
    """Per-block keep drawn uniformly in [budget/2, min(1, 1.5 budget)], then moved onto the budget exactly."""
    rng = np.random.default_rng(seed)
    blocks = sorted({layer.block for layer in session.layers})
    draw = dict(zip(blocks, rng.uniform(budget / 2, min(0.98, 1.5 * budget), len(blocks)), strict=True))
    raw = np.array([draw[layer.block] for layer in session.layers])
    allocation = project_to_budget(session.layers, logit_family(raw), budget, _block_operator(session, operators))
    name = f"random-s{seed}"
    return BaselineResult(name, allocation, _config(session, name, allocation, operators, budget))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budget", type=float, default=0.4)
    parser.add_argument("--operator", default="wanda")
    parser.add_argument("--random", type=int, default=2, help="random allocations at the budget")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ops = [args.operator]
    session = ModelSession.open(args.model)
    b = args.budget
    builders: dict[str, Callable[[], BaselineResult]] = {
        f"uniform-{b}": lambda: uniform(session, b, ops),
        f"owl-{b}": lambda: owl(session, b, ops),
        f"sensitivity-{b}": lambda: sensitivity(session, b, ops),
        f"owl-wide-{b}": lambda: owl(session, b, ops, lam=0.16),
        **{f"uniform-{k}": partial(uniform, session, k, ops) for k in (0.35, 0.45, 0.5)},
        **{f"random-s{s}-{b}": partial(random_allocation, session, b, ops, s) for s in range(args.random)},
    }
    for name, build in builders.items():
        path = args.out / f"{name}.config.json"
        if path.is_file():
            continue
        result = build()
        result.config.save(path)
        print(f"{path}: keep ratio {result.allocation.keep_ratio:.4f}", flush=True)


if __name__ == "__main__":
    main()
