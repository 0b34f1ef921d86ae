#!/usr/bin/env bash
# Issue 15: one search study on smollm2-135m through bench.jobs.search (objective kl, search split,
# 1,024 tokens per full evaluation (two 512-token chunks), uniform/owl/sensitivity seeds, winner and seeds re-measured on
# 4,096 holdout tokens). JSON to bench/results/search/evolve/NAME.json, the study in NAME.db beside it.
# Usage: bash bench/evolve.sh BUDGET OPERATOR STRATEGY TRIALS SEED
#   e.g. nice -n 5 env OMP_NUM_THREADS=1 bash bench/evolve.sh 0.4 wanda evolve 41 0   (the run in BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=bench/results/search/evolve
NAME="$2-$1-$3-n$4-s$5"
mkdir -p "$OUT"
$PY - "$@" > "$OUT/$NAME.json" <<PY
import json, sys, time
from bench.jobs import search
budget, operator, strategy, trials, seed = sys.argv[1:6]
started = time.time()
result = search(budget=float(budget), operators=[operator], strategy=strategy, trials=int(trials), tokens=1024,
                holdout_tokens=4096, seed=int(seed), baselines=["uniform", "owl", "sensitivity"],
                storage="sqlite:///$PWD/$OUT/$NAME.db")
result["wall_s"] = time.time() - started
print(json.dumps(result, indent=1, default=str))
PY
