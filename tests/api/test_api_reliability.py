"""The service under faults: ``slimscout serve`` killed and restarted mid-study, the database cut off.

Each test drives a real server with a real worker on the tiny model and checks, at the end, that
the study finished with its books balanced (tests/search/_studies.py ``balanced``).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from optuna.exceptions import StorageInternalError
from sqlalchemy import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from search.optuna_adapter import SETUP_ATTR, storage_url
from storage import Study, StudyStatus, get_engine, session_scope
from tests._service import Serve
from tests._tcp_proxy import TcpProxy
from tests.search._studies import FINISHED, alive, balanced, freeze_mid_trial

STUDY = {"model_id": "tiny-llama", "budget": 0.5, "operators": ["wanda"], "n_trials": 8, "eval_tokens": 128}
BASELINES = ["baseline:owl", "baseline:sensitivity", "baseline:uniform"]


def _down() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


def test_a_transient_database_error_is_a_503_and_others_are_not(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client()
    study_id = client.post("/v1/studies", json={"model_id": "tiny-llama", "budget": 0.5}).json()["id"]

    def unreachable(*_: Any, **__: Any) -> Any:
        raise _down()

    monkeypatch.setattr("api.routes.studies.list_studies", unreachable)
    response = client.get("/v1/studies")
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"

    def wrapped(*_: Any, **__: Any) -> Any:  # as Optuna raises it
        raise StorageInternalError("An exception is raised during the commit.") from _down()

    monkeypatch.setattr("api.optuna_store.OptunaStore.trials", wrapped)
    assert client.get(f"/v1/studies/{study_id}").status_code == 503

    def broken(*_: Any, **__: Any) -> Any:
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    monkeypatch.setattr("api.routes.studies.list_studies", broken)
    with pytest.raises(IntegrityError):  # a bug, not an outage: the server's 500
        client.get("/v1/studies")


def wait_for(condition: Any, what: str, timeout_s: float = 240, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)
    return value


def detail(serve: Serve, study_id: str) -> dict[str, Any]:
    response = httpx.get(f"{serve.base}/v1/studies/{study_id}", timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def finished(serve: Serve, study_id: str) -> int:
    counts = detail(serve, study_id)["counts"]
    return int(counts["n_complete"] + counts["n_pruned"])


def completed(serve: Serve, study_id: str) -> bool:
    status = detail(serve, study_id)["status"]
    assert status != "failed", serve.logs()
    return bool(status == "completed")


def post_study(serve: Serve) -> str:
    created = httpx.post(f"{serve.base}/v1/studies", json=STUDY, timeout=30)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def freeze_during_setup(url: str, study_id: str, pid: int) -> None:
    """SIGSTOP worker ``pid`` as soon as it has claimed the study, before its setup is done."""
    engine = get_engine(url)

    def claimed() -> bool:
        with session_scope(engine) as session:
            row = session.get(Study, study_id)
            return row is not None and row.status is StudyStatus.RUNNING

    wait_for(claimed, "the worker to claim the study", every_s=0.01)
    os.kill(pid, signal.SIGSTOP)
    storage = optuna.storages.RDBStorage(storage_url(url))
    try:
        attrs = optuna.load_study(study_name=f"slimscout-{study_id}", storage=storage).user_attrs
    finally:
        storage.engine.dispose()
    assert not attrs.get(SETUP_ATTR), "the setup finished before the worker could be stopped"


@pytest.mark.slow
def test_a_killed_server_comes_back_with_everything_and_finishes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    serve = Serve(url, tmp_path, workers=1, env={"SLIMSCOUT_HEARTBEAT_INTERVAL_S": "2"}).start()
    try:
        study_id = post_study(serve)
        name = f"slimscout-{study_id}"
        # 1. Killed while its worker builds the baselines: the setup lease runs out; the next worker sets up.
        freeze_during_setup(url, study_id, serve.worker_pids()[0])
        serve.kill()
        serve.start()
        # 2. Killed mid-trial, with trials measured: they, and the winner's config, are all still there.
        wait_for(lambda: finished(serve, study_id) >= 3, "three measured trials")
        held, _ = freeze_mid_trial(url, serve.worker_pids()[0], name)
        before = detail(serve, study_id)
        trials_before = httpx.get(f"{serve.base}/v1/studies/{study_id}/trials", timeout=30).json()
        config_before = httpx.get(f"{serve.base}/v1/studies/{study_id}/best-config", timeout=30)
        assert config_before.status_code == 200
        serve.kill()
        serve.start()
        after = detail(serve, study_id)
        assert after["status"] == "running" and after["counts"] == before["counts"]
        assert httpx.get(f"{serve.base}/v1/studies/{study_id}/trials", timeout=30).json() == trials_before
        assert httpx.get(f"{serve.base}/v1/studies/{study_id}/best-config", timeout=30).json() == config_before.json()
        listed = httpx.get(f"{serve.base}/v1/studies", timeout=30).json()["studies"]
        assert [s["id"] for s in listed] == [study_id]
        # 3. The restarted worker re-queues the dead worker's trial and finishes the study.
        wait_for(lambda: completed(serve, study_id), "the study to complete")
        final = detail(serve, study_id)
        download = httpx.get(f"{serve.base}/v1/studies/{study_id}/best-config", timeout=30)
    finally:
        serve.stop()
    assert final["counts"]["n_complete"] + final["counts"]["n_pruned"] == STUDY["n_trials"]
    assert download.status_code == 200 and download.json()["schema"] == "slimscout.config/v1"
    everything = balanced(url, STUDY["n_trials"], name)
    assert sorted(t.user_attrs["source"] for t in everything if t.state in FINISHED
                  and t.user_attrs["source"].startswith("baseline:")) == BASELINES  # each seeded once
    assert {t.number: t for t in everything}[held.number].state.name == "FAIL"
    copies = [t for t in everything if t.system_attrs.get("retry_history") == [held.number]]
    assert len(copies) == 1 and copies[0].state in FINISHED
    assert "setting it up again" in serve.logs()


@pytest.mark.slow
def test_a_database_outage_is_a_503_and_the_study_carries_on(postgres: Any, tmp_path: Path) -> None:
    database = postgres.create_database()
    real = make_url(database)
    proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432).start()
    serve = Serve(proxy.url(database), tmp_path, workers=1).start()
    try:
        study_id = post_study(serve)
        wait_for(lambda: finished(serve, study_id) >= 2, "two measured trials")
        [worker] = serve.worker_pids()
        accepted = proxy.accepted
        with proxy.outage():
            cut_at = time.monotonic()
            during = httpx.get(f"{serve.base}/v1/studies/{study_id}", timeout=30)
            health = httpx.get(f"{serve.base}/healthz", timeout=30)
            time.sleep(max(0.0, 3.0 - (time.monotonic() - cut_at)))
        after = httpx.get(f"{serve.base}/v1/studies/{study_id}", timeout=30)
        progress_at_restore = finished(serve, study_id)
        wait_for(lambda: completed(serve, study_id), "the study to complete")
        assert alive(worker), "the worker carried on (serve starts no new ones)"
    finally:
        serve.stop()
        proxy.stop()
    assert during.status_code == 503 and during.headers["Retry-After"] == "5", during.text
    assert health.status_code == 503
    assert after.status_code == 200, after.text
    assert progress_at_restore < STUDY["n_trials"], "the outage must hit the study mid-way"
    assert proxy.accepted > accepted, "everyone reconnected"
    logs = serve.logs()
    assert "database unavailable" in logs or "retry 1/" in logs, "the worker never noticed the outage"
    assert "Exception in ASGI application" not in logs and "Traceback" not in logs
    everything = balanced(database, STUDY["n_trials"], f"slimscout-{study_id}")
    sources = Counter(t.user_attrs.get("source") for t in everything if t.state in FINISHED)
    assert [source for source in BASELINES if sources[source] != 1] == []
