"""The API probed as a hostile user would: quotas, deletion, security headers, CSRF, auth before body,
duplicate keys, huge paths, Host in redirects, offline /docs and half-open connections.

test_api_hostile.py has the hostile bodies; these are the findings of a later probe (issue 14).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import optuna
import pytest
from fastapi.testclient import TestClient

from search.optuna_adapter import storage_url as optuna_url
from storage import add_artifact, get_engine, get_study, session_scope, set_status

if TYPE_CHECKING:
    from tests.api.conftest import MakeClient

STUDY = {"model_id": "tiny-llama", "budget": 0.5, "n_trials": 4}
ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


def optuna_names(storage_url: str) -> set[str]:
    return {summary.study_name for summary in optuna.get_all_study_summaries(optuna_url(storage_url))}


# -- a cap on open studies per token ------------------------------------------------------------------

def test_open_studies_are_capped_per_token(make_client: MakeClient, storage_url: str) -> None:
    client = make_client(api_token="alice-token,bob-token", max_open_studies="2")
    first, second = (client.post("/v1/studies", json=STUDY, headers=ALICE) for _ in range(2))
    assert first.status_code == second.status_code == 201
    refused = client.post("/v1/studies", json=STUDY, headers=ALICE)
    assert refused.status_code == 429, refused.text
    assert "2 open studies" in refused.json()["detail"] and "SLIMSCOUT_MAX_OPEN_STUDIES" in refused.json()["detail"]
    assert client.get("/v1/studies", headers=ALICE).json()["total"] == 2  # nothing queued by the refusal
    assert client.post("/v1/studies", json=STUDY, headers=BOB).status_code == 201  # per token
    with session_scope(get_engine(storage_url)) as session:  # running counts as open too
        set_status(session, study_id=first.json()["id"], status="running")
    assert client.post("/v1/studies", json=STUDY, headers=ALICE).status_code == 429
    assert client.post(f"/v1/studies/{second.json()['id']}/cancel", headers=ALICE).status_code == 200
    assert client.post("/v1/studies", json=STUDY, headers=ALICE).status_code == 201  # a slot freed


# -- DELETE /v1/studies/{id} ----------------------------------------------------------------------------

def test_delete_removes_the_study_its_artifacts_and_its_optuna_study(make_client: MakeClient, storage_url: str,
                                                                     tmp_path: Path) -> None:
    client = make_client(api_token="alice-token,bob-token")
    study = client.post("/v1/studies", json=STUDY, headers=ALICE).json()
    with session_scope(get_engine(storage_url)) as session:
        add_artifact(session, study_id=study["id"], kind="config", path=str(tmp_path / "c.json"), size_bytes=2,
                     sha256="0" * 64)
    assert study["optuna_study_name"] in optuna_names(storage_url)
    assert client.delete(f"/v1/studies/{study['id']}", headers=BOB).status_code == 404  # not bob's
    deleted = client.delete(f"/v1/studies/{study['id']}", headers=ALICE)
    assert deleted.status_code == 204, deleted.text
    assert client.get(f"/v1/studies/{study['id']}", headers=ALICE).status_code == 404
    assert client.delete(f"/v1/studies/{study['id']}", headers=ALICE).status_code == 404
    assert study["optuna_study_name"] not in optuna_names(storage_url)
    with session_scope(get_engine(storage_url)) as session:
        assert get_study(session, study_id=study["id"]) is None


def test_delete_is_refused_while_the_study_runs(client: TestClient, storage_url: str) -> None:
    study = client.post("/v1/studies", json=STUDY).json()
    with session_scope(get_engine(storage_url)) as session:
        set_status(session, study_id=study["id"], status="running")
    refused = client.delete(f"/v1/studies/{study['id']}")
    assert refused.status_code == 409 and "cancel it first" in refused.json()["detail"]
    assert client.get(f"/v1/studies/{study['id']}").json()["status"] == "running"
    assert study["optuna_study_name"] in optuna_names(storage_url)
    client.post(f"/v1/studies/{study['id']}/cancel")
    assert client.delete(f"/v1/studies/{study['id']}").status_code == 204


# -- security headers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/studies/abc", "/v1/studies", "/healthz", "/docs", "/openapi.json",
                                  "/static/common.js", "/v1/studies/nope", "/no-such-page"])
def test_every_response_carries_the_security_headers(client: TestClient, path: str) -> None:
    headers = client.get(path).headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    policy = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'self'" and policy["script-src"] == "'self'"  # no inline script, no eval
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"


def test_pages_hold_no_inline_script() -> None:
    """What the CSP's script-src 'self' needs: every <script> has a src, no on* handler attributes."""
    templates = Path(__file__).resolve().parents[2] / "api" / "templates"
    for page in templates.glob("*.html"):
        html = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), page
        assert not re.search(r"\son[a-z]+\s*=", html), page


# -- CSRF with auth off -----------------------------------------------------------------------------------

def test_a_cross_site_form_post_cannot_cancel_a_study(client: TestClient) -> None:
    sid = client.post("/v1/studies", json=STUDY).json()["id"]
    evil = {"origin": "https://evil.example"}
    assert client.post(f"/v1/studies/{sid}/cancel", content="x=1", headers={**FORM, **evil}).status_code == 403
    assert client.post(f"/v1/studies/{sid}/cancel", content="x=1", headers=FORM).status_code == 415
    assert client.post(f"/v1/studies/{sid}/cancel", content="", headers={"content-type": "text/plain"}).status_code \
        == 415
    assert client.post(f"/v1/studies/{sid}/cancel", json={}, headers=evil).status_code == 403
    assert client.delete(f"/v1/studies/{sid}", headers=evil).status_code == 403
    assert client.post("/v1/studies", json=STUDY, headers={"origin": "null"}).status_code == 403
    assert client.get(f"/v1/studies/{sid}").json()["status"] == "queued"
    assert client.get("/v1/studies").json()["total"] == 1
    # The dashboard's own calls: same origin, JSON (or no body at all).
    same = {"origin": "http://testserver"}
    assert client.post(f"/v1/studies/{sid}/cancel", headers=same).status_code == 200
    assert client.post("/v1/studies", json=STUDY, headers=same).status_code == 201


# -- auth before the body ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "content_type"), [
    (b"{", "application/json"), (b"x=1", "application/x-www-form-urlencoded"), (b'{"budget": 7}', "application/json"),
    (b"\xff\xfe", "text/plain"),
])
def test_anonymous_malformed_bodies_get_401(make_client: MakeClient, content: bytes, content_type: str) -> None:
    client = make_client(api_token="alice-token")
    response = client.post("/v1/studies", content=content, headers={"content-type": content_type})
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"


def test_duplicate_json_keys_are_refused(client: TestClient) -> None:
    body = '{"model_id": "tiny-llama", "budget": 0.5, "budget": 0.9}'
    response = client.post("/v1/studies", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "duplicate key 'budget'" in response.text
    assert client.get("/v1/studies").json()["total"] == 0


# -- long paths, Host, /docs -----------------------------------------------------------------------------

def test_a_huge_path_is_not_echoed(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    response = client.get("/v1/studies/" + "a" * 60_000)
    assert response.status_code == 404
    assert len(response.content) < 500 and "60000 characters" in response.text
    assert all(len(record.getMessage()) < 1000 for record in caplog.records)


def test_redirects_never_copy_the_host_header(client: TestClient) -> None:
    response = client.get("/v1/studies/", headers={"host": "evil.example"}, follow_redirects=False)
    assert response.status_code in (301, 302, 307, 308)
    assert response.headers["location"] == "/v1/studies"


def test_docs_work_offline(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/") and not source.startswith("//") for source in sources), sources
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200 and len(asset.content) > 100, source
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text)  # the CSP allows no inline script
    assert client.get("/redoc").status_code == 404  # ReDoc comes only from a CDN: not served


# -- a live server: access log, disconnects, half-open connections ----------------------------------------

def server_log(tmp_path: Path, base: str) -> Path:
    return tmp_path / f"serve-{base.rsplit(':', 1)[1]}.log"


def wait_closed(sock: socket.socket, within_s: float) -> float:
    """Seconds until the server closed ``sock`` (recv gives b""); fails if it stays open ``within_s``."""
    sock.settimeout(within_s)
    start = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {within_s} s") from None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


@pytest.mark.parametrize("partial", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # headers cut short
    b"",  # connects, says nothing
    b"POST /v1/studies HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
])
def test_half_open_connections_are_timed_out(serve: Callable[..., str], tmp_path: Path, partial: bytes) -> None:
    base = serve(request_read_timeout_s="1")
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(partial)
        assert wait_closed(sock, within_s=8.0) < 4.0
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert "Traceback" not in server_log(tmp_path, base).read_text()


def test_idle_keep_alive_connections_are_closed(serve: Callable[..., str]) -> None:
    base = serve(keep_alive_timeout_s="1")
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in sock.recv(65536)
        assert wait_closed(sock, within_s=8.0) < 4.0


def test_a_client_gone_mid_body_logs_one_line(serve: Callable[..., str], tmp_path: Path) -> None:
    base = serve()
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"POST /v1/studies HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + json.dumps(STUDY).encode())
        time.sleep(0.5)
    log = server_log(tmp_path, base)
    deadline = time.monotonic() + 10
    while "disconnected" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log.read_text()
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text
    assert len([line for line in text.splitlines() if "disconnected" in line]) == 1, text
    assert httpx.get(f"{base}/v1/studies").json()["total"] == 0


def test_a_long_path_is_clipped_in_the_access_log(serve: Callable[..., str], tmp_path: Path) -> None:
    base = serve()
    response = httpx.get(f"{base}/v1/studies/{'b' * 10_000}")
    assert response.status_code == 404 and len(response.content) < 500
    time.sleep(0.3)
    lines = server_log(tmp_path, base).read_text().splitlines()
    assert any("bbbb" in line for line in lines)  # logged, but clipped
    assert all(len(line) < 1000 for line in lines), max(map(len, lines))
