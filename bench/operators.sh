#!/usr/bin/env bash
# Operators and baselines on the real model: uniform plain vs whitened SVD at 0.8, Wanda vs magnitude
# at 0.5, OWL vs uniform Wanda at 0.4, then the same configs evaluated on the search split (2,048 tokens).
# Usage: bash bench/operators.sh   (writes bench/results/operators/*.json)
set -euo pipefail
cd "$(dirname "$0")/.."
S=${SLIMSCOUT:-.venv/bin/slimscout}
OUT=bench/results/operators
mkdir -p "$OUT"
run() {  # name method operator budget
  $S baseline --model smollm2-135m --method "$2" --operator "$3" --budget "$4" --out "$OUT/$1.config.json" --json \
    > "$OUT/$1.baseline.json"
  $S evaluate --model smollm2-135m --config "$OUT/$1.config.json" --split search --tokens 2048 --json > "$OUT/$1.json"
}
$S evaluate --model smollm2-135m --split search --tokens 2048 --json > "$OUT/dense.json"
run uniform-svd-0.8 uniform svd 0.8
run uniform-svd-whitened-0.8 uniform svd-whitened 0.8
run uniform-wanda-0.5 uniform wanda 0.5
run uniform-magnitude-0.5 uniform magnitude 0.5
run uniform-wanda-0.4 uniform wanda 0.4
run owl-wanda-0.4 owl wanda 0.4
run uniform-nm24 uniform nm-2:4 0.5
run uniform-wanda-0.5-int8 uniform wanda,int8 0.5
run uniform-wanda-0.5-sdq uniform wanda,sdq 0.5
python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
for f in sorted(out.glob("*.json")):
    if f.name.endswith((".config.json", ".baseline.json")):
        continue
    d = json.loads(f.read_text())
    t = d["timing"]
    rows.append(f"| {f.stem} | {d['ppl']:.2f} | {d['kl']:.4f} | {d['keep_ratio']:.4f} | {d['bytes'] / 1e6:.1f} | "
                f"{t['calibration_s']:.1f} | {t['svd_s']:.1f} | {t['ranks_s']:.1f} | {t['apply_s']:.2f} | {t['forward_s']:.1f} |")
print("| config | ppl | KL | keep ratio | MB (linear) | calib s | svd s | ranks s | apply s | forward s |")
print("|---|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
PY
