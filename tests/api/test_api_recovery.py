"""A study that recovers its winner (``recover_steps``): the worker distils the winner after the search,
the summary holds holdout numbers before and after, the recovered checkpoint downloads, and a worker
killed during the recovery loses neither the study's result nor the recovery's finished steps."""

from __future__ import annotations

import io
import math
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

BODY: dict[str, Any] = {"model_id": "tiny-llama", "budget": 0.5, "operators": ["wanda"], "strategy": "random",
                        "n_trials": 2, "eval_tokens": 64, "holdout_tokens": 128, "sensitivity_tokens": 64,
                        "baselines": ["uniform"], "recover_steps": 4, "recover_train_extra": ["enwiki"],
                        "recover_minutes": 60.0}


class Killed(BaseException):
    """Stands for the worker process dying: not an ``Exception``, so nothing on the way catches it."""


def serve_once(storage_url: str) -> None:
    from search.context import Workbench
    from search.service_worker import serve_studies

    serve_studies(storage_url, Workbench(), stop=threading.Event(), once=True, poll_s=0.1)


def download(client: TestClient, url: str, into: Path) -> Path:
    response = client.get(url)
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        tar.extractall(into, filter="data")
    (root,) = into.iterdir()
    return root


@pytest.mark.slow
def test_a_study_recovers_its_winner_and_a_killed_recovery_resumes(client: TestClient, storage_url: str,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import compress.recover
    from common.settings import get_settings
    from compress.catalog import load_model
    from compress.session import ModelSession

    monkeypatch.setenv("SLIMSCOUT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SLIMSCOUT_RECOVER_BF16", "1")  # the worker's setting reaches the recovery
    get_settings.cache_clear()
    created = client.post("/v1/studies", json=BODY).json()
    sid = created["id"]
    assert created["spec"]["recover_steps"] == 4

    # The worker dies right after the recovery's second checkpoint (one per step on a 4-step run).
    save = compress.recover.save_checkpoint
    saves: list[int] = []

    def save_then_die(path: Path, state: dict[str, Any]) -> None:
        save(path, state)
        saves.append(state["step"])
        if len(saves) == 2:
            raise Killed

    monkeypatch.setattr(compress.recover, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        serve_once(storage_url)
    killed = client.get(f"/v1/studies/{sid}").json()
    assert killed["status"] == "running"  # not completed, not failed: the next worker finishes it
    assert killed["holdout"]["best"]["ppl"] > 0  # the study's result was stored before the recovery
    assert client.get(f"/v1/studies/{sid}/best-config").status_code == 200
    progress = killed["summary"]["recovery"]
    # Progress is published after each step's checkpoint: the worker died before it published step 2.
    assert progress["status"] == "running" and progress["steps"] == 4 and progress["step"] == 1
    assert math.isfinite(progress["loss"])
    assert killed["has_recovered_checkpoint"] is False
    assert client.get(f"/v1/studies/{sid}/recovered-checkpoint").status_code == 404

    monkeypatch.setattr(compress.recover, "save_checkpoint", save)
    serve_once(storage_url)
    detail = client.get(f"/v1/studies/{sid}").json()
    assert detail["status"] == "completed", detail
    recovery = detail["summary"]["recovery"]
    assert recovery["status"] == "done"
    assert recovery["resumed_from"] == 2 and recovery["steps_run"] == 4  # the dead worker's steps were kept
    assert recovery["bf16"] is True
    assert recovery["train_extra"] == ["enwiki"]
    assert (recovery["max_minutes"], recovery["schedule_steps"]) == (60.0, 4)  # the time budget reached it; 4 fit
    assert recovery["holdout_before"]["ppl"] == detail["holdout"]["best"]["ppl"]
    after = recovery["holdout_after"]
    assert after["kl"] != recovery["holdout_before"]["kl"]

    # The download is the model that was measured: the same holdout numbers, measured again here.
    assert detail["has_recovered_checkpoint"] is True and detail["has_checkpoint"] is False
    root = download(client, f"/v1/studies/{sid}/recovered-checkpoint", tmp_path / "download")
    evaluator = ModelSession.open("tiny-llama").evaluator(split="holdout", tokens=BODY["holdout_tokens"])
    again = evaluator.evaluate(load_model(str(root)).model)
    assert again.ppl == pytest.approx(after["ppl"], rel=1e-4)
    assert again.kl == pytest.approx(after["kl"], rel=1e-3, abs=1e-7)
