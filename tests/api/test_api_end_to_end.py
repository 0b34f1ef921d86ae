"""The whole service on a tiny model: POST a study, a real worker process measures it, download the winner."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from compress.accounting import model_cost
from compress.catalog import load_model
from compress.config import config_from_dict
from compress.layers import linear_layers


def test_post_measure_complete_download(serve: Callable[..., str], storage_url: str, tmp_path: Path) -> None:
    base = serve()
    created = httpx.post(f"{base}/v1/studies", json={
        "model_id": "tiny-llama", "budget": 0.5, "operators": ["wanda"], "n_trials": 8, "eval_tokens": 128,
        "granularity": "type-block"}, timeout=30)
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]
    env = dict(os.environ, SLIMSCOUT_STORAGE_URL=storage_url, SLIMSCOUT_CACHE_DIR=str(tmp_path / "cache"))
    worker = subprocess.Popen([sys.executable, "-m", "slimscout.cli", "worker", "--storage", storage_url, "--once"],
                              env=env)
    try:
        deadline = time.monotonic() + 600
        while True:
            detail = httpx.get(f"{base}/v1/studies/{study_id}", timeout=30).json()
            if detail["status"] in ("completed", "failed"):
                break
            assert time.monotonic() < deadline, detail
            time.sleep(1)
        assert worker.wait(timeout=120) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert detail["status"] == "completed", detail
    assert detail["counts"]["n_complete"] + detail["counts"]["n_pruned"] == 8
    assert set(detail["baselines"]) >= {"uniform", "owl", "sensitivity"}
    download = httpx.get(f"{base}/v1/studies/{study_id}/best-config", timeout=30)
    assert download.status_code == 200
    config = config_from_dict(download.json())
    layers = linear_layers(load_model("tiny-llama").model)
    kept = model_cost(layers, config.layers).params / sum(layer.params for layer in layers)
    assert abs(kept - 0.5) <= 0.0025
