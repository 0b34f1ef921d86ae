"""Inference throughput of a model as it is: prefill and greedy decode with a KV cache.

Prefill: one forward pass over ``batch`` sequences of ``tokens`` random token ids, building the KV
cache and computing logits for the last position only (``logits_to_keep=1`` where the model takes
it, as ``generate`` does). Decode: after an untimed prefill of the same prompt, ``decode_tokens``
single-token steps per sequence, each feeding back the argmax (greedy) through the KV cache; the
prompt length sets the context that decode attends to. Encoders get prefill only (a plain forward).

``warmup`` untimed runs come first, then ``repeats`` timed runs; the median is reported with every
run. Threads are whatever torch uses (``torch.get_num_threads()``), reported, never changed here.
Each run also reports the process's CPU seconds: on a machine shared with other work, wall time
includes waiting for a core, CPU time does not (with one thread it is the work itself).
"""

from __future__ import annotations

import inspect
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from common.errors import BenchmarkError
from compress.device import model_device, synchronize


@dataclass(frozen=True)
class Throughput:
    tokens: int  # tokens processed per run (batch x sequence length, or batch x decode steps)
    seconds: tuple[float, ...]  # wall-clock seconds, one per timed run
    cpu_seconds: tuple[float, ...] = ()  # this process's CPU seconds (all threads) per run

    @property
    def runs(self) -> list[float]:
        """Tokens per second of each run."""
        return [self.tokens / s if s > 0 else math.inf for s in self.seconds]

    @property
    def tokens_per_s(self) -> float:
        """Median over runs."""
        return float(statistics.median(self.runs))

    def to_dict(self) -> dict[str, Any]:
        return {"tokens_per_s": self.tokens_per_s, "tokens": self.tokens, "runs_tokens_per_s": self.runs,
                "runs_s": list(self.seconds), "runs_cpu_s": list(self.cpu_seconds)}


@dataclass(frozen=True)
class SpeedResult:
    prefill: Throughput
    decode: Throughput | None  # None for encoders
    batch: int
    tokens: int
    decode_tokens: int
    repeats: int
    warmup: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "tokens": self.tokens, "decode_tokens": self.decode_tokens,
                "repeats": self.repeats, "warmup": self.warmup, "threads": self.threads,
                "prefill": self.prefill.to_dict(), "decode": self.decode.to_dict() if self.decode else None}


def _is_causal(model: nn.Module) -> bool:
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def _check_lengths(model: nn.Module, tokens: int, batch: int, decode_tokens: int, repeats: int,
                   warmup: int) -> None:
    for name, value, low in (("tokens", tokens, 1), ("batch", batch, 1), ("decode_tokens", decode_tokens, 0),
                             ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise BenchmarkError(f"{name} must be an integer >= {low}, got {value!r}")
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and tokens + decode_tokens > limit:
        raise BenchmarkError(f"tokens + decode tokens = {tokens + decode_tokens} exceeds the model's context "
                             f"of {limit} positions")


def _timed(fn: Any, repeats: int, warmup: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(wall seconds, CPU seconds) of each timed run; ``fn`` returns (wall, CPU) of its timed part."""
    for _ in range(warmup):
        fn()
    runs = [fn() for _ in range(repeats)]
    return tuple(wall for wall, _ in runs), tuple(cpu for _, cpu in runs)


@torch.inference_mode()
def measure_speed(model: nn.Module, *, vocab_size: int, tokens: int = 512, batch: int = 1,
                  decode_tokens: int = 64, repeats: int = 3, warmup: int = 1, causal: bool | None = None,
                  seed: int = 0) -> SpeedResult:
    """Prefill and decode throughput of ``model`` (in eval mode) on random token ids below ``vocab_size``."""
    causal = _is_causal(model) if causal is None else causal
    _check_lengths(model, tokens, batch, decode_tokens if causal else 0, repeats, warmup)
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model)
    ids = torch.randint(0, vocab_size, (batch, tokens), generator=generator).to(device)
    kwargs: dict[str, Any] = {"use_cache": True} if causal else {"attention_mask": torch.ones_like(ids)}
    if causal and "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1

    def prefill() -> tuple[float, float]:
        synchronize(device)
        start, cpu = time.perf_counter(), time.process_time()
        model(input_ids=ids, **kwargs)
        synchronize(device)  # on an accelerator the call returns before the kernels finish
        return time.perf_counter() - start, time.process_time() - cpu

    def decode() -> tuple[float, float]:
        out = model(input_ids=ids, **kwargs)
        cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        synchronize(device)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(decode_tokens):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        synchronize(device)
        return time.perf_counter() - start, time.process_time() - cpu

    prefill_s = _timed(prefill, repeats, warmup)
    decode_s = _timed(decode, repeats, warmup) if causal and decode_tokens > 0 else None
    return SpeedResult(prefill=Throughput(batch * tokens, *prefill_s),
                       decode=Throughput(batch * decode_tokens, *decode_s) if decode_s is not None else None,
                       batch=batch, tokens=tokens, decode_tokens=decode_tokens, repeats=repeats,
                       warmup=warmup, threads=torch.get_num_threads())
