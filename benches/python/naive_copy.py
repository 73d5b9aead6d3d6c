"""Copies a collection from one Chroma server to another with the official client, as a
baseline for chroma-shift's backfill (benches/backfill.rs). Two modes:

--mode naive   pages the source with get(limit=--page, offset=...) and adds each page to the
               target, embeddings, metadatas and documents included: what someone would write
               by hand. Timed from the first get to the last add.
--mode ingest  reads the whole source first (not timed), then adds ready-made batches of
               --batch records to the target: the target's ingest rate alone. Timed over the
               adds only.

The target collection is created with the source's metadata. Prints one JSON line:
{"mode", "records", "seconds", "cpu_seconds", "read_seconds", "target_count"}.

Usage: naive_copy.py --source URL --target URL --collection NAME --target-collection NAME
                     --mode naive|ingest [--page 500] [--batch 5000]
"""

import argparse
import json
import time
from urllib.parse import urlparse

import chromadb
import numpy as np

INCLUDE = ["embeddings", "metadatas", "documents"]


def connect(url):
    parsed = urlparse(url)
    return chromadb.HttpClient(host=parsed.hostname, port=parsed.port)


def naive(source, target, page):
    records = 0
    offset = 0
    while True:
        got = source.get(limit=page, offset=offset, include=INCLUDE)
        ids = got["ids"]
        if not ids:
            break
        target.add(
            ids=ids,
            embeddings=got["embeddings"],
            metadatas=got["metadatas"],
            documents=got["documents"],
        )
        records += len(ids)
        offset += len(ids)
        if len(ids) < page:
            break
    return records


def read_all(source, page):
    ids, embeddings, metadatas, documents = [], [], [], []
    offset = 0
    while True:
        got = source.get(limit=page, offset=offset, include=INCLUDE)
        if not got["ids"]:
            break
        ids.extend(got["ids"])
        embeddings.append(np.asarray(got["embeddings"], dtype=np.float32))
        metadatas.extend(got["metadatas"])
        documents.extend(got["documents"])
        offset += len(got["ids"])
        if len(got["ids"]) < page:
            break
    return ids, np.concatenate(embeddings), metadatas, documents


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--target-collection", required=True)
    parser.add_argument("--mode", choices=["naive", "ingest"], required=True)
    parser.add_argument("--page", type=int, default=500)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()

    source = connect(args.source).get_collection(args.collection, embedding_function=None)
    target_client = connect(args.target)
    target = target_client.create_collection(
        args.target_collection, metadata=source.metadata, embedding_function=None
    )
    read_seconds = 0.0
    if args.mode == "naive":
        started, cpu = time.perf_counter(), time.process_time()
        records = naive(source, target, args.page)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    else:
        read_started = time.perf_counter()
        ids, embeddings, metadatas, documents = read_all(source, args.batch)
        batches = [
            (
                ids[i : i + args.batch],
                embeddings[i : i + args.batch],
                metadatas[i : i + args.batch],
                documents[i : i + args.batch],
            )
            for i in range(0, len(ids), args.batch)
        ]
        read_seconds = time.perf_counter() - read_started
        started, cpu = time.perf_counter(), time.process_time()
        for b_ids, b_embeddings, b_metadatas, b_documents in batches:
            target.add(
                ids=b_ids,
                embeddings=b_embeddings,
                metadatas=b_metadatas,
                documents=b_documents,
            )
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        records = len(ids)
    print(
        json.dumps(
            {
                "mode": args.mode,
                "records": records,
                "seconds": round(seconds, 3),
                "cpu_seconds": round(cpu_seconds, 3),
                "read_seconds": round(read_seconds, 3),
                "target_count": target.count(),
            }
        )
    )


if __name__ == "__main__":
    main()
