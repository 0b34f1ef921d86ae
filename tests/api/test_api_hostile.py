"""Hostile input: each request is refused with a 4xx naming the problem, logged as a warning, and harmless.

Harmless: no study is queued, a booby-trapped pickle is never unpickled, and the study made before
is still listed. test_api_validation.py has the plain cases (one bad field each, ``../``, a symlink
out of the root, 413 with and without Content-Length); these are the nastier ones. The API takes no
config document, so hostile config documents are tried on the CLI (``evaluate``/``apply --config``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

from common.settings import get_settings

if TYPE_CHECKING:
    from tests.api.conftest import MakeClient

TOKEN_VALUE = "alice-token"
TOKEN = {"Authorization": f"Bearer {TOKEN_VALUE}"}
VALID = {"model_id": "tiny-llama", "budget": 0.5}
JSON = {"content-type": "application/json"}


class BoobyTrap:
    """Unpickling this creates ``marker``: proof that a pickle ran, were it ever loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def booby_trapped_pickle(marker: Path) -> bytes:
    payload = pickle.dumps(BoobyTrap(marker))
    control = marker.with_name(marker.name + ".control")
    pickle.loads(pickle.dumps(BoobyTrap(control)))  # the trap is live: a load would spring it
    assert control.exists()
    control.unlink()
    return payload


def model_dir(path: Path, *, config: str = "{}", weights: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(config)
    if weights:
        (path / "model.safetensors").write_bytes(b"")  # the API checks its presence only
    return path


@dataclass
class Hostile:
    client: TestClient
    root: Path
    outside: Path
    marker: Path
    existing: str


@pytest.fixture
def hostile(make_client: MakeClient, tmp_path: Path) -> Hostile:
    """Auth on, a model root holding traps, a valid model outside it, and one study already queued."""
    root, outside, marker = tmp_path / "models", tmp_path / "outside", tmp_path / "pickle-ran"
    model_dir(root / "good")
    model_dir(outside)
    pickled = model_dir(root / "pickled", config='{"architectures": ["LlamaForCausalLM"]}', weights=False)
    (pickled / "pytorch_model.bin").write_bytes(booby_trapped_pickle(marker))
    model_dir(root / "remote-code", config='{"auto_map": {"AutoModel": "modeling_evil.EvilModel"}}')
    os.symlink(outside, root / "hop-1")
    os.symlink(root / "hop-1", root / "hop-2")  # a chain of links that ends outside
    os.symlink(root / "loop-b", root / "loop-a")
    os.symlink(root / "loop-a", root / "loop-b")
    client = make_client(api_token=TOKEN_VALUE, model_roots=json.dumps([str(root)]))
    created = client.post("/v1/studies", json=VALID, headers=TOKEN)
    assert created.status_code == 201, created.text
    return Hostile(client, root, outside, marker, created.json()["id"])


def assert_refused(hostile: Hostile, caplog: pytest.LogCaptureFixture, response: Any, status: int,
                   needle: str) -> None:
    """A ``status`` naming ``needle``, a warning that says the same, and the earlier study untouched."""
    assert response.status_code == status, response.text
    assert needle.lower() in response.text.lower(), response.text
    warnings = [record.getMessage() for record in caplog.records
                if record.name == "api.refusals" and record.levelno == logging.WARNING]
    assert any(f": {status} " in line and needle.lower() in line.lower() for line in warnings), warnings
    assert all("\n" not in line and TOKEN_VALUE not in line for line in warnings), warnings
    listed = hostile.client.get("/v1/studies", headers=TOKEN).json()
    assert [study["id"] for study in listed["studies"]] == [hostile.existing]  # nothing queued, nothing lost
    assert not hostile.marker.exists()


def post(hostile: Hostile, body: Any = None, *, content: bytes | str | None = None,
         headers: dict[str, str] | None = None) -> Any:
    if content is None:
        return hostile.client.post("/v1/studies", json=body, headers=TOKEN)
    return hostile.client.post("/v1/studies", content=content, headers={**TOKEN, **(headers or JSON)})


@pytest.fixture(autouse=True)
def _warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="api.refusals")


@pytest.mark.parametrize("model_id", [
    "../../etc",
    "%2e%2e/%2e%2e/etc",            # percent-encoding is not decoded: no such directory
    "..%2f..%2fetc",
    "good/../../outside",
    "hop-2",                        # symlink -> symlink -> outside the root
    "loop-a",                       # a symlink loop
    "./././../outside",
    "~/../../etc",
    "good/config.json",             # a file, not a model directory
])
def test_model_paths_that_escape_or_lead_nowhere(hostile: Hostile, caplog: pytest.LogCaptureFixture,
                                                 model_id: str) -> None:
    assert_refused(hostile, caplog, post(hostile, {**VALID, "model_id": model_id}), 422, "model_id")


def test_absolute_path_to_a_real_model_outside_the_roots(hostile: Hostile, caplog: pytest.LogCaptureFixture) -> None:
    for model_id in (str(hostile.outside), str(hostile.root / "hop-1"), f"{hostile.root}/../outside"):
        assert_refused(hostile, caplog, post(hostile, {**VALID, "model_id": model_id}), 422, "inside a model root")
    # The same layout inside the root is accepted: the refusals above are about where, not what.
    assert post(hostile, {**VALID, "model_id": "good"}).status_code == 201


def test_pickle_only_checkpoint_is_refused_and_never_unpickled(hostile: Hostile,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    response = post(hostile, {**VALID, "model_id": "pickled"})
    assert_refused(hostile, caplog, response, 422, "pickle")
    assert "pytorch_model.bin" in response.json()["detail"][0]["msg"]


def test_the_loader_never_unpickles_either(tmp_path: Path) -> None:
    """Past the API (a directory changed after validation) the loader refuses too; beside safetensors, ignores it."""
    from common.errors import UnsafeCheckpointError
    from compress.catalog import _minilm_dir, load_model

    marker = tmp_path / "pickle-ran"
    trap = booby_trapped_pickle(marker)
    only_pickle = model_dir(tmp_path / "only-pickle", config='{"architectures": ["BertModel"]}', weights=False)
    (only_pickle / "pytorch_model.bin").write_bytes(trap)
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        load_model(str(only_pickle))
    both = tmp_path / "both"
    both.mkdir()
    for source in _minilm_dir().iterdir():
        if source.is_file():
            os.symlink(source, both / source.name)
    (both / "pytorch_model.bin").write_bytes(trap)
    assert load_model(str(both)).kind == "encoder"
    assert not marker.exists()


def test_remote_code_needs_the_operator(hostile: Hostile, caplog: pytest.LogCaptureFixture,
                                        make_client: MakeClient) -> None:
    response = post(hostile, {**VALID, "trust_remote_code": True})
    assert_refused(hostile, caplog, response, 422, "trust_remote_code")
    assert "SLIMSCOUT_TRUST_REMOTE_CODE" in response.text
    assert_refused(hostile, caplog, post(hostile, {**VALID, "model_id": "remote-code"}), 422, "auto_map")
    trusting = make_client(trust_remote_code="true", model_roots=json.dumps([str(hostile.root)]))
    for body in ({**VALID, "trust_remote_code": True}, {**VALID, "model_id": "remote-code"}):
        assert trusting.post("/v1/studies", json=body, headers=TOKEN).status_code == 201


@pytest.mark.parametrize(("content", "needle"), [
    ('{"model_id": "tiny-llama", "budget": 0.5, "n_trials": 1000000000000}', "n_trials"),
    ('{"model_id": "tiny-llama", "budget": 0.5, "eval_tokens": 1000000000000}', "eval_tokens"),
    ('{"model_id": "tiny-llama", "budget": 0.5, "seed": 1000000000000000000000000000000}', "seed"),
    ('{"model_id": "tiny-llama", "budget": 1e308}', "budget"),
    ('{"model_id": "tiny-llama", "budget": -1e308}', "budget"),
    ('{"model_id": "tiny-llama", "budget": NaN}', "NaN is not a JSON number"),
    ('{"model_id": "tiny-llama", "budget": Infinity}', "Infinity is not a JSON number"),
    ('{"model_id": "tiny-llama", "budget": 0.5, "n_trials": -Infinity}', "-Infinity is not a JSON number"),
    ('{"model_id": "tiny-llama", "budget": 1e400}', "out of range"),
    ('{"model_id": "tiny-llama", "budget": 0.5, "n_trials": ' + "9" * 5000 + "}", "digits"),
])
def test_enormous_and_non_finite_numbers(hostile: Hostile, caplog: pytest.LogCaptureFixture, content: str,
                                         needle: str) -> None:
    assert_refused(hostile, caplog, post(hostile, content=content), 422, needle)


def test_oversized_body(hostile: Hostile, caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps({**VALID, "dataset": "x" * 2_000_000})  # over the default 1 MB
    assert_refused(hostile, caplog, post(hostile, content=body), 413, "exceeds 1000000 bytes")


@pytest.mark.parametrize("content", [
    "[" * 100_000 + "]" * 100_000,                                        # Python's parser would recurse
    '{"model_id": "tiny-llama", "budget": 0.5, "x": ' + "[" * 40 + "]" * 40 + "}",
    '{"model_id": "tiny-llama", "budget": 0.5, "x": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}",
])
def test_deeply_nested_json(hostile: Hostile, caplog: pytest.LogCaptureFixture, content: str) -> None:
    assert_refused(hostile, caplog, post(hostile, content=content), 422, "nests deeper than 32 levels")


@pytest.mark.parametrize(("content_type", "needle"), [
    ("text/plain", "got text/plain"),
    ("application/x-www-form-urlencoded", "got application/x-www-form-urlencoded"),
    ("multipart/form-data; boundary=x", "got multipart/form-data"),
    ("application/xml", "got application/xml"),
])
def test_non_json_content_type(hostile: Hostile, caplog: pytest.LogCaptureFixture, content_type: str,
                               needle: str) -> None:
    response = post(hostile, content=json.dumps(VALID), headers={"content-type": content_type})
    assert_refused(hostile, caplog, response, 415, needle)


def test_missing_content_type_and_charset(hostile: Hostile, caplog: pytest.LogCaptureFixture) -> None:
    response = hostile.client.post("/v1/studies", content=json.dumps(VALID).encode(), headers=TOKEN)
    assert_refused(hostile, caplog, response, 415, "expected Content-Type: application/json, got none")
    ok = post(hostile, content=json.dumps(VALID), headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 201


@pytest.mark.parametrize(("content", "needle"), [
    ('{"model_id": "\u202eetc/../..", "budget": 0.5}'.encode(), "model_id"),          # right-to-left override
    ('{"model_id": "．．／．．／etc", "budget": 0.5}'.encode(), "model_id"),            # full-width dots and slash
    ('{"model_id": "..\u2215..\u2215etc", "budget": 0.5}'.encode(), "model_id"),      # division slash
    ('{"model_id": "💩\u0301\u200d", "budget": 0.5}'.encode(), "model_id"),
    (rb'{"model_id": "tiny-llama\u0000", "budget": 0.5}', "control characters are not allowed (found U+0000)"),
    (rb'{"model_id": "\ud800", "budget": 0.5}', "lone surrogate"),
    (rb'{"model_id": "tiny-llama", "budget": 0.5, "dataset": "\udfff.txt"}', "lone surrogate"),
    (b'{"model_id": "\xff\xfe", "budget": 0.5}', "not UTF-8"),
])
def test_unicode_garbage_in_ids(hostile: Hostile, caplog: pytest.LogCaptureFixture, content: bytes,
                                needle: str) -> None:
    assert_refused(hostile, caplog, post(hostile, content=content), 422, needle)


@pytest.mark.parametrize("path", ["/v1/studies/💩", "/v1/studies/%00/trials", "/v1/studies/%ED%A0%80/checkpoint",
                                  "/v1/studies/x%0Aforged log line/best-config", "/v1/studies/..%2F..%2Fetc"])
def test_garbage_study_ids(hostile: Hostile, caplog: pytest.LogCaptureFixture, path: str) -> None:
    assert_refused(hostile, caplog, hostile.client.get(path, headers=TOKEN), 404, "not found")


def test_refusals_never_log_the_token(hostile: Hostile, caplog: pytest.LogCaptureFixture) -> None:
    wrong = hostile.client.get("/v1/studies", headers={"Authorization": "Bearer alice-token-but-wrong"})
    assert_refused(hostile, caplog, wrong, 401, "missing or invalid bearer token")
    assert "alice-token" not in caplog.text


# -- config documents: the CLI path ------------------------------------------------------------------

def config_doc(**overrides: Any) -> dict[str, Any]:
    layer = {"sparsity": {"ratio": 0.5, "score": "magnitude", "pattern": "unstructured"}}
    return {"schema": "slimscout.config/v1", "model_id": "tiny-llama",
            "layers": {"model.layers.0.mlp.up_proj": layer}, "meta": {}, **overrides}


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``cli("evaluate", doc)``: (exit code, stderr) of ``slimscout <command> --config <doc>`` in process."""
    from slimscout.cli import main

    monkeypatch.setenv("SLIMSCOUT_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()

    def run(command: str, document: dict[str, Any] | str) -> tuple[int, str]:
        path = tmp_path / "config.json"
        path.write_text(document if isinstance(document, str) else json.dumps(document))
        extra = ["--out", str(tmp_path / "export")] if command == "apply" else ["--tokens", "64"]
        code = main([command, "--model", "tiny-llama", "--config", str(path), *extra])
        return code, capsys.readouterr().err

    yield run
    get_settings.cache_clear()


@pytest.mark.parametrize(("document", "needle"), [
    (config_doc(model_id="tiny-bert"), "model_id: config is for 'tiny-bert', not 'tiny-llama'"),
    (config_doc(surprise=1), "surprise: unknown field"),
    (config_doc(layers={"model.layers.0.mlp.up_proj": {"sparsity": {"ratio": 0.5, "exec": "rm -rf /"}}}),
     "layers.model.layers.0.mlp.up_proj.sparsity.exec: unknown field"),
    (config_doc(layers={"model.layers.0.mlp.up_proj": {"prune": {}}}), "unknown operator"),
    (config_doc(layers={"model.layers.0.mlp.up_proj": {"lowrank": {"rank": 10**12}}}),
     "lowrank.rank: rank 1000000000000 exceeds the full rank"),
    (config_doc(layers={"model.layers.0.mlp.up_proj": {"sparsity": {"ratio": 1e308}}}), "sparsity.ratio"),
    (json.dumps(config_doc()).replace("0.5", "NaN"), "sparsity.ratio: Input should be a finite number, got nan"),
    (config_doc(layers={"model.layers.0.mlp.up_proj": {"quant": {"bits": 8, "group_size": 0}}}), "group_size"),
    (config_doc(layers={"model.layers.99.mlp.up_proj": {"sparsity": {"ratio": 0.5}}}), "model.layers.99"),
    (config_doc(layers={"../../etc/passwd": {"sparsity": {"ratio": 0.5}}}), "../../etc/passwd"),
    (config_doc(schema="slimscout.config/v0"), "schema: must be 'slimscout.config/v1'"),
    ('{"schema": "slimscout.config/v1", "model_id": "tiny-llama", "layers": ' + "[" * 100_000 + "]" * 100_000
     + "}", "nests too deeply"),
])
@pytest.mark.parametrize("command", ["evaluate", "apply"])
def test_hostile_config_documents(cli: Any, tmp_path: Path, command: str, document: dict[str, Any] | str,
                                  needle: str) -> None:
    code, stderr = cli(command, document)
    assert code == 2, stderr
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and needle in errors[0], stderr
    assert not (tmp_path / "export").exists()  # apply wrote nothing
