"""Workers under faults: killed mid-trial, stopped with SIGTERM, a setup cut short, eight on one study.

Real worker processes on a real database; afterwards the study's books must balance (``balanced``):
exactly ``n_trials`` finished, no candidate measured twice, nothing left running or waiting, and
every failed trial either a surplus one or re-queued. Server restarts and database outages:
tests/api/test_api_reliability.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

import search.setup
from common.settings import get_settings
from search.context import Workbench
from search.liveness import Heartbeat, Reaper, requeue
from search.measure_trial import tell_once
from search.optuna_adapter import SETUP_ATTR, storage_url
from search.runner import worker_command
from search.setup import seed_study
from search.spec import StudySpec
from search.study import create_study, is_set_up, optuna_storage
from tests.search._studies import (
    FINISHED,
    SPEC,
    balanced,
    env,
    freeze_mid_trial,
    prepare,
    sqlite_url,
    trials,
    worker_id,
)

INTERVAL_S = 2  # heartbeats in the crash test: stale after 3 s, the reaper looks every 0.25 s
FORK_WORKERS = Path(__file__).resolve().parent / "_fork_workers.py"
REPO = Path(__file__).resolve().parents[2]


def stop_all(*processes: subprocess.Popen[Any]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_a_killed_worker_s_trial_is_failed_within_two_heartbeats_and_measured_once(
    postgres: Any,
) -> None:
    url = postgres.create_database()
    spec = prepare(url, 8)
    settings = env(heartbeat_interval_s=str(INTERVAL_S))
    victim, survivor = (subprocess.Popen(worker_command(url, "shared", i), env=settings) for i in range(2))
    storage = optuna.storages.RDBStorage(storage_url(url))
    try:
        held, stopped_at = freeze_mid_trial(url, victim.pid)
        victim.kill()
        victim.wait()
        while storage.get_trial(held._trial_id).state == TrialState.RUNNING:
            assert time.monotonic() - stopped_at < 10 * INTERVAL_S, "the dead worker's trial was never failed"
            time.sleep(0.02)
        detected_s = time.monotonic() - stopped_at
        assert survivor.wait(timeout=180) == 0
    finally:
        stop_all(victim, survivor)
        storage.engine.dispose()
    print(f"dead worker's trial failed {detected_s:.2f} s after its last heartbeat could have been sent")
    assert detected_s <= 2 * INTERVAL_S
    everything = balanced(url, 8)
    assert {t.number: t for t in everything}[held.number].state == TrialState.FAIL
    copies = [t for t in everything if t.system_attrs.get("retry_history") == [held.number]]
    assert len(copies) == 1, "re-queued exactly once"
    assert copies[0].state in FINISHED and copies[0].user_attrs["worker"] == worker_id(survivor.pid)
    assert copies[0].params.items() >= held.params.items()  # the same candidate
    # a sampled trial names its strategy once measured; the held one was frozen before that
    assert copies[0].user_attrs["source"] == held.user_attrs.get("source", f"sampler:{spec.strategy}")


@pytest.mark.slow
def test_sigterm_finishes_the_current_trial_and_takes_no_other(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    prepare(url, 50)
    worker = subprocess.Popen(worker_command(url, "shared", 0))
    try:
        held, _ = freeze_mid_trial(url, worker.pid)
        worker.send_signal(signal.SIGTERM)  # delivered, like any signal, once the worker runs again
        worker.send_signal(signal.SIGCONT)
        assert worker.wait(timeout=120) == 0
    finally:
        stop_all(worker)
    after = trials(url)
    assert {t.number: t for t in after}[held.number].state in FINISHED, "the trial in hand was finished"
    assert [t.number for t in after if t.state in (TrialState.RUNNING, TrialState.FAIL)] == []
    assert max(t.number for t in after if t.state in FINISHED) == held.number, "no trial was started after it"


@pytest.mark.slow
def test_eight_workers_on_one_study_claim_each_trial_once(postgres: Any, tmp_path: Path) -> None:
    n_trials, workers = 100, 8
    url = postgres.create_database()
    spec = SPEC | {"n_trials": n_trials, "eval_tokens": 16, "strategy": "random", "baselines": ["uniform"]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, str(FORK_WORKERS), url, "shared", str(workers), str(tmp_path)],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert process.wait(timeout=300) == 0, "a worker failed, or they deadlocked"
    finally:
        stop_all(process)
    print(f"{workers} workers, {n_trials} trials: {time.monotonic() - started:.1f} s")
    claims = [json.loads((tmp_path / f"claims-{k}.json").read_text()) for k in range(workers)]
    claimed = [number for claim in claims for number in claim["claimed"]]
    assert len(claimed) == len(set(claimed)), "a trial was claimed by two workers"
    assert all(claim["claimed"] for claim in claims), "every worker measured"
    everything = balanced(url, n_trials)
    holder = {number: worker_id(claim["pid"]) for claim in claims for number in claim["claimed"]}
    for trial in everything:
        if trial.state in FINISHED:
            assert holder[trial.number] == trial.user_attrs["worker"]


class Crash(Exception):
    pass


def test_a_setup_cut_short_is_finished_without_enqueuing_a_baseline_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path)
    spec = StudySpec(**SPEC | {"strategy": "tpe"})
    study = create_study(url, "shared", spec)
    build = search.setup.build_baseline

    def crash_at_sensitivity(method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "sensitivity":
            raise Crash("the worker died here")
        return build(method, *args, **kwargs)

    monkeypatch.setattr(search.setup, "build_baseline", crash_at_sensitivity)
    bench = Workbench()
    with pytest.raises(Crash):
        seed_study(study, spec, bench)
    assert [t.user_attrs["source"] for t in study.get_trials()] == ["baseline:uniform", "baseline:owl"]
    assert not is_set_up(study)
    monkeypatch.setattr(search.setup, "build_baseline", build)
    seed_study(study, spec, bench)  # another worker took the lease over
    sources = [t.user_attrs["source"] for t in study.get_trials()]
    assert sources == ["baseline:uniform", "baseline:owl", "baseline:sensitivity"]
    assert study.user_attrs[SETUP_ATTR] and study.user_attrs["sensitivity_scan"]["evaluations"] > 0


def test_the_reaper_fails_silent_trials_and_requeues_each_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIMSCOUT_HEARTBEAT_INTERVAL_S", "1")  # stale after 2 s
    get_settings.cache_clear()
    study = optuna.create_study(storage=optuna_storage(sqlite_url(tmp_path)), study_name="s")
    storage = study._storage
    went_quiet = study.ask()
    storage.record_heartbeat(went_quiet._trial_id)  # type: ignore[attr-defined]
    never_beat = study.ask()  # its claim's reply was lost, or its worker died before the first heartbeat
    alive = study.ask()
    reaper = Reaper(study)
    assert reaper.reap() == []
    with Heartbeat(study, alive._trial_id, 1):
        time.sleep(3.5)
        reaped = reaper.reap()
    assert sorted(reaped) == [went_quiet.number, never_beat.number]
    assert reaper.reap() == []
    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[alive.number].state == TrialState.RUNNING
    copies = {t.system_attrs["retry_history"][-1]: t for t in study.get_trials() if "retry_history" in t.system_attrs}
    assert sorted(copies) == sorted(reaped) and all(t.state == TrialState.WAITING for t in copies.values())
    assert requeue(study, by_number[went_quiet.number]) is None, "re-queued once, however often asked"
    assert len(study.get_trials()) == 5
    # Its worker comes back and reports: too late, the copy counts instead; a tell never lands twice.
    assert tell_once(study, went_quiet, TrialState.COMPLETE, 1.0) == TrialState.FAIL
    assert tell_once(study, alive, TrialState.COMPLETE, 1.0) == TrialState.COMPLETE
    assert tell_once(study, alive, TrialState.COMPLETE, 2.0) == TrialState.COMPLETE
    assert study.get_trials()[alive.number].value == 1.0
