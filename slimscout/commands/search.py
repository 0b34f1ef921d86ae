"""``slimscout search``: run a whole study locally and print / write the winner."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from compress.baseline_methods import BASELINE_METHODS
from compress.registry import OPERATOR_NAMES
from search.budgets import BudgetGroup, budget_of, build_request
from search.spec import GRANULARITIES, OBJECTIVES, StudySpec
from search.strategy_registry import STRATEGY_NAMES
from slimscout.commands._common import (
    add_model_options,
    bits_float,
    budget_float,
    note,
    number_list,
    positive_float,
    positive_int,
    print_json,
    progress,
)

DEFAULTS = {name: field.default for name, field in StudySpec.model_fields.items() if not field.is_required()}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("search", help="search the best per-layer config under a budget")
    parser.add_argument("--model", required=True)
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", type=number_list(budget_float),
                        help="kept fraction of linear parameters; a comma-separated list (0.3,0.5,0.7) runs one "
                             "study per budget")
    budget.add_argument("--budget-bits", type=number_list(bits_float),
                        help=f"{StudySpec.model_fields['budget_bits'].description}; a list as for --budget")
    parser.add_argument("--operators", default=",".join(DEFAULTS["operators"]),
                        help=f"comma-separated, e.g. wanda or svd-whitened,wanda (of {', '.join(OPERATOR_NAMES)})")
    parser.add_argument("--granularity", default=DEFAULTS["granularity"], choices=GRANULARITIES)
    parser.add_argument("--trials", "--n-trials", dest="trials", type=positive_int, default=DEFAULTS["n_trials"],
                        help="real evaluations (baselines included)")
    parser.add_argument("--tokens", type=positive_int, default=DEFAULTS["eval_tokens"], help="tokens per evaluation")
    parser.add_argument("--holdout-tokens", type=positive_int, default=DEFAULTS["holdout_tokens"])
    parser.add_argument("--sensitivity-tokens", type=positive_int, default=DEFAULTS["sensitivity_tokens"])
    parser.add_argument("--objective", default=DEFAULTS["objective"], choices=OBJECTIVES,
                        help=StudySpec.model_fields["objective"].description)
    parser.add_argument("--strategy", default=DEFAULTS["strategy"], choices=STRATEGY_NAMES,
                        help=StudySpec.model_fields["strategy"].description)
    parser.add_argument("--baselines", default=",".join(DEFAULTS["baselines"]),
                        help=f"comma-separated, of {', '.join(BASELINE_METHODS)} (empty for none)")
    parser.add_argument("--no-prune", action="store_true", help="measure every candidate on all tokens")
    parser.add_argument("--warm-start", action="store_true",
                        help="guided: start from a predictor trained on earlier studies of this model in the storage")
    parser.add_argument("--screen-factor", type=positive_int, default=DEFAULTS["screen_factor"],
                        help=StudySpec.model_fields["screen_factor"].description)
    parser.add_argument("--dataset", default=DEFAULTS["dataset"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--recover-steps", type=positive_int, default=DEFAULTS["recover_steps"],
                        help=StudySpec.model_fields["recover_steps"].description)
    parser.add_argument("--recover-minutes", type=positive_float, default=None,
                        help=StudySpec.model_fields["recover_minutes"].description)
    parser.add_argument("--recover-out", help="where the recovered winner goes (--recover-steps; default: "
                                              "the cache's artifacts/<study>/recovered)")
    parser.add_argument("--recover-train-extra", default="",
                        help="comma-separated: " + str(StudySpec.model_fields["recover_train_extra"].description))
    parser.add_argument("--recover-trial-steps", type=positive_int, default=DEFAULTS["recover_trial_steps"],
                        help=StudySpec.model_fields["recover_trial_steps"].description)
    parser.add_argument("--storage", help="database URL (default: settings.storage_url)")
    parser.add_argument("--study", help="study name (default: generated)")
    parser.add_argument("--workers", type=int, default=0, help="local worker processes (0: measure in-process)")
    parser.add_argument("--out", help="write the winning config document here (a list of budgets: one file per "
                                      "budget, NAME-<budget>.json)")
    add_model_options(parser)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def spec_of(args: argparse.Namespace) -> StudySpec | BudgetGroup:
    """The study spec the parsed arguments ask for, one per budget for a list (a ConfigError naming the
    first bad field)."""
    return build_request(
        model_id=args.model,
        budget=args.budget,
        budget_bits=args.budget_bits,
        operators=[op.strip() for op in args.operators.split(",") if op.strip()],
        granularity=args.granularity,
        n_trials=args.trials,
        eval_tokens=args.tokens,
        objective=args.objective,
        dataset=args.dataset,
        seed=args.seed,
        strategy=args.strategy,
        baselines=[b.strip() for b in args.baselines.split(",") if b.strip()],
        sensitivity_tokens=args.sensitivity_tokens,
        holdout_tokens=args.holdout_tokens,
        prune=not args.no_prune,
        warm_start=args.warm_start,
        screen_factor=args.screen_factor,
        recover_steps=args.recover_steps,
        recover_minutes=args.recover_minutes,
        recover_trial_steps=args.recover_trial_steps,
        recover_train_extra=[name.strip() for name in args.recover_train_extra.split(",") if name.strip()],
    )


def run(args: argparse.Namespace) -> int:
    from common.settings import get_settings

    request = spec_of(args)
    # Where models run is the workers' setting (in-process and spawned workers alike read it).
    os.environ["SLIMSCOUT_DEVICE"], os.environ["SLIMSCOUT_DTYPE"] = args.device, args.model_dtype
    get_settings.cache_clear()
    url = args.storage or get_settings().storage_url
    specs = request.specs if isinstance(request, BudgetGroup) else (request,)
    label = "-".join(str(budget_of(spec)) for spec in specs) + ("bits" if args.budget_bits is not None else "")
    name = args.study or f"search-{args.model.replace('/', '_')}-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not isinstance(request, BudgetGroup):
        return _report(args, _search(args, request, url, name), url)
    # One ordinary study per budget, one after another, in the same storage: the per-model caches
    # (calibration, scans, factors) are built by the first and read by the others.
    summaries = [_search(args, spec, url, f"{name}-{budget_of(spec)}", budget_of(spec)) for spec in specs]
    return _report_group(args, request, summaries, url, name)


def _search(args: argparse.Namespace, spec: StudySpec, url: str, name: str,
            budget: float | None = None) -> dict[str, Any]:
    """Run one study (``budget``: its place in a group, which names its bar, --out and --recover-out)."""
    from search.runner import Progress, run_search

    recover_out = Path(args.recover_out).expanduser() if args.recover_out else None
    if recover_out is not None and budget is not None:
        recover_out = recover_out / str(budget)
    with progress() as bar:
        setup = bar.add_task("setup", total=None, status="", visible=False) if bar else None
        title = "search" if budget is None else f"search {budget}"
        task = bar.add_task(title, total=spec.n_trials, status="") if bar else None

        def on_setup(step: str, done: int, total: int) -> None:
            if bar is not None and setup is not None:
                bar.update(setup, description=step, completed=done, total=total, visible=True)
            elif done == 0 and not args.json:
                note(step)

        def on_progress(p: Progress) -> None:
            if bar is not None and task is not None:
                eta = f" eta {p.eta_s:.0f}s" if p.eta_s is not None else ""
                bar.update(task, completed=p.finished, status=f"best {p.best:.4g}{eta}" if p.best else "")
            elif not args.json:
                note(f"trial {p.finished}/{p.total} best {p.best}")

        summary = run_search(
            spec,
            storage_url=url,
            study_name=name,
            workers=args.workers,
            on_status=lambda s: note(s if budget is None else f"budget {budget}: {s}"),
            on_setup=on_setup,
            on_progress=on_progress,
            recover_out=recover_out,
            on_recovery=lambda r: note(f"recovery step {r['step']}/{r['steps']} loss {r['loss']}")
            if r["step"] % 5 == 0 or r["step"] == r["steps"] else None,
        )
    _save_best(args, summary, budget)
    return summary


def _save_best(args: argparse.Namespace, summary: dict[str, Any], budget: float | None) -> None:
    from search.runner import best_config

    config = best_config(summary)
    if args.out and config is not None:
        out = Path(args.out)
        config.save(out if budget is None else out.with_name(f"{out.stem}-{budget}{out.suffix}"))


def _report(args: argparse.Namespace, summary: dict[str, Any], url: str) -> int:
    result = {key: value for key, value in summary.items() if key != "best_config"}
    result["storage"] = url
    if args.json:
        print_json(result)
    else:
        _note_best(summary)
    return 0


def _note_best(summary: dict[str, Any], prefix: str = "") -> None:
    best = summary.get("best") or {}
    note(f"{prefix}best trial {best.get('trial')}: ppl {best.get('ppl')} keep {best.get('keep_ratio')}")
    recovery = summary.get("recovery")
    if recovery:
        before, after = recovery["holdout_before"] or {}, recovery["holdout_after"]
        note(f"{prefix}recovered into {recovery['out']}: holdout ppl {before.get('ppl')} -> {after['ppl']}")


def _report_group(args: argparse.Namespace, group: BudgetGroup, summaries: list[dict[str, Any]], url: str,
                  name: str) -> int:
    """``per_budget``: each budget's study, winner and holdout numbers, in ascending budget order."""
    per_budget = [{"budget": budget, "study": summary["study"], "best": summary.get("best"),
                   "holdout": summary.get("holdout"), "evaluations": summary.get("evaluations"),
                   "seconds": summary["seconds"],
                   **({"recovery": summary["recovery"]} if "recovery" in summary else {})}
                  for budget, summary in zip(group.budgets, summaries, strict=True)]
    if args.json:
        print_json({"group": name, "budget_field": group.field, "per_budget": per_budget, "storage": url,
                    "seconds": sum(summary["seconds"] for summary in summaries)})
    else:
        for budget, summary in zip(group.budgets, summaries, strict=True):
            _note_best(summary, prefix=f"budget {budget}: ")
    return 0
