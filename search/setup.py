"""Study setup and wrap-up: seed trials from the baselines; re-measure the winner on holdout."""

from __future__ import annotations

import logging
import time
from typing import Any

import optuna

from common.progress import StepProgress, bound
from compress.baselines import BaselineResult, build_baseline
from compress.budget import LOWRANK_OPERATORS, SPARSITY_OPERATORS, check_operators
from compress.config import CompressionConfig, config_from_dict
from search.context import Workbench
from search.optuna_adapter import SCREENING_ATTR, SETUP_ATTR, SETUP_PROGRESS_ATTR
from search.spec import StudySpec
from search.strategy_registry import get_strategy
from search.study import best_trial, measured
from search.trial_digest import digest
from search.trial_digest import metrics as trial_metrics

log = logging.getLogger(__name__)


def applicable_baselines(spec: StudySpec) -> list[str]:
    param_ops, _ = check_operators(spec.operators)
    methods = list(spec.baselines)
    if "owl" in methods and param_ops[0] not in SPARSITY_OPERATORS:
        methods.remove("owl")  # OWL allocates unstructured sparsity; it says nothing about ranks
    if "softlms" in methods and param_ops[0] not in LOWRANK_OPERATORS:
        methods.remove("softlms")  # SoftLMs learns ranks; it says nothing about sparsity
    return methods


#: The step a baseline's own long work reports as (its forward passes or training steps), beside
#: ``baseline <method>``, which starts each baseline (0 of 1) whether or not it has long work.
BASELINE_WORK = {"sensitivity": "sensitivity scan", "additive": "layer scan", "softlms": "softlms training"}


def seed_study(
    study: optuna.Study, spec: StudySpec, bench: Workbench, progress: StepProgress | None = None
) -> dict[str, BaselineResult]:
    """Build the baselines and enqueue them first, so the search starts from them. Idempotent.

    A setup cut short (its worker died, or lost the database) is run again by another worker: the
    baselines already enqueued then are not enqueued twice. ``progress`` hears every step in
    real counts (``common.progress``): the model's loading, each baseline, the scans and training
    runs the baselines need, the caches (calibration statistics, factors, ranks) built on the way,
    and the strategy's own setup (``Strategy.prepare``: evolve's level database).
    """
    if study.user_attrs.get(SETUP_ATTR):
        return {}
    if progress:
        progress("loading the model", 0, 1)
    session = bench.session(spec.model_id)
    space = bench.space(spec)
    results: dict[str, BaselineResult] = {}
    enqueued = {t.user_attrs.get("source") for t in study.get_trials(deepcopy=False)}
    for method in applicable_baselines(spec):
        if progress:
            progress(f"baseline {method}", 0, 1)
        kwargs: dict[str, Any] = (
            {"tokens": spec.sensitivity_tokens, "dataset": spec.dataset} if method == "sensitivity"
            else {"dataset": spec.dataset} if method in ("additive", "softlms") else {}
        )
        if method in BASELINE_WORK:
            kwargs["on_step"] = bound(progress, BASELINE_WORK[method])
        with session.reporting(progress):
            result = build_baseline(method, session, spec.budget_ratio, spec.operators, **kwargs)
        results[method] = result
        if f"baseline:{method}" in enqueued:
            continue
        params = space.fit_params(result.allocation.keep, result.allocation.operators)
        study.enqueue_trial(params, user_attrs={"source": f"baseline:{method}", "seed_config": result.config.to_dict()})
    get_strategy(spec.strategy).prepare(spec, bench, [r.config for r in results.values()], progress)
    scan = results.get("sensitivity")
    study.set_user_attr(
        "sensitivity_scan",
        {
            "evaluations": scan.evaluations if scan else 0,
            "tokens": scan.scan_tokens if scan else 0,
            "seconds": scan.seconds if scan else 0.0,
        },
    )
    study.set_user_attr(SETUP_ATTR, True)
    return results


def summarize(study: optuna.Study, spec: StudySpec) -> dict[str, Any]:
    """Best so far and the baselines, from the measured trials (cheap; no forward pass)."""
    trials = study.get_trials(deepcopy=False)
    seen = digest(trials)
    attrs = study.user_attrs
    scan = attrs.get("sensitivity_scan", {})
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    return {
        "best": trial_metrics(seen.best) if seen.best else None,
        "baselines": {name: trial_metrics(trial) for name, trial in seen.baselines.items()},
        "evaluations": len(finished),
        "evaluated_tokens": int(sum(t.user_attrs.get("n_tokens", 0) for t in finished)),
        "sensitivity_evaluations": scan.get("evaluations", 0),
        "sensitivity_tokens": scan.get("evaluations", 0) * scan.get("tokens", 0),
        "predictor": attrs.get("predictor"),
        "setup": attrs.get(SETUP_PROGRESS_ATTR),
        "screening": attrs.get(SCREENING_ATTR),
    }


def holdout_check(study: optuna.Study, spec: StudySpec, bench: Workbench) -> dict[str, Any]:
    """Re-measure the winner and each baseline on the holdout split (choose on search, claim on holdout)."""
    session = bench.session(spec.model_id)
    evaluator = bench.evaluator(spec.model_id, spec.dataset, "holdout", spec.holdout_tokens)
    picks: dict[str, CompressionConfig] = {}
    best = best_trial(study)
    if best is not None:
        picks["best"] = config_from_dict(best.user_attrs["config"])
    for trial in measured(study):
        source = str(trial.user_attrs.get("source", ""))
        if source.startswith("baseline:"):
            picks[source.removeprefix("baseline:")] = config_from_dict(trial.user_attrs["config"])
    out: dict[str, Any] = {"dense": _dense(evaluator), "tokens": spec.holdout_tokens}
    for name, config in picks.items():
        start = time.perf_counter()
        with session.applied(config):
            metrics = evaluator.evaluate()
        out[name] = {"ppl": metrics.ppl, "kl": metrics.kl, "cosine": metrics.cosine,
                     "seconds": time.perf_counter() - start}
    return out


def _dense(evaluator: Any) -> dict[str, Any]:
    metrics = evaluator.dense_metrics()
    return {"ppl": metrics.ppl, "kl": metrics.kl, "cosine": metrics.cosine}


def finalize(study: optuna.Study, spec: StudySpec, bench: Workbench) -> dict[str, Any]:
    summary = summarize(study, spec)
    summary["holdout"] = holdout_check(study, spec, bench)
    return summary
