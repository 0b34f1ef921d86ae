"""Best-so-far (search-split objective) against real evaluations for the studies in a storage; a PNG plot.

Usage: python -m bench.curves --storage sqlite:///bench/results/search/studies.db --out bench/results/search/curves.png
"""

from __future__ import annotations

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
from optuna.trial import TrialState


def curves(storage: str) -> dict[str, list[float]]:
    out = {}
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        best, curve = float("inf"), []
        for trial in sorted(study.get_trials(), key=lambda t: t.number):
            if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
                continue
            if trial.state == TrialState.COMPLETE and trial.value is not None:
                best = min(best, trial.value)
            curve.append(best)
        if len(curve) >= 10:
            out[name] = curve
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    data = curves(args.storage)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in data.items():
        ax.plot(range(1, len(curve) + 1), curve, label=name)
    ax.set_xlabel("real evaluations (trials: complete or pruned)")
    ax.set_ylabel("best KL to dense so far (search split)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    json.dump({name: [round(v, 4) for v in curve] for name, curve in data.items()}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
