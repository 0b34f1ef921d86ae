"""The evolve comparison (issue 15) as markdown tables, from ``bench/results/search/evolve/``.

Usage: ``python -m bench.evolve_report`` (prints the tables that BENCHMARKS.md quotes).

Two tables: the finished studies (``*.json``: holdout perplexity of the winner and the seeds), and
every study's database (``*.db``, also while it runs): the best full-fidelity search KL against the
evaluation tokens spent so far, so strategies compare at equal tokens.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import TrialState

from bench.jobs import RESULTS

DIR = RESULTS / "search" / "evolve"
FULL_TOKENS = 1022  # one full evaluation: 2 chunks of 512 tokens, 511 predicted each
BASELINES = ("uniform", "owl", "sensitivity")
CHECKPOINTS = (10, 15, 20, 24)  # full-evaluation equivalents


def row(result: dict[str, Any]) -> str:
    spec, summary = result["spec"], result["summary"]
    holdout = summary["holdout"]
    best = holdout["best"]["ppl"]
    seeds = {name: holdout[name]["ppl"] for name in BASELINES if name in holdout}
    fee = summary["evaluated_tokens"] / FULL_TOKENS
    return (f"| {spec['operators'][0]} {spec['budget']} | {spec['strategy']} | {spec['seed']} | {spec['n_trials']} | "
            f"{fee:.1f} | {summary['best']['kl']:.4f} | "
            f"{' / '.join(f'{seeds[n]:.1f}' for n in BASELINES if n in seeds)} | **{best:.1f}** | "
            f"{best / seeds['uniform']:.2f}x | {best / min(seeds.values()):.2f}x | "
            f"{result.get('wall_s', 0) / 60:.0f} |")


def curve(db: str) -> str:
    """Best full-fidelity search KL after each checkpoint of spent tokens (in full evaluations)."""
    url = f"sqlite:///{DIR / db}"
    name = optuna.get_all_study_names(url)[0]
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    done = sorted((t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
                  key=lambda t: t.datetime_complete)  # type: ignore[arg-type, return-value]
    spent, best, seeds, at = 0.0, float("inf"), float("inf"), {}
    for trial in done:
        spent += trial.user_attrs.get("n_tokens", 0) / FULL_TOKENS
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            best = min(best, float(trial.value))
            if str(trial.user_attrs.get("source", "")).startswith("baseline:"):
                seeds = min(seeds, float(trial.value))
        for point in CHECKPOINTS:
            if spent <= point + 1e-9:
                at[point] = best
    cells = " | ".join(f"{at[p]:.4f}" if p in at and spent >= p else "–" for p in CHECKPOINTS)
    return f"| {db.removesuffix('.db')} | {len(done)} | {spent:.1f} | {seeds:.4f} | {cells} | {best:.4f} |"


def main() -> None:
    print("| operator, keep | strategy | seed | trials | full-evaluation equivalents | search KL of the winner "
          "| holdout ppl uniform / OWL / sensitivity | holdout ppl winner | vs uniform | vs best seed | wall min |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(p for p in DIR.glob("*.json") if not p.name.endswith(".trials.json")):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue  # still running (the file is written at the end)
        print(row(result))
    print()
    print("| study | finished trials | full-evaluation equivalents | best seed KL | "
          + " | ".join(f"best KL at {p}" for p in CHECKPOINTS) + " | best KL |")
    print("|---|---|---|---|" + "---|" * len(CHECKPOINTS) + "---|")
    for path in sorted(DIR.glob("*.db")):
        print(curve(path.name))


if __name__ == "__main__":
    main()
