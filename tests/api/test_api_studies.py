"""/v1/studies: create, list, watch, page trials, download the winner and the checkpoint, cancel."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from compress.config import config_from_dict
from search.spec import StudySpec
from storage import StudyStatus, add_artifact, get_engine, session_scope, set_status, update_summary

if TYPE_CHECKING:
    from tests.api.conftest import FakeWorker


def create(client: TestClient, **overrides: object) -> dict:
    response = client.post("/v1/studies", json={"model_id": "tiny-llama", "budget": 0.5, **overrides})
    assert response.status_code == 201, response.text
    return response.json()


def set_summary(url: str, study_id: str, summary: dict) -> None:
    with session_scope(get_engine(url)) as session:
        update_summary(session, study_id=study_id, summary=summary)


def test_create_queues_a_study_and_its_optuna_study(client: TestClient, storage_url: str) -> None:
    response = client.post("/v1/studies", json={"model_id": "tiny-llama", "budget": 0.5})
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/v1/studies/{body['id']}"
    assert body["status"] == "queued"
    spec = body["spec"]
    assert spec["operators"] == ["wanda"] and spec["granularity"] == "type-block"
    assert (spec["n_trials"], spec["dataset"], spec["eval_tokens"], spec["objective"], spec["seed"]) == \
        (100, "lee-news", 2048, "kl", 0)
    # Workers find the Optuna study by the row's name, with the spec as its user attribute.
    study = optuna.load_study(study_name=body["optuna_study_name"], storage=storage_url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    # The one set of defaults: StudySpec's, every field stored.
    assert study.user_attrs["slimscout"] == StudySpec(model_id="tiny-llama", budget=0.5).to_dict()


def test_every_cli_option_reaches_the_workers_spec(client: TestClient, storage_url: str) -> None:
    from search.service_worker import spec_of
    from storage import get_engine, get_study, session_scope

    options = {"strategy": "tpe", "baselines": ["uniform"], "prune": False, "holdout_tokens": 256,
               "sensitivity_tokens": 128, "warm_start": True}
    body = create(client, **options)
    assert {key: body["spec"][key] for key in options} == options
    study = optuna.load_study(study_name=body["optuna_study_name"], storage=storage_url)
    assert {key: study.user_attrs["slimscout"][key] for key in options} == options
    with session_scope(get_engine(storage_url)) as session:
        row = get_study(session, study_id=body["id"])
        assert row is not None and spec_of(row) == StudySpec(model_id="tiny-llama", budget=0.5, **options)
    detail = client.get(f"/v1/studies/{body['id']}").json()
    assert detail["spec"] == study.user_attrs["slimscout"]  # GET shows the stored spec


def test_create_with_every_field(client: TestClient) -> None:
    body = create(client, budget=0.3, operators=["svd-whitened", "wanda", "int8"], granularity="layer",
                  n_trials=12, dataset="hf:wikitext:wikitext-2-raw-v1", eval_tokens=512, objective="ppl",
                  seed=7)
    assert body["spec"]["operators"] == ["svd-whitened", "wanda", "int8"]
    spec = body["spec"]
    assert (spec["budget"], spec["granularity"], spec["n_trials"], spec["objective"], spec["seed"]) == \
        (0.3, "layer", 12, "ppl", 7)


def test_list_and_get(client: TestClient) -> None:
    first, second = create(client), create(client, budget=0.7)
    listed = client.get("/v1/studies").json()
    assert listed["total"] == 2
    assert [s["id"] for s in listed["studies"]] == [second["id"], first["id"]]  # newest first
    page = client.get("/v1/studies", params={"limit": 1, "offset": 1}).json()
    assert [s["id"] for s in page["studies"]] == [first["id"]]
    assert client.get("/v1/studies", params={"status": "running"}).json()["total"] == 0
    detail = client.get(f"/v1/studies/{first['id']}").json()
    assert detail["id"] == first["id"] and detail["status"] == "queued"
    assert detail["counts"] == {"n_complete": 0, "n_running": 0, "n_waiting": 0, "n_failed": 0, "n_pruned": 0}
    assert detail["best"] is None and detail["baselines"] == {} and detail["has_checkpoint"] is False
    assert detail["progress"]["done"] == 0 and detail["progress"]["eta_s"] is None


def test_unknown_study_is_404(client: TestClient) -> None:
    for path in ("", "/trials", "/best-config", "/checkpoint", "/layer-profile"):
        assert client.get(f"/v1/studies/nope{path}").status_code == 404
    assert client.post("/v1/studies/nope/cancel").status_code == 404


def test_detail_follows_the_trials_workers_write(client: TestClient, worker: FakeWorker,
                                                  storage_url: str) -> None:
    study = create(client, n_trials=10)
    name, sid = study["optuna_study_name"], study["id"]
    with session_scope(get_engine(storage_url)) as session:
        set_status(session, study_id=sid, status=StudyStatus.RUNNING)
    worker.add(name, [0.40], source="baseline:uniform", ratio=0.5)
    worker.add(name, [0.30, 0.20, 0.25], duration_s=4.0)
    worker.add(name, [0.22], source="predictor", predicted=0.21, duration_s=4.0)
    worker.add(name, [None], state=TrialState.PRUNED)
    worker.add(name, [None], state=TrialState.FAIL)
    worker.add(name, [None, None], state=TrialState.RUNNING, worker="host-a:101")
    worker.add(name, [None], state=TrialState.WAITING)
    worker.add(name, [None], state=TrialState.FAIL, extra={"surplus": True})  # never part of the search

    detail = client.get(f"/v1/studies/{sid}").json()
    assert detail["status"] == "running"
    assert detail["counts"] == {"n_complete": 5, "n_running": 2, "n_waiting": 1, "n_failed": 1, "n_pruned": 1}
    best = detail["best"]
    assert (best["trial"], best["value"], best["source"]) == (2, 0.20, "sampler")
    assert best["ppl"] == pytest.approx(28.0) and best["kl"] == pytest.approx(0.2)
    assert best["keep_ratio"] == 0.5
    assert detail["baselines"]["uniform"]["trial"] == 0
    progress = detail["progress"]
    assert (progress["done"], progress["total"], progress["fraction"]) == (6, 10, 0.6)
    assert progress["mean_trial_s"] == pytest.approx((2.0 + 3 * 4.0 + 4.0) / 5)
    assert progress["active_workers"] == 1  # both running trials are on host-a:101
    assert progress["eta_s"] == pytest.approx(progress["mean_trial_s"] * 4 / 1)


def test_summary_fields_reach_the_detail(client: TestClient, worker: FakeWorker, storage_url: str) -> None:
    study = create(client)
    summary = {"baselines": {"owl": {"ppl": 31.0, "kl": 0.3, "keep_ratio": 0.5, "trial": 1}},
               "best": {"trial": 0, "ppl": 25.0, "kl": 0.1, "keep_ratio": 0.5, "source": "sampler"},
               "holdout": {"best": {"ppl": 26.0, "kl": 0.11}, "uniform": {"ppl": 33.0, "kl": 0.4}},
               "predictor": {"spearman": 0.8, "mae": 0.02, "n_train": 30, "n_screened": 400,
                             "pairs": [[0.1, 0.12], [0.2, 0.19]]},
               "evaluations": 2, "sensitivity_evaluations": 14, "eta_s": 120.0}
    set_summary(storage_url, study["id"], summary)
    detail = client.get(f"/v1/studies/{study['id']}").json()
    assert detail["baselines"]["owl"]["ppl"] == 31.0
    assert detail["holdout"]["best"] == {"ppl": 26.0, "kl": 0.11}
    assert detail["predictor"]["pairs"] == [[0.1, 0.12], [0.2, 0.19]]
    assert detail["summary"] == {"evaluations": 2, "sensitivity_evaluations": 14, "eta_s": 120.0}
    assert detail["best"]["ppl"] == 25.0  # no trials yet: the summary's word
    assert client.get("/v1/studies").json()["studies"][0]["best"]["ppl"] == 25.0


def test_trials_are_paged_in_number_order(client: TestClient, worker: FakeWorker) -> None:
    study = create(client)
    worker.add(study["optuna_study_name"], [0.5 - 0.01 * i for i in range(25)], predicted=0.3)
    worker.add(study["optuna_study_name"], [None], state=TrialState.RUNNING)
    base = f"/v1/studies/{study['id']}/trials"
    page = client.get(base, params={"offset": 10, "limit": 10}).json()
    assert page["total"] == 26 and page["offset"] == 10 and page["limit"] == 10
    assert [t["number"] for t in page["trials"]] == list(range(10, 20))
    trial = page["trials"][0]
    assert trial["state"] == "complete" and trial["value"] == pytest.approx(0.40)
    assert trial["ppl"] == pytest.approx(36.0) and trial["kl"] == pytest.approx(0.40)
    assert trial["keep_ratio"] == 0.5 and trial["source"] == "sampler" and trial["predicted"] == 0.3
    assert trial["duration_s"] == pytest.approx(2.0, abs=0.01) and trial["worker"] == "host-a:101"
    assert "config" not in trial
    rest = client.get(base, params={"offset": 20}).json()["trials"]
    assert [t["number"] for t in rest] == list(range(20, 26))
    running = client.get(base, params={"state": "running"}).json()
    assert running["total"] == 1 and running["trials"][0]["value"] is None
    assert client.get(base, params={"limit": 0}).status_code == 422
    assert client.get(base, params={"limit": 1001}).status_code == 422
    assert client.get(base, params={"state": "bogus"}).status_code == 422


def test_best_config_is_404_until_a_trial_is_measured_then_the_config_document(
        client: TestClient, worker: FakeWorker) -> None:
    study = create(client)
    url = f"/v1/studies/{study['id']}/best-config"
    assert client.get(url).status_code == 404
    worker.add(study["optuna_study_name"], [None], state=TrialState.RUNNING)
    assert client.get(url).status_code == 404
    worker.add(study["optuna_study_name"], [0.3], ratio=0.4)
    worker.add(study["optuna_study_name"], [0.2], ratio=0.5)
    worker.add(study["optuna_study_name"], [0.25], ratio=0.6)
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-disposition"] == \
        f'attachment; filename="slimscout-{study["id"]}-best-config.json"'
    document = response.json()
    assert document == worker.config_doc(0.5)
    config = config_from_dict(document)
    assert config.model_id == "tiny-llama" and len(config.layers) == worker.BLOCKS * len(worker.TYPES)


def test_completed_study_serves_the_summary_best(client: TestClient, worker: FakeWorker,
                                                  storage_url: str) -> None:
    study = create(client)
    worker.add(study["optuna_study_name"], [0.3], ratio=0.4)
    worker.add(study["optuna_study_name"], [0.2], ratio=0.5)
    with session_scope(get_engine(storage_url)) as session:
        set_status(session, study_id=study["id"], status=StudyStatus.RUNNING)
        update_summary(session, study_id=study["id"], summary={"best": {"trial": 0, "ppl": 32.0}})
        set_status(session, study_id=study["id"], status=StudyStatus.COMPLETED)
    detail = client.get(f"/v1/studies/{study['id']}").json()
    assert detail["best"]["trial"] == 0 and detail["progress"]["eta_s"] == 0.0
    assert client.get(f"/v1/studies/{study['id']}/best-config").json() == worker.config_doc(0.4)


def test_best_config_falls_back_to_the_config_artifact(client: TestClient, worker: FakeWorker,
                                                       storage_url: str, tmp_path: Path) -> None:
    study = create(client)
    path = tmp_path / "best.json"
    path.write_text(json.dumps(worker.config_doc(0.3)))
    with session_scope(get_engine(storage_url)) as session:
        add_artifact(session, study_id=study["id"], kind="config", path=str(path), size_bytes=1,
                     sha256="0" * 64)
    assert client.get(f"/v1/studies/{study['id']}/best-config").json() == worker.config_doc(0.3)


def test_layer_profile_of_the_best_config(client: TestClient, worker: FakeWorker) -> None:
    study = create(client)
    url = f"/v1/studies/{study['id']}/layer-profile"
    empty = {"trial": None, "source": "none", "blocks": [], "traces": {}, "other": {}}
    assert client.get(url).json() == empty
    worker.add(study["optuna_study_name"], [0.2], ratio=0.5)
    profile = client.get(url).json()
    assert profile["trial"] == 0 and profile["source"] == "meta.layer_keep"
    blocks = range(worker.BLOCKS)
    assert profile["blocks"] == list(blocks) and sorted(profile["traces"]) == sorted(worker.TYPES)
    keep = worker.config_doc(0.5)["meta"]["layer_keep"]
    assert profile["traces"]["mlp.down_proj"] == [keep[f"model.layers.{b}.mlp.down_proj"] for b in blocks]


def test_checkpoint_is_404_until_exported_then_a_tar_stream(
        client: TestClient, storage_url: str, tmp_path: Path) -> None:
    study = create(client)
    url = f"/v1/studies/{study['id']}/checkpoint"
    assert client.get(url).status_code == 404
    export = tmp_path / "export"
    (export / "sub").mkdir(parents=True)
    (export / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    weights = bytes(range(256)) * 4099  # not a multiple of the tar block size
    (export / "sub" / "model.safetensors").write_bytes(weights)
    with session_scope(get_engine(storage_url)) as session:
        add_artifact(session, study_id=study["id"], kind="checkpoint", path=str(export),
                     size_bytes=len(weights), sha256="0" * 64)
    assert client.get(f"/v1/studies/{study['id']}").json()["has_checkpoint"] is True
    response = client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-tar"
    assert f"slimscout-{study['id']}-checkpoint.tar" in response.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        names = sorted(tar.getnames())
        root = f"slimscout-{study['id']}-checkpoint"
        assert names == [f"{root}/config.json", f"{root}/sub/model.safetensors"]
        member = tar.extractfile(f"{root}/sub/model.safetensors")
        assert member is not None and member.read() == weights


def test_checkpoint_that_is_already_a_tar_file_is_sent_as_is(
        client: TestClient, storage_url: str, tmp_path: Path) -> None:
    study = create(client)
    archive = tmp_path / "export.tar"
    with tarfile.open(archive, "w") as tar:
        data = b"hello"
        info = tarfile.TarInfo("x/readme.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with session_scope(get_engine(storage_url)) as session:
        add_artifact(session, study_id=study["id"], kind="checkpoint", path=str(archive), size_bytes=1,
                     sha256="0" * 64)
    response = client.get(f"/v1/studies/{study['id']}/checkpoint")
    assert response.status_code == 200 and response.content == archive.read_bytes()


def test_cancel(client: TestClient, storage_url: str) -> None:
    study = create(client)
    response = client.post(f"/v1/studies/{study['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert client.post(f"/v1/studies/{study['id']}/cancel").json()["status"] == "cancelled"  # idempotent
    assert client.get(f"/v1/studies/{study['id']}").json()["progress"]["eta_s"] is None
    done = create(client)
    with session_scope(get_engine(storage_url)) as session:
        set_status(session, study_id=done["id"], status=StudyStatus.RUNNING)
        set_status(session, study_id=done["id"], status=StudyStatus.COMPLETED)
    response = client.post(f"/v1/studies/{done['id']}/cancel")
    assert response.status_code == 409 and "completed" in response.json()["detail"]


def test_a_worker_may_create_the_optuna_study_first(client: TestClient, storage_url: str) -> None:
    """Both sides use load_if_exists; the API keeps a worker's fuller spec."""
    from storage import create_study

    with session_scope(get_engine(storage_url)) as session:
        row = create_study(session, spec=StudySpec(model_id="tiny-llama", budget=0.5, granularity="type",
                                                   n_trials=5, eval_tokens=64).to_dict())
    worker_spec = {"model_id": "tiny-llama", "budget": 0.5, "strategy": "tpe"}
    study = optuna.create_study(storage=storage_url, study_name=row.optuna_study_name, direction="minimize")
    study.set_user_attr("slimscout", worker_spec)
    client.app.state.optuna.create_study(row.optuna_study_name, {"model_id": "other"})  # type: ignore[attr-defined]
    stored = optuna.load_study(study_name=row.optuna_study_name, storage=storage_url)
    assert stored.user_attrs["slimscout"] == worker_spec


def test_health_models_and_pages(make_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "models"
    (root / "my-llama").mkdir(parents=True)
    (root / "my-llama" / "config.json").write_text("{}")
    (root / "not-a-model").mkdir()
    client = make_client(model_roots=json.dumps([str(root)]))
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok"}
    models = client.get("/v1/models").json()
    assert {m["model_id"]: m["kind"] for m in models["catalog"]} == {
        "smollm2-135m": "causal-lm", "minilm-l6": "encoder", "tiny-llama": "causal-lm",
        "tiny-bert": "encoder"}
    assert models["model_roots"] == [str(root)]
    assert [m["model_id"] for m in models["local"]] == [str((root / "my-llama").resolve())]
    assert "wanda" in models["operators"] and "type-block" in models["granularities"]
    for page in ("/", "/studies/abc"):
        response = client.get(page)
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    plotly = client.get("/static/vendor/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
    assert client.get("/static/study.js").status_code == 200
    study_html = client.get("/studies/abc").text
    assert "/static/vendor/plotly.min.js" in study_html and "cdn" not in study_html.lower()


def test_healthz_reports_an_unreachable_database(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client()
    client.app.state.settings = client.app.state.settings.model_copy(  # type: ignore[attr-defined]
        update={"storage_url": "sqlite:////nonexistent-dir/x/y.db"})
    response = client.get("/healthz")
    assert response.status_code == 503 and response.json()["status"] == "error"


def test_a_study_in_setup_reports_its_step_and_counts(client: TestClient, storage_url: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A real worker sets a tiny-llama study up; after each of its writes the detail shows where the setup is."""
    import threading

    from compress.baselines import sensitivity_levels
    from search.context import Workbench
    from search.service_worker import ServiceWorker

    study = create(client, baselines=["uniform", "sensitivity"], strategy="tpe", eval_tokens=64,
                   sensitivity_tokens=64, n_trials=4)
    assert client.get(f"/v1/studies/{study['id']}").json()["setup"] is None  # no worker on it yet
    worker = ServiceWorker(storage_url, Workbench(), threading.Event())
    publish, seen = worker.publish, []

    def publish_and_look(row: object, summary: dict) -> None:
        publish(row, summary)  # type: ignore[arg-type]
        seen.append(client.get(f"/v1/studies/{study['id']}").json())

    monkeypatch.setattr(worker, "publish", publish_and_look)
    assert worker.step()  # claims the queued study and sets it up
    setups = [detail["setup"] for detail in seen]
    running = [s for s in setups if not s["finished"]]
    steps = [s["step"] for i, s in enumerate(running) if i == 0 or running[i - 1]["step"] != s["step"]]
    assert steps == ["loading the model", "baseline uniform", "baseline sensitivity", "sensitivity scan",
                     "calibration statistics", "wanda ranks", "sensitivity scan"]  # a new step is written at once
    scan = [(s["done"], s["total"]) for s in running if s["step"] == "sensitivity scan"]
    passes = 4 * len(sensitivity_levels(0.5))  # tiny-llama's 4 blocks at each level
    assert scan[0] == (0, passes) and all(total == passes for _, total in scan)
    assert all(s["fraction"] == pytest.approx(s["done"] / s["total"]) for s in running)
    assert [s["seconds"] for s in setups] == sorted(s["seconds"] for s in setups)
    final = seen[-1]
    assert final["setup"]["finished"] and final["setup"]["step"] == "sensitivity scan"
    assert final["setup"]["done"] == passes  # the final state, though the throttle held the last count back
    assert "setup" not in final["summary"]
    assert final["baselines"] == {} and final["counts"]["n_waiting"] == 2  # seeded, not measured yet
