#!/usr/bin/env bash
# The fuzz run, and the replay of each defect it found.
#
#   scripts/fuzz.sh [RUNS]           tests/fuzz.rs RUNS times (default 5), each with its own seed
#                                    and 3,000 requests (CI runs one of 600): seeded mutated
#                                    requests to the proxy and to Chroma directly, then a full
#                                    store comparison (CHROMA_SHIFT_FUZZ_SEED, _REQUESTS, _KINDS,
#                                    CHROMA_SHIFT_FUZZ_VERBOSE=1); a failing run prints its seed
#   scripts/fuzz.sh --repro [NAME..] each defect alone and minimized (tests/python/fuzz_repro.py):
#                                    request, Chroma's answer, the proxy's, what each store holds
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
scripts/setup-venv.sh
export ANONYMIZED_TELEMETRY=False

if [ "${1:-}" != --repro ]; then
  export CHROMA_SHIFT_FUZZ_REQUESTS=${CHROMA_SHIFT_FUZZ_REQUESTS:-3000}
  runs=${1:-5}
  failed=0
  for run in $(seq 1 "$runs"); do
    echo "fuzz: run $run of $runs, $CHROMA_SHIFT_FUZZ_REQUESTS requests"
    if ! cargo nextest run --locked -p chroma-shift-e2e --test fuzz --no-capture; then
      echo "fuzz: run $run FAILED (its seed is printed above)"
      failed=$((failed + 1))
    fi
  done
  echo "fuzz: $((runs - failed)) passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit
fi
shift

PY=$ROOT/.venv/bin/python
if [ -z "${CHROMA_SHIFT_BIN:-}" ]; then
  cargo build --quiet -p chroma-shift
  CHROMA_SHIFT_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/chroma-shift
fi
OUT=$(mktemp -d -t chroma-shift-fuzz-XXXXXX)
PIDS=()
cleanup_servers() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
cleanup() {
  cleanup_servers
  rm -rf "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_heartbeat() {
  for _ in $(seq 1 600); do
    "$PY" -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1]+'/api/v2/heartbeat', timeout=2)" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "fuzz: $1 did not answer its heartbeat within 60 s" >&2
  return 1
}
start_chroma() { # name -> sets URL_<name>
  local port
  port=$(free_port)
  mkdir -p "$BASE/$1"
  "$ROOT/.venv/bin/chroma" run --path "$BASE/$1/data" --host 127.0.0.1 --port "$port" >"$BASE/$1/chroma.log" 2>&1 &
  PIDS+=($!)
  printf -v "URL_$1" 'http://127.0.0.1:%s' "$port"
}
# Each scenario on fresh servers: one defect can block the journal for everything after it.
run_scenario() { # name
  local dir=$OUT/$1 port admin
  PIDS=()
  mkdir -p "$dir"
  BASE=$dir
  start_chroma direct
  start_chroma old
  start_chroma new
  for url in "$URL_direct" "$URL_old" "$URL_new"; do wait_heartbeat "$url"; done
  port=$(free_port)
  admin=$(free_port)
  cat >"$dir/chroma-shift.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
[backends.old]
url = "$URL_old"
[backends.new]
url = "$URL_new"
[state]
dir = "$dir/state"
[log]
level = "warn"
EOF
  CHROMA_SHIFT_ADMIN_TOKEN=$TOKEN "$CHROMA_SHIFT_BIN" serve --config "$dir/chroma-shift.toml" >"$dir/chroma-shift.log" 2>&1 &
  PIDS+=($!)
  wait_heartbeat "http://127.0.0.1:$port"
  "$PY" tests/python/fuzz_repro.py --direct "$URL_direct" --proxy "http://127.0.0.1:$port" \
    --old "$URL_old" --new "$URL_new" --admin "http://127.0.0.1:$admin" --token "$TOKEN" --only "$1"
  cleanup_servers
}

TOKEN=fuzz-$RANDOM$RANDOM
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || read -r -a SCENARIOS <<<"$("$PY" tests/python/fuzz_repro.py --list)"
for name in "${SCENARIOS[@]}"; do
  run_scenario "$name"
done
