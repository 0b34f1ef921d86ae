"""``slimscout evaluate``: measure a model (optionally with a config applied) on held text."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.corpora import BUILTIN_DATASETS, DEFAULT_DATASET
from slimscout.commands._common import add_model_options, note, print_result

if TYPE_CHECKING:
    from compress.data import Split


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("evaluate", help="measure perplexity, KL to dense, parameters and bytes")
    parser.add_argument("--model", required=True, help="catalog id, local directory, or hub id")
    parser.add_argument("--config", help="config document (slimscout.config/v1 JSON); default: dense")
    parser.add_argument("--dataset", default=DEFAULT_DATASET,
                        help=f"{', '.join(BUILTIN_DATASETS)}, a .txt/.jsonl file, or hf:NAME")
    parser.add_argument("--split", default="search", choices=["calibration", "search", "holdout"])
    parser.add_argument("--tokens", type=int, default=2048, help="evaluation tokens (default 2048)")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from common.errors import DatasetError

    if args.tokens < 2:
        raise DatasetError(f"--tokens must be at least 2, got {args.tokens}")
    result = evaluate(
        model_id=args.model, config_path=args.config, dataset=args.dataset, split=args.split, tokens=args.tokens,
        device=args.device, dtype=args.model_dtype,
    )
    print_result(result, as_json=args.json)
    return 0


def _export_totals(model_id: str) -> dict[str, Any] | None:
    """A slimscout export's ``totals`` (its kept params and bytes, the original's dense linear params), or
    None for any other model. Without it an export would be accounted as a new dense model: a recovered
    60%-sparse model at keep ratio 1.0, its zeros counted as weights."""
    from compress.checkpoint import MANIFEST_NAME, read_manifest

    path = Path(model_id).expanduser()
    if not (path / MANIFEST_NAME).is_file():
        return None
    totals: dict[str, Any] = read_manifest(path)["totals"]
    return totals


def evaluate(*, model_id: str, config_path: str | None, dataset: str, split: Split, tokens: int,
             device: str = "cpu", dtype: str = "float32") -> dict[str, Any]:
    from compress.config import CompressionConfig, load_config
    from compress.data import token_stream
    from compress.session import ModelSession

    started = time.perf_counter()
    config = load_config(config_path) if config_path else None  # validate before the slow load
    note(f"loading {model_id} …")
    session = ModelSession.open(model_id, device=device, dtype=dtype)
    if config is None:
        config = CompressionConfig(session.loaded.model_id)
    session.check_model(config)
    token_stream(dataset, split, session.loaded.tokenizer).take(tokens)  # fail fast on a short split
    cost = session.cost(config)
    session.warm(config)
    evaluator = session.evaluator(dataset=dataset, split=split, tokens=tokens)
    apply_s = 0.0
    if config.layers:
        with session.applied(config) as apply_s:
            metrics = evaluator.evaluate()
    else:
        metrics = evaluator.dense_metrics()
    kept, kept_bytes, linear = cost.params, cost.bytes, session.params_linear
    export = _export_totals(model_id) if not config.layers else None
    if export is not None:  # the export's own accounting: its zeros and factors against the original's layers
        kept, kept_bytes, linear = int(export["params"]), int(export["bytes"]), int(export["params_linear_dense"])
    others = session.params_total - session.params_linear  # embeddings, norms, head: never compressed
    return {
        "model": model_id,
        "dataset": dataset,
        "split": split,
        "tokens": tokens,
        "predicted_tokens": metrics.n_tokens,
        "ppl": metrics.ppl,
        "kl": metrics.kl,
        "cosine": metrics.cosine,
        "params_total": others + kept,
        "params_total_dense": others + linear,
        "params_linear": linear,
        "params_kept": kept,
        "keep_ratio": kept / linear,
        "bytes": kept_bytes,
        "bits_per_weight": 8 * kept_bytes / linear,  # compress.accounting's convention
        "bytes_linear_dense": 2 * linear,
        "accounting": "export manifest" if export is not None else "config",
        "seconds": time.perf_counter() - started,
        "timing": {
            "load_s": session.loaded.load_seconds,
            "calibration_s": session.timings.calibration_s,
            "svd_s": session.timings.svd_s,
            "ranks_s": session.timings.ranks_s,
            "cache_load_s": session.timings.load_s,
            "reference_s": evaluator.reference_seconds,
            "apply_s": apply_s,
            "forward_s": metrics.seconds,
        },
    }
