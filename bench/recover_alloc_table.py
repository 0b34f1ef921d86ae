"""Holdout perplexity before and after the standard 180-step recovery for the configs of a keep-0.4 study's
range (and uniform 0.45), and the Spearman correlation of before against after.

Usage: python -m bench.recover_alloc_table   (after bench/recover.sh ran each config into bench/results/recover15;
writes alloc-180-steps.json there and prints a Markdown table)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr

OUT = Path(__file__).resolve().parent / "results" / "recover15"
NAMES = ("uniform-wanda-0.45", "winner-wanda-0.4", "sensitivity-wanda-0.4", "uniform-wanda-0.4",
         "random-s1-wanda-0.4", "owl-wanda-0.4", "owl-wide-wanda-0.4", "random-s0-wanda-0.4")


def _read(name: str, part: str) -> dict[str, Any]:
    return json.loads((OUT / f"{name}.{part}.json").read_text())


def main() -> None:
    rows = [{"name": name, "holdout_before": _read(name, "before-holdout")["ppl"],
             "holdout_after": _read(name, "after-holdout")["ppl"],
             "train_minutes": _read(name, "recover")["seconds"] / 60}
            for name in NAMES if (OUT / f"{name}.after-holdout.json").is_file()]
    rows.sort(key=lambda row: row["holdout_before"])
    for row in rows:
        before, after = row["holdout_before"], row["holdout_after"]
        minutes = row["train_minutes"]
        print(f"| {row['name']} | {before:.2f} → **{after:.2f}** | {after / before:.2f}x | {minutes:.1f} |")
    rho, p = spearmanr([r["holdout_before"] for r in rows], [r["holdout_after"] for r in rows])
    summary = {"configs": rows, "spearman_before_after": {"rho": float(rho), "p": float(p), "n": len(rows)}}
    (OUT / "alloc-180-steps.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"Spearman before vs after: rho {rho:.3f} (p {p:.3f}, n {len(rows)})")


if __name__ == "__main__":
    main()
