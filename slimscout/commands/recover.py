"""``slimscout recover``: distil the dense model into a compressed config (structure kept exactly)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.corpora import DEFAULT_DATASET
from compress.lr_schedule import LR_SCHEDULES
from slimscout.commands._common import (
    add_model_options,
    non_negative_int,
    note,
    positive_float,
    positive_int,
    print_result,
)

if TYPE_CHECKING:
    from compress.recover import Progress


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected one or more corpus names, comma-separated")
    return names


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("recover", help="train a compressed config by distillation from the dense model")
    parser.add_argument("--model", required=True, help="catalog id, local directory, or hub id")
    parser.add_argument("--config", required=True, help="config document (slimscout.config/v1 JSON)")
    parser.add_argument("--out", required=True, help="directory to write the recovered model to")
    parser.add_argument("--steps", type=positive_int, default=120, help="optimizer steps (default 120)")
    parser.add_argument("--lr", type=positive_float, default=5e-4, help="AdamW peak learning rate (default 5e-4)")
    parser.add_argument("--factor-lr-scale", type=positive_float, default=0.2,
                        help="low-rank factors train at lr times this (default 0.2)")
    parser.add_argument("--schedule", choices=sorted(LR_SCHEDULES), default="cosine",
                        help="learning-rate schedule after the warmup (default cosine, to 0 at the last step)")
    parser.add_argument("--warmup", type=non_negative_int, default=10,
                        help="linear learning-rate warmup steps (default 10)")
    parser.add_argument("--bf16", action="store_true",
                        help="train under bfloat16 autocast (weights, optimizer and evaluations stay float32)")
    parser.add_argument("--tokens", type=positive_int, default=512,
                        help="calibration tokens per step: one sequence (causal) or tokens/128 windows "
                             "(encoder); default 512")
    parser.add_argument("--hidden-weight", type=_non_negative_float, default=0.0,
                        help="weight of the hidden-state MSE term (default 0: logits/embeddings only)")
    parser.add_argument("--eval-every", type=positive_int, default=20,
                        help="evaluate on the search split and checkpoint every N steps (default 20)")
    parser.add_argument("--eval-tokens", type=positive_int, default=1024,
                        help="search-split tokens per evaluation (default 1024)")
    parser.add_argument("--patience", type=non_negative_int, default=0,
                        help="stop after N evaluations without improvement (default 0: never)")
    parser.add_argument("--max-minutes", type=positive_float, default=None,
                        help="stop training after this many minutes (evaluated, best state kept); the "
                             "schedule then spans the steps that fit, re-estimated at every evaluation "
                             "(at most --steps)")
    parser.add_argument("--dataset", default=DEFAULT_DATASET,
                        help=f"corpus whose calibration split trains and whose search split early-stops "
                             f"(default {DEFAULT_DATASET})")
    parser.add_argument("--train-extra", type=_names, default=(),
                        help="more corpora (comma-separated) whose calibration splits join the training "
                             "text, each step drawing its corpus uniformly; e.g. enwiki (160k tokens, "
                             "against lee-news' 14k)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training-window sampler")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT.recover-checkpoint/ (a run refuses to start while one "
                             "exists unless this is given)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it is an earlier export")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(handler=run)


def _line(progress: Progress) -> str:
    parts = [f"step {progress.step}/{progress.steps}"]
    if not math.isnan(progress.loss):
        parts.append(f"loss {progress.loss:.4f}")
    if progress.search is not None:
        metrics = " ".join(f"{key} {value:.4g}" for key, value in progress.search.items() if key != "step")
        parts.append(f"search {metrics}{' (best)' if progress.best else ''}")
    if not math.isnan(progress.eta_s):
        parts.append(f"elapsed {progress.seconds / 60:.1f}m eta {progress.eta_s / 60:.1f}m")
    if progress.checkpoint is not None:
        parts.append("checkpoint saved")
    return "  ".join(parts)


def run(args: argparse.Namespace) -> int:
    from compress.config import load_config
    from compress.export import check_target
    from compress.recover import RecoverSettings, recover
    from compress.session import ModelSession

    settings = RecoverSettings(steps=args.steps, lr=args.lr, factor_lr_scale=args.factor_lr_scale,
                               schedule=args.schedule, warmup=args.warmup,
                               bf16=args.bf16,
                               tokens=args.tokens, hidden_weight=args.hidden_weight,
                               eval_every=args.eval_every, eval_tokens=args.eval_tokens, patience=args.patience,
                               max_minutes=args.max_minutes,
                               seed=args.seed, dataset=args.dataset, train_extra=args.train_extra)
    config = load_config(args.config)  # validate before the slow load
    check_target(Path(args.out).expanduser().absolute(), force=args.force)
    note(f"loading {args.model} …")
    session = ModelSession.open(args.model, device=args.device, dtype=args.model_dtype)
    session.check_model(config)

    def report(progress: Progress) -> None:
        if progress.search is not None or progress.step % 5 == 0:
            note(_line(progress))

    result = recover(session, config, args.out, settings=settings, resume=args.resume, force=args.force,
                     on_progress=report)
    payload: dict[str, Any] = result.to_dict()
    if not args.json:
        payload.pop("history")
    print_result(payload, as_json=args.json, width=14)
    return 0
