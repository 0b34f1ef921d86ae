"""Multi-budget studies over HTTP: POST a list of budgets, one ordinary study per budget, GET the group."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pytest
from fastapi.testclient import TestClient

from search.spec import StudySpec

if TYPE_CHECKING:
    from tests.api.conftest import MakeClient

BODY = {"model_id": "tiny-llama", "budget": [0.3, 0.5, 0.7], "n_trials": 6, "eval_tokens": 64}


def test_a_list_of_budgets_queues_one_ordinary_study_per_budget(client: TestClient, storage_url: str) -> None:
    created = client.post("/v1/studies", json=BODY)
    assert created.status_code == 201, created.text
    group = created.json()
    assert created.headers["location"] == f"/v1/groups/{group['id']}"
    assert (group["status"], group["budget_field"], group["budgets"]) == ("queued", "budget", [0.3, 0.5, 0.7])
    assert group["spec"] == StudySpec(**{**BODY, "budget": 0.3}).to_dict() | {"budget": [0.3, 0.5, 0.7]}
    assert [m["budget"] for m in group["per_budget"]] == [0.3, 0.5, 0.7]
    for member in group["per_budget"]:
        study = client.get(f"/v1/studies/{member['study_id']}").json()
        # The member is exactly the study a single-budget POST makes, Optuna study included.
        assert study["spec"] == StudySpec(**{**BODY, "budget": member["budget"]}).to_dict()
        assert study["status"] == "queued"
        loaded = optuna.load_study(study_name=study["optuna_study_name"], storage=storage_url)
        assert loaded.user_attrs["slimscout"] == study["spec"]
    assert client.get("/v1/studies").json()["total"] == 3
    again = client.get(f"/v1/groups/{group['id']}").json()
    assert [m["progress"]["total"] for m in again["per_budget"]] == [6, 6, 6]
    client.post(f"/v1/studies/{group['per_budget'][0]['study_id']}/cancel")
    assert client.get(f"/v1/groups/{group['id']}").json()["status"] == "running"  # mixed: not all finished
    assert client.delete(f"/v1/studies/{group['per_budget'][0]['study_id']}").status_code == 204
    assert [m["budget"] for m in client.get(f"/v1/groups/{group['id']}").json()["per_budget"]] == [0.5, 0.7]


def test_a_single_budget_is_answered_as_before(client: TestClient) -> None:
    created = client.post("/v1/studies", json={**BODY, "budget": 0.5})
    assert created.status_code == 201 and created.headers["location"] == f"/v1/studies/{created.json()['id']}"
    assert created.json()["spec"] == StudySpec(**{**BODY, "budget": 0.5}).to_dict()


@pytest.mark.parametrize(("budget", "loc", "needle"), [
    ([0.5, 0.3], ["body", "budget", 1], "sorted ascending and distinct (0.5 then 0.3)"),
    ([0.3, 0.3], ["body", "budget", 1], "sorted ascending and distinct"),
    ([0.3, 1.2], ["body", "budget", 1], "less than or equal to 1"),
    ([0.3, "0.5"], ["body", "budget", 1], "valid number"),
    ([], ["body", "budget"], "at least 1 item"),
])
def test_a_bad_list_is_refused_naming_the_budget(client: TestClient, budget: list[object], loc: list[object],
                                                 needle: str) -> None:
    response = client.post("/v1/studies", json={**BODY, "budget": budget})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == loc and needle in error["msg"]
    assert client.get("/v1/studies").json()["total"] == 0


def test_a_group_counts_one_open_study_per_budget(make_client: MakeClient) -> None:
    client = make_client(max_open_studies="2")
    refused = client.post("/v1/studies", json=BODY)
    assert refused.status_code == 429 and "would open 3 more" in refused.json()["detail"]
    assert client.get("/v1/studies").json()["total"] == 0
    assert client.post("/v1/studies", json={**BODY, "budget": [0.3, 0.5]}).status_code == 201


def test_an_unknown_or_foreign_group_is_404(make_client: MakeClient) -> None:
    client = make_client(api_token="alice-token,bob-token")
    alice = {"Authorization": "Bearer alice-token"}
    bob = {"Authorization": "Bearer bob-token"}
    group = client.post("/v1/studies", json=BODY, headers=alice).json()
    assert client.get(f"/v1/groups/{group['id']}", headers=alice).status_code == 200
    assert client.get(f"/v1/groups/{group['id']}", headers=bob).status_code == 404
    assert client.get("/v1/groups/nope", headers=alice).status_code == 404


def test_a_group_runs_on_a_real_worker_and_each_budget_downloads(client: TestClient, storage_url: str,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Two budgets, a real worker on tiny-llama: each member completes at its own budget, holdout measured,
    its checkpoint downloads from its own endpoint, and more kept parameters damage the model less."""
    from common.settings import get_settings
    from search.context import Workbench
    from search.service_worker import serve_studies

    monkeypatch.setenv("SLIMSCOUT_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    body = {"model_id": "tiny-llama", "budget": [0.4, 0.7], "strategy": "random", "n_trials": 4,
            "eval_tokens": 128, "holdout_tokens": 128, "sensitivity_tokens": 64, "baselines": ["uniform"],
            "export_format": "slimscout"}
    group = client.post("/v1/studies", json=body).json()
    serve_studies(storage_url, Workbench(), stop=threading.Event(), once=True, poll_s=0.1)
    done = client.get(f"/v1/groups/{group['id']}").json()
    assert done["status"] == "completed", done
    for member in done["per_budget"]:
        assert member["progress"]["done"] == 4 and member["has_checkpoint"] is True
        assert member["best"]["keep_ratio"] == pytest.approx(member["budget"], abs=0.01)
        assert member["holdout"]["tokens"] == 128
        download = client.get(f"/v1/studies/{member['study_id']}/checkpoint")
        assert download.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(download.content)) as tar:
            names = tar.getnames()
            manifest = next(n for n in names if n.endswith("slimscout_manifest.json"))
            assert json.load(tar.extractfile(manifest))["format"] == "slimscout"  # type: ignore[arg-type]
    low, high = done["per_budget"]
    assert high["holdout"]["best"]["kl"] < low["holdout"]["best"]["kl"]
