#!/usr/bin/env bash
# Uniform and sensitivity baselines with the sparsegpt operator against Wanda on smollm2-135m, measured on
# 4,096 holdout tokens (the same evaluation as every quality row in BENCHMARKS.md).
#   bash bench/sparsegpt.sh            → bench/results/sparsegpt/<method>-<operator>-<budget>.{config,holdout}.json
#   RUNS="sensitivity sparsegpt 0.3,uniform wanda 0.3" bash bench/sparsegpt.sh   (runs separated by commas)
#   OUT=DIR bash bench/sparsegpt.sh   (results elsewhere, e.g. per damping)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/results/sparsegpt}
mkdir -p "$OUT"
IFS=, read -r -a runs <<< "${RUNS:-uniform sparsegpt 0.4,uniform sparsegpt 0.5,uniform sparsegpt 0.3,sensitivity sparsegpt 0.4,sensitivity wanda 0.4}"
for spec in "${runs[@]}"; do
  set -- $spec
  name="$1-$2-$3"
  [ -f "$OUT/$name.holdout.json" ] && continue
  start=$(date +%s)
  $PY -m slimscout.cli baseline --model smollm2-135m --method "$1" --operator "$2" --budget "$3" \
      --out "$OUT/$name.config.json" --json > "$OUT/$name.baseline.json"
  $PY -m slimscout.cli evaluate --model smollm2-135m --config "$OUT/$name.config.json" --split holdout \
      --tokens 4096 --json > "$OUT/$name.holdout.json"
  echo "$name: $(( $(date +%s) - start )) s, load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/runs.log"
done
