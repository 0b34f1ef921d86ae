#!/usr/bin/env bash
# Does the allocation still matter after recovery? (issue 16). Builds ≥8 keep-0.4 Wanda configs
# (baselines, OWL wide, uniform at 0.35/0.45/0.5, random allocations, and a short search's winner),
# then recovers each with the same settings in one process (bench/recover_batch.py), one at a time,
# writing bench/results/recover/alloc-<name>.batch.json as each finishes; then the summary
# (Spearman of holdout ppl before vs after) in bench/results/recover/alloc-summary.json.
# Env: STEPS (4), TOKENS (256), EVAL_TOKENS (256), ORDER (config names to recover, in order).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PY:-/work/main/.venv/bin/python}
CONF=bench/results/recover/alloc-configs
STEPS=${STEPS:-4}
mkdir -p "$CONF"
stamp() { echo "[$(date -u +%FT%TZ)] $*; loadavg $(cut -d' ' -f1-3 /proc/loadavg)"; }
stamp "building configs"
$PY -m bench.recover_allocations "$CONF" --budget 0.4 --operator wanda --random 2
if [ ! -s "$CONF/winner-0.4.config.json" ]; then
  stamp "search (guided, 24 trials x 512 tokens)"
  $PY -m slimscout.cli search --model smollm2-135m --budget 0.4 --operators wanda --strategy guided \
    --trials 24 --tokens 512 --holdout-tokens 2048 --baselines uniform,owl,sensitivity --seed 0 --no-prune \
    --storage "sqlite:////tmp/slimscout-alloc-search.db" --study alloc-wanda-0.4-guided-n24-t512 \
    --out "$CONF/winner-0.4.config.json" --json > "$CONF/winner-0.4.search.json"
fi
ORDER=${ORDER:-"uniform-0.4 winner-0.4 sensitivity-0.4 uniform-0.5 owl-0.4 random-s0-0.4 uniform-0.35 owl-wide-0.4 random-s1-0.4 uniform-0.45"}
pairs=()
for n in $ORDER; do pairs+=("alloc-$n=$CONF/$n.config.json"); done
stamp "recovering ${#pairs[@]} configs, $STEPS steps each"
$PY -m bench.recover_batch run "${pairs[@]}" --steps "$STEPS" --tokens "${TOKENS:-256}" --eval-every "$STEPS" \
  --eval-tokens "${EVAL_TOKENS:-256}" --holdout-tokens 2048
$PY -m bench.recover_batch summary --prefix alloc-
stamp "all done"
