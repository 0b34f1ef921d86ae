"""``slimscout speed``: prefill and decode throughput of a model (or an export) on this machine."""

from __future__ import annotations

import argparse
import time
from typing import Any

from slimscout.commands._common import add_model_options, non_negative_int, note, positive_int, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("speed", help="measure prefill and decode tokens/s (median of repeated runs)")
    parser.add_argument("--model", required=True, help="catalog id, local directory or export, or hub id")
    parser.add_argument("--tokens", type=positive_int, default=512,
                        help="prompt length per sequence (default 512)")
    parser.add_argument("--batch", type=positive_int, default=1, help="sequences per batch (default 1)")
    parser.add_argument("--decode-tokens", type=non_negative_int, default=64,
                        help="greedy decode steps after the prompt (default 64; 0 skips decode)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs (default 3)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed runs first (default 1)")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    result = speed(model_id=args.model, tokens=args.tokens, batch=args.batch,
                   decode_tokens=args.decode_tokens, repeats=args.repeats, warmup=args.warmup, device=args.device,
                   dtype=args.model_dtype)
    if args.json:
        print_json(result)
        return 0
    print(f"model            {result['model']} ({result['params_total']:,} parameters, "
          f"{result['threads']} torch threads)")
    for phase in ("prefill", "decode"):
        measured = result[phase]
        if measured is None:
            continue
        runs = ", ".join(f"{value:.1f}" for value in measured["runs_tokens_per_s"])
        print(f"{phase:16} {measured['tokens_per_s']:.1f} tokens/s median (runs: {runs})")
    return 0


def speed(*, model_id: str, tokens: int, batch: int, decode_tokens: int, repeats: int,
          warmup: int, device: str = "cpu", dtype: str = "float32") -> dict[str, Any]:
    from compress.catalog import load_model
    from compress.layers import count_params
    from compress.speed import measure_speed

    started = time.perf_counter()
    note(f"loading {model_id} …")
    loaded = load_model(model_id, device=device, dtype=dtype)
    note(f"measuring (batch {batch}, {tokens} tokens, {decode_tokens} decode steps, {repeats} runs) …")
    vocab = int(getattr(loaded.model.config, "vocab_size", 0) or len(loaded.tokenizer))
    result = measure_speed(loaded.model, vocab_size=vocab, tokens=tokens, batch=batch,
                           decode_tokens=decode_tokens, repeats=repeats, warmup=warmup,
                           causal=loaded.kind == "causal-lm")
    return {"model": model_id, "kind": loaded.kind, "device": str(loaded.device), "dtype": dtype,
            "params_total": count_params(loaded.model),
            **result.to_dict(), "load_s": loaded.load_seconds, "seconds": time.perf_counter() - started}
