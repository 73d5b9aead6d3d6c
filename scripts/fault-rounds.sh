#!/usr/bin/env bash
# The randomized fault run (tests/fault_rounds.rs) for longer than CI runs it: RUNS runs of
# ROUNDS rounds each (kill -9 of the proxy, SIGSTOP of a store, injected 5xx/429/resets/slow
# answers, client hang-ups, a cutover or rollback every round), each with its own seed.
# A failing run prints its seed; replay it with CHROMA_SHIFT_FAULT_SEED=<seed>.
#   scripts/fault-rounds.sh [RUNS] [ROUNDS]     (defaults: 10 runs of 20 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
export ANONYMIZED_TELEMETRY=False
runs=${1:-10}
export CHROMA_SHIFT_FAULT_ROUNDS=${2:-20}
failed=0
for run in $(seq 1 "$runs"); do
  seed=${CHROMA_SHIFT_FAULT_SEED_BASE:-$RANDOM$RANDOM}$run
  echo "fault-rounds: run $run of $runs, seed $seed, $CHROMA_SHIFT_FAULT_ROUNDS rounds"
  if ! CHROMA_SHIFT_FAULT_SEED=$seed cargo nextest run --locked -p chroma-shift-e2e \
      --test fault_rounds --no-capture; then
    echo "fault-rounds: run $run FAILED (CHROMA_SHIFT_FAULT_SEED=$seed)"
    failed=$((failed + 1))
  fi
done
echo "fault-rounds: $((runs - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
