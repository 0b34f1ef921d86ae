#!/usr/bin/env bash
# Searches on the real model (issue 4/5): Wanda at budget 0.4 (guided and plain TPE, same seed and
# tokens) and whitened SVD at 0.8 (guided). Each prints one JSON object to bench/results/search/.
# Usage: bash bench/search.sh [TRIALS]   (default 80 real evaluations per study)
set -euo pipefail
cd "$(dirname "$0")/.."
S=${SLIMSCOUT:-.venv/bin/slimscout}
TRIALS=${1:-80}
OUT=bench/results/search
mkdir -p "$OUT"
DB="sqlite:///$PWD/$OUT/studies.db"
study() {  # name budget operators strategy
  $S search --model smollm2-135m --budget "$2" --operators "$3" --strategy "$4" --trials "$TRIALS" \
    --tokens 2048 --holdout-tokens 4096 --seed 0 --storage "$DB" --study "$1-$(date +%s)" \
    --out "$OUT/$1.best.json" --json > "$OUT/$1.json"
}
study wanda-0.4-guided 0.4 wanda guided
study wanda-0.4-tpe 0.4 wanda tpe
study svd-whitened-0.8-guided 0.8 svd-whitened guided
