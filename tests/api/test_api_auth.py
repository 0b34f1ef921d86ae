"""Bearer tokens: off by default; when set, every route not listed public needs one; a token sees only its studies."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import fastapi.routing
from fastapi import FastAPI
from fastapi.testclient import TestClient

from storage import add_artifact, get_engine, session_scope

if TYPE_CHECKING:
    from tests.api.conftest import FakeWorker, MakeClient

ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}
STUDY = {"model_id": "tiny-llama", "budget": 0.5}


def test_no_token_needed_when_auth_is_off(client: TestClient) -> None:
    created = client.post("/v1/studies", json=STUDY)
    assert created.status_code == 201
    # A token sent anyway changes nothing: everyone shares the studies.
    assert client.get("/v1/studies", headers=ALICE).json()["total"] == 1
    assert client.get(f"/v1/studies/{created.json()['id']}").status_code == 200


def served_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, included routers flattened; a mount as GET of its path."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", lambda routes: routes)  # FastAPI >= 0.13x nests them
    served = []
    for route in flatten(app.routes):
        methods = getattr(route, "methods", None)
        if methods is None:  # a Mount (/static)
            served.append(("GET", route.path))
        served.extend((method, route.path) for method in sorted(methods or ()) if method != "HEAD")
    return served


# Everything else needs a token; a new route is refused by this test until it needs one or is listed here.
PUBLIC = {("GET", "/healthz"), ("GET", "/"), ("GET", "/studies/{study_id}"),  # health; dashboard shells, no data
          ("GET", "/groups/{group_id}"),
          ("GET", "/static"), ("GET", "/static/vendor/plotly.min.js"),        # static files
          ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/assets")}  # the API's docs, Swagger UI
PUBLIC_SAMPLES = {"/static": "/static/study.js", "/docs/assets": "/docs/assets/swagger-ui.css"}


def owned_study(client: TestClient, worker: FakeWorker, storage_url: str, tmp_path: Path,
                headers: dict[str, str]) -> str:
    """A study of ``headers``' owner with a measured trial and checkpoints, so every endpoint has data."""
    study = client.post("/v1/studies", json=STUDY, headers=headers).json()
    worker.add(study["optuna_study_name"], [0.2])
    export = tmp_path / f"export-{study['id']}"
    export.mkdir()
    (export / "config.json").write_text("{}")
    with session_scope(get_engine(storage_url)) as session:
        for kind in ("checkpoint", "recovered-checkpoint"):
            add_artifact(session, study_id=study["id"], kind=kind, path=str(export), size_bytes=2, sha256="0" * 64)
    return str(study["id"])


def test_every_route_needs_a_valid_token_unless_listed_public(make_client: MakeClient, worker: FakeWorker,
                                                              storage_url: str, tmp_path: Path) -> None:
    client = make_client(api_token="alice-token")
    sid = owned_study(client, worker, storage_url, tmp_path, ALICE)
    gid = client.post("/v1/studies", json={**STUDY, "budget": [0.3, 0.6]}, headers=ALICE).json()["id"]
    routes = served_routes(client.app)  # type: ignore[arg-type]
    assert {path for _, path in routes} >= {"/v1/studies/{study_id}/checkpoint", "/v1/studies/{study_id}/best-config",
                                            "/v1/studies/{study_id}/trials", "/v1/models"}
    guarded = [(method, path) for method, path in routes if (method, path) not in PUBLIC]
    assert len(guarded) >= 9
    for method, template in guarded:
        path = template.replace("{study_id}", sid).replace("{group_id}", gid)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "alice-token"},
                        {"Authorization": "Bearer "}, {"Authorization": "Basic YWxpY2U6YWxpY2UtdG9rZW4="},
                        {"Authorization": "Bearer alice-toke"}, {"Authorization": "Bearer alice-tokenx"}):
            response = client.request(method, path, headers=headers, json=STUDY if method == "POST" else None)
            assert response.status_code == 401, (method, path, headers, response.status_code)
            assert response.headers["www-authenticate"] == "Bearer"
            assert sid not in response.text and gid not in response.text
        assert client.request(method, path, headers=ALICE, json=STUDY if method == "POST" else None).status_code < 300
    # The public routes answer without a token, and hold no study data.
    for method, template in PUBLIC & set(routes):
        path = PUBLIC_SAMPLES.get(template, template.replace("{study_id}", sid).replace("{group_id}", gid))
        response = client.request(method, path)
        assert response.status_code == 200, (method, path, response.status_code)
        assert sid not in response.text
    assert client.get(f"/v1/studies/{sid}", headers=ALICE).status_code == 404  # cancelled, then deleted, above


def test_one_token_cannot_see_or_cancel_anothers_study(make_client: MakeClient, worker: FakeWorker,
                                                       storage_url: str, tmp_path: Path) -> None:
    client = make_client(api_token="alice-token, bob-token")  # one token per user
    alice = owned_study(client, worker, storage_url, tmp_path, ALICE)
    bob = owned_study(client, worker, storage_url, tmp_path, BOB)
    assert [s["id"] for s in client.get("/v1/studies", headers=ALICE).json()["studies"]] == [alice]
    assert [s["id"] for s in client.get("/v1/studies", headers=BOB).json()["studies"]] == [bob]
    per_study = [(method, path) for method, path in served_routes(client.app)  # type: ignore[arg-type]
                 if "{study_id}" in path and (method, path) not in PUBLIC]
    assert len(per_study) >= 6 and ("POST", "/v1/studies/{study_id}/cancel") in per_study
    for method, template in per_study:  # reads first, the cancel last
        if method != "GET":
            continue
        path = template.replace("{study_id}", alice)
        refused = client.request(method, path, headers=BOB)
        assert refused.status_code == 404 and refused.json() == {"detail": f"study {alice} not found"}, path
        assert client.request(method, path, headers=ALICE).status_code == 200, path
    for method, template in per_study:
        if method == "GET":
            continue
        path = template.replace("{study_id}", alice)
        assert client.request(method, path, headers=BOB).status_code == 404, path
        assert client.get(f"/v1/studies/{alice}", headers=ALICE).json()["status"] == "queued"
    assert client.post(f"/v1/studies/{alice}/cancel", headers=ALICE).json()["status"] == "cancelled"
    assert client.get(f"/v1/studies/{bob}", headers=BOB).json()["status"] == "queued"


def test_the_token_itself_is_not_stored(make_client: MakeClient, storage_url: str) -> None:
    from storage import get_engine, get_study, hash_token, session_scope

    client = make_client(api_token="alice-token")
    sid = client.post("/v1/studies", json=STUDY, headers=ALICE).json()["id"]
    with session_scope(get_engine(storage_url)) as session:
        study = get_study(session, study_id=sid)
        assert study is not None and study.owner_token_hash == hash_token("alice-token")
