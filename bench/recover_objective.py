"""The recovery-aware objective against plain KL at the same wall time, both winners recovered the same way.

One study per run: the search runs for ``--wall-s`` seconds (the trial in flight then finishes), the
winner and the baselines are re-measured on holdout, and the winner is recovered with
``search.recover_winner`` (the service's own path: ``compress.recover``, same steps and settings for
every run) and measured on holdout again. Run the two objectives side by side (each process sees the
same machine load) and compare the ``recovery.holdout_after`` of their JSON files.

Usage: python -m bench.recover_objective --objective kl-recovered --wall-s 900 --storage sqlite:///X.db --out FILE.json
On a crowded machine raise ``SLIMSCOUT_HEARTBEAT_INTERVAL_S`` (e.g. 60): a run whose own heartbeat thread
starved for the grace period had its trial reaped and stopped with ``UpdateFinishedTrialError``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from compress.config import config_from_dict
from search.context import Workbench
from search.optuna_adapter import storage_url
from search.recover_winner import recover_winner
from search.setup import finalize, seed_study
from search.spec import StudySpec
from search.study import best_trial, counts, create_study
from search.worker import work_on_study

log = logging.getLogger("bench.recover_objective")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--objective", required=True, choices=["kl", "kl-recovered"])
    parser.add_argument("--budget", type=float, default=0.4)
    parser.add_argument("--wall-s", type=float, required=True, help="search wall time (seconds)")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--trial-steps", type=int, default=8, help="recover_trial_steps (kl-recovered)")
    parser.add_argument("--recover-steps", type=int, default=40, help="distillation steps for the winner")
    parser.add_argument("--holdout-tokens", type=int, default=2048)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--models", default="/tmp/slimscout-recover-objective")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    spec = StudySpec(model_id=args.model, budget=args.budget, operators=["wanda"], n_trials=1000,
                     eval_tokens=args.tokens, objective=args.objective, recover_trial_steps=args.trial_steps,
                     strategy="tpe", baselines=["uniform", "owl"], holdout_tokens=args.holdout_tokens,
                     recover_steps=args.recover_steps)
    url = storage_url(args.storage)
    name = f"objective-{args.objective}-{int(time.time())}"
    bench = Workbench()
    started = time.perf_counter()
    study = create_study(url, name, spec)
    seed_study(study, spec, bench)
    stop = threading.Event()
    timer = threading.Timer(max(0.0, args.wall_s - (time.perf_counter() - started)), stop.set)
    timer.start()
    work_on_study(url, name, bench, stop=stop,
                  on_trial=lambda *_: log.info("%s: %s trials finished", args.objective, counts(study).finished))
    timer.cancel()
    search_s = time.perf_counter() - started
    summary = finalize(study, spec, bench)
    best = best_trial(study)
    assert best is not None
    log.info("%s: search done in %.0f s; recovering trial %d", args.objective, search_s, best.number)
    recovery = recover_winner(spec, bench, config_from_dict(best.user_attrs["config"]),
                              Path(args.models) / name, holdout_before=summary["holdout"].get("best"),
                              on_progress=lambda r: log.info("%s: recovery step %s/%s loss %s", args.objective,
                                                             r["step"], r["steps"], r["loss"]))
    now = counts(study)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    result: dict[str, Any] = {
        "settings": {**spec.to_dict(), "wall_s": args.wall_s},
        "search_s": search_s, "finished": now.finished, "pruned": sum(t.state.name == "PRUNED" for t in trials),
        "trials": [{"number": t.number, "state": t.state.name, "value": t.value, "kl": t.user_attrs.get("kl"),
                    "ppl": t.user_attrs.get("ppl"), "source": t.user_attrs.get("source"),
                    "wall_s": t.user_attrs.get("wall_s"), "recovered": t.user_attrs.get("recovered")} for t in trials],
        "best": {"number": best.number, "value": best.value, "source": best.user_attrs.get("source")},
        "holdout": summary["holdout"], "recovery": recovery, "total_s": time.perf_counter() - started,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
