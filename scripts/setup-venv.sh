#!/usr/bin/env bash
# Creates .venv with the Chroma server and the official Python client (chromadb==1.5.9),
# unless it is already there. Idempotent; the quickstart and the tests both call it.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMA_VERSION=1.5.9
if [ -x .venv/bin/chroma ] && .venv/bin/python -c "import chromadb, sys; sys.exit(chromadb.__version__ != '$CHROMA_VERSION')" 2>/dev/null; then
  exit 0
fi
echo "setting up .venv with chromadb==$CHROMA_VERSION (once; about a minute)" >&2
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check "chromadb==$CHROMA_VERSION"
.venv/bin/chroma --help >/dev/null
