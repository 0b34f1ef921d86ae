#!/usr/bin/env bash
# What the test suite needs outside Python, on a fresh Debian/Ubuntu machine: headless Chromium and its
# driver (the dashboard's browser test) and a running PostgreSQL (the storage and worker tests).
# Idempotent; each step is skipped when its part is already there. Installing needs root (or sudo).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup-test-env: need root to run: $*" >&2; return 1; fi
}

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if command -v apt-get >/dev/null; then
    echo "setup-test-env: installing chromium and chromium-driver" >&2
    as_root apt-get update -qq
    as_root apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup-test-env: no apt-get; install chromium and chromedriver yourself" >&2
  fi
fi

# PostgreSQL: started when installed but down (SLIMSCOUT_TEST_POSTGRES_URL points the tests at another one).
if command -v pg_isready >/dev/null && ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  etc="${SLIMSCOUT_POSTGRES_ETC:-/etc/postgresql}"
  if [ -d "$etc" ] && command -v pg_ctlcluster >/dev/null; then
    version="$(ls "$etc" | sort -V | tail -n 1)"
    echo "setup-test-env: starting PostgreSQL $version" >&2
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  fi
  pg_isready -h 127.0.0.1 -p 5432 -q || echo "setup-test-env: PostgreSQL is not running; its tests will fail" >&2
fi
