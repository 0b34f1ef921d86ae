#!/usr/bin/env bash
# The peer in the benchmarks: vllm-project's llm-compressor (SparseGPT, Wanda; unstructured) prunes
# smollm2-135m on slimscout's own calibration tokens, and slimscout's evaluator measures the result
# on the holdout and search splits (4,096 tokens each), as it measures slimscout's configs.
#
# Usage: bash bench/peer_llmcompressor.sh [METHOD:SPARSITY ...]   (default: sparsegpt:0.6 wanda:0.6)
# Writes bench/results/peer/<method>-keep<keep>.json; a job whose result file exists is skipped.
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
CALIB=$PEER_MODELS/calibration.json
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$OUT" "$PEER_MODELS"

if [ ! -x "$PEER_VENV/bin/python" ] || ! "$PEER_VENV/bin/python" -c "import llmcompressor" 2>/dev/null; then
  python3.11 -m venv "$PEER_VENV"
  nice -n 19 "$PEER_VENV/bin/pip" install torch==2.13.0
  nice -n 19 "$PEER_VENV/bin/pip" install "llmcompressor==$LLMC_VERSION" torch==2.13.0
fi

if [ ! -f "$CALIB" ]; then
  PYTHONPATH=$ROOT nice -n 19 "$SLIM_PY" bench/peer_calibration.py "$CALIB"
fi

evaluate() {  # model split -> JSON on stdout
  PYTHONPATH=$ROOT nice -n 19 "$SLIM_PY" -m slimscout.cli evaluate --model "$1" --split "$2" --tokens 4096 --json
}

for job in "${@:-sparsegpt:0.6 wanda:0.6}"; do
  for spec in $job; do
    method=${spec%%:*}
    sparsity=${spec##*:}
    keep=$(python3 -c "print(round(1 - $sparsity, 6))")
    result=$OUT/$method-keep$keep.json
    [ -f "$result" ] && { echo "skip $result (exists)"; continue; }
    model=$PEER_MODELS/$method-$sparsity
    if [ ! -f "$model/peer.json" ]; then
      nice -n 19 "$PEER_VENV/bin/python" bench/peer_llmcompressor.py "$CALIB" "$method" "$sparsity" "$model" \
        > "$PEER_MODELS/$method-$sparsity.log" 2>&1 || { tail -5 "$PEER_MODELS/$method-$sparsity.log"; exit 1; }
    fi
    evaluate "$model" holdout > "$PEER_MODELS/$method-$sparsity.holdout.json"
    evaluate "$model" search > "$PEER_MODELS/$method-$sparsity.search.json"
    python3 - "$model/peer.json" "$PEER_MODELS/$method-$sparsity".{holdout,search}.json "$result" <<'PY'
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
record["evaluate_command"] = "python -m slimscout.cli evaluate --model <dir> --split {holdout,search} --tokens 4096 --json"
open(out, "w").write(json.dumps(record, indent=2) + "\n")
print(f"{out}: holdout {record['holdout']['ppl']:.2f}, search {record['search']['ppl']:.2f}, "
      f"sparsity {checks['sparsity_min']:.4f}..{checks['sparsity_max']:.4f}, oneshot {record['oneshot_wall_s']} s")
PY
  done
done
