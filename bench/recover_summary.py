"""Summarise bench/recover.sh's results: before/after holdout and search perplexity (or cosine), wall
time, load average, peak RSS, and the Spearman correlation of before vs after holdout over the configs.

Usage: python -m bench.recover_summary [bench/results/recover]   (writes summary.json there, prints a table)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr

_WALL = re.compile(r"recovered in (\d+) s wall; loadavg ([\d.]+) ([\d.]+) ([\d.]+)")
_START = re.compile(r"steps (\d+); loadavg ([\d.]+) ([\d.]+) ([\d.]+)")


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() and path.stat().st_size else None


def _quality(payload: dict[str, Any] | None) -> float | None:
    if payload is None:
        return None
    return payload["ppl"] if payload.get("ppl") is not None else payload.get("cosine")


def row(out: Path, name: str) -> dict[str, Any] | None:
    recovered = _read(out / f"{name}.recover.json")
    after = _read(out / f"{name}.after-holdout.json")
    if recovered is None or after is None:
        return None
    log = (out / f"{name}.log").read_text()
    wall = _WALL.findall(log)
    start = _START.findall(log)
    before_h, after_h = _quality(_read(out / f"{name}.before-holdout.json")), _quality(after)
    return {
        "name": name,
        "metric": "ppl" if after.get("ppl") is not None else "cosine",
        "holdout_before": before_h, "holdout_after": after_h,
        "holdout_ratio": after_h / before_h if before_h and after_h and after.get("ppl") is not None else None,
        "search_before": _quality(_read(out / f"{name}.before-search.json")),
        "search_after": _quality(_read(out / f"{name}.after-search.json")),
        "search_during_before": recovered["before"], "search_during_best": recovered["after"],
        "steps_run": recovered["steps_run"], "best_step": recovered["best_step"],
        "train_minutes": recovered["seconds"] / 60,
        "wall_minutes": int(wall[-1][0]) / 60 if wall else None,
        "loadavg_start": float(start[-1][1]) if start else None,
        "loadavg_end": float(wall[-1][1]) if wall else None,
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
    print("| config | metric | holdout before | holdout after | after/before | search after (2048) | "
          "best step / run | train min | wall min | loadavg start→end | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['holdout_ratio']:.2f}" if r["holdout_ratio"] is not None else "-"
        print(f"| {r['name']} | {r['metric']} | {r['holdout_before']:.4g} | {r['holdout_after']:.4g} | {ratio} | "
              f"{r['search_after']:.4g} | {r['best_step']}/{r['steps_run']} | {r['train_minutes']:.1f} | "
              f"{r['wall_minutes'] or float('nan'):.1f} | {r['loadavg_start']}→{r['loadavg_end']} | "
              f"{r['peak_rss_mb']:.0f} |")
    print(f"spearman(holdout before, after) = {spearman}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
