"""The peer benchmark's table: llm-compressor's rows beside slimscout's, from bench/results/peer/*.json.

Usage: python bench/peer_table.py [RESULTS_DIR]  (prints Markdown; stdlib only).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _keep_of(record: dict[str, Any]) -> float:
    if "keep" in record:
        return float(record["keep"])
    args = (record.get("baseline_args") or "").split()
    return float(args[args.index("--budget") + 1]) if "--budget" in args else 1.0


def rows(results: Path) -> list[str]:
    records = [
        json.loads(path.read_text()) | {"_docs": "-docs60" in path.stem,
                                        "_on": path.stem.partition("-on-")[2] or "lee-news"}
        for path in sorted(results.glob("*.json"))
    ]
    records.sort(key=lambda r: (r["_on"], -_keep_of(r), "peer" not in r, r.get("method") or r.get("slimscout", "")))
    lines = [
        "| keep | tool | method | calibration | evaluated on | holdout ppl | search ppl | sparsity (projections) "
        "| oneshot s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if "peer" in r:
            s = r["measured_sparsity"]
            tool = f"llm-compressor {r['versions']['llmcompressor']}"
            method = r["recipe"]["modifier"]
            sparsity = f"{s['sparsity_overall']:.4f} ({s['sparsity_min']:.4f}..{s['sparsity_max']:.4f})"
            wall = f"{r['oneshot_wall_s']:.0f}"
            calib = r["calibration"]
            docs = r["_docs"]
            calibration = f"{calib['tokens']} tok, " + ("60 whole docs" if docs else f"{calib['seq_len']}-tok seqs")
        else:
            tool, method, wall = "slimscout", r["slimscout"], "-"
            calibration = "4096 tok" if r.get("baseline_args") else "-"
            sparsity = f"{1 - r['holdout']['keep_ratio']:.4f}"
        lines.append(
            f"| {_keep_of(r):.1f} | {tool} | {method} | {calibration} | {r['_on']} | {r['holdout']['ppl']:.2f} "
            f"| {r['search']['ppl']:.2f} | {sparsity} | {wall} |"
        )
    return lines


if __name__ == "__main__":
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/peer")
    print("\n".join(rows(directory)))
