"""Schemathesis against the app's own OpenAPI schema, in process: no 5xx, every response as documented.

With a token, each operation gets schema-valid requests (with random study ids, and with the id of
a study that has trials and checkpoints, so the 200 paths run too) and schema-invalid ones; then a
cheaper pass without a token, where every /v1 call must be a documented 401. Deterministic:
Hypothesis is derandomized and keeps no example database.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from storage import add_artifact, get_engine, session_scope

if TYPE_CHECKING:
    from tests.api.conftest import FakeWorker, MakeClient

TOKEN = {"Authorization": "Bearer alice-token"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
MIN_REQUESTS = 1000
Pass = tuple[GenerationMode, int, bool]  # (what to generate, examples per operation, use the seeded study's id)
WITH_TOKEN: list[Pass] = [(GenerationMode.POSITIVE, 100, False), (GenerationMode.POSITIVE, 60, True),
                          (GenerationMode.NEGATIVE, 80, False)]
WITHOUT_TOKEN: list[Pass] = [(GenerationMode.POSITIVE, 15, False), (GenerationMode.POSITIVE, 5, True)]
Sent = Counter[tuple[str, int]]  # (operation label, status code) -> requests


@pytest.fixture
def seeded(make_client: MakeClient, worker: FakeWorker, tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """An app with two tokens, model and data roots, and one of alice's studies with trials and checkpoints."""
    models, data, export = tmp_path / "models", tmp_path / "data", tmp_path / "export"
    (models / "good").mkdir(parents=True)
    (models / "good" / "config.json").write_text("{}")
    (models / "good" / "model.safetensors").write_bytes(b"")
    data.mkdir()
    (data / "notes.txt").write_text("some text\n")
    export.mkdir()
    (export / "config.json").write_text("{}")
    client = make_client(api_token="alice-token,bob-token", model_roots=json.dumps([str(models)]),
                         data_roots=json.dumps([str(data)]))
    study = client.post("/v1/studies", json={"model_id": "tiny-llama", "budget": 0.5}, headers=TOKEN).json()
    worker.add(study["optuna_study_name"], [0.3, 0.2, 0.4])
    with session_scope(get_engine(client.app.state.settings.storage_url)) as session:  # type: ignore[attr-defined]
        for kind in ("checkpoint", "recovered-checkpoint"):
            add_artifact(session, study_id=study["id"], kind=kind, path=str(export), size_bytes=2, sha256="0" * 64)
    yield client, study["id"]
    shutdown_lifespans()  # schemathesis keeps the app's lifespan running until told


def with_known_model(case: schemathesis.Case) -> schemathesis.Case:
    """A create request for a catalog model within the server's limits, so the 201 path is fuzzed too."""
    body: Any = case.body
    if isinstance(body, dict):
        body.update(model_id="tiny-llama", dataset="lee-news", trust_remote_code=False)
        body["n_trials"] = min(body.get("n_trials", 1), 1000)
        body["eval_tokens"] = min(body.get("eval_tokens", 2), 65536)
    return case


def fuzz(client: TestClient, passes: list[Pass], study_id: str, headers: dict[str, str]) -> tuple[Sent, int]:
    """Run each pass on every operation in the schema; the requests sent, and how many operations there are."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results  # the schema itself is valid
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    sent: Sent = Counter()
    # DELETE gets a study of its own to delete (204 once, then 404), so the seeded one serves every other call.
    victim = client.post("/v1/studies", json={"model_id": "tiny-llama", "budget": 0.5}, headers=TOKEN).json()["id"]
    group = client.post("/v1/studies", json={"model_id": "tiny-llama", "budget": [0.3, 0.6]},
                        headers=TOKEN).json()["id"]  # GET /v1/groups/{group_id} reads it
    for operation in operations:
        known = victim if operation.method.upper() == "DELETE" else study_id
        for mode, examples, known_id in passes:
            known_ids = {"study_id": known, "group_id": group}
            known_ids = {name: value for name, value in known_ids.items() if "{" + name + "}" in operation.path}
            if known_id and not known_ids:
                continue
            if mode is GenerationMode.NEGATIVE and not (any(operation.iter_parameters()) or operation.body):
                continue  # nothing to get wrong
            strategy = operation.as_strategy(generation_mode=mode,
                                             path_parameters=known_ids if known_id else None)
            if mode is GenerationMode.POSITIVE and operation.label == "POST /v1/studies":
                strategy = st.one_of(strategy, strategy.map(with_known_model))

            @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            @given(case=strategy)
            def run(case: schemathesis.Case) -> None:
                response = case.call_and_validate(headers=headers, checks=CHECKS)
                sent[(case.operation.label, response.status_code)] += 1

            run()
    return sent, len(operations)


def test_fuzz_with_a_token(seeded: tuple[TestClient, str]) -> None:
    client, study_id = seeded
    sent, n_operations = fuzz(client, WITH_TOKEN, study_id, TOKEN)
    assert sum(sent.values()) >= MIN_REQUESTS, sent
    # Every operation was reached past auth and validation at least once, not just refused.
    succeeded = {label for label, status in sent if 200 <= status < 300}
    assert len(succeeded) == n_operations >= 10, sent
    listed = client.get("/v1/studies", headers=TOKEN, params={"limit": 500}).json()["studies"]
    assert study_id in {study["id"] for study in listed}


def test_fuzz_without_a_token(seeded: tuple[TestClient, str]) -> None:
    client, study_id = seeded
    sent, n_operations = fuzz(client, WITHOUT_TOKEN, study_id, {})
    for label, status in sent:
        assert status == (401 if " /v1/" in label else 200), (label, status)  # /healthz is the one open route
    assert len({label for label, _ in sent}) == n_operations
    assert sum(sent.values()) >= 100
    assert client.get(f"/v1/studies/{study_id}", headers=TOKEN).json()["status"] == "queued"  # nothing cancelled
