"""The CLI as a user meets it: one JSON object on stdout, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest


def slimscout(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slimscout.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert needle in errors[0], result.stderr


def test_models_lists_the_catalog() -> None:
    result = slimscout("models", "--json")
    assert result.returncode == 0
    assert {m["model_id"] for m in json.loads(result.stdout)["models"]} >= {"smollm2-135m", "minilm-l6"}


def test_evaluate_tiny_model_json() -> None:
    result = slimscout("evaluate", "--model", "tiny-llama", "--tokens", "256", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    for key in ("ppl", "kl", "params_total", "params_linear", "params_kept", "keep_ratio", "bytes", "seconds"):
        assert key in payload
    assert payload["keep_ratio"] == 1.0 and payload["kl"] == 0.0


def test_evaluate_in_bfloat16() -> None:
    result = slimscout("evaluate", "--model", "tiny-llama", "--tokens", "256", "--dtype", "bfloat16",
                       "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kl"] == 0.0


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_cuda_without_a_gpu_is_one_line() -> None:
    assert_one_line_error(slimscout("evaluate", "--model", "tiny-llama", "--device", "cuda"), "no CUDA device")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "no-such-model"], "unknown model id"),
        (["--model", "tiny-llama", "--tokens", "0"], "at least 2"),
        (["--model", "tiny-llama", "--tokens", "10000000"], "fewer than"),
        (["--model", "tiny-llama", "--dataset", "nope"], "unknown dataset"),
        (["--model", "tiny-llama", "--device", "tpu-ish"], "unknown device"),
    ],
)
def test_bad_input_is_one_line(args: list[str], needle: str) -> None:
    assert_one_line_error(slimscout("evaluate", *args), needle)


def test_search_refuses_its_own_dataset_as_extra_recovery_text() -> None:
    assert_one_line_error(slimscout("search", "--model", "tiny-llama", "--budget", "0.5", "--recover-steps", "4",
                                    "--recover-train-extra", "enwiki,lee-news"),
                          "recover_train_extra: Value error, names the study's own dataset")


def test_bad_paths_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(slimscout("evaluate", "--model", str(tmp_path)), "not a model directory")
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"w": 1}))
    assert_one_line_error(slimscout("evaluate", "--model", str(tmp_path)), "pickle")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line_error(slimscout("evaluate", "--model", "tiny-llama", "--dataset", str(empty)), "documents")
    config = tmp_path / "c.json"
    config.write_text(
        '{"schema": "slimscout.config/v1", "model_id": "tiny-llama", '
        '"layers": {"model.layers.0.mlp.up_proj": {"sparsity": {"ratio": 1.5}}}}'
    )
    assert_one_line_error(
        slimscout("evaluate", "--model", "tiny-llama", "--config", str(config)),
        "layers.model.layers.0.mlp.up_proj.sparsity.ratio",
    )


@pytest.mark.slow
def test_evaluate_real_smollm2_dense() -> None:
    result = slimscout("evaluate", "--model", "smollm2-135m", "--tokens", "2048", "--split", "search", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert 15 < payload["ppl"] < 40
    assert payload["keep_ratio"] == 1.0
    assert payload["params_linear"] == 30 * (2 * 576 * 576 + 2 * 192 * 576 + 3 * 576 * 1536)
