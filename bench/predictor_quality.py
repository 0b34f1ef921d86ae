"""Predictor quality on real measurements: Spearman and error on held-out configs vs training size.

Usage: python -m bench.predictor_quality --storage sqlite:///bench/results/search/studies.db [--sizes 10,20,40]
Pools the fully measured trials of every study in the storage that searched the same model and
budget, shuffles them with a fixed seed, trains on the first N and scores the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import optuna
from scipy.stats import spearmanr

from compress.config import config_from_dict
from predictor.features import FeatureBuilder
from predictor.proxy import LayerProxy
from predictor.xgb import XGBPredictor
from search.context import Workbench
from search.study import SPEC_ATTR


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budget", type=float, default=0.4)
    parser.add_argument("--sizes", default="10,20,40")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    trials = []
    for name in optuna.get_all_study_names(args.storage):
        study = optuna.load_study(study_name=name, storage=args.storage)
        spec = study.user_attrs.get(SPEC_ATTR, {})
        if spec.get("model_id") == args.model and spec.get("budget") == args.budget:
            done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            trials += [t for t in done if "config" in t.user_attrs]
    session = Workbench().session(args.model)
    builder = FeatureBuilder(session.layers, LayerProxy(session))
    X = builder.matrix([config_from_dict(t.user_attrs["config"]).layers for t in trials])
    y = np.array([math.log(float(t.value)) for t in trials])  # type: ignore[arg-type]
    order = np.random.default_rng(args.seed).permutation(len(trials))
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        if size >= len(trials) - 3:
            rows.append({"n_train": size, "note": f"only {len(trials)} measured configs"})
            continue
        train, test = order[:size], order[size:]
        model = XGBPredictor(seed=args.seed).fit(X[train], y[train])
        predicted = model.predict(X[test])
        rows.append({"n_train": size, "n_test": len(test), "spearman": float(spearmanr(predicted, y[test]).statistic),
                     "mae_log": float(np.abs(predicted - y[test]).mean())})
    json.dump({"n_measured": len(trials), "results": rows}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
