#!/usr/bin/env bash
# Runs Chroma's own test suite (shipped in the chromadb wheel under chromadb/test) against a
# Chroma server directly, then through chroma-shift in front of two Chroma servers, and lists
# every test that passes directly but not through the proxy. Exits 1 when there is one.
#
#   scripts/chroma-suite.sh            the subset (tests/python/chroma_suite_subset.txt), < 5 min
#   scripts/chroma-suite.sh --full     the full list (tests/python/chroma_suite_full.txt)
#   scripts/chroma-suite.sh -- ARGS    extra pytest arguments for both runs (e.g. -k update)
#
# Environment:
#   CHROMA_SUITE_SEED=N          Hypothesis seed (default 20261201); printed either way
#   CHROMA_SUITE_MAX_EXAMPLES=N  cap on every Hypothesis test's examples (subset default 5;
#                                full: unset, each test's own count under the "fast" preset)
#   CHROMA_SUITE_OUT=DIR         reports and logs (default target/chroma-suite/<mode>)
#   CHROMA_SHIFT_BIN=PATH        the proxy binary; built with `cargo build -p chroma-shift`
#                                (CHROMA_SUITE_PROFILE=release for a release build) when unset
#   CHROMA_SUITE_ONLY=proxy      skip the direct run and reuse its report from an earlier run
#
#   CHROMA_SUITE_CLIENTS=both    run each test with the sync and the async client (the full
#                                run's default); `sync` (the subset's default) halves the time
#
# The tests reach a server through Chroma's own fixtures for an externally started single-node
# server: CHROMA_INTEGRATION_TEST_ONLY=1 selects the `integration` (sync HttpClient) and
# `async_integration` (AsyncHttpClient) systems, configured from CHROMA_SERVER_HOST and
# CHROMA_SERVER_HTTP_PORT. (CHROMA_CLUSTER_TEST_ONLY=1 is for a distributed Chroma: its tests
# wait up to 120 s per example for a compaction a single node never does.) Each test resets the
# server first, so every Chroma here runs with `allow_reset: true` and the proxy with
# `[mirror] allow_reset = true`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=subset
PYTEST_EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --full) MODE=full ;;
    --subset) MODE=subset ;;
    --) shift; PYTEST_EXTRA=("$@"); break ;;
    *) echo "usage: $0 [--subset|--full] [-- PYTEST_ARGS]" >&2; exit 2 ;;
  esac
  shift
done

SEED=${CHROMA_SUITE_SEED:-20261201}
if [ "$MODE" = subset ]; then
  export CHROMA_SUITE_MAX_EXAMPLES=${CHROMA_SUITE_MAX_EXAMPLES:-5}
  CLIENTS=${CHROMA_SUITE_CLIENTS:-sync}
else
  CLIENTS=${CHROMA_SUITE_CLIENTS:-both}
fi
CLIENT_FILTER=()
if [ "$CLIENTS" = sync ]; then
  CLIENT_FILTER=(-k "not async_integration")
fi
OUT=${CHROMA_SUITE_OUT:-${CARGO_TARGET_DIR:-$ROOT/target}/chroma-suite/$MODE}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export ANONYMIZED_TELEMETRY=False

# --- the venv and what Chroma's tests import beyond the client and server -----------------
scripts/setup-venv.sh
PY=$ROOT/.venv/bin/python
# Pinned: pytest 9 dropped `Item._nodeid`, which chromadb 1.5.9's conftest sets. fastapi and the
# OpenTelemetry FastAPI instrumentation are imported by the conftest (chromadb's `dev` extra);
# psutil by the property tests. The instrumentation's version follows the installed
# OpenTelemetry semantic conventions (the two are released together).
OTEL_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("opentelemetry-semantic-conventions"))')
TEST_DEPS=("pytest==8.4.2" "hypothesis[numpy]==6.170.15" "fastapi==0.163.2" "psutil==7.2.2"
  "opentelemetry-instrumentation-fastapi==$OTEL_VERSION")
if ! "$PY" - "${TEST_DEPS[@]}" <<'EOF' 2>/dev/null; then
import importlib.metadata as m, sys
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    name = name.split("[")[0]
    if m.version(name) != version:
        sys.exit(1)
EOF
  echo "chroma-suite: installing ${TEST_DEPS[*]} into .venv (once)" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check "${TEST_DEPS[@]}"
fi
TESTS=$("$PY" -c 'import chromadb.test, os; print(os.path.dirname(chromadb.test.__file__))')

# --- the proxy binary ----------------------------------------------------------------------
if [ -z "${CHROMA_SHIFT_BIN:-}" ]; then
  PROFILE=${CHROMA_SUITE_PROFILE:-debug}
  if [ "$PROFILE" = release ]; then
    cargo build --release --quiet -p chroma-shift
  else
    cargo build --quiet -p chroma-shift
  fi
  CHROMA_SHIFT_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/chroma-shift
fi
[ -x "$CHROMA_SHIFT_BIN" ] || { echo "chroma-suite: no proxy binary at $CHROMA_SHIFT_BIN" >&2; exit 2; }

# --- servers: D (direct), OLD and NEW (behind the proxy) --------------------------------------
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_heartbeat() { # name url
  for _ in $(seq 1 600); do
    if "$PY" -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1]+'/api/v2/heartbeat', timeout=2)" "$2" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "chroma-suite: $1 at $2 did not answer its heartbeat within 60 s" >&2
  return 1
}

start_chroma() { # name -> sets URL_<name>
  local name=$1 port dir
  port=$(free_port)
  dir=$OUT/$name
  rm -rf "$dir" && mkdir -p "$dir"
  # `CHROMA_ALLOW_RESET` does not take effect in 1.5.9; the YAML config does.
  printf 'persist_path: "%s"\nport: %s\nlisten_address: "127.0.0.1"\nallow_reset: true\n' \
    "$dir/data" "$port" >"$dir/config.yaml"
  "$ROOT/.venv/bin/chroma" run "$dir/config.yaml" >"$dir/chroma.log" 2>&1 &
  PIDS+=($!)
  printf -v "URL_$name" 'http://127.0.0.1:%s' "$port"
}

start_chroma direct
start_chroma old
start_chroma new
wait_heartbeat "Chroma (direct)" "$URL_direct"
wait_heartbeat "Chroma (old)" "$URL_old"
wait_heartbeat "Chroma (new)" "$URL_new"

PROXY_PORT=$(free_port)
ADMIN_PORT=$(free_port)
rm -rf "$OUT/proxy" && mkdir -p "$OUT/proxy"
cat >"$OUT/proxy/chroma-shift.toml" <<EOF
[server]
listen = "127.0.0.1:$PROXY_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
[backends.old]
url = "$URL_old"
[backends.new]
url = "$URL_new"
[routing]
primary = "old"
[mirror]
allow_reset = true
[state]
dir = "$OUT/proxy/state"
[log]
level = "warn"
EOF
ADMIN_TOKEN=chroma-suite-$RANDOM$RANDOM
CHROMA_SHIFT_ADMIN_TOKEN=$ADMIN_TOKEN "$CHROMA_SHIFT_BIN" serve --config "$OUT/proxy/chroma-shift.toml" \
  >"$OUT/proxy/chroma-shift.log" 2>&1 &
PROXY_PID=$!
PIDS+=($PROXY_PID)
wait_heartbeat "chroma-shift" "http://127.0.0.1:$PROXY_PORT"

# --- the two runs ------------------------------------------------------------------------------
LIST=$ROOT/tests/python/chroma_suite_$MODE.txt
SELECTED=()
while read -r line; do
  line=${line%%#*}
  line=$(echo "$line" | xargs)
  case "$line" in
    "") ;;
    # Node id prefixes relative to chromadb/test, as pytest's --deselect takes them.
    --deselect\ *) SELECTED+=(--deselect "${line#--deselect }") ;;
    *) SELECTED+=("$TESTS/$line") ;;
  esac
done <"$LIST"

echo "chroma-suite: $MODE run of ${#SELECTED[@]} entries from ${LIST#$ROOT/}; hypothesis seed $SEED" \
  "(CHROMA_SUITE_SEED), max examples ${CHROMA_SUITE_MAX_EXAMPLES:-as each test sets}, clients: $CLIENTS"
echo "chroma-suite: direct $URL_direct; proxy http://127.0.0.1:$PROXY_PORT in front of old $URL_old and new $URL_new"

run_suite() { # label url
  local label=$1 port=${2##*:}
  echo "chroma-suite: running against $label ($2) ..."
  local started=$SECONDS status=0
  env CHROMA_INTEGRATION_TEST_ONLY=1 CHROMA_SERVER_HOST=127.0.0.1 CHROMA_SERVER_HTTP_PORT="$port" \
    PYTHONPATH="$ROOT/tests/python${PYTHONPATH:+:$PYTHONPATH}" \
    "$PY" -m pytest -p chroma_suite_plugin -p no:cacheprovider \
    --rootdir="$TESTS" --confcutdir="$TESTS" \
    --hypothesis-seed="$SEED" -q -rfE --tb=short \
    --junitxml="$OUT/$label.xml" -o junit_logging=no \
    "${CLIENT_FILTER[@]}" "${SELECTED[@]}" "${PYTEST_EXTRA[@]}" >"$OUT/$label.log" 2>&1 &
  # In the background, so a SIGTERM to this script is handled at once (bash defers traps
  # while a foreground command runs) and the cleanup stops pytest and the servers.
  local pytest_pid=$!
  PIDS+=("$pytest_pid")
  wait "$pytest_pid" || status=$?
  echo "chroma-suite: $label: $(tail -n 1 "$OUT/$label.log") ($((SECONDS - started)) s, log $OUT/$label.log)"
  # 0 all passed, 1 some failed: both are results; anything else is a broken run.
  if [ "$status" -gt 1 ]; then
    echo "chroma-suite: pytest could not run against $label (exit $status); its log ends with:" >&2
    tail -n 30 "$OUT/$label.log" >&2
    exit 2
  fi
}

if [ "${CHROMA_SUITE_ONLY:-}" != proxy ]; then
  run_suite direct "$URL_direct"
fi
run_suite proxy "http://127.0.0.1:$PROXY_PORT"
kill -0 "$PROXY_PID" 2>/dev/null || { echo "chroma-suite: the proxy exited during the run" >&2; tail -n 30 "$OUT/proxy/chroma-shift.log" >&2; exit 2; }

# The two stores behind the proxy must hold the same data once the journal has drained (what
# the last test left in the default database).
STORES=0
"$PY" - "http://127.0.0.1:$ADMIN_PORT" "$ADMIN_TOKEN" <<'EOF' || STORES=$?
import json, sys, time, urllib.request
url, token = sys.argv[1], sys.argv[2]
deadline = time.time() + 60
while True:
    request = urllib.request.Request(url + "/admin/status", headers={"Authorization": "Bearer " + token})
    status = json.load(urllib.request.urlopen(request, timeout=5))
    secondary = status["topology"]["secondary"]
    left = status["journal"][secondary]["entries"]
    if left == 0:
        dead = status["dead_letters"]["count"]
        print(f"chroma-suite: journal drained; {dead} writes parked as dead letters (applied on the primary only)")
        for letter in status["dead_letters"]["first"]:
            print(f"  dead letter {letter['seq']} for {letter['target']}, collection {letter['collection']}: {letter['reason']}")
        sys.exit(1 if dead else 0)
    if time.time() > deadline:
        print(f"chroma-suite: the journal still holds {left} entries for {secondary} after 60 s")
        sys.exit(1)
    time.sleep(0.2)
EOF
"$PY" tests/python/dump_store.py --url "$URL_old" --out "$OUT/old.json" >/dev/null
"$PY" tests/python/dump_store.py --url "$URL_new" --out "$OUT/new.json" >/dev/null
if cmp -s "$OUT/old.json" "$OUT/new.json"; then
  echo "chroma-suite: old and new stores hold the same data after the run"
else
  echo "chroma-suite: old and new stores DIFFER after the run ($OUT/old.json, $OUT/new.json)"
  STORES=1
fi

echo
COMPARE=0
"$PY" tests/python/chroma_suite_compare.py --direct "$OUT/direct.xml" --proxy "$OUT/proxy.xml" \
  --json "$OUT/comparison.json" || COMPARE=$?
if [ "$COMPARE" -eq 0 ] && [ "$STORES" -ne 0 ]; then
  exit 1
fi
exit "$COMPARE"
