#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end suites against real Chroma servers driven by
# the official Python client. Sets up .venv first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
export ANONYMIZED_TELEMETRY=False
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
