#!/usr/bin/env bash
# Runs every test with nextest (per-test time limits in .config/nextest.toml): unit tests, and
# end-to-end suites against real Chroma servers driven by the official Python client. Sets up
# .venv and the tests' npm packages (scripts/setup-node.sh) first if needed. Builds against Cargo.lock as committed (--locked).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
# protoc for etcd-client's build, from .venv unless PROTOC names another.
export PROTOC="${PROTOC:-$PWD/.venv/bin/protoc}"
scripts/setup-node.sh
export ANONYMIZED_TELEMETRY=False
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "scripts/test.sh needs cargo-nextest: cargo install --locked cargo-nextest" >&2
  exit 1
fi
exec cargo nextest run --workspace --locked --no-fail-fast "$@"
