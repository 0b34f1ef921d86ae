#!/usr/bin/env bash
# The peer in the benchmarks: vllm-project's llm-compressor (SparseGPT, Wanda; unstructured) prunes
# smollm2-135m on slimscout's own calibration tokens, and slimscout's evaluator measures the result
# on the holdout and search splits (4,096 tokens each), as it measures slimscout's configs.
#
# Usage: bash bench/peer_llmcompressor.sh [METHOD:SPARSITY ...]   (default: sparsegpt:0.6 wanda:0.6)
# Writes bench/results/peer/<method>-keep<keep>.json; a job whose result file exists is skipped.
# Beside each peer row, slimscout's own uniform configs at the same keep (SLIM_OPERATORS, default
# wanda) and the dense model are measured the same way: bench/results/peer/slimscout-*.json.
# PEER_CALIBRATION=documents calibrates the peer on all 60 calibration documents, one sequence each
# (~14k tokens, as the run quoted in issue 17 did) instead of slimscout's 4,096 tokens; its results
# are named <method>-keep<keep>-docs60.json and no slimscout rows are added.
# EVAL_DATASET=enwiki measures every row (peer and slimscout) on that corpus's splits instead of lee-news
# (calibration stays lee-news): results are named <...>-on-enwiki.json.
# The peer runs in its own venv (PEER_VENV, default /work/peer-venv, created if missing: torch==2.13.0
# first, the CPU build on this machine's disk, then llmcompressor); its pruned models go to
# PEER_MODELS (default /work/peer-models), outside the repository. Everything runs at nice 19.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PEER_VENV=${PEER_VENV:-/work/peer-venv}
PEER_MODELS=${PEER_MODELS:-/work/peer-models}
SLIM_PY=${SLIM_PY:-/work/main/.venv/bin/python}
LLMC_VERSION=${LLMC_VERSION:-0.14.0.1}
OUT=bench/results/peer
MODE=${PEER_CALIBRATION:-slimscout}
case $MODE in
  slimscout) CALIB=$PEER_MODELS/calibration.json SUFFIX="" ;;
  documents) CALIB=$PEER_MODELS/calibration-documents.json SUFFIX=-docs60 SLIM_OPERATORS="" ;;
  *) echo "PEER_CALIBRATION must be slimscout or documents" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# One thread: on a loaded 2-core machine OpenMP threads spin-wait on each other, and SparseGPT's
# column loop ran ~50x slower with 2 threads than with 1 (measured, load average ~15).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
EVAL_DATASET=${EVAL_DATASET:-lee-news}
ON=""; [ "$EVAL_DATASET" = lee-news ] || ON=-on-$EVAL_DATASET
mkdir -p "$OUT" "$PEER_MODELS"

if [ ! -x "$PEER_VENV/bin/python" ] || ! "$PEER_VENV/bin/python" -c "import llmcompressor" 2>/dev/null; then
  python3.11 -m venv "$PEER_VENV"
  nice -n 19 "$PEER_VENV/bin/pip" install torch==2.13.0
  nice -n 19 "$PEER_VENV/bin/pip" install "llmcompressor==$LLMC_VERSION" torch==2.13.0
fi

if [ ! -f "$CALIB" ]; then
  PYTHONPATH=$ROOT nice -n 19 "$SLIM_PY" bench/peer_calibration.py "$CALIB" "$MODE"
fi

evaluate() {  # model split -> JSON on stdout
  PYTHONPATH=$ROOT nice -n 19 "$SLIM_PY" -m slimscout.cli evaluate --model "$1" --split "$2" --tokens 4096 \
    --dataset "$EVAL_DATASET" --json
}

slimscout_row() {  # name, then baseline arguments (none: dense) -> bench/results/peer/slimscout-<name>.json
  local name=$1 result=$OUT/slimscout-$1$ON.json config=""
  shift
  [ -f "$result" ] && return 0
  if [ $# -gt 0 ]; then
    config=$PEER_MODELS/slimscout-$name.config.json
    [ -f "$config" ] || PYTHONPATH=$ROOT nice -n 19 "$SLIM_PY" -m slimscout.cli baseline --model smollm2-135m "$@" --out "$config" --json \
      > /dev/null
  fi
  for split in holdout search; do
    PYTHONPATH=$ROOT nice -n 19 "$SLIM_PY" -m slimscout.cli evaluate --model smollm2-135m ${config:+--config "$config"} \
      --split $split --tokens 4096 --dataset "$EVAL_DATASET" --json > "$PEER_MODELS/slimscout-$name$ON.$split.json"
  done
  python3 - "$name" "$*" "$PEER_MODELS/slimscout-$name$ON".{holdout,search}.json "$result" <<'PY'
import json, sys
name, args, holdout, search, out = sys.argv[1:]
record = {"slimscout": name, "baseline_args": args or None}
for split, path in (("holdout", holdout), ("search", search)):
    d = json.loads(open(path).read())
    record[split] = {k: d[k] for k in ("ppl", "kl", "keep_ratio", "tokens", "predicted_tokens")}
open(out, "w").write(json.dumps(record, indent=2) + "\n")
print(f"{out}: holdout {record['holdout']['ppl']:.2f}, search {record['search']['ppl']:.2f}")
PY
}

[ "$MODE" = slimscout ] && slimscout_row dense
for job in "${@:-sparsegpt:0.6 wanda:0.6}"; do
  for spec in $job; do
    method=${spec%%:*}
    sparsity=${spec##*:}
    keep=$(python3 -c "print(round(1 - $sparsity, 6))")
    result=$OUT/$method-keep$keep$SUFFIX$ON.json
    [ -f "$result" ] && { echo "skip $result (exists)"; continue; }
    model=$PEER_MODELS/$method-$sparsity$SUFFIX
    if [ ! -f "$model/peer.json" ]; then
      nice -n 19 "$PEER_VENV/bin/python" bench/peer_llmcompressor.py "$CALIB" "$method" "$sparsity" "$model" \
        > "$model.log" 2>&1 || { tail -5 "$model.log"; exit 1; }
    fi
    evaluate "$model" holdout > "$model$ON.holdout.json"
    evaluate "$model" search > "$model$ON.search.json"
    python3 - "$model/peer.json" "$model$ON".{holdout,search}.json "$result" <<'PY'
import json, sys
peer, holdout, search, out = sys.argv[1:]
record = json.loads(open(peer).read())
checks = record.pop("checks")
record["measured_sparsity"] = {k: checks[k] for k in ("projections", "sparsity_overall", "sparsity_min", "sparsity_max")}
record["checks"] = {k: checks[k] for k in ("non_projection_tensors_changed", "lm_head_tied_to_embeddings",
                                          "lm_head_equals_dense_embeddings")}
for split, path in (("holdout", holdout), ("search", search)):
    d = json.loads(open(path).read())
    # kl/keep_ratio are left out: slimscout sees the peer's output as a dense model of its own.
    record[split] = {"ppl": d["ppl"], "tokens": d["tokens"], "predicted_tokens": d["predicted_tokens"]}
record["evaluate_command"] = ("python -m slimscout.cli evaluate --model <dir> --split {holdout,search} --tokens 4096 "
                             f"--dataset {json.loads(open(holdout).read())['dataset']} --json")
open(out, "w").write(json.dumps(record, indent=2) + "\n")
print(f"{out}: holdout {record['holdout']['ppl']:.2f}, search {record['search']['ppl']:.2f}, "
      f"sparsity {checks['sparsity_min']:.4f}..{checks['sparsity_max']:.4f}, oneshot {record['oneshot_wall_s']} s")
PY
    for operator in ${SLIM_OPERATORS-wanda} ; do
      slimscout_row "uniform-$operator-keep$keep" --method uniform --operator "$operator" --budget "$keep" \
        || echo "slimscout uniform $operator $keep failed"
    done
  done
done

python3 bench/peer_table.py "$OUT" | tee "$OUT/TABLE.md"
