"""Live traffic through the proxy on a seeded collection while it is backfilled: updates and
deletes of records the old store held before dual writes began (ids r0000000 ..), and adds of
new records. Bounded in count. With --tolerate-errors, failed calls (the proxy killed and
restarted mid-run) are counted and retried later instead of failing the run.

Usage: churn.py --url URL --collection NAME --existing N --ops M --dim D [--seed S]
                [--tolerate-errors] [--pause-ms P]
Prints one JSON line: {"updates", "deletes", "adds", "errors", "error_kinds"}, the kinds as
"module.ClassName" counts (a proxy that is down gives transport errors, httpx.*; an answer
the proxy gave would be a chromadb error).
"""

import json
import random
import time

import numpy as np

from client_args import client_for, url_parser


def error_kind(error):
    """The error's "module.ClassName". chromadb's client, when it is made, turns a transport
    error (the server down or restarting) into a ValueError ("Could not connect to a Chroma
    server"); the transport error it caught is its context, and is the kind counted."""
    cause = error
    while isinstance(cause, ValueError) and cause.__context__ is not None:
        cause = cause.__context__
    return f"{type(cause).__module__}.{type(cause).__name__}"


def main():
    parser = url_parser("--collection")
    parser.add_argument("--existing", type=int, required=True)
    parser.add_argument("--ops", type=int, required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tolerate-errors", action="store_true")
    parser.add_argument("--pause-ms", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    vectors = np.random.default_rng(args.seed)
    counts = {"updates": 0, "deletes": 0, "adds": 0, "errors": 0, "error_kinds": {}}
    client = None
    done = 0
    while done < args.ops:
        try:
            if client is None:
                client = client_for(args.url)
                collection = client.get_collection(args.collection, embedding_function=None)
            kind = rng.choice(["update", "update", "delete", "add"])
            if kind == "update":
                ids = [f"r{rng.randrange(args.existing):07d}" for _ in range(rng.randint(1, 10))]
                ids = sorted(set(ids))
                collection.update(
                    ids=ids,
                    embeddings=vectors.random((len(ids), args.dim), dtype=np.float32),
                    metadatas=[{"i": -1, "bucket": 99, "churned": True} for _ in ids],
                    documents=[f"churned {done}" for _ in ids],
                )
                counts["updates"] += 1
            elif kind == "delete":
                ids = sorted({f"r{rng.randrange(args.existing):07d}" for _ in range(rng.randint(1, 10))})
                collection.delete(ids=ids)
                counts["deletes"] += 1
            else:
                ids = [f"new-{done}-{j}" for j in range(rng.randint(1, 10))]
                collection.add(
                    ids=ids,
                    embeddings=vectors.random((len(ids), args.dim), dtype=np.float32),
                    metadatas=[{"i": -2, "bucket": 98} for _ in ids],
                    documents=[f"added {done}" for _ in ids],
                )
                counts["adds"] += 1
            done += 1
        except Exception as error:
            if not args.tolerate_errors:
                raise
            counts["errors"] += 1
            kind = error_kind(error)
            counts["error_kinds"][kind] = counts["error_kinds"].get(kind, 0) + 1
            client = None
            time.sleep(0.3)
            if counts["errors"] > 200:
                raise
        time.sleep(args.pause_ms / 1000)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
