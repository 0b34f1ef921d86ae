from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from compress.catalog import load_model
from compress.data import token_stream
from compress.measure import Evaluator, _bucketed_kl


def _tokens(loaded, n: int = 300) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return token_stream("lee-news", "search", loaded.tokenizer).take(n)


def test_dense_model_against_itself_has_zero_kl(tiny_llama) -> None:  # type: ignore[no-untyped-def]
    evaluator = Evaluator(tiny_llama, _tokens(tiny_llama), seq_len=128)
    metrics = evaluator.evaluate()
    assert metrics.kl is not None and abs(metrics.kl) < 1e-5
    assert metrics.ppl is not None and math.isfinite(metrics.ppl)
    assert abs(metrics.ppl - evaluator.dense_metrics().ppl) < 1e-3  # type: ignore[operator]


def test_perplexity_matches_a_hand_computation(tiny_llama) -> None:  # type: ignore[no-untyped-def]
    tokens = _tokens(tiny_llama, 200)
    metrics = Evaluator(tiny_llama, tokens, seq_len=128).evaluate()
    nll, count = 0.0, 0
    with torch.no_grad():
        for chunk in (tokens[:128], tokens[128:]):
            logits = tiny_llama.model(input_ids=chunk[None]).logits[0, :-1]
            nll += F.cross_entropy(logits, chunk[1:], reduction="sum").item()
            count += chunk.numel() - 1
    assert metrics.n_tokens == count == 198
    assert abs(metrics.ppl - math.exp(nll / count)) / math.exp(nll / count) < 1e-4  # type: ignore[operator]


def test_measurement_is_deterministic_and_sees_weight_changes(tiny_llama) -> None:  # type: ignore[no-untyped-def]
    evaluator = Evaluator(tiny_llama, _tokens(tiny_llama), seq_len=128)
    first, second = evaluator.evaluate(), evaluator.evaluate()
    assert first.ppl == second.ppl and first.kl == second.kl
    weight = tiny_llama.model.model.layers[0].mlp.down_proj.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(0)
    try:
        damaged = evaluator.evaluate()
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert damaged.kl > 1e-7 and damaged.ppl != first.ppl  # type: ignore[operator]


def test_stream_reports_growing_token_counts(tiny_llama) -> None:  # type: ignore[no-untyped-def]
    steps = list(Evaluator(tiny_llama, _tokens(tiny_llama, 300), seq_len=100).stream())
    assert [s.n_tokens for s in steps] == [99, 198, 297]


def test_reference_is_cached_on_disk(tmp_path: Path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    first = Evaluator(tiny_llama, _tokens(tiny_llama), seq_len=128, cache_dir=tmp_path)
    first.reference()
    assert list((tmp_path / "reference").glob("*.safetensors"))
    second = Evaluator(tiny_llama, _tokens(tiny_llama), seq_len=128, cache_dir=tmp_path)
    assert second.dense_metrics().ppl == first.dense_metrics().ppl


def test_bucketed_kl_is_exact_when_topk_is_the_vocabulary() -> None:
    torch.manual_seed(0)
    p_logits, q_logits = torch.randn(5, 50), torch.randn(5, 50)
    logp, logq = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    full = (logp.exp() * (logp - logq)).sum(-1)
    values, index = logp.topk(50, dim=-1)
    assert torch.allclose(_bucketed_kl(values, index, logq), full, atol=1e-5)
    values, index = logp.topk(10, dim=-1)
    bounded = _bucketed_kl(values, index, logq)
    assert (bounded <= full + 1e-6).all() and (bounded > 0).all()


def test_encoder_cosine_of_dense_is_one() -> None:
    loaded = load_model("tiny-bert")
    metrics = Evaluator(loaded, _tokens(loaded, 400)).evaluate()
    assert metrics.cosine is not None and abs(metrics.cosine - 1) < 1e-5
