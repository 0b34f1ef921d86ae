"""``slimscout baseline``: write a baseline config document (``compress.baseline_methods``) for a budget."""

from __future__ import annotations

import argparse

from compress.baseline_methods import BASELINE_METHODS
from slimscout.commands._common import add_model_options, bits_float, budget_float, note, positive_int, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("baseline", help=f"build a baseline config ({', '.join(BASELINE_METHODS)})")
    parser.add_argument("--model", required=True)
    parser.add_argument("--method", required=True, choices=BASELINE_METHODS)
    parser.add_argument(
        "--operator", "--operators", dest="operator", default="wanda",
        help="comma-separated operators, e.g. wanda, svd-whitened, nm-2:4, wanda,int8",
    )
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", type=budget_float, help="kept fraction of linear parameters")
    budget.add_argument("--budget-bits", type=bits_float,
                        help="average stored bits per linear-layer weight (quantizers only: gptq, int4, int8, sdq)")
    parser.add_argument("--tokens", type=positive_int, default=None,
                        help="tokens per sensitivity measurement (default: 512 per block, 256 per layer for "
                             "additive) or per softlms step (default 256)")
    parser.add_argument("--steps", type=positive_int, default=None, help="softlms: training steps (default 32)")
    parser.add_argument("--out", required=True, help="where to write the config document")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from compress.baselines import build_baseline
    from compress.budget import check_operators
    from compress.registry import DENSE_BITS, check_budget_kind
    from compress.session import ModelSession

    operators = [op.strip() for op in args.operator.split(",") if op.strip()]
    check_operators(operators)
    bits = args.budget_bits is not None
    check_budget_kind(operators, bits=bits)
    note(f"loading {args.model} …")
    session = ModelSession.open(args.model, device=args.device, dtype=args.model_dtype)
    kwargs: dict[str, object] = {}
    if args.method in ("sensitivity", "additive", "softlms") and args.tokens:
        kwargs["tokens"] = args.tokens
    if args.method == "softlms" and args.steps:
        kwargs["steps"] = args.steps
    if args.method == "softlms" and not args.json:
        kwargs["on_step"] = lambda done, total: note(f"softlms step {done}/{total}")
    budget = args.budget_bits / DENSE_BITS if bits else args.budget
    result = build_baseline(args.method, session, budget, operators, **kwargs)
    result.config.save(args.out)
    payload = {
        "method": args.method,
        "out": args.out,
        "keep_ratio": result.allocation.keep_ratio,
        "bits_per_weight": result.allocation.bits_per_weight,
        "params_kept": result.allocation.params_kept,
        "evaluations": result.evaluations,
        "seconds": result.seconds,
        **({key: result.details[key] for key in ("forward_passes", "backward_passes", "cached", "settings")}
           if args.method == "softlms" else {}),
    }
    if args.json:
        print_json(payload)
    else:
        achieved = f"{payload['bits_per_weight']:.4f} bits per weight" if bits else \
            f"keep ratio {payload['keep_ratio']:.4f}"
        note(f"wrote {args.out}: {achieved}")
    return 0
