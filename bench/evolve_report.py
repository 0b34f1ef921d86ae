"""The evolve comparison (issue 15) as a markdown table, from ``bench/results/search/evolve/*.json``.

Usage: ``python -m bench.evolve_report`` (prints the table that BENCHMARKS.md quotes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.jobs import RESULTS

DIR = RESULTS / "search" / "evolve"
FULL_TOKENS = 1022  # one full evaluation: 2 chunks of 512 tokens, 511 predicted each
BASELINES = ("uniform", "owl", "sensitivity")


def row(result: dict[str, Any]) -> str:
    spec, summary = result["spec"], result["summary"]
    holdout = summary["holdout"]
    best = holdout["best"]["ppl"]
    seeds = {name: holdout[name]["ppl"] for name in BASELINES if name in holdout}
    best_seed = min(seeds.values())
    fee = summary["evaluated_tokens"] / FULL_TOKENS
    return (f"| {spec['operators'][0]} {spec['budget']} | {spec['strategy']} | {spec['seed']} | {spec['n_trials']} | "
            f"{fee:.1f} | {summary['best']['kl']:.4f} | "
            f"{' / '.join(f'{seeds[n]:.1f}' for n in BASELINES if n in seeds)} | **{best:.1f}** | "
            f"{best / seeds['uniform']:.2f}x | {best / best_seed:.2f}x | {result.get('wall_s', 0) / 60:.0f} |")


def main() -> None:
    print("| operator, keep | strategy | seed | trials | full-evaluation equivalents | search KL of the winner "
          "| holdout ppl uniform / OWL / sensitivity | holdout ppl winner | vs uniform | vs best seed | wall min |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(DIR.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue  # still running (the file is written at the end)
        print(row(result))


if __name__ == "__main__":
    main()
