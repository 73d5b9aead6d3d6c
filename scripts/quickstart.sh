#!/usr/bin/env bash
# Starts two local Chroma servers (old on :8101, new on :8102) and chroma-shift in front of
# them on :8000 (admin and metrics on :9100). Ctrl-C stops all three.
# It writes the config it runs with to .demo/chroma-shift.toml (and prints it), for the README's
# walk-through. Extra arguments go to `chroma-shift quickstart` (see `chroma-shift quickstart --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
# protoc for etcd-client's build, from .venv unless PROTOC names another.
export PROTOC="${PROTOC:-$PWD/.venv/bin/protoc}"
cargo build --release --quiet -p chroma-shift
exec target/release/chroma-shift quickstart "$@"
