"""A full Chroma workflow with the official Python client, written out as a JSON transcript.

Run once against Chroma directly and once through the proxy: the two transcripts must be
equal. Every step is recorded as {"step": name, "result": ...} or
{"step": name, "error": {"type": ..., "message": ...}}.

Usage: workflow.py --url http://127.0.0.1:PORT --out FILE
"""

import json
import re
import sys
from uuid import UUID

import numpy as np

from client_args import client_for, url_parser

UUID_PATTERN = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
# Keys whose values are wall-clock times, which two servers never share.
TIMESTAMP_KEYS = {"created_at", "updated_at", "timestamp", "nanosecond heartbeat"}


class Normalizer:
    """Turns client results into JSON that is equal across two servers given the same calls."""

    def __init__(self):
        # UUIDs get placeholders in order of first appearance, so the same collection keeps
        # the same placeholder across steps.
        self.placeholders = {}

    def uuid_placeholder(self, match):
        key = match.group(0).lower()
        if key not in self.placeholders:
            self.placeholders[key] = f"<uuid-{len(self.placeholders) + 1}>"
        return self.placeholders[key]

    def text(self, value):
        return UUID_PATTERN.sub(self.uuid_placeholder, value)

    def __call__(self, value):
        if isinstance(value, np.ndarray):
            return self(value.tolist())
        if isinstance(value, np.generic):
            return self(value.item())
        if isinstance(value, UUID):
            return self.text(str(value))
        if isinstance(value, bool) or value is None or isinstance(value, int):
            return value
        if isinstance(value, float):
            return round(value, 5)
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                str(k): self(v) for k, v in value.items() if k not in TIMESTAMP_KEYS
            }
        if isinstance(value, (list, tuple)):
            return [self(v) for v in value]
        if hasattr(value, "model_dump"):
            return self(value.model_dump())
        raise TypeError(f"cannot normalize {type(value).__name__}: {value!r}")


class Transcript:
    """The steps of a run, each its normalized result or the error it raised."""

    def __init__(self):
        self.normalize = Normalizer()
        self.steps = []

    def step(self, name, action):
        """Runs one call; records its normalized result or the error it raised."""
        try:
            entry = {"step": name, "result": self.normalize(action())}
        except Exception as error:  # the transcript records failures; the test judges them
            entry = {
                "step": name,
                "error": {
                    "type": type(error).__name__,
                    "message": self.normalize.text(str(error)),
                },
            }
        self.steps.append(entry)
        return entry

    def write(self, path):
        with open(path, "w", encoding="utf-8") as out:
            json.dump(self.steps, out, indent=1, sort_keys=True)
        print(f"{len(self.steps)} steps written to {path}", file=sys.stderr)


def collection_view(collection):
    """The collection's whole model (id, name, metadata, configuration, schema, ...)."""
    return collection._model.model_dump()


def main():
    args = url_parser("--out").parse_args()

    transcript = Transcript()
    step = transcript.step

    client = client_for(args.url)
    # Explicit embeddings everywhere and no embedding function: the default one would try to
    # download a model, and the network is closed.
    no_ef = {"embedding_function": None}
    docs = {}

    step("heartbeat", lambda: {"is_int": isinstance(client.heartbeat(), int)})
    step("version", client.get_version)

    def create_docs():
        docs["collection"] = client.create_collection(
            "shift-docs", metadata={"topic": "docs", "rank": 1}, **no_ef
        )
        return collection_view(docs["collection"])

    step("create_collection", create_docs)
    collection = docs["collection"]
    # Creations and lookups the server refuses or answers: step name, client method, name.
    for name, method, collection_name in (
        ("create_collection_duplicate", client.create_collection, "shift-docs"),
        ("create_collection_invalid_name", client.create_collection, "x"),
        ("get_collection", client.get_collection, "shift-docs"),
        ("get_collection_missing", client.get_collection, "shift-missing"),
    ):
        step(name, lambda: collection_view(method(collection_name, **no_ef)))
    step(
        "get_or_create_collection_creates",
        lambda: collection_view(
            client.get_or_create_collection(
                "shift-extra", metadata={"topic": "extra"}, **no_ef
            )
        ),
    )
    step(
        "get_or_create_collection_gets",
        lambda: collection_view(
            client.get_or_create_collection("shift-extra", **no_ef)
        ),
    )
    # list_collections' order is not part of the API: sort by name.
    step(
        "list_collections",
        lambda: sorted(
            (collection_view(c) for c in client.list_collections()),
            key=lambda c: c["name"],
        ),
    )

    def list_in_pages():
        # Which collection lands on which page depends on their random ids; the page
        # sizes and the union of the pages do not.
        pages = [
            [c.name for c in client.list_collections(limit=1, offset=offset)]
            for offset in range(3)
        ]
        return {
            "page_sizes": [len(page) for page in pages],
            "names": sorted(name for page in pages for name in page),
        }

    step("list_collections_paged", list_in_pages)
    step("count_collections", client.count_collections)

    step(
        "add",
        lambda: collection.add(
            ids=["a", "b", "c", "d", "e", "f"],
            embeddings=[
                [1.0, 0.0, 0.0],
                [0.0, 1.0, 0.0],
                [0.0, 0.0, 1.0],
                [0.5, 0.5, 0.0],
                [0.1, 0.2, 0.3],
                [0.9, 0.1, 0.05],
            ],
            metadatas=[
                {"rank": 1, "color": "red", "weight": 0.5},
                {"rank": 2, "color": "green", "weight": 1.5},
                {"rank": 3, "color": "blue", "flag": True},
                {"rank": 4, "color": "red"},
                {"rank": 5, "color": "green", "flag": False},
                {"rank": 6, "color": "blue", "weight": 2.25},
            ],
            documents=[
                "alpha apples",
                "bravo bananas",
                "charlie cherries",
                "delta dates and apples",
                "echo elderberries",
                "foxtrot figs",
            ],
        ),
    )
    step("count_after_add", collection.count)
    step(
        "add_dimension_mismatch",
        lambda: collection.add(ids=["z"], embeddings=[[1.0, 2.0]], documents=["bad"]),
    )
    step(
        "collection_dimension",
        lambda: client.get_collection("shift-docs", **no_ef)._model.dimension,
    )
    step(
        "get_all",
        lambda: collection.get(include=["embeddings", "metadatas", "documents"]),
    )
    step(
        "get_limit_offset",
        lambda: collection.get(
            limit=2, offset=1, include=["metadatas", "documents", "embeddings"]
        ),
    )
    step("get_ids_only", lambda: collection.get(include=[]))
    step(
        "get_by_ids",
        lambda: collection.get(ids=["e", "a", "missing"], include=["documents"]),
    )
    step(
        "get_where",
        lambda: collection.get(
            where={"rank": {"$gte": 3}}, include=["metadatas", "documents"]
        ),
    )
    step(
        "get_where_and_or",
        lambda: collection.get(
            where={
                "$and": [
                    {"$or": [{"color": "red"}, {"color": "blue"}]},
                    {"rank": {"$lt": 6}},
                ]
            },
            include=["metadatas"],
        ),
    )
    step(
        "get_where_in",
        lambda: collection.get(
            where={"color": {"$in": ["green", "blue"]}}, include=["metadatas"]
        ),
    )
    step(
        "get_where_document",
        lambda: collection.get(
            where_document={"$contains": "apples"}, include=["documents"]
        ),
    )
    step(
        "get_where_and_where_document",
        lambda: collection.get(
            where={"color": "red"},
            where_document={"$not_contains": "dates"},
            include=["documents", "metadatas"],
        ),
    )
    step(
        "get_where_invalid_operator",
        lambda: collection.get(where={"rank": {"$badop": 1}}),
    )
    step(
        "get_where_invalid_top_level",
        lambda: collection.get(where={"$badop": 1}),
    )
    # Queries with explicit embeddings: by nearest, two at once, filtered by metadata and by
    # document.
    for name, arguments in (
        ("query", {"query_embeddings": [[1.0, 0.1, 0.0]], "n_results": 3,
                   "include": ["distances", "metadatas", "documents", "embeddings"]}),
        ("query_two_embeddings", {"query_embeddings": [[0.0, 0.9, 0.1], [0.1, 0.2, 0.35]],
                                  "n_results": 2, "include": ["distances", "documents"]}),
        ("query_where", {"query_embeddings": [[1.0, 0.0, 0.0]], "n_results": 2,
                         "where": {"color": "blue"}, "include": ["distances", "metadatas"]}),
        ("query_where_document", {"query_embeddings": [[0.0, 0.0, 1.0]], "n_results": 5,
                                  "where_document": {"$contains": "apples"},
                                  "include": ["distances", "documents"]}),
    ):
        step(name, lambda: collection.query(**arguments))
    step(
        "query_dimension_mismatch",
        lambda: collection.query(query_embeddings=[[1.0, 0.0]], n_results=1),
    )
    step(
        "upsert",
        lambda: collection.upsert(
            ids=["b", "g"],
            embeddings=[[0.0, 0.8, 0.2], [0.3, 0.3, 0.3]],
            metadatas=[{"rank": 20, "color": "green"}, {"rank": 7, "color": "gray"}],
            documents=["bravo bananas upserted", "golf grapes"],
        ),
    )
    step(
        "update",
        lambda: collection.update(
            ids=["c"],
            # Documents without embeddings would make the client embed them itself, with a
            # model it would try to download.
            embeddings=[[0.0, 0.1, 0.9]],
            metadatas=[{"rank": 30, "color": "blue", "updated": True}],
            documents=["charlie cherries updated"],
        ),
    )
    step(
        "update_embedding",
        lambda: collection.update(ids=["d"], embeddings=[[0.4, 0.6, 0.0]]),
    )
    step(
        "get_after_writes",
        lambda: collection.get(include=["embeddings", "metadatas", "documents"]),
    )
    step("count_after_writes", collection.count)
    step("delete_by_ids", lambda: collection.delete(ids=["a", "missing"]))
    step("delete_by_where", lambda: collection.delete(where={"color": "green"}))
    step(
        "delete_by_where_document",
        lambda: collection.delete(where_document={"$contains": "figs"}),
    )
    step(
        "delete_invalid_where",
        lambda: collection.delete(where={"$badop": 1}),
    )
    step(
        "get_after_deletes",
        lambda: collection.get(include=["metadatas", "documents"]),
    )
    step("count_after_deletes", collection.count)
    step(
        "query_after_deletes",
        lambda: collection.query(
            query_embeddings=[[0.3, 0.3, 0.3]],
            n_results=10,
            include=["distances", "documents"],
        ),
    )

    def modify_metadata():
        collection.modify(metadata={"topic": "docs", "rank": 2, "edited": True})
        return collection_view(client.get_collection("shift-docs", **no_ef))

    step("modify_metadata", modify_metadata)

    def rename():
        collection.modify(name="shift-docs-renamed")
        return collection_view(client.get_collection("shift-docs-renamed", **no_ef))

    step("modify_name", rename)
    step(
        "get_collection_old_name",
        lambda: collection_view(client.get_collection("shift-docs", **no_ef)),
    )
    step(
        "modify_name_to_existing",
        lambda: collection.modify(name="shift-extra"),
    )
    step("peek", lambda: collection.peek(limit=2))
    step(
        "list_collections_after_modify",
        lambda: sorted(
            (collection_view(c) for c in client.list_collections()),
            key=lambda c: c["name"],
        ),
    )
    step("delete_collection", lambda: client.delete_collection("shift-docs-renamed"))
    step(
        "delete_collection_missing",
        lambda: client.delete_collection("shift-docs-renamed"),
    )
    step("count_on_deleted_collection", collection.count)
    step(
        "add_to_deleted_collection",
        lambda: collection.add(ids=["x"], embeddings=[[1.0, 1.0, 1.0]]),
    )
    step(
        "list_collections_final",
        lambda: sorted(c.name for c in client.list_collections()),
    )
    step("count_collections_final", client.count_collections)

    transcript.write(args.out)


if __name__ == "__main__":
    main()
