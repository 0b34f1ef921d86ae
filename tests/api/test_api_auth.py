"""Bearer tokens: off by default; when set, every /v1 call needs one, and a token sees only its studies."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi.testclient import TestClient

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


def test_every_v1_endpoint_needs_a_valid_token(make_client: MakeClient) -> None:
    client = make_client(api_token="alice-token")
    sid = client.post("/v1/studies", json=STUDY, headers=ALICE).json()["id"]
    calls = [("GET", "/v1/studies"), ("POST", "/v1/studies"), ("GET", "/v1/models"),
             ("GET", f"/v1/studies/{sid}"), ("GET", f"/v1/studies/{sid}/trials"),
             ("GET", f"/v1/studies/{sid}/best-config"), ("GET", f"/v1/studies/{sid}/layer-profile"),
             ("GET", f"/v1/studies/{sid}/checkpoint"), ("POST", f"/v1/studies/{sid}/cancel")]
    for method, path in calls:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "alice-token"},
                        {"Authorization": "Bearer "}):
            response = client.request(method, path, headers=headers, json=STUDY if method == "POST" else None)
            assert response.status_code == 401, (method, path, headers, response.status_code)
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.get(f"/v1/studies/{sid}", headers=ALICE).json()["status"] == "queued"
    # Health and the dashboard shell stay open; the data behind the dashboard does not.
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200 and client.get(f"/studies/{sid}").status_code == 200
    assert client.get("/static/vendor/plotly.min.js").status_code == 200


def test_one_token_cannot_see_or_cancel_anothers_study(make_client: MakeClient, worker: FakeWorker) -> None:
    client = make_client(api_token="alice-token, bob-token")  # one token per user
    alice = client.post("/v1/studies", json=STUDY, headers=ALICE).json()
    bob = client.post("/v1/studies", json=STUDY, headers=BOB).json()
    worker.add(alice["optuna_study_name"], [0.2])
    assert [s["id"] for s in client.get("/v1/studies", headers=ALICE).json()["studies"]] == [alice["id"]]
    assert [s["id"] for s in client.get("/v1/studies", headers=BOB).json()["studies"]] == [bob["id"]]
    for path in ("", "/trials", "/best-config", "/layer-profile", "/checkpoint"):
        assert client.get(f"/v1/studies/{alice['id']}{path}", headers=BOB).status_code == 404
    assert client.post(f"/v1/studies/{alice['id']}/cancel", headers=BOB).status_code == 404
    assert client.get(f"/v1/studies/{alice['id']}", headers=ALICE).json()["status"] == "queued"
    assert client.get(f"/v1/studies/{alice['id']}/best-config", headers=ALICE).status_code == 200
    assert client.post(f"/v1/studies/{alice['id']}/cancel", headers=ALICE).json()["status"] == "cancelled"


def test_the_token_itself_is_not_stored(make_client: MakeClient, storage_url: str) -> None:
    from storage import get_engine, get_study, hash_token, session_scope

    client = make_client(api_token="alice-token")
    sid = client.post("/v1/studies", json=STUDY, headers=ALICE).json()["id"]
    with session_scope(get_engine(storage_url)) as session:
        study = get_study(session, study_id=sid)
        assert study is not None and study.owner_token_hash == hash_token("alice-token")
