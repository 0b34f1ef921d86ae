#!/usr/bin/env bash
# A search on the real model (issues 4/5): one study, JSON to bench/results/search/NAME.json.
# Usage: bash bench/search.sh NAME BUDGET OPERATORS STRATEGY TRIALS [BASELINES]
#   e.g. bash bench/search.sh wanda-0.4-guided 0.4 wanda guided 60
set -euo pipefail
cd "$(dirname "$0")/.."
S=${SLIMSCOUT:-.venv/bin/slimscout}
OUT=bench/results/search
mkdir -p "$OUT"
$S search --model smollm2-135m --budget "$2" --operators "$3" --strategy "$4" --trials "$5" \
  --baselines "${6:-uniform,owl,sensitivity}" --tokens 2048 --holdout-tokens 4096 --seed 0 \
  --storage "sqlite:///$PWD/$OUT/studies.db" --study "$1-$(date +%s)" --out "$OUT/$1.best.json" --json > "$OUT/$1.json"
