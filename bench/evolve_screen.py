"""Issue 15: evolve with and without the predictor screening its offspring, at equal measured trials.

    nice -n 5 env OMP_NUM_THREADS=1 SLIMSCOUT_HEARTBEAT_INTERVAL_S=3600 \\
        python -m bench.evolve_screen run --screen-factor 4 --trials 41    # and --screen-factor 1
    python -m bench.evolve_screen report [--cv]                           # markdown; report.json beside the studies

``run``: one evolve study on smollm2-135m (Wanda keep 0.4, KL on 1,024 search tokens = two 512-token
chunks, so offspring are screened and first measured on 512; by default the uniform seed only, the
first parent of both arms; winner and seeds re-measured on ``--holdout-tokens`` holdout tokens) into
``bench/results/evolve/NAME.db`` and, when it finishes, ``NAME.json``. ``report`` reads every study
database there, finished or not:

- the best full-fidelity search KL after the first 10, 20, 30, ... finished trials (equal measured trials);
- what screening saved (the study's ``screening`` attribute);
- among the offspring of generations 1 on (generation 0 is never screened: the ranker has too few
  measurements), how many beat their parent on the first chunk, and their median first-chunk KL over the
  parent's: screened (the ranker's best quarter) against unscreened draws;
- the ranker's prospective Spearman: its ``screen_score`` before measurement against the measured
  first-chunk KL of the screened offspring, over all of them and over the best quarter by measured KL;
- ``--cv``: the cross-validated Spearman (all, best quarter) of the ranker's model (damage features,
  XGBoost on the residual of its additive base) on each study's distinct first-chunk measurements.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import spearmanr

from bench.jobs import RESULTS

DIR = RESULTS / "evolve"
FULL_TOKENS = 1022  # one full evaluation: 2 chunks of 512 tokens, 511 predicted each
CHECKPOINTS = (10, 20, 30, 40, 60, 80)


def name_of(args: argparse.Namespace) -> str:
    return f"wanda-{args.budget}-evolve-n{args.trials}-s{args.seed}-k{args.screen_factor}-{'+'.join(args.baselines)}"


def run(args: argparse.Namespace) -> None:
    from search.runner import run_search
    from search.spec import StudySpec

    spec = StudySpec(model_id=args.model, budget=args.budget, operators=["wanda"], strategy="evolve",
                     n_trials=args.trials, eval_tokens=1024, holdout_tokens=args.holdout_tokens, seed=args.seed,
                     baselines=args.baselines, prune=False, screen_factor=args.screen_factor)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name_of(args)
    started = time.time()
    summary = run_search(spec, storage_url=f"sqlite:///{(out / name).resolve()}.db", study_name=name)
    summary.pop("best_config", None)
    result = {"study": name, "spec": spec.to_dict(), "summary": summary, "wall_s": time.time() - started}
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def _top_quarter(predicted: list[float], measured: list[float]) -> tuple[list[float], list[float]]:
    order = np.argsort(measured, kind="stable")[: max(3, math.ceil(len(measured) / 4))]
    return [predicted[i] for i in order], [measured[i] for i in order]


def study_report(db: Path, cv: bool) -> dict[str, Any]:
    url = f"sqlite:///{db}"
    name = optuna.get_all_study_names(url)[0]
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    done = sorted((t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
                  key=lambda t: t.datetime_complete)  # type: ignore[arg-type, return-value]
    best, spent, at = math.inf, 0.0, {}
    for count, trial in enumerate(done, start=1):
        spent += trial.user_attrs.get("n_tokens", 0) / FULL_TOKENS
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            best = min(best, float(trial.value))
        if count in CHECKPOINTS:
            at[count] = best
    seeds = [float(t.value) for t in done if t.state == TrialState.COMPLETE and t.value is not None
             and str(t.user_attrs.get("source", "")).startswith("baseline:")]

    def cheap(trial: FrozenTrial) -> float:
        return float(trial.intermediate_values[0])

    later = [t for t in done if t.user_attrs.get("source") == "evolve" and t.user_attrs.get("stage") == 0
             and int(t.user_attrs["generation"]) >= 1]
    ratios = [cheap(t) / cheap(by_number[int(t.user_attrs["parent"])]) for t in later]
    scored = [t for t in later if "screen_score" in t.user_attrs]
    predicted = [float(t.user_attrs["screen_score"]) for t in scored]
    measured = [math.log(cheap(t)) for t in scored]
    out: dict[str, Any] = {
        "study": name, "finished": len(done), "full_evaluations": spent, "best_seed_kl": min(seeds, default=None),
        "best_kl_at": at, "best_kl": best if math.isfinite(best) else None,
        "screening": study.user_attrs.get("screening"),
        "offspring_g1": len(later), "ahead_of_parent_g1": sum(r < 1.0 for r in ratios),
        "median_ratio_to_parent_g1": statistics.median(ratios) if ratios else None,
        "prospective": {"n": len(scored), "spearman": _spearman(predicted, measured),
                        "spearman_top": _spearman(*_top_quarter(predicted, measured))},
    }
    if cv:
        out["cv"] = cross_validated(study, trials)
    summary = db.with_suffix(".json")
    if summary.exists():
        result = json.loads(summary.read_text())
        out["holdout"] = result["summary"].get("holdout")
        out["wall_s"] = result.get("wall_s")
    return out


def cross_validated(study: optuna.Study, trials: list[FrozenTrial]) -> dict[str, Any]:
    """Out-of-fold Spearman of ConfigRanker's fitted model on the study's distinct first-chunk pairs."""
    from compress.session import ModelSession
    from predictor.rank import damage_builder
    from predictor.report import cross_validated_quality
    from predictor.xgb import XGBPredictor
    from search.spec import StudySpec
    from search.strategies.evolve import measured_pairs

    spec = StudySpec.from_dict(study.user_attrs["slimscout"])
    session = ModelSession.open(spec.model_id)
    builder = damage_builder(session, spec.budget_ratio, spec.operators, dataset=spec.dataset)
    configs, values = measured_pairs(trials, 512, 512)
    base = next(name for name in ("add/log", "gram/log") if name in builder.names())
    quality = cross_validated_quality(builder.matrix(configs), np.log(values),
                                      lambda: XGBPredictor(seed=0, base_column=builder.names().index(base)))
    return {key: quality[key] for key in ("n_train", "spearman", "spearman_top", "n_top", "mae")} | {"base": base}


def fmt(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def report(args: argparse.Namespace) -> None:
    rows = [study_report(db, args.cv) for db in sorted(Path(args.dir).glob("*.db"))]
    (Path(args.dir) / "report.json").write_text(json.dumps(rows, indent=1))
    print("| study | finished | full-eval equivalents | best seed KL | "
          + " | ".join(f"best KL at {c}" for c in CHECKPOINTS) + " | screened out (tokens saved; ranker s) |")
    print("|---|---|---|---|" + "---|" * len(CHECKPOINTS) + "---|")
    for r in rows:
        screening = r["screening"] or {}
        print(f"| {r['study']} | {r['finished']} | {r['full_evaluations']:.1f} | {fmt(r['best_seed_kl'])} | "
              + " | ".join(fmt(r["best_kl_at"].get(c)) for c in CHECKPOINTS)
              + f" | {screening.get('screened_out', 0)} ({screening.get('saved_tokens', 0):,}; "
              f"{screening.get('rank_s', 0):.1f}) |")
    print()
    print("| study | offspring, generations 1+ | ahead of parent on 512 tokens | median KL / parent's | "
          "prospective Spearman all / best quarter (n) | CV Spearman all / best quarter (n) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        p, cv = r["prospective"], r.get("cv") or {}
        print(f"| {r['study']} | {r['offspring_g1']} | {r['ahead_of_parent_g1']} | "
              f"{fmt(r['median_ratio_to_parent_g1'])} | {fmt(p['spearman'], 2)} / {fmt(p['spearman_top'], 2)} "
              f"({p['n']}) | {fmt(cv.get('spearman'), 2)} / {fmt(cv.get('spearman_top'), 2)} "
              f"({cv.get('n_train', '–')}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True)
    one = sub.add_parser("run")
    one.add_argument("--screen-factor", type=int, required=True)
    one.add_argument("--trials", type=int, default=41)
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--budget", type=float, default=0.4)
    one.add_argument("--holdout-tokens", type=int, default=4096)
    one.add_argument("--model", default="smollm2-135m")
    one.add_argument("--baselines", type=lambda text: text.split(","), default=["uniform"],
                     help="comma-separated seeds (default uniform: the sensitivity scan costs 120 evaluations)")
    one.add_argument("--dir", default=str(DIR))
    one.set_defaults(handler=run)
    table = sub.add_parser("report")
    table.add_argument("--cv", action="store_true")
    table.add_argument("--dir", default=str(DIR))
    table.set_defaults(handler=report)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
