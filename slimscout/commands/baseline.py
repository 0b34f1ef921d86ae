"""``slimscout baseline``: write a baseline config document (``compress.baseline_methods``) for a budget."""

from __future__ import annotations

import argparse

from compress.baseline_methods import BASELINE_METHODS
from slimscout.commands._common import add_model_options, budget_float, note, positive_int, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("baseline", help=f"build a baseline config ({', '.join(BASELINE_METHODS)})")
    parser.add_argument("--model", required=True)
    parser.add_argument("--method", required=True, choices=BASELINE_METHODS)
    parser.add_argument(
        "--operator", default="wanda", help="comma-separated operators, e.g. wanda, svd-whitened, nm-2:4, wanda,int8"
    )
    parser.add_argument("--budget", type=budget_float, required=True, help="kept fraction of linear parameters")
    parser.add_argument("--tokens", type=positive_int, default=None,
                        help="tokens per sensitivity measurement (default: 512 per block, 256 per layer for additive)")
    parser.add_argument("--out", required=True, help="where to write the config document")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from compress.baselines import build_baseline
    from compress.budget import check_operators
    from compress.session import ModelSession

    operators = [op.strip() for op in args.operator.split(",") if op.strip()]
    check_operators(operators)
    note(f"loading {args.model} …")
    session = ModelSession.open(args.model, device=args.device, dtype=args.model_dtype)
    kwargs = {"tokens": args.tokens} if args.method in ("sensitivity", "additive") and args.tokens else {}
    result = build_baseline(args.method, session, args.budget, operators, **kwargs)
    result.config.save(args.out)
    payload = {
        "method": args.method,
        "out": args.out,
        "keep_ratio": result.allocation.keep_ratio,
        "params_kept": result.allocation.params_kept,
        "evaluations": result.evaluations,
        "seconds": result.seconds,
    }
    if args.json:
        print_json(payload)
    else:
        note(f"wrote {args.out}: keep ratio {payload['keep_ratio']:.4f}")
    return 0
