"""The measurements behind BENCHMARKS.md, one function per kind of job; each returns a JSON-able dict.

Every job runs on the real model and real text. Studies live in ``bench/results/bench.db`` under a
name derived from their parameters, so a job that was interrupted resumes where it stopped and a
study shared by two suites is measured once. Searches in the benchmark never prune: every
evaluation then costs the same tokens, and "the same number of real evaluations" is a fair match.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
STORAGE = f"sqlite:///{RESULTS / 'bench.db'}"
MODEL = "smollm2-135m"


def study_name(spec: Any) -> str:
    ops = "+".join(spec.operators)
    return (f"{spec.model_id}-{ops}-{spec.budget}-{spec.strategy}-s{spec.seed}-n{spec.n_trials}"
            f"-t{spec.eval_tokens}-{spec.granularity}-{'+'.join(spec.baselines) or 'nobase'}")


def search(*, model: str = MODEL, budget: float, operators: list[str], strategy: str, trials: int,
           tokens: int, holdout_tokens: int, seed: int = 0, baselines: list[str] | None = None,
           objective: str = "kl", storage: str = STORAGE) -> dict[str, Any]:
    """One whole study (seeded with the baselines), then its winner and baselines re-measured on holdout."""
    from search.runner import run_search
    from search.spec import StudySpec

    spec = StudySpec(model_id=model, budget=budget, operators=operators, strategy=strategy, n_trials=trials,
                     eval_tokens=tokens, holdout_tokens=holdout_tokens, seed=seed, objective=objective,
                     baselines=["uniform", "owl"] if baselines is None else baselines, prune=False)
    name = study_name(spec)
    summary = run_search(spec, storage_url=storage, study_name=name)
    summary.pop("best_config", None)
    return {"study": name, "spec": spec.to_dict(), "summary": summary, **trial_log(storage, name)}


def trial_log(storage: str, name: str) -> dict[str, Any]:
    """Per-evaluation values (in the order they were measured) and where a trial's time went."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=name, storage=storage)
    done = sorted((t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE),
                  key=lambda t: t.datetime_complete)  # type: ignore[arg-type, return-value]
    values = [float(t.value) for t in done]  # type: ignore[arg-type]
    sources = [str(t.user_attrs.get("source", "sampler")) for t in done]
    forward = sum(float(t.user_attrs.get("forward_s", 0.0)) for t in done)
    apply = sum(float(t.user_attrs.get("apply_s", 0.0)) for t in done)
    in_trial = sum(float(t.user_attrs.get("wall_s", 0.0)) for t in done)
    span = ((done[-1].datetime_complete - done[0].datetime_start).total_seconds()  # type: ignore[operator]
            if done else 0.0)
    return {
        "values": values,
        "sources": sources,
        "cost": {"trials": len(done), "forward_s": forward, "apply_s": apply, "in_trial_s": in_trial,
                 "span_s": span},
    }


def best_so_far(values: list[float]) -> list[float]:
    return list(np.minimum.accumulate(values)) if values else []


def predictor_quality(*, studies: list[str], sizes: list[int], repeats: int = 5,
                      storage: str = STORAGE) -> dict[str, Any]:
    """Spearman and log-error of the predictor on held-out measured configs, against training-set size.

    Pools the complete trials of ``studies`` (same model and budget), then for each repeat shuffles
    them, trains on the first N and scores the rest. Two feature sets: the cheap per-layer error
    proxies alone, and with the sensitivity scan's block damage (what the guided search uses).
    """
    import optuna

    from compress.config import config_from_dict
    from search.context import Workbench
    from search.optuna_adapter import SPEC_ATTR
    from search.spec import StudySpec
    from search.strategies.guided import Guide

    trials, specs = [], []
    stored = set(optuna.get_all_study_names(storage))
    for name in (name for name in studies if name in stored):
        study = optuna.load_study(study_name=name, storage=storage)
        specs.append(StudySpec.from_dict(study.user_attrs[SPEC_ATTR]))
        trials += [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                   if "config" in t.user_attrs]
    bench = Workbench()
    layer_sets = [config_from_dict(t.user_attrs["config"]).layers for t in trials]
    y = np.log(np.array([float(t.value) for t in trials]))  # type: ignore[arg-type]
    variants = {}
    for variant, use_scan in (("proxies", False), ("proxies+scan", True)):
        X = Guide(use_scan=use_scan).features(specs[0], bench).matrix(layer_sets) if specs else np.zeros((0, 0))
        variants[variant] = _held_out_quality(X, y, sizes, repeats)
    return {"n_measured": len(trials), "repeats": repeats, "studies": sorted(stored & set(studies)),
            "results": variants["proxies+scan"], "variants": variants}


def _held_out_quality(X: np.ndarray, y: np.ndarray, sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    from scipy.stats import spearmanr

    from predictor.xgb import XGBPredictor

    rows: list[dict[str, Any]] = []
    for size in sizes:
        if size > len(y) - 5:
            rows.append({"n_train": size, "note": f"only {len(y)} measured configs"})
            continue
        rhos, errors = [], []
        for repeat in range(repeats):
            order = np.random.default_rng(repeat).permutation(len(y))
            train, test = order[:size], order[size:]
            predicted = XGBPredictor(seed=repeat).fit(X[train], y[train]).predict(X[test])
            rhos.append(float(spearmanr(predicted, y[test]).statistic))
            errors.append(float(np.abs(predicted - y[test]).mean()))
        rows.append({"n_train": size, "n_test": len(y) - size, "spearman_median": statistics.median(rhos),
                     "spearman_min": min(rhos), "spearman_max": max(rhos), "mae_log_median": statistics.median(errors)})
    return rows


def cache_cost(*, model: str = MODEL) -> dict[str, Any]:
    """Seconds to build the per-model caches (calibration Grams, SVD factors) and to load them back."""
    from compress.catalog import load_model
    from compress.session import ModelSession

    loaded = load_model(model)
    with tempfile.TemporaryDirectory(prefix="slimscout-bench-") as root:
        cold = ModelSession(loaded, cache_dir=Path(root))
        cold.svd("svd-whitened")  # needs the Grams first
        cold.svd("svd")
        warm = ModelSession(loaded, cache_dir=Path(root))
        warm.svd("svd-whitened")
        warm.svd("svd")
    return {"calibration_s": cold.timings.calibration_s, "svd_s": cold.timings.svd_s,
            "calibration_tokens": cold.stats().n_tokens, "load_s": warm.timings.load_s,
            "model_load_s": loaded.load_seconds}


def scale_out(*, workers: int, threads: int, trials: int, tokens: int, pg_url: str,
              model: str = MODEL) -> dict[str, Any]:
    """Trials per minute with ``workers`` worker processes (``threads`` torch threads each) on one study.

    The study lives on PostgreSQL. Throughput counts from the first trial's start to the last
    one's end, so model loading in each worker process is left out (it is paid once per worker,
    not per trial).
    """
    from search.runner import run_search
    from search.spec import StudySpec

    ensure_database(pg_url)
    spec = StudySpec(model_id=model, budget=0.5, operators=["wanda"], strategy="random", n_trials=trials,
                     eval_tokens=tokens, holdout_tokens=tokens, baselines=[], prune=False)
    name = f"scale-{workers}w-{trials}-{tokens}-{int(time.time())}"
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the worker processes
    try:
        run_search(spec, storage_url=pg_url, study_name=name, workers=workers)
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    cost = trial_log(pg_url, name)["cost"]
    return {"workers": workers, "threads_per_worker": threads, "trials": cost["trials"], "span_s": cost["span_s"],
            "trials_per_min": 60 * cost["trials"] / cost["span_s"] if cost["span_s"] else None}


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database ``url`` names, if it does not exist yet."""
    import psycopg
    from sqlalchemy import make_url

    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (parsed.database,)).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{parsed.database}"')  # type: ignore[arg-type]


def compressed_speed(*, budget: float, operator: str, tokens: int = 256, decode_tokens: int = 32,
                     repeats: int = 5, model: str = MODEL) -> dict[str, Any]:
    """Prefill and decode speed of the dense model against its uniform export at ``budget``."""
    from compress.baselines import uniform
    from compress.catalog import load_model
    from compress.export import export_compressed, load_compressed
    from compress.speed import measure_speed
    from search.context import Workbench

    session = Workbench().session(model)
    vocab = int(session.loaded.model.config.vocab_size)
    kwargs: dict[str, Any] = {"vocab_size": vocab, "tokens": tokens, "decode_tokens": decode_tokens,
                              "repeats": repeats, "warmup": 1}
    # A fresh copy of the dense model: the session's copy carries the search's bookkeeping.
    dense = measure_speed(load_model(model).model.eval(), **kwargs).to_dict()
    config = uniform(session, budget, [operator]).config
    with tempfile.TemporaryDirectory(prefix="slimscout-export-") as root:
        exported = export_compressed(session, config, Path(root) / "model")
        small = load_compressed(exported.out).eval()
        compressed = measure_speed(small, **kwargs).to_dict()
    return {"budget": budget, "operator": operator, "dense": dense, "compressed": compressed,
            "params_ratio": exported.params_total / session.params_total,
            "prefill_speedup": compressed["prefill"]["tokens_per_s"] / dense["prefill"]["tokens_per_s"],
            "decode_speedup": compressed["decode"]["tokens_per_s"] / dense["decode"]["tokens_per_s"]}


def encoder(*, budget: float, operators: list[str], trials: int, tokens: int, holdout_tokens: int,
            model: str = "minilm-l6") -> dict[str, Any]:
    """Embedding fidelity (cosine to the dense embeddings) of an encoder: uniform against searched."""
    return search(model=model, budget=budget, operators=operators, strategy="guided", trials=trials, tokens=tokens,
                  holdout_tokens=holdout_tokens, baselines=["uniform"], objective="cosine")
