"""Recover several configs in one process (the model loaded once): holdout perplexity before, the
standard recovery, holdout perplexity after (the recovered export loaded back and measured against
the dense model), one JSON per config written as soon as it finishes; then the summary.

The per-config work is what bench/recover.sh does with four CLI processes; on a loaded 2-core
machine the process starts and model loads cost as much as a short recovery, hence one process.

Usage:
  python -m bench.recover_batch run NAME=CONFIG ... [--steps 24 --tokens 256 --eval-every 8 --eval-tokens 512]
  python -m bench.recover_batch summary [--prefix alloc-]     (Spearman before vs after, ranking)
Results: bench/results/recover/<NAME>.batch.json; summary: bench/results/recover/<prefix>summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "results" / "recover"


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _metrics(metrics: Any) -> dict[str, float]:
    return {"ppl": float(metrics.ppl), "kl": float(metrics.kl)}


def _report(name: str, progress: Any) -> None:
    print(f"{name} step {progress.step}/{progress.steps} loss {progress.loss:.4f} {progress.search or ''}", flush=True)


def run(pairs: list[str], *, model: str, out: Path, steps: int, tokens: int, eval_every: int, eval_tokens: int,
        holdout_tokens: int) -> None:
    from compress.checkpoint import load_compressed
    from compress.config import load_config
    from compress.recover import RecoverSettings, recover
    from compress.session import ModelSession

    session = ModelSession.open(model)
    holdout = session.evaluator(split="holdout", tokens=holdout_tokens)
    settings = RecoverSettings(steps=steps, tokens=tokens, eval_every=eval_every, eval_tokens=eval_tokens)
    for pair in pairs:
        name, config_path = pair.split("=", 1)
        path = out / f"{name}.batch.json"
        if path.is_file():
            print(f"{name}: done before, skipped", flush=True)
            continue
        config = load_config(config_path)
        start, load_start = time.perf_counter(), _load()
        session.warm(config)
        with session.applied(config):
            before = holdout.evaluate()
        work = Path(tempfile.mkdtemp(prefix=f"slimscout-{name}-"))
        try:
            result = recover(session, config, work / "model", settings=settings,
                             on_progress=partial(_report, name))
            recover_s = result.seconds
            after = holdout.evaluate(load_compressed(work / "model"))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        payload = {
            "name": name, "config": config_path, "model": model, "settings": settings.__dict__,
            "holdout_tokens": holdout_tokens, "holdout_before": _metrics(before), "holdout_after": _metrics(after),
            "search_before": result.before, "search_after": result.after, "best_step": result.best_step,
            "history": result.history, "recover_s": recover_s, "wall_s": time.perf_counter() - start,
            "peak_rss_mb": result.peak_rss_mb, "loadavg_start": load_start, "loadavg_end": _load(),
            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        }
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"{name}: holdout ppl {before.ppl:.1f} -> {after.ppl:.1f} in {(time.perf_counter() - start) / 60:.1f}"
              " min", flush=True)


def summary(prefix: str) -> dict[str, Any]:
    from scipy.stats import spearmanr

    rows = {}
    for path in sorted(OUT.glob(f"{prefix}*.batch.json")):
        d = json.loads(path.read_text())
        rows[d["name"]] = {"before": d["holdout_before"]["ppl"], "after": d["holdout_after"]["ppl"],
                           "ratio": d["holdout_after"]["ppl"] / d["holdout_before"]["ppl"],
                           "wall_min": d["wall_s"] / 60, "loadavg_start": d["loadavg_start"][0]}
    names = list(rows)
    result: dict[str, Any] = {"configs": rows, "n": len(names)}
    if len(names) >= 3:
        rho, p = spearmanr([rows[n]["before"] for n in names], [rows[n]["after"] for n in names])
        result["spearman_before_after"] = {"rho": float(rho), "p": float(p)}
    for key in ("before", "after"):
        result[f"rank_{key}"] = sorted(names, key=lambda n: rows[n][key])
    ref = {n.removeprefix(prefix): rows[n]["after"] for n in names}
    if "winner-0.4" in ref:
        others = ("uniform-0.4", "sensitivity-0.4", "owl-0.4")
        result["winner_after_vs"] = {k: ref["winner-0.4"] / ref[k] for k in others if k in ref}
    (OUT / f"{prefix}summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("pairs", nargs="+")
    r.add_argument("--model", default="smollm2-135m")
    r.add_argument("--out", type=Path, default=OUT)
    r.add_argument("--steps", type=int, default=24)
    r.add_argument("--tokens", type=int, default=256)
    r.add_argument("--eval-every", type=int, default=8)
    r.add_argument("--eval-tokens", type=int, default=512)
    r.add_argument("--holdout-tokens", type=int, default=2048)
    s = sub.add_parser("summary")
    s.add_argument("--prefix", default="alloc-")
    args = parser.parse_args()
    if args.command == "run":
        run(args.pairs, model=args.model, out=args.out, steps=args.steps, tokens=args.tokens,
            eval_every=args.eval_every, eval_tokens=args.eval_tokens, holdout_tokens=args.holdout_tokens)
    else:
        print(json.dumps(summary(args.prefix), indent=2))


if __name__ == "__main__":
    main()
