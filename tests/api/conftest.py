"""API fixtures: a TestClient on a fresh SQLite database, a fake worker that writes trials, a live server.

The fake worker writes Optuna trials with the user attributes docs/DESIGN.md lists, through Optuna's
own API, so the API reads exactly what real workers leave in the database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import FrozenTrial, TrialState, create_trial
from sqlalchemy.exc import SQLAlchemyError

from api.main import create_app
from common.settings import get_settings
from search.optuna_adapter import storage_url as optuna_url
from storage import dispose_engines
from tests._service import free_port

MakeClient = Callable[..., TestClient]
REPO = Path(__file__).resolve().parents[2]

TYPES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
BLOCKS = 4  # tiny-llama


def layer_names(blocks: int = BLOCKS) -> list[str]:
    return [f"model.layers.{block}.{kind}" for block in range(blocks) for kind in TYPES]


def config_doc(ratio: float, *, model_id: str = "tiny-llama", blocks: int = BLOCKS,
               layer_keep: bool = True) -> dict[str, Any]:
    """A valid slimscout.config/v1 document: Wanda sparsity, more of it in later blocks and in the MLP."""
    layers: dict[str, Any] = {}
    keep: dict[str, float] = {}
    for name in layer_names(blocks):
        block, kind = int(name.split(".")[2]), name.split(".", 3)[3]
        depth = block / max(blocks - 1, 1) - 0.5  # -0.5 (first block) .. 0.5 (last)
        shift = 0.3 * depth + 0.02 * (TYPES.index(kind) - 3)
        r = round(min(0.9, max(0.0, ratio + shift)), 4)
        layers[name] = {"sparsity": {"ratio": r, "score": "wanda", "pattern": "unstructured"}}
        keep[name] = round(1.0 - r, 6)
    meta: dict[str, Any] = {"budget": 1.0 - ratio}
    if layer_keep:
        meta["layer_keep"] = keep
    return {"schema": "slimscout.config/v1", "model_id": model_id, "layers": layers, "meta": meta}


def worker_attrs(value: float, *, source: str = "sampler", ratio: float = 0.5, predicted: float | None = None,
                 worker: str = "host-a:101", model_id: str = "tiny-llama",
                 blocks: int = BLOCKS) -> dict[str, Any]:
    """The user attributes docs/DESIGN.md says a worker puts on a measured trial."""
    kept = 1.0 - ratio
    attrs: dict[str, Any] = {
        "source": source, "ppl": 20.0 + 40.0 * value, "kl": value, "n_tokens": 2048, "keep_ratio": kept,
        "params_kept": int(1_000_000 * kept), "bytes": int(2_000_000 * kept), "apply_s": 0.1,
        "forward_s": 0.9,
        "worker": worker, "config": config_doc(ratio, model_id=model_id, blocks=blocks),
    }
    if predicted is not None:
        attrs["predicted"] = predicted
    return attrs


class FakeWorker:
    """Adds trials to a study through Optuna's API, the way workers leave them in the database."""

    TYPES = TYPES
    BLOCKS = BLOCKS
    config_doc = staticmethod(config_doc)

    def __init__(self, storage_url: str) -> None:
        for attempt in range(5):  # the app's warm-up thread may be creating Optuna's tables right now
            try:
                connect_args = {"timeout": 30, "check_same_thread": False}
                self.storage = optuna.storages.RDBStorage(optuna_url(storage_url),
                                                          engine_kwargs={"connect_args": connect_args})
                break
            except SQLAlchemyError:
                if attempt == 4:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        self.storage.engine.dispose()

    def study(self, name: str) -> optuna.Study:
        return optuna.load_study(study_name=name, storage=self.storage)

    def add(self, name: str, values: Sequence[float | None], *, source: str = "sampler",
            state: TrialState = TrialState.COMPLETE, duration_s: float = 2.0, ratio: float = 0.5,
            worker: str = "host-a:101", predicted: float | None = None, model_id: str = "tiny-llama",
            blocks: int = BLOCKS, extra: dict[str, Any] | None = None) -> list[FrozenTrial]:
        study = self.study(name)
        added = []
        for value in values:
            attrs = worker_attrs(value if value is not None else 0.5, source=source, ratio=ratio,
                                 predicted=predicted, worker=worker, model_id=model_id, blocks=blocks)
            attrs.update(extra or {})
            trial = create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                                 user_attrs=attrs if state != TrialState.WAITING else {})
            if state.is_finished():
                end = datetime.now()
                trial.datetime_start, trial.datetime_complete = end - timedelta(seconds=duration_s), end
            study.add_trial(trial)
            added.append(trial)
        return added
@pytest.fixture
def storage_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'slimscout.db'}"
    monkeypatch.setenv("SLIMSCOUT_STORAGE_URL", url)
    monkeypatch.delenv("SLIMSCOUT_API_TOKEN", raising=False)
    get_settings.cache_clear()
    return url


@pytest.fixture
def make_client(storage_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeClient]:
    """``make_client(api_token="a,b", max_trials="10")``: an app built from those SLIMSCOUT_ settings."""
    clients: list[TestClient] = []

    def make(**settings: str) -> TestClient:
        for key, value in settings.items():
            monkeypatch.setenv(f"SLIMSCOUT_{key.upper()}", value)
        get_settings.cache_clear()
        client = TestClient(create_app())
        client.__enter__()  # runs the lifespan: init_db
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
    dispose_engines()


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client()


@pytest.fixture
def serve(storage_url: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``serve(api_token=...)``: a ``slimscout serve --workers 0`` process on a free port; its base URL.

    Its output goes to a file (a pipe nobody reads would fill up with access logs and stall the server).
    """
    processes: list[subprocess.Popen[bytes]] = []

    def start(**settings: str) -> str:
        port = free_port()
        env = dict(os.environ, SLIMSCOUT_STORAGE_URL=storage_url, SLIMSCOUT_CACHE_DIR=str(tmp_path / "cache"))
        env.pop("SLIMSCOUT_API_TOKEN", None)
        env.update({f"SLIMSCOUT_{key.upper()}": value for key, value in settings.items()})
        log = tmp_path / f"serve-{port}.log"
        with log.open("wb") as output:
            process = subprocess.Popen([sys.executable, "-m", "slimscout.cli", "serve", "--port", str(port),
                                        "--workers", "0"], cwd=REPO, env=env, stdout=output,
                                       stderr=subprocess.STDOUT)
        processes.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the server did not start:\n{log.read_text()}"
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    return base
            except httpx.HTTPError:
                time.sleep(0.1)

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def worker(storage_url: str) -> Iterator[FakeWorker]:
    fake = FakeWorker(storage_url)
    yield fake
    fake.close()
