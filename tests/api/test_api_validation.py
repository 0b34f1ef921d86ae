"""Every refused study names the field at fault; oversized bodies get 413."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

if TYPE_CHECKING:
    from tests.api.conftest import MakeClient

VALID = {"model_id": "tiny-llama", "budget": 0.5}


def fields_at_fault(response: Any) -> set[str]:
    assert response.status_code == 422, response.text
    return {".".join(str(part) for part in error["loc"][1:2]) for error in response.json()["detail"]}


@pytest.mark.parametrize(("override", "field"), [
    ({"budget": 0}, "budget"),
    ({"budget": -0.1}, "budget"),
    ({"budget": 1.01}, "budget"),
    ({"budget": "half"}, "budget"),
    ({"operators": ["wanda", "prune-everything"]}, "operators"),
    ({"operators": []}, "operators"),
    ({"operators": ["wanda", "wanda"]}, "operators"),
    ({"granularity": "per-head"}, "granularity"),
    ({"objective": "accuracy"}, "objective"),
    ({"n_trials": 0}, "n_trials"),
    ({"n_trials": 1001}, "n_trials"),  # above Settings.max_trials (1000)
    ({"eval_tokens": 1}, "eval_tokens"),
    ({"eval_tokens": 65537}, "eval_tokens"),  # above Settings.max_eval_tokens
    ({"seed": -1}, "seed"),
    ({"model_id": "gpt-17"}, "model_id"),
    ({"model_id": "meta-llama/Llama-3-8B"}, "model_id"),  # hub ids are not served
    ({"model_id": ""}, "model_id"),
    ({"dataset": "/etc/passwd"}, "dataset"),
    ({"dataset": "../secret.txt"}, "dataset"),
    ({"surprise": 1}, "surprise"),
    # Strict types: JSON's true is not a number, a string is not a float.
    ({"budget": True}, "budget"),
    ({"budget": "0.4"}, "budget"),
    ({"n_trials": True}, "n_trials"),
    ({"n_trials": 10.0}, "n_trials"),
    ({"prune": 1}, "prune"),
    ({"objective": "cosine"}, "objective"),  # tiny-llama is a causal LM: no embedding to compare
    ({"dataset": "hf:a/.."}, "dataset"),
    ({"dataset": "hf:../x"}, "dataset"),
    ({"strategy": "evolution"}, "strategy"),
    ({"baselines": ["uniform", "magic"]}, "baselines"),
    ({"operators": ["int4"]}, "operators"),  # a quantizer alone reduces no parameters
    ({"holdout_tokens": 65537}, "holdout_tokens"),
])
def test_invalid_field_is_named(client: TestClient, override: dict[str, Any], field: str) -> None:
    response = client.post("/v1/studies", json={**VALID, **override})
    assert fields_at_fault(response) == {field}
    assert client.get("/v1/studies").json()["total"] == 0


def test_missing_fields_are_named(client: TestClient) -> None:
    assert fields_at_fault(client.post("/v1/studies", json={})) == {"model_id", "budget"}


def test_all_errors_come_back_at_once(client: TestClient) -> None:
    response = client.post("/v1/studies", json={"model_id": "nope", "budget": 0.5, "n_trials": 5000,
                                                "eval_tokens": 10**6})
    assert fields_at_fault(response) == {"model_id", "n_trials", "eval_tokens"}
    messages = {e["loc"][1]: e["msg"] for e in response.json()["detail"]}
    assert "at most 1000" in messages["n_trials"] and "at most 65536" in messages["eval_tokens"]


def test_limits_come_from_settings(make_client: MakeClient) -> None:
    client = make_client(max_trials="10", max_eval_tokens="256")
    small = {**VALID, "n_trials": 10, "eval_tokens": 256}
    assert fields_at_fault(client.post("/v1/studies", json={**small, "n_trials": 11})) == {"n_trials"}
    assert fields_at_fault(client.post("/v1/studies", json={**small, "eval_tokens": 257})) == {"eval_tokens"}
    assert client.post("/v1/studies", json={**VALID, "n_trials": 10, "eval_tokens": 256}).status_code == 201


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for name in ("good", "nested/deeper"):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text("{}")
        (root / name / "model.safetensors").write_bytes(b"")  # only its presence is checked here
    (root / "no-config").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (outside / "model.safetensors").write_bytes(b"")
    os.symlink(outside, root / "sneaky-link")
    return root


def test_model_directories_inside_a_root(make_client: MakeClient, model_root: Path) -> None:
    client = make_client(model_roots=json.dumps([str(model_root)]))
    for model_id in ("good", str(model_root / "good"), "nested/deeper", "./good/../good"):
        response = client.post("/v1/studies", json={**VALID, "model_id": model_id})
        assert response.status_code == 201, (model_id, response.text)
        stored = response.json()["spec"]["model_id"]
        assert Path(stored).is_absolute() and Path(stored).resolve() == Path(stored)
        assert Path(stored).is_relative_to(model_root.resolve())


@pytest.mark.parametrize("model_id", [
    "../outside",                  # climbs out of the root
    "good/../../outside",          # climbs out through a real directory
    "sneaky-link",                 # a symlink inside the root pointing outside
    "/etc",                        # absolute, elsewhere
    ".",                           # the root itself
    "no-config",                   # a directory, but not a model
    "missing",
])
def test_model_paths_outside_a_root_are_refused(make_client: MakeClient, model_root: Path,
                                                model_id: str) -> None:
    client = make_client(model_roots=json.dumps([str(model_root)]))
    response = client.post("/v1/studies", json={**VALID, "model_id": model_id})
    assert fields_at_fault(response) == {"model_id"}


def test_model_paths_are_refused_without_roots(client: TestClient, model_root: Path) -> None:
    response = client.post("/v1/studies", json={**VALID, "model_id": str(model_root / "good")})
    assert fields_at_fault(response) == {"model_id"}


def test_dataset_files_inside_a_data_root(make_client: MakeClient, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_text("some text\n\nmore text\n")
    (root / "notes.csv").write_text("a,b\n")
    client = make_client(data_roots=json.dumps([str(root)]))
    response = client.post("/v1/studies", json={**VALID, "dataset": "notes.txt"})
    assert response.status_code == 201 and response.json()["spec"]["dataset"] == str((root / "notes.txt").resolve())
    for dataset in ("notes.csv", "../data/../../etc/hostname", "missing.txt"):
        assert fields_at_fault(client.post("/v1/studies", json={**VALID, "dataset": dataset})) == {"dataset"}
    # The recovery's extra training corpora are resolved and refused by the same rules.
    response = client.post("/v1/studies", json={**VALID, "recover_train_extra": ["enwiki", "notes.txt"]})
    assert response.status_code == 201
    assert response.json()["spec"]["recover_train_extra"] == ["enwiki", str((root / "notes.txt").resolve())]
    for extra in (["notes.csv"], ["../data/../../etc/hostname"], ["lee-news"], ["enwiki", "enwiki"]):
        assert fields_at_fault(client.post("/v1/studies", json={**VALID, "recover_train_extra": extra})) == \
            {"recover_train_extra"}, extra


def test_oversized_bodies_get_413(make_client: MakeClient) -> None:
    client = make_client(max_request_bytes="2000")
    padding = "x" * 3000
    response = client.post("/v1/studies", json={**VALID, "model_id": padding})
    assert response.status_code == 413 and "2000 bytes" in response.json()["detail"]

    def chunks():  # type: ignore[no-untyped-def]  # no Content-Length: chunked transfer encoding
        yield b'{"model_id": "tiny-llama", "budget": 0.5, "dataset": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}'

    response = client.post("/v1/studies", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert client.post("/v1/studies", json=VALID).status_code == 201  # small bodies still pass
    assert client.get("/v1/studies").json()["total"] == 1
