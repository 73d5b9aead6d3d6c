"""The collection ids a client holds, before and after the proxy swaps its primary store.

--save FILE: lists the collections through the proxy and saves each one's whole model (id,
name, metadata, ...), as a client keeps its Collection objects.

--check FILE --out FILE: through the (restarted, swapped) proxy, checks that the client's ids
still work: list_collections and get_collection(name) give the saved ids, get_collection_by_id
finds each saved id, and a Collection object rebuilt from the saved model (the object a client
already held) can count, get, add and query. Writes what it saw as JSON; any failure raises.

No embedding function is ever used: every call passes explicit embeddings.

Usage: collection_ids.py --url URL (--save FILE | --check FILE --out FILE)
"""

import json
from uuid import UUID

from chromadb.api.models.Collection import Collection
from chromadb.types import Collection as CollectionModel

from client_args import client_for, url_parser

DIMENSION = 8


def save(client, path):
    models = sorted(
        (c._model.model_dump(mode="json") for c in client.list_collections()),
        key=lambda m: m["name"],
    )
    with open(path, "w", encoding="utf-8") as out:
        json.dump(models, out)
    print(json.dumps({name_id["name"]: name_id["id"] for name_id in models}))


def check(client, path, out_path):
    with open(path, encoding="utf-8") as saved_file:
        saved = json.load(saved_file)
    saved_ids = {m["name"]: str(m["id"]) for m in saved}
    listed = {c.name: str(c.id) for c in client.list_collections()}
    assert listed == saved_ids, f"list_collections: {listed} != saved {saved_ids}"
    report = {"listed": listed, "collections": {}}
    for model_json in saved:
        name, collection_id = model_json["name"], str(model_json["id"])
        by_name = client.get_collection(name, embedding_function=None)
        assert str(by_name.id) == collection_id, f"{name}: get_collection gave {by_name.id}"
        by_id = client.get_collection_by_id(UUID(collection_id), embedding_function=None)
        assert by_id.name == name, f"{collection_id}: get_collection_by_id gave {by_id.name}"
        # The object the client held from before the swap, with its old id.
        held = Collection(
            client=client._server,
            model=CollectionModel.model_validate(model_json),
            embedding_function=None,
        )
        before = held.count()
        ids = held.get(include=[])["ids"]
        assert len(ids) == before, f"{name}: count {before}, get {len(ids)} ids"
        vector = [0.125 * (k + 1) for k in range(DIMENSION)]
        held.add(
            ids=["swap-x"],
            embeddings=[vector],
            metadatas=[{"after": "swap"}],
            documents=["written after the swap"],
        )
        got = held.get(ids=["swap-x"], include=["metadatas", "documents"])
        assert got["ids"] == ["swap-x"], f"{name}: get after add gave {got['ids']}"
        assert got["metadatas"][0] == {"after": "swap"}, got
        found = held.query(query_embeddings=[vector], n_results=1, include=["distances"])
        assert found["ids"][0] == ["swap-x"], f"{name}: query gave {found['ids']}"
        after = held.count()
        assert after == before + 1, f"{name}: count {before} -> {after}"
        report["collections"][name] = {
            "id": collection_id,
            "count_before": before,
            "count_after": after,
        }
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(report, out)
    print(json.dumps(report))


def main():
    parser = url_parser()
    parser.add_argument("--save")
    parser.add_argument("--check")
    parser.add_argument("--out")
    args = parser.parse_args()
    client = client_for(args.url)
    if args.save:
        save(client, args.save)
    elif args.check and args.out:
        check(client, args.check, args.out)
    else:
        parser.error("pass --save FILE, or --check FILE --out FILE")


if __name__ == "__main__":
    main()
