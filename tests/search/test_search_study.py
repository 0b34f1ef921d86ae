"""Studies on a tiny model: seeding, reproducibility, workers sharing one storage.

Crashes, outages and shutdowns: test_search_reliability.py.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.context import Workbench
from search.runner import run_search, worker_command
from search.spec import StudySpec
from search.study import counts, load_study, optuna_storage
from tests.search._studies import SPEC, prepare
from tests.search._studies import sqlite_url as _sqlite


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


def _check_no_double_measurement(url: str, n_trials: int) -> set[str]:
    study, _ = load_study(url, "shared")
    finished = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials
    assert len({t._trial_id for t in finished}) == n_trials
    return {t.user_attrs["worker"] for t in finished}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_share_a_study(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    url = _sqlite(tmp_path) if backend == "sqlite" else request.getfixturevalue("postgres").create_database()
    prepare(url, 12)
    procs = [subprocess.Popen(worker_command(url, "shared", i)) for i in range(2)]
    for proc in procs:
        assert proc.wait(timeout=600) == 0
    workers = _check_no_double_measurement(url, 12)
    assert len(workers) == 2


def _claim_all(url: str, name: str, start: EventType, out: Path) -> None:
    """Child process: claim WAITING trials with ``study.ask()`` until none is left; write their numbers."""
    study = optuna.load_study(study_name=name, storage=optuna_storage(url))
    start.wait()
    claimed = []
    while True:
        trial = study.ask()
        if "queued" not in trial.user_attrs:
            break  # the queue is empty: ask() made a fresh trial
        claimed.append(trial.number)
    out.write_text(" ".join(map(str, claimed)))


def test_concurrent_asks_on_sqlite_never_claim_one_queued_trial_twice(tmp_path: Path) -> None:
    """Optuna's claim is a read then a write; on SQLite both must be one transaction (``BEGIN IMMEDIATE``)."""
    url = _sqlite(tmp_path)
    study = optuna.create_study(storage=optuna_storage(url), study_name="q")
    for _ in range(60):
        study.enqueue_trial({}, user_attrs={"queued": True})
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    outs = [tmp_path / f"claims-{i}.txt" for i in range(4)]
    procs = [context.Process(target=_claim_all, args=(url, "q", start, out)) for out in outs]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(timeout=300)
        assert proc.exitcode == 0
    claims = [int(n) for out in outs for n in out.read_text().split()]
    assert sorted(claims) == list(range(60))


def test_workers_are_python_processes_of_their_own_not_the_cli() -> None:
    from slimscout.commands.serve import worker_command as serve_worker

    for argv in (worker_command("sqlite:///s.db", "shared", 2), serve_worker("sqlite:///s.db")):
        assert argv[:3] == [sys.executable, "-m", "search.worker_process"]
        assert "slimscout.cli" not in argv
    assert worker_command("sqlite:///s.db", "shared", 2)[3:] == ["--storage", "sqlite:///s.db", "--index", "2",
                                                                 "--study", "shared"]
