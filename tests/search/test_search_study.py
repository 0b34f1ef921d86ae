"""Studies on a tiny model: seeding, reproducibility, workers sharing one storage, crash recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.context import Workbench
from search.runner import run_search, worker_command
from search.setup import seed_study
from search.spec import StudySpec
from search.study import counts, create_study, load_study

SPEC = dict(
    model_id="tiny-llama",
    budget=0.5,
    operators=["wanda"],
    n_trials=10,
    eval_tokens=128,
    sensitivity_tokens=64,
    holdout_tokens=128,
)


def _sqlite(tmp_path: Path, name: str = "s.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def test_seed_trials_are_the_baselines(tmp_path: Path) -> None:
    spec = StudySpec(**SPEC, strategy="tpe")  # type: ignore[arg-type]
    summary = run_search(spec, storage_url=_sqlite(tmp_path), study_name="s")
    study, _ = load_study(_sqlite(tmp_path), "s")
    first = sorted(study.get_trials(), key=lambda t: t.number)[:3]
    assert [t.user_attrs["source"] for t in first] == ["baseline:uniform", "baseline:owl", "baseline:sensitivity"]
    assert counts(study).finished == 10
    assert set(summary["baselines"]) == {"uniform", "owl", "sensitivity"}
    assert summary["best"]["value"] <= min(b["value"] for b in summary["baselines"].values())
    assert {"best", "uniform", "owl", "sensitivity", "dense"} <= set(summary["holdout"])
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        assert abs(trial.user_attrs["keep_ratio"] - 0.5) <= 0.0025


@pytest.mark.parametrize("strategy", ["tpe", "guided"])
def test_a_fixed_seed_reproduces_a_study(tmp_path: Path, strategy: str) -> None:
    spec = StudySpec(**SPEC | {"n_trials": 14}, strategy=strategy)  # type: ignore[arg-type]
    bench = Workbench()
    values = []
    for run in ("a", "b"):
        run_search(spec, storage_url=_sqlite(tmp_path, f"{run}.db"), study_name=run, bench=bench)
        study, _ = load_study(_sqlite(tmp_path, f"{run}.db"), run)
        values.append([(t.params, t.state, t.value) for t in sorted(study.get_trials(), key=lambda t: t.number)])
    assert values[0] == values[1]
    if strategy == "guided":
        study, _ = load_study(_sqlite(tmp_path, "a.db"), "a")
        assert any(t.user_attrs.get("source") == "predictor" for t in study.get_trials())
        assert study.user_attrs["predictor"]["n_screened"] > 0


def _prepare(url: str, n_trials: int) -> StudySpec:
    spec = StudySpec(**SPEC | {"n_trials": n_trials}, strategy="tpe", baselines=["uniform"])  # type: ignore[arg-type]
    seed_study(create_study(url, "shared", spec), spec, Workbench())
    return spec


def _check_no_double_measurement(url: str, n_trials: int) -> set[str]:
    study, _ = load_study(url, "shared")
    finished = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials
    assert len({t._trial_id for t in finished}) == n_trials
    return {t.user_attrs["worker"] for t in finished}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_share_a_study(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    url = _sqlite(tmp_path) if backend == "sqlite" else request.getfixturevalue("postgres").create_database()
    _prepare(url, 12)
    procs = [subprocess.Popen(worker_command(url, "shared", i)) for i in range(2)]
    for proc in procs:
        assert proc.wait(timeout=600) == 0
    workers = _check_no_double_measurement(url, 12)
    assert len(workers) == 2


def test_a_killed_worker_s_trial_is_retried(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("postgres").create_database()
    _prepare(url, 6)
    env = {**os.environ, "SLIMSCOUT_HEARTBEAT_INTERVAL_S": "1"}
    victim = subprocess.Popen(worker_command(url, "shared", 0), env=env)
    study, _ = load_study(url, "shared")
    deadline = time.monotonic() + 300
    while counts(study).running == 0:
        assert time.monotonic() < deadline and victim.poll() is None
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    time.sleep(2.5)  # past the grace period (2 heartbeats)
    survivor = subprocess.Popen(worker_command(url, "shared", 1), env=env)
    assert survivor.wait(timeout=600) == 0
    study = optuna.load_study(study_name="shared", storage=url.replace("postgresql://", "postgresql+psycopg://"))
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert failed, "the killed trial must be failed by the heartbeat reaper"
    retried = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") in {f.number for f in failed}]
    assert any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in retried)
    _check_no_double_measurement(url, 6)


def test_sigterm_finishes_the_current_trial(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    _prepare(url, 50)
    worker = subprocess.Popen(worker_command(url, "shared", 0))
    study, _ = load_study(url, "shared")
    deadline = time.monotonic() + 300
    while counts(study).finished < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0
    now = counts(study)
    assert now.running == 0 and now.failed == 0 and now.finished < 50
