"""Summarise bench/recover.sh's results: before/after holdout and search perplexity (or cosine), wall
time, load average, peak RSS, and the Spearman correlation of before vs after holdout over the configs.

Usage: python -m bench.recover_summary [bench/results/recover]   (writes summary.json there, prints a table)
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr

_WALL = re.compile(r"recovered in (\d+) s wall; loadavg ([\d.]+) ([\d.]+) ([\d.]+)")
_START = re.compile(r"steps (\d+); loadavg ([\d.]+) ([\d.]+) ([\d.]+)")
_STAMP_START = re.compile(r"\[(\S+Z)\] [^:]+: config .*steps \d+;")
_STAMP_END = re.compile(r"\[(\S+Z)\] [^:]+: recover process ended")
_END_LOAD = re.compile(r"(?:s wall|process ended[^;]*); loadavg ([\d.]+)")


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() and path.stat().st_size else None


def _after(out: Path, name: str, split: str) -> dict[str, Any] | None:
    """After recovery: measured against the dense reference when that file exists (encoders need it)."""
    return _read(out / f"{name}.after-{split}.vs-dense.json") or _read(out / f"{name}.after-{split}.json")


def _wall_minutes(log: str) -> float | None:
    """From bench/recover.sh's line, or from the first start stamp to a 'recover process ended' stamp."""
    wall = _WALL.findall(log)
    if wall:
        return int(wall[-1][0]) / 60
    start, end = _STAMP_START.search(log), _STAMP_END.search(log)
    if start and end:
        return (datetime.fromisoformat(end.group(1)) - datetime.fromisoformat(start.group(1))).total_seconds() / 60
    return None


def _quality(payload: dict[str, Any] | None) -> float | None:
    if payload is None:
        return None
    return payload["ppl"] if payload.get("ppl") is not None else payload.get("cosine")


def row(out: Path, name: str) -> dict[str, Any] | None:
    recovered = _read(out / f"{name}.recover.json")
    after = _after(out, name, "holdout")
    if recovered is None or after is None:
        return None
    log = (out / f"{name}.log").read_text()
    start = _START.findall(log)
    end_load = _END_LOAD.findall(log)
    before_h, after_h = _quality(_read(out / f"{name}.before-holdout.json")), _quality(after)
    return {
        "name": name,
        "metric": "ppl" if after.get("ppl") is not None else "cosine",
        "holdout_before": before_h, "holdout_after": after_h,
        "holdout_ratio": after_h / before_h if before_h and after_h and after.get("ppl") is not None else None,
        "search_before": _quality(_read(out / f"{name}.before-search.json")),
        "search_after": _quality(_after(out, name, "search")),
        "search_during_before": recovered["before"], "search_during_best": recovered["after"],
        "steps_run": recovered["steps_run"], "best_step": recovered["best_step"],
        "train_minutes": recovered["seconds"] / 60,
        "wall_minutes": _wall_minutes(log),
        "loadavg_start": float(start[-1][1]) if start else None,
        "loadavg_end": float(end_load[-1]) if end_load else None,
        "peak_rss_mb": recovered["peak_rss_mb"],
    }


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("bench/results/recover")
    names = sorted({p.name.removesuffix(".recover.json") for p in out.glob("*.recover.json")})
    rows = [r for r in (row(out, name) for name in names) if r is not None]
    causal = [r for r in rows if r["metric"] == "ppl"]
    spearman = None
    if len(causal) >= 3:
        rho, p = spearmanr([r["holdout_before"] for r in causal], [r["holdout_after"] for r in causal])
        spearman = {"rho": float(rho), "p": float(p), "n": len(causal)}
    summary = {"rows": rows, "spearman_holdout_before_after": spearman}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| config | metric | holdout before | holdout after | after/before | search before | search after | "
          "best step / run | train min | wall min | loadavg start→end | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['holdout_ratio']:.2f}" if r["holdout_ratio"] is not None else "-"
        print(f"| {r['name']} | {r['metric']} | {r['holdout_before']:.4g} | {r['holdout_after']:.4g} | {ratio} | "
              f"{r['search_before']:.4g} | {r['search_after']:.4g} | {r['best_step']}/{r['steps_run']} | "
              f"{r['train_minutes']:.1f} | {r['wall_minutes'] or float('nan'):.1f} | "
              f"{r['loadavg_start']}→{r['loadavg_end']} | {r['peak_rss_mb']:.0f} |")
    print(f"spearman(holdout before, after) = {spearman}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
