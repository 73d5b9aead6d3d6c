"""One client of one identity through the proxy: the official client with its own token, a
collection of its own, three records added (unless `--query-only`), then a query. Prints the
query's ids and the collection's count as JSON."""

import json

from urllib.parse import urlparse

import chromadb

from client_args import url_parser


def main():
    parser = url_parser("--token", "--collection", "--prefix")
    parser.add_argument("--query-only", action="store_true")
    args = parser.parse_args()
    parsed = urlparse(args.url)
    client = chromadb.HttpClient(
        host=parsed.hostname,
        port=parsed.port,
        headers={"Authorization": f"Bearer {args.token}"},
    )
    if args.query_only:
        # A read only: a create, even of an existing collection, is a mirrored write.
        collection = client.get_collection(args.collection)
    else:
        collection = client.get_or_create_collection(args.collection)
    ids = [f"{args.prefix}-{n}" for n in range(3)]
    if not args.query_only:
        collection.add(
            ids=ids,
            embeddings=[[float(n), 1.0, 0.5] for n in range(3)],
            documents=[f"record {i}" for i in ids],
        )
    found = collection.query(query_embeddings=[[0.0, 1.0, 0.5]], n_results=3)
    print(json.dumps({"ids": found["ids"][0], "count": collection.count()}))


if __name__ == "__main__":
    main()
