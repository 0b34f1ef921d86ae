"""One study spec: the API's body, the CLI's arguments and the registries share one vocabulary, and
a study stores the same JSON whichever way it came in."""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import threading
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from fastapi.testclient import TestClient

from compress.baseline_methods import BASELINE_METHODS
from compress.registry import OPERATOR_NAMES
from search.spec import GRANULARITIES, OBJECTIVES, StudySpec
from search.strategy_registry import STRATEGY_NAMES
from slimscout.cli import build_parser
from slimscout.commands.search import spec_of
from storage import get_engine, get_study, session_scope


def _cli_search() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["search"]


def _cli_choices(option: str) -> tuple[str, ...]:
    action = next(a for a in _cli_search()._actions if option in a.option_strings)
    return tuple(action.choices or ())


def _enum(schema: dict[str, Any], name: str) -> tuple[str, ...]:
    field = schema["components"]["schemas"]["StudySpec"]["properties"][name]
    return tuple((field.get("items") or field)["enum"])


def test_the_api_the_cli_and_the_registries_share_one_vocabulary(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/studies"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    # The request body is the spec, each budget also a list (one study per budget, search.budgets).
    spec = StudySpec.model_json_schema()
    assert body["properties"].keys() == spec["properties"].keys() and body["required"] == spec["required"]
    def others(properties: dict[str, Any]) -> dict[str, Any]:  # FastAPI leaves out defaults of None
        return {name: {k: v for k, v in field.items() if k != "default"} for name, field in properties.items()
                if not name.startswith("budget")}

    assert others(body["properties"]) == others(spec["properties"])
    assert [option["type"] for option in body["properties"]["budget"]["anyOf"]] == ["number", "array", "null"]
    assert _enum(schema, "operators") == OPERATOR_NAMES
    assert _enum(schema, "strategy") == STRATEGY_NAMES == _cli_choices("--strategy")
    assert _enum(schema, "granularity") == GRANULARITIES == _cli_choices("--granularity")
    assert _enum(schema, "objective") == OBJECTIVES == _cli_choices("--objective")
    assert _enum(schema, "baselines") == BASELINE_METHODS
    models = client.get("/v1/models").json()
    assert tuple(models["operators"]) == OPERATOR_NAMES and tuple(models["granularities"]) == GRANULARITIES
    assert tuple(models["strategies"]) == STRATEGY_NAMES


def test_the_cli_and_its_defaults_are_the_spec() -> None:
    """Every option has one default (the spec's); the CLI's arguments build the spec."""
    args = _cli_search().parse_args(["--model", "tiny-llama", "--budget", "0.5"])
    assert spec_of(args) == StudySpec(model_id="tiny-llama", budget=0.5)


def test_a_spec_through_the_cli_and_through_the_api_stores_the_same_json(client: TestClient, storage_url: str,
                                                                          tmp_path: Path) -> None:
    from search.study import create_study

    argv = ["--model", "tiny-llama", "--budget", "0.4", "--operators", "svd-whitened,wanda,int8",
            "--granularity", "layer", "--trials", "12", "--tokens", "64", "--holdout-tokens", "256",
            "--sensitivity-tokens", "128", "--objective", "ppl", "--strategy", "random", "--baselines",
            "uniform,owl", "--no-prune", "--warm-start", "--screen-factor", "2", "--dataset", "lee-news",
            "--seed", "7", "--recover-steps", "30", "--recover-minutes", "12.5", "--recover-trial-steps", "3"]
    cli_url = f"sqlite:///{tmp_path / 'cli.db'}"
    cli_study = create_study(cli_url, "cli", spec_of(_cli_search().parse_args(argv)))  # what run_search stores
    body = {"model_id": "tiny-llama", "budget": 0.4, "operators": ["svd-whitened", "wanda", "int8"],
            "granularity": "layer", "n_trials": 12, "eval_tokens": 64, "holdout_tokens": 256,
            "sensitivity_tokens": 128, "objective": "ppl", "strategy": "random", "baselines": ["uniform", "owl"],
            "prune": False, "warm_start": True, "screen_factor": 2, "dataset": "lee-news", "seed": 7,
            "recover_steps": 30, "recover_minutes": 12.5, "recover_trial_steps": 3}
    created = client.post("/v1/studies", json=body)
    assert created.status_code == 201, created.text
    api_study = optuna.load_study(study_name=created.json()["optuna_study_name"], storage=storage_url)
    with session_scope(get_engine(storage_url)) as session:
        row = get_study(session, study_id=created.json()["id"])
        assert row is not None
        stored_row = row.spec
    assert cli_study.user_attrs["slimscout"] == api_study.user_attrs["slimscout"] == stored_row
    assert client.get(f"/v1/studies/{created.json()['id']}").json()["spec"] == stored_row


def test_a_budget_in_bits_reaches_the_api_and_the_cli_alike(client: TestClient) -> None:
    args = _cli_search().parse_args(["--model", "tiny-llama", "--budget-bits", "3.5", "--operators", "gptq"])
    spec = spec_of(args)
    assert spec == StudySpec(model_id="tiny-llama", budget_bits=3.5, operators=["gptq"])
    created = client.post("/v1/studies", json={"model_id": "tiny-llama", "budget_bits": 3.5, "operators": ["gptq"]})
    assert created.status_code == 201, created.text
    assert created.json()["spec"] == spec.to_dict()
    refused = client.post("/v1/studies", json={"model_id": "tiny-llama", "budget_bits": 3.5, "operators": ["wanda"]})
    assert refused.status_code == 422 and "quantizers only" in refused.text


def test_a_service_study_posted_with_tpe_runs_tpe(client: TestClient, storage_url: str) -> None:
    """The worker runs the strategy the request chose: its sampled trials say ``sampler:tpe``, none is the
    predictor's (what the default, guided, would enqueue), and GET shows the stored spec."""
    from search.context import Workbench
    from search.service_worker import serve_studies

    body = {"model_id": "tiny-llama", "budget": 0.5, "strategy": "tpe", "n_trials": 8, "eval_tokens": 64,
            "holdout_tokens": 64, "sensitivity_tokens": 64, "baselines": ["uniform"]}
    created = client.post("/v1/studies", json=body).json()
    serve_studies(storage_url, Workbench(), stop=threading.Event(), once=True, poll_s=0.1)
    detail = client.get(f"/v1/studies/{created['id']}").json()
    assert detail["status"] == "completed", detail
    assert detail["spec"] == StudySpec(**body).to_dict()
    sources = [t["source"] for t in client.get(f"/v1/studies/{created['id']}/trials").json()["trials"]]
    assert sources[0] == "baseline:uniform"
    assert set(sources[1:]) == {"sampler:tpe"} and len(sources) == 8


def test_a_service_study_exports_its_winner_in_the_chosen_format(client: TestClient, storage_url: str,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``export_format`` makes the worker write the winner's checkpoint; it downloads as a tar and loads
    with plain transformers (compressed-tensors), its model card quoting the holdout numbers."""
    from transformers import AutoModelForCausalLM

    from common.settings import get_settings
    from search.context import Workbench
    from search.service_worker import serve_studies

    monkeypatch.setenv("SLIMSCOUT_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    body = {"model_id": "tiny-llama", "budget": 0.5, "operators": ["wanda", "int8"], "strategy": "random",
            "n_trials": 3, "eval_tokens": 64, "holdout_tokens": 64, "sensitivity_tokens": 64,
            "baselines": ["uniform"], "export_format": "compressed-tensors"}
    created = client.post("/v1/studies", json=body).json()
    assert created["spec"]["export_format"] == "compressed-tensors"
    serve_studies(storage_url, Workbench(), stop=threading.Event(), once=True, poll_s=0.1)
    detail = client.get(f"/v1/studies/{created['id']}").json()
    assert detail["status"] == "completed" and detail["has_checkpoint"] is True, detail
    response = client.get(f"/v1/studies/{created['id']}/checkpoint")
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        tar.extractall(tmp_path / "download", filter="data")
    (root,) = (tmp_path / "download").iterdir()
    manifest = json.loads((root / "slimscout_manifest.json").read_text())
    assert manifest["format"] == "compressed-tensors"
    assert "packed" in {entry["storage"] for entry in manifest["layers"].values()}
    holdout = detail["holdout"]
    card = (root / "README.md").read_text()
    assert "base_model: tiny-llama" in card
    assert f"| dense `tiny-llama` | {holdout['dense']['ppl']:.2f} |" in card
    assert f"| this model | {holdout['best']['ppl']:.2f}" in card
    model = AutoModelForCausalLM.from_pretrained(root)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
