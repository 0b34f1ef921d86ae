"""``slimscout baseline``: write a baseline allocation's config document for a budget."""

from __future__ import annotations

import argparse

from compress.baseline_methods import BASELINE_METHODS
from slimscout.commands._common import budget_float, note, positive_int, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("baseline", help=f"build a baseline config ({', '.join(BASELINE_METHODS)})")
    parser.add_argument("--model", required=True)
    parser.add_argument("--method", required=True, choices=BASELINE_METHODS)
    parser.add_argument(
        "--operator", "--operators", dest="operator", default="wanda",
        help="comma-separated operators, e.g. wanda, svd-whitened, nm-2:4, wanda,int8",
    )
    parser.add_argument("--budget", type=budget_float, required=True, help="kept fraction of linear parameters")
    parser.add_argument("--tokens", type=positive_int, default=None,
                        help="tokens per sensitivity measurement (default 512) or per softlms step (default 256)")
    parser.add_argument("--steps", type=positive_int, default=None, help="softlms: training steps (default 32)")
    parser.add_argument("--out", required=True, help="where to write the config document")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from compress.baselines import build_baseline
    from compress.budget import check_operators
    from compress.session import ModelSession

    operators = [op.strip() for op in args.operator.split(",") if op.strip()]
    check_operators(operators)
    note(f"loading {args.model} …")
    session = ModelSession.open(args.model)
    kwargs: dict[str, object] = {}
    if args.method in ("sensitivity", "softlms") and args.tokens:
        kwargs["tokens"] = args.tokens
    if args.method == "softlms" and args.steps:
        kwargs["steps"] = args.steps
    if args.method == "softlms" and not args.json:
        kwargs["on_step"] = lambda done, total: note(f"softlms step {done}/{total}")
    result = build_baseline(args.method, session, args.budget, operators, **kwargs)
    result.config.save(args.out)
    payload = {
        "method": args.method,
        "out": args.out,
        "keep_ratio": result.allocation.keep_ratio,
        "params_kept": result.allocation.params_kept,
        "evaluations": result.evaluations,
        "seconds": result.seconds,
        **({key: result.details[key] for key in ("forward_passes", "backward_passes", "cached", "settings")}
           if args.method == "softlms" else {}),
    }
    if args.json:
        print_json(payload)
    else:
        note(f"wrote {args.out}: keep ratio {payload['keep_ratio']:.4f}")
    return 0
