"""Dumps everything one Chroma store holds, read directly with the official Python client.

The dump is JSON: {"collections": [{"name", "metadata", "records": {"ids", "embeddings",
"metadatas", "documents"}}, ...]}, collections sorted by name and records by id, floats
rounded to 4 decimals, numpy values turned into lists. Two stores that hold the same data give
equal dumps, whatever their collection ids and insertion order.

No embedding function is ever used (the default one would try to download a model, and the
network is closed): every collection is opened with embedding_function=None and nothing is
embedded.

Usage: dump_store.py --url http://127.0.0.1:PORT --out FILE
"""

import json

import numpy as np

from client_args import client_for, url_parser

FIELDS = ("embeddings", "metadatas", "documents")
# Records per `get`: well under a single node's max_batch_size.
PAGE = 1000


def plain(value):
    """JSON-ready, with floats rounded so float32 noise does not count as a difference."""
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    raise TypeError(f"cannot dump {type(value).__name__}: {value!r}")


def records_of(collection):
    """All records of a collection, sorted by id.

    Ids are listed first (include=[] is the cheap snapshot), then the full records are fetched
    by id in pages, so the dump does not depend on Chroma's internal order.
    """
    ids = collection.get(include=[])["ids"]
    rows = {}
    for start in range(0, len(ids), PAGE):
        page = collection.get(ids=ids[start : start + PAGE], include=list(FIELDS))
        for index, record_id in enumerate(page["ids"]):
            rows[record_id] = {
                field: (
                    None if page.get(field) is None else plain(page[field][index])
                )
                for field in FIELDS
            }
    ordered = sorted(rows)
    return {
        "ids": ordered,
        **{field: [rows[i][field] for i in ordered] for field in FIELDS},
    }


def main():
    args = url_parser("--out").parse_args()
    client = client_for(args.url)

    names = sorted(c.name for c in client.list_collections())
    dump = []
    for name in names:
        collection = client.get_collection(name, embedding_function=None)
        dump.append(
            {
                "name": name,
                "metadata": plain(collection.metadata),
                "records": records_of(collection),
            }
        )
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump({"collections": dump}, out, sort_keys=True)
    total = sum(len(c["records"]["ids"]) for c in dump)
    print(json.dumps({"collections": len(dump), "records": total}))


if __name__ == "__main__":
    main()
