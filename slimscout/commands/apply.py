"""``slimscout apply``: write a compressed checkpoint (Hugging Face layout) from a config document."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from compress.registry import EXPORT_FORMATS
from slimscout.commands._common import add_model_options, non_negative_int, note, print_result

DTYPES = ("float32", "bfloat16", "float16")  # compress.weight_files.DTYPES (tested to agree)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("apply", help="write the compressed model a config describes to a directory")
    parser.add_argument("--model", required=True, help="catalog id, local directory, or hub id")
    parser.add_argument("--config", required=True, help="config document (slimscout.config/v1 JSON)")
    parser.add_argument("--out", required=True, help="directory to write (must not exist unless --force)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it is an earlier export")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="slimscout",
                        help="slimscout: low-rank layers as two factors (read by slimscout.load_compressed); "
                             "compressed-tensors: quantised layers packed as vLLM and transformers load them")
    parser.add_argument("--merge", action="store_true",
                        help="store layers the format cannot factor or pack (low rank, SDQ outliers) as dense "
                             "matrices; with --format slimscout, a plain transformers checkpoint")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    add_model_options(parser, dtype_flag="--load-dtype")  # --dtype already names the written weights' dtype
    parser.add_argument("--max-shard-size", default="2GB",
                        help="split the weights into shards of at most this size, with an index (e.g. 500MB)")
    parser.add_argument("--eval-tokens", type=non_negative_int, default=4096,
                        help="measure perplexity against dense on this many holdout tokens for the model card "
                             "(0: do not measure)")
    parser.add_argument("--dataset", default="lee-news", help="dataset of the model card's measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    result = apply(model_id=args.model, config_path=args.config, out=args.out, force=args.force, merge=args.merge,
                   export_format=args.format, dtype=args.dtype, max_shard_size=args.max_shard_size,
                   eval_tokens=args.eval_tokens, dataset=args.dataset, device=args.device, load_dtype=args.model_dtype,
                   command=shlex.join(["slimscout", *sys.argv[1:]]) if sys.argv[1:2] == ["apply"] else None)
    print_result(result, as_json=args.json, width=20)
    return 0


def apply(*, model_id: str, config_path: str, out: str, force: bool, merge: bool, export_format: str = "slimscout",
          dtype: str = "float32", max_shard_size: str = "2GB", eval_tokens: int = 0, dataset: str = "lee-news",
          command: str | None = None, device: str = "cpu", load_dtype: str = "float32") -> dict[str, Any]:
    from compress.config import load_config
    from compress.export import check_target, export_compressed
    from compress.export_ct import plan_layers
    from compress.model_card import CardMeasurement
    from compress.session import ModelSession
    from compress.weight_files import DTYPES as TORCH_DTYPES

    started = time.perf_counter()
    config = load_config(config_path)  # validate before the slow load
    check_target(Path(out).expanduser().absolute(), force=force)
    note(f"loading {model_id} …")
    session = ModelSession.open(model_id, device=device, dtype=load_dtype)
    session.check_model(config)
    if export_format == "compressed-tensors":
        plan_layers(session.layers, config, merge=merge)  # refuse what the format cannot hold before measuring
    measurement = None
    if eval_tokens:
        note(f"measuring perplexity on {eval_tokens} holdout tokens for the model card …")
        session.warm(config)
        evaluator = session.evaluator(dataset=dataset, split="holdout", tokens=eval_tokens)
        with session.applied(config):
            metrics = evaluator.evaluate()
        dense = evaluator.dense_metrics()
        if metrics.ppl is not None and dense.ppl is not None:
            measurement = CardMeasurement(dataset, "holdout", metrics.n_tokens, metrics.ppl, dense.ppl)
    note(f"writing {out} …")
    result = export_compressed(session, config, out, force=force, merge=merge, export_format=export_format,
                               dtype=TORCH_DTYPES[dtype], max_shard_size=max_shard_size, measurement=measurement,
                               command=command).to_dict()
    if measurement is not None:
        result |= {"holdout_ppl": measurement.ppl, "holdout_ppl_dense": measurement.dense_ppl,
                   "holdout_tokens": measurement.tokens}
    return {**result, "export_s": result["seconds"], "seconds": time.perf_counter() - started}
