#!/usr/bin/env bash
# Installs the pinned npm packages the end-to-end tests drive (every tests/*/package-lock.json:
# playwright-core for the status page's test, the JavaScript client's test), when missing or
# older than their lock file. Needs Node.js 20 or later and npm; without them it says so and
# the tests that need them fail with the same advice.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v npm >/dev/null 2>&1; then
  echo "scripts/setup-node.sh: npm is not installed; the tests driven by Node.js will fail" >&2
  exit 0
fi
for lock in tests/*/package-lock.json; do
  dir=$(dirname "$lock")
  stamp="$dir/node_modules/.package-lock.json"
  if [ ! -f "$stamp" ] || [ "$lock" -nt "$stamp" ]; then
    echo "npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done
