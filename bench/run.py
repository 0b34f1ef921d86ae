"""Run a benchmark suite on this machine and write BENCHMARKS.md and the plots.

Usage::

    python -m bench.run --suite quick          # about 15 minutes on 2 CPU cores (warm model caches)
    python -m bench.run --suite full           # hours; run by hand
    python -m bench.run --suite full --only efficiency --seeds 0
    python -m bench.run --suite full --only quality --match wanda-0.3-guided --fresh   # measure one job anew
    python -m bench.run --render                # only rewrite BENCHMARKS.md from the stored results

Each job's result is stored as ``bench/results/jobs/<job>.json`` with the machine, versions and wall
time it ran with; a job whose result exists is not run again (``--fresh`` reruns them). Studies
resume from ``bench/results/bench.db`` when a run was interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import jobs
from bench.jobs import RESULTS

JOBS_DIR = RESULTS / "jobs"
log = logging.getLogger("bench")
PG_URL = os.environ.get("SLIMSCOUT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/slimscout_bench")
STRATEGIES = ("random", "tpe", "guided")


@dataclass(frozen=True)
class Job:
    """One measurement: ``fn(**kwargs)``; its id names the stored result."""

    id: str
    part: str
    fn: Callable[..., dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What a suite measures, with its sizes (the same code runs both suites)."""

    quality: list[tuple[list[str], float]]
    quality_trials: int
    tokens: int
    holdout_tokens: int
    efficiency_trials: dict[str, int]
    seeds: list[int]
    predictor_sizes: list[int]
    scale_trials: int
    speed: dict[str, Any]
    encoder_trials: int
    baselines: list[str] = field(default_factory=lambda: ["uniform", "owl", "sensitivity"])
    #: Studies run only for the trial-cost table: (strategy, tokens per evaluation), Wanda 0.4, uniform seed.
    cost_runs: list[tuple[str, int]] = field(default_factory=list)
    cost_trials: int = 16


PLANS = {
    "quick": Plan(quality=[(["wanda"], 0.4)], quality_trials=24, tokens=512, holdout_tokens=2048,
                  efficiency_trials={}, seeds=[0], predictor_sizes=[10, 20, 40], scale_trials=8,
                  speed={"tokens": 256, "decode_tokens": 32, "repeats": 3}, encoder_trials=16),
    # Targeted budgets first; Wanda 0.4 last (the efficiency part measures it with more evaluations).
    "full": Plan(quality=[(["svd-whitened"], 0.8), (["wanda"], 0.3), (["wanda"], 0.5), (["svd-whitened"], 0.6),
                          (["svd-whitened", "wanda"], 0.5), (["wanda"], 0.4)],
                 quality_trials=40, tokens=1024, holdout_tokens=4096,
                 efficiency_trials={"guided": 60, "tpe": 150, "random": 60}, seeds=[0, 1, 2],
                 predictor_sizes=[10, 20, 40, 80], scale_trials=16,
                 speed={"tokens": 512, "decode_tokens": 64, "repeats": 5}, encoder_trials=30,
                 cost_runs=[("random", 1024), ("tpe", 1024), ("random", 2048), ("tpe", 2048)]),
}


def search_kwargs(plan: Plan, operators: list[str], budget: float, strategy: str, trials: int,
                  seed: int = 0) -> dict[str, Any]:
    return {"budget": budget, "operators": operators, "strategy": strategy, "trials": trials, "tokens": plan.tokens,
            "holdout_tokens": plan.holdout_tokens, "seed": seed, "baselines": plan.baselines}


def search_job(part: str, kwargs: dict[str, Any]) -> Job:
    ops = "+".join(kwargs["operators"])
    job_id = (f"search-{ops}-{kwargs['budget']}-{kwargs['strategy']}-n{kwargs['trials']}-t{kwargs['tokens']}"
              f"-s{kwargs['seed']}")
    return Job(job_id, part, jobs.search, kwargs)


def plan_jobs(name: str, plan: Plan) -> list[Job]:
    """Every job of a suite, in the order they run (cheap, shared ones first)."""
    out: list[Job] = [Job("cache-cost", "cost", jobs.cache_cost)]
    out += [search_job("cost", {**search_kwargs(plan, ["wanda"], 0.4, strategy, plan.cost_trials),
                                 "tokens": tokens, "baselines": ["uniform"]})
            for strategy, tokens in plan.cost_runs]
    quality = [search_job("quality", search_kwargs(plan, ops, budget, strategy, plan.quality_trials))
               for ops, budget in plan.quality for strategy in STRATEGIES]
    efficiency = [search_job("efficiency", search_kwargs(plan, ["wanda"], 0.4, strategy, trials, seed))
                  for seed in plan.seeds for strategy, trials in plan.efficiency_trials.items()]
    out += quality + efficiency
    at_04 = [job for job in quality + efficiency if (job.kwargs["operators"], job.kwargs["budget"]) == (["wanda"], 0.4)]
    out.append(Job(f"predictor-{name}", "predictor", jobs.predictor_quality,
                   {"studies": [jobs_study(job) for job in at_04], "sizes": plan.predictor_sizes}))
    # One worker with both cores, one with one core, two with one core each.
    out += [Job(f"scale-{workers}w{threads}t-n{plan.scale_trials}-t{plan.tokens}", "scale", jobs.scale_out,
                {"workers": workers, "threads": threads, "trials": plan.scale_trials, "tokens": plan.tokens,
                 "pg_url": PG_URL})
            for workers, threads in ((1, 2), (1, 1), (2, 1))]
    out.append(Job(f"speed-svd-whitened-0.5-t{plan.speed['tokens']}", "speed", jobs.compressed_speed,
                   {"budget": 0.5, "operator": "svd-whitened", **plan.speed}))
    out.append(Job(f"encoder-minilm-wanda-0.5-n{plan.encoder_trials}", "encoder", jobs.encoder,
                   {"budget": 0.5, "operators": ["wanda"], "trials": plan.encoder_trials, "tokens": plan.tokens,
                    "holdout_tokens": plan.holdout_tokens}))
    return out


def jobs_study(job: Job) -> str:
    """The study name a search job writes (the predictor job reads those studies)."""
    from search.spec import StudySpec

    kw = job.kwargs
    return jobs.study_name(StudySpec(model_id=jobs.MODEL, budget=kw["budget"], operators=kw["operators"],
                                     strategy=kw["strategy"], n_trials=kw["trials"], eval_tokens=kw["tokens"],
                                     seed=kw["seed"], baselines=kw["baselines"]))


def _head_commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=RESULTS.parent.parent).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":!bench/results", ":!*.md"], capture_output=True,
                           text=True, cwd=RESULTS.parent.parent).stdout.strip()
    return f"{head}+dirty" if dirty else head


#: The commit this process's code came from, read once at start: a commit made while a long suite runs
#: does not change the code the running jobs use, so it must not change the commit they record.
CODE_COMMIT = _head_commit()


def environment() -> dict[str, Any]:
    """The machine and the versions a result was measured with."""
    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "commit": CODE_COMMIT,
        **{package: version(package) for package in ("torch", "transformers", "optuna", "xgboost")},
    }


def run_job(job: Job, *, fresh: bool) -> dict[str, Any]:
    path = JOBS_DIR / f"{job.id}.json"
    if path.is_file() and not fresh:
        stored: dict[str, Any] = json.loads(path.read_text())
        return stored
    if fresh and job.fn is jobs.search:  # else it would resume the stored study, already finished
        import optuna

        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=jobs_study(job), storage=jobs.STORAGE)
    log.info("running %s", job.id)
    before = environment()
    started = time.perf_counter()
    result = job.fn(**job.kwargs)
    record = {"job": job.id, "part": job.part, "kwargs": job.kwargs, "result": result,
              "wall_s": time.perf_counter() - started, "env": before,
              "load_avg_1m_after": os.getloadavg()[0]}
    JOBS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=float))
    tmp.replace(path)
    return record


def stored_results(suite: str) -> dict[str, dict[str, Any]]:
    """The stored result of each job of ``suite`` (missing jobs are left out)."""
    out = {}
    for job in plan_jobs(suite, PLANS[suite]):
        path = JOBS_DIR / f"{job.id}.json"
        if path.is_file():
            out[job.id] = json.loads(path.read_text())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(PLANS), default="quick")
    parser.add_argument("--only", help="comma-separated parts: cost,quality,efficiency,predictor,scale,speed,encoder")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the suite's)")
    parser.add_argument("--match", help="only the jobs whose id contains this (e.g. svd-whitened-0.8-guided)")
    parser.add_argument("--fresh", action="store_true", help="rerun jobs whose result is stored")
    parser.add_argument("--render", action="store_true", help="only rewrite BENCHMARKS.md and the plots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from bench.report import render

    if not args.render:
        plan = PLANS[args.suite]
        if args.seeds:
            plan = Plan(**{**plan.__dict__, "seeds": [int(s) for s in args.seeds.split(",")]})
        parts = set(args.only.split(",")) if args.only else None
        started = time.perf_counter()
        for job in plan_jobs(args.suite, plan):
            if (parts is None or job.part in parts) and (args.match is None or args.match in job.id):
                run_job(job, fresh=args.fresh)
        log.info("suite %s done in %.0f s", args.suite, time.perf_counter() - started)
    render({suite: stored_results(suite) for suite in PLANS})
    return 0


if __name__ == "__main__":
    sys.exit(main())
