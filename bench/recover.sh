#!/usr/bin/env bash
# Recovery by distillation on the real model: holdout (and search) perplexity before and after
# `slimscout recover`, same settings for every config. Configs run one after another (2 shared cores).
# Usage: bash bench/recover.sh NAME=CONFIG ...   (writes bench/results/recover/NAME.*)
# Env: MODEL (smollm2-135m), STEPS (default 120), TOKENS (per step, 512), EVAL_EVERY (20), EVAL_TOKENS (1024),
#      LR (5e-4), SCHEDULE (cosine), WARMUP (10), BF16=1 for --bf16, MAX_MINUTES (none), TRAIN_EXTRA (corpora, e.g. enwiki),
#      HIDDEN (--hidden-weight, default 0), PY (default /work/main/.venv/bin/python),
#      OUT (bench/results/recover), KEEP_MODELS=1 to keep the exports.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
PY=${PY:-/work/main/.venv/bin/python}
STEPS=${STEPS:-120}
MODEL=${MODEL:-smollm2-135m}
OUT=${OUT:-bench/results/recover}
MODELS=${MODELS:-/tmp/slimscout-recover-models}
mkdir -p "$OUT" "$MODELS"
S() { $PY -m slimscout.cli "$@"; }
for pair in "$@"; do
  name=${pair%%=*}; config=${pair#*=}
  log="$OUT/$name.log"
  echo "[$(date -u +%FT%TZ)] $name: config $config, steps $STEPS; loadavg $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$log"
  [ -s "$OUT/$name.before-holdout.json" ] || \
    S evaluate --model "$MODEL" --config "$config" --split holdout --tokens 2048 --json \
      > "$OUT/$name.before-holdout.json" 2>>"$log"
  start=$(date +%s)
  extra=(); [ "${BF16:-0}" = 1 ] && extra=(--bf16)
  [ -n "${MAX_MINUTES:-}" ] && extra+=(--max-minutes "$MAX_MINUTES")
  [ -n "${TRAIN_EXTRA:-}" ] && extra+=(--train-extra "$TRAIN_EXTRA")
  [ -n "${HIDDEN:-}" ] && extra+=(--hidden-weight "$HIDDEN")
  resume=(); [ -f "$MODELS/$name.recover-checkpoint/checkpoint.pt" ] && resume=(--resume)
  S recover --model "$MODEL" --config "$config" --out "$MODELS/$name" --steps "$STEPS" --force --json \
    --tokens "${TOKENS:-512}" --eval-every "${EVAL_EVERY:-20}" --eval-tokens "${EVAL_TOKENS:-1024}" \
    --lr "${LR:-5e-4}" --schedule "${SCHEDULE:-cosine}" --warmup "${WARMUP:-10}" \
    "${resume[@]}" "${extra[@]}" > "$OUT/$name.recover.json" 2>>"$log"
  echo "[$(date -u +%FT%TZ)] $name: recovered in $(( $(date +%s) - start )) s wall; loadavg $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$log"
  S evaluate --model "$MODELS/$name" --split holdout --tokens 2048 --json > "$OUT/$name.after-holdout.json" 2>>"$log"
  S evaluate --model "$MODELS/$name" --split search --tokens 2048 --json > "$OUT/$name.after-search.json" 2>>"$log"
  [ -s "$OUT/$name.before-search.json" ] || \
    S evaluate --model "$MODEL" --config "$config" --split search --tokens 2048 --json \
      > "$OUT/$name.before-search.json" 2>>"$log"
  echo "[$(date -u +%FT%TZ)] $name: done; loadavg $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$log"
  [ "${KEEP_MODELS:-0}" = 1 ] || rm -rf "${MODELS:?}/$name"
done
