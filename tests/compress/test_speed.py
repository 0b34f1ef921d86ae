"""Throughput measurement: sane numbers, every run reported, clear errors for impossible requests."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from common.errors import BenchmarkError
from compress.catalog import LoadedModel
from compress.speed import measure_speed
from slimscout.cli import main


def vocab_size(loaded: LoadedModel) -> int:
    config: Any = loaded.model.config
    return int(config.vocab_size)


def test_speed_returns_positive_finite_numbers(tiny_llama: LoadedModel) -> None:
    vocab = vocab_size(tiny_llama)
    result = measure_speed(tiny_llama.model, vocab_size=vocab, tokens=32, batch=2, decode_tokens=4, repeats=3)
    assert result.decode is not None and result.threads >= 1
    for phase, tokens in ((result.prefill, 2 * 32), (result.decode, 2 * 4)):
        assert phase.tokens == tokens and len(phase.seconds) == len(phase.runs) == 3
        assert all(math.isfinite(v) and v > 0 for v in (*phase.runs, *phase.seconds, phase.tokens_per_s))
        assert min(phase.runs) <= phase.tokens_per_s <= max(phase.runs)
    payload = result.to_dict()
    assert payload["prefill"]["tokens_per_s"] == result.prefill.tokens_per_s
    assert json.loads(json.dumps(payload)) == payload


def test_encoders_get_prefill_only() -> None:
    from compress.catalog import load_model

    loaded = load_model("tiny-bert")
    result = measure_speed(loaded.model, vocab_size=vocab_size(loaded), tokens=16, repeats=1, causal=False)
    assert result.decode is None and result.prefill.tokens_per_s > 0


def test_impossible_requests_are_slimscout_errors(tiny_llama: LoadedModel) -> None:
    with pytest.raises(BenchmarkError, match="context"):
        measure_speed(tiny_llama.model, vocab_size=100, tokens=1000, decode_tokens=100)
    with pytest.raises(BenchmarkError, match="repeats"):
        measure_speed(tiny_llama.model, vocab_size=100, tokens=8, repeats=0)


def test_cli_speed_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["speed", "--model", "tiny-llama", "--tokens", "16", "--decode-tokens", "2", "--repeats", "2",
                 "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["prefill"]["tokens_per_s"] > 0 and payload["decode"]["tokens_per_s"] > 0
    assert len(payload["prefill"]["runs_tokens_per_s"]) == 2 and payload["threads"] >= 1
    assert main(["speed", "--model", "tiny-llama", "--tokens", "1000", "--decode-tokens", "100"]) == 2
    assert "exceeds the model's context" in capsys.readouterr().err
