"""The official client over TLS (https, the CA file given in `chroma_server_ssl_verify`).

Usage: tls_client.py --url https://HOST:PORT --ca CA.pem --collection NAME [--expect-refused]
Adds three records to a new collection and queries them; prints one JSON line
{"count", "nearest"}. With --expect-refused it only checks that the client cannot reach the
server (a plain-http URL against a TLS port, or a CA that did not sign the certificate).
"""

import json
import sys
from urllib.parse import urlparse

import chromadb
from chromadb.config import Settings

from client_args import url_parser


def connect(url, ca):
    parsed = urlparse(url)
    settings = Settings(chroma_server_ssl_verify=ca, anonymized_telemetry=False)
    client = chromadb.HttpClient(
        host=parsed.hostname,
        port=parsed.port,
        ssl=parsed.scheme == "https",
        settings=settings,
    )
    client.heartbeat()
    return client


def main():
    parser = url_parser("--ca", "--collection")
    parser.add_argument("--expect-refused", action="store_true")
    args = parser.parse_args()
    if args.expect_refused:
        try:
            connect(args.url, args.ca)
        except Exception as error:  # noqa: BLE001 - any failure to connect is the point
            print(json.dumps({"refused": f"{type(error).__name__}: {error}"}))
            return
        sys.exit(f"{args.url} answered; the connection should have been refused")
    collection = connect(args.url, args.ca).create_collection(args.collection)
    collection.add(
        ids=["a", "b", "c"],
        embeddings=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        documents=["first", "second", "third"],
    )
    nearest = collection.query(query_embeddings=[[0.9, 0.1, 0.0]], n_results=2)
    print(json.dumps({"count": collection.count(), "nearest": nearest["ids"][0][0]}))


if __name__ == "__main__":
    main()
