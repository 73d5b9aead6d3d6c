"""Seeds a collection directly on a Chroma server: N records of dimension D with metadata and
documents, in batches of the server's max batch size, as an application would have written
them before the migration began. Deterministic for a given --seed.

Usage: seed.py --url URL --collection NAME --count N --dim D [--seed S]
Prints one JSON line: {"count", "seconds"}.
"""

import json
import time

import numpy as np

from client_args import client_for, url_parser


def main():
    parser = url_parser("--collection")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    client = client_for(args.url)
    collection = client.get_or_create_collection(
        args.collection, metadata={"seeded": True}, embedding_function=None
    )
    batch = min(client.get_max_batch_size(), 5000)
    rng = np.random.default_rng(args.seed)
    started = time.time()
    for start in range(0, args.count, batch):
        end = min(start + batch, args.count)
        ids = [f"r{i:07d}" for i in range(start, end)]
        collection.add(
            ids=ids,
            embeddings=rng.random((end - start, args.dim), dtype=np.float32),
            metadatas=[{"i": i, "bucket": i % 10} for i in range(start, end)],
            documents=[f"document {i}" for i in range(start, end)],
        )
    print(json.dumps({"count": collection.count(), "seconds": round(time.time() - started, 2)}))


if __name__ == "__main__":
    main()
