"""Small studies on the tiny random model, shared by the search tests."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.context import Workbench
from search.optuna_adapter import storage_url
from search.setup import seed_study
from search.spec import StudySpec
from search.study import create_study

SPEC: dict[str, Any] = dict(
    model_id="tiny-llama",
    budget=0.5,
    operators=["wanda"],
    n_trials=10,
    eval_tokens=128,
    sensitivity_tokens=64,
    holdout_tokens=128,
)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def sqlite_url(tmp_path: Path, name: str = "s.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def prepare(url: str, n_trials: int, name: str = "shared", **overrides: Any) -> StudySpec:
    """Create the study ``name`` (TPE, the uniform baseline as its seed trial) and seed it."""
    fields = SPEC | {"n_trials": n_trials, "strategy": "tpe", "baselines": ["uniform"]} | overrides
    spec = StudySpec(**fields)
    seed_study(create_study(url, name, spec), spec, Workbench())
    return spec


def trials(url: str, name: str = "shared") -> list[FrozenTrial]:
    """The study's trials as the database has them now (a fresh storage, no cache)."""
    storage = optuna.storages.RDBStorage(storage_url(url))
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    finally:
        storage.engine.dispose()


def worker_id(pid: int) -> str:
    """The ``worker`` user attribute a worker process puts on the trials it holds."""
    return f"{socket.gethostname()}:{pid}"


def env(**settings: str) -> dict[str, str]:
    return {**os.environ, **{f"SLIMSCOUT_{key.upper()}": value for key, value in settings.items()}}


def balanced(url: str, n_trials: int, name: str = "shared") -> list[FrozenTrial]:
    """Check a finished study's books; all its trials.

    Exactly ``n_trials`` finished, no candidate measured twice, nothing left running or waiting,
    and every failed trial either a surplus one or re-queued.
    """
    everything = trials(url, name)
    finished = [t for t in everything if t.state in FINISHED]
    assert len(finished) == n_trials
    assert len({tuple(sorted(t.params.items())) for t in finished}) == n_trials, "a candidate was measured twice"
    assert [t.number for t in everything if t.state in (TrialState.RUNNING, TrialState.WAITING)] == []
    requeued = {t.system_attrs["retry_history"][-1] for t in everything if "retry_history" in t.system_attrs}
    for trial in everything:
        if trial.state == TrialState.FAIL:
            assert trial.user_attrs.get("surplus") or trial.number in requeued, f"trial {trial.number} was lost"
    return everything


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def freeze_mid_trial(url: str, pid: int, name: str = "shared", timeout_s: float = 180) -> tuple[FrozenTrial, float]:
    """SIGSTOP worker ``pid`` while it holds a trial it is measuring; (that trial, when it stopped).

    The trial must still be RUNNING a moment after the stop (a tell already on the wire would land),
    else the worker is let go and caught again.
    """
    deadline = time.monotonic() + timeout_s
    mine = worker_id(pid)
    while True:
        assert time.monotonic() < deadline and alive(pid), "the worker never held a trial"
        held = [t for t in trials(url, name) if t.state == TrialState.RUNNING and t.user_attrs.get("worker") == mine]
        if held:
            os.kill(pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            time.sleep(0.3)
            now = {t.number: t for t in trials(url, name)}[held[0].number]
            if now.state == TrialState.RUNNING:
                return now, stopped_at
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.02)
