"""Concurrent writers through the proxy, with the official Python client.

N processes each make M random record writes on K collections (`dw-0` .. `dw-{K-1}`, created
up front with get_or_create, dimension 8, explicit embeddings, no embedding function):

- `mixed` mode: add, upsert, update, delete by ids and delete by where ({"bucket": b}), on a
  small id space shared by every writer, so writers overlap on the same records;
- `adds` mode: each writer only adds or upserts ids of its own (`w{writer}-{i}`) and appends
  every acknowledged record, as a JSON line {"collection", "id", "op"}, to the --acked file
  right after the client call returned (flushed line by line), so a test can check that
  every write a client saw succeed reached both stores;
- `owned` mode: each writer makes mixed writes (add, upsert, update, delete by ids, delete by
  where) on ids of its own (`w{writer}-{n}`), so its writes to them are totally ordered, and
  logs every call to the --acked file right after it returned, in order, with its full
  content: {"writer", "seq", "collection", "op", "ok", "ids", "embeddings", "metadatas",
  "documents", "bucket"} (`ok: false` for a call that failed, whose outcome is unknown; the
  writer never touches those ids again). The final state of every id follows from the log
  (shift_testkit::stores::check_acked_log).

Batches hold 1 to 20 records. Without --tolerate-errors any exception fails the run; with it,
failed calls are counted (the proxy may be killed mid-load) and the writer goes on after a
short pause. With --reads each write is followed by a query and a count. Prints one JSON line:
{"ops", "errors", "by_op", "acked", "reads", "max_op_ms"} (the slowest write with its reads).

Usage: writers.py --url URL --writers N --ops M --collections K --seed S --acked FILE
                  [--mode mixed|adds|owned] [--tolerate-errors] [--prefix dw] [--pause-ms P]
                  [--log FILE] [--spread URL,URL,...]

With --spread (several proxy replicas), writer i writes through the (i mod n)-th URL; the
collections are created through --url.
"""

import json
import multiprocessing
import os
import random
import sys
import time
import traceback


from client_args import client_for, url_parser

DIMENSION = 8
BUCKETS = 5
# Ids shared by every writer in mixed mode: small, so writers often touch the same records.
ID_SPACE = 40
MAX_BATCH = 20


def writer_url(args, writer):
    """Where writer `writer` sends its calls: --url, or its share of --spread."""
    if not args.spread:
        return args.url
    urls = args.spread.split(",")
    return urls[writer % len(urls)]


def collection_names(args):
    return [f"{args.prefix}-{k}" for k in range(args.collections)]


def embedding(rng):
    return [round(rng.uniform(-1.0, 1.0), 3) for _ in range(DIMENSION)]


def metadata(rng, writer, op_index):
    return {
        "bucket": rng.randrange(BUCKETS),
        "writer": writer,
        "op": op_index,
        "score": round(rng.uniform(0, 100), 2),
        "even": op_index % 2 == 0,
        "tag": rng.choice(["red", "green", "blue"]),
    }


def batch_ids(rng, size):
    return [f"id{n}" for n in rng.sample(range(ID_SPACE), size)]


def whole_records(rng, ids, op, writer, op_index):
    """Every field of each record of `ids`, its document naming the write."""
    return {
        "ids": ids,
        "embeddings": [embedding(rng) for _ in ids],
        "metadatas": [metadata(rng, writer, op_index) for _ in ids],
        "documents": [f"{op} w{writer} op{op_index} {i}" for i in ids],
    }


def mixed_op(rng, collection, writer, op_index):
    """One random write on the shared id space; returns (name, what it wrote)."""
    size = rng.randint(1, MAX_BATCH)
    roll = rng.random()
    if roll < 0.25:
        op, ids = "add", batch_ids(rng, size)
        records = whole_records(rng, ids, op, writer, op_index)
    elif roll < 0.55:
        op, ids = "upsert", batch_ids(rng, size)
        records = whole_records(rng, ids, op, writer, op_index)
    elif roll < 0.75:
        op, ids = "update", batch_ids(rng, size)
        # Updates change different parts of a record: metadata only, or everything. Documents
        # always come with embeddings, so the client never needs an embedding function.
        if rng.random() < 0.5:
            records = {
                "ids": ids,
                "metadatas": [metadata(rng, writer, op_index) for _ in ids],
            }
        else:
            records = whole_records(rng, ids, op, writer, op_index)
    elif roll < 0.93:
        op, records = "delete_ids", {"ids": batch_ids(rng, min(size, 8))}
    else:
        op, records = "delete_where", {"where": {"bucket": rng.randrange(BUCKETS)}}
    if op.startswith("delete"):
        collection.delete(**records)
    else:
        getattr(collection, op)(**records)
    return op, records


def adds_op(rng, collection, writer, counter):
    """Adds or upserts fresh ids of this writer; returns (name, ids)."""
    size = rng.randint(1, MAX_BATCH)
    ids = [f"w{writer}-{counter + n}" for n in range(size)]
    op = "add" if rng.random() < 0.5 else "upsert"
    getattr(collection, op)(
        ids=ids,
        embeddings=[embedding(rng) for _ in ids],
        metadatas=[metadata(rng, writer, counter) for _ in ids],
        documents=[f"{op} w{writer} {i}" for i in ids],
    )
    return op, ids


class Owned:
    """One writer's own records, as it believes them to be: id -> bucket, per collection."""

    def __init__(self, writer):
        self.writer = writer
        self.present = {}
        self.uncertain = set()
        self.counter = 0
        # The ids of the call under way: uncertain if it fails.
        self.inflight = []

    def fresh(self, n):
        ids = [f"w{self.writer}-{self.counter + k}" for k in range(n)]
        self.counter += n
        return ids

    def known(self, name, n, rng):
        ids = sorted(self.present.setdefault(name, {}))
        return rng.sample(ids, min(n, len(ids)))


def owned_op(rng, collection, owned, writer, op_index):
    """One random write on this writer's own ids; returns (name, the call's arguments)."""
    name = collection.name
    present = owned.present.setdefault(name, {})
    size = rng.randint(1, MAX_BATCH)
    roll = rng.random()
    if roll < 0.3 or len(present) < 5:
        op, ids = "add", owned.fresh(size)
    elif roll < 0.55:
        op = "upsert"
        ids = owned.known(name, size // 2 + 1, rng) + owned.fresh(size // 2)
    elif roll < 0.8:
        op, ids = "update", owned.known(name, size, rng)
    elif roll < 0.95:
        op, ids = "delete_ids", owned.known(name, min(size, 6), rng)
    else:
        op, ids = "delete_where", []
    records = {"ids": ids}
    if op in ("add", "upsert") or (op == "update" and rng.random() < 0.5):
        records["embeddings"] = [embedding(rng) for _ in ids]
        records["metadatas"] = [metadata(rng, writer, op_index) for _ in ids]
        records["documents"] = [f"{op} w{writer} op{op_index} {i}" for i in ids]
    elif op == "update":
        records["metadatas"] = [metadata(rng, writer, op_index) for _ in ids]
    bucket = None
    owned.inflight = list(ids)
    if op == "delete_where":
        bucket = rng.randrange(BUCKETS)
        collection.delete(where={"$and": [{"writer": writer}, {"bucket": bucket}]})
    elif op == "delete_ids":
        collection.delete(ids=ids)
    else:
        getattr(collection, op)(**records)
    # Acknowledged: the writer's belief follows.
    if op == "delete_where":
        for record_id in [i for i, b in present.items() if b == bucket]:
            del present[record_id]
    elif op == "delete_ids":
        for record_id in ids:
            present.pop(record_id, None)
    else:
        for record_id, meta in zip(ids, records.get("metadatas", [None] * len(ids))):
            if meta is not None:
                present[record_id] = meta["bucket"]
    return op, dict(records, bucket=bucket)


def open_collections(client, args, attempts):
    """The collections by name; retried when errors are tolerated (the proxy may be down)."""
    for attempt in range(attempts):
        try:
            return [
                client.get_collection(name, embedding_function=None)
                for name in collection_names(args)
            ]
        except Exception:
            if attempt + 1 == attempts:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def writer_main(args, writer, start, results):
    summary = {"ops": 0, "errors": 0, "by_op": {}, "acked": 0, "error_kinds": {}, "reads": 0, "max_op_ms": 0.0}
    try:
        rng = random.Random(args.seed * 1000 + writer)
        client = client_for(writer_url(args, writer))
        collections = open_collections(
            client, args, attempts=100 if args.tolerate_errors else 1
        )
        acked = open(args.acked, "a", encoding="utf-8") if args.acked else None
        log = open(args.log, "a", encoding="utf-8") if args.log else None
        start.wait(timeout=120)
        counter = 0
        owned = Owned(writer)
        pending = None
        for op_index in range(args.ops):
            collection = rng.choice(collections)
            op_started = time.time()
            try:
                if args.mode == "owned":
                    pending = (collection.name, op_index)
                    op, records = owned_op(rng, collection, owned, writer, op_index)
                    pending = None
                    if acked is not None:
                        entry = {"writer": writer, "seq": op_index, "collection": collection.name, "op": op, "ok": True, **records}
                        acked.write(json.dumps(entry) + "\n")
                        acked.flush()
                    summary["acked"] += 1
                elif args.mode == "adds":
                    op, ids = adds_op(rng, collection, writer, counter)
                    counter += len(ids)
                    if acked is not None:
                        for record_id in ids:
                            acked.write(
                                json.dumps(
                                    {
                                        "collection": collection.name,
                                        "id": record_id,
                                        "op": op,
                                    }
                                )
                                + "\n"
                            )
                        acked.flush()
                    summary["acked"] += len(ids)
                else:
                    started = time.time()
                    op, records = mixed_op(rng, collection, writer, op_index)
                    if log is not None:
                        entry = {
                            "writer": writer,
                            "op_index": op_index,
                            "collection": collection.name,
                            "op": op,
                            "started": started,
                            "ended": time.time(),
                            **records,
                        }
                        log.write(json.dumps(entry) + "\n")
                        log.flush()
                if args.reads:
                    # A client that reads what it wrote, as applications do.
                    collection.query(query_embeddings=[[0.5] * DIMENSION], n_results=3)
                    collection.count()
                    summary["reads"] += 2
                summary["max_op_ms"] = max(
                    summary["max_op_ms"], (time.time() - op_started) * 1000.0
                )
            except Exception as error:
                if not args.tolerate_errors:
                    raise
                summary["errors"] += 1
                kind = type(error).__name__
                summary["error_kinds"][kind] = summary["error_kinds"].get(kind, 0) + 1
                # The ids of a failed add are not reused: whether it landed is unknown.
                if args.mode == "adds":
                    counter += MAX_BATCH
                if args.mode == "owned" and pending is not None:
                    # Unknown outcome: log it, and never touch this collection's ids again
                    # (a failed delete by where may have removed any of them).
                    name, seq = pending
                    gone = sorted(owned.present.pop(name, {}))
                    owned.present[name] = {}
                    if acked is not None:
                        entry = {"writer": writer, "seq": seq, "collection": name, "op": "failed", "ok": False, "ids": sorted(set(gone + owned.inflight))}
                        acked.write(json.dumps(entry) + "\n")
                        acked.flush()
                    pending = None
                time.sleep(0.1)
                continue
            summary["ops"] += 1
            summary["by_op"][op] = summary["by_op"].get(op, 0) + 1
            if args.pause_ms:
                time.sleep(args.pause_ms / 1000.0)
        for out in (acked, log):
            if out is not None:
                out.close()
        results.put((writer, "ok", summary))
    except BaseException:
        # The others must not wait at the barrier for a writer that is gone.
        start.abort()
        results.put((writer, "failed", traceback.format_exc()))


def main():
    parser = url_parser()
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--ops", type=int, default=50)
    parser.add_argument("--collections", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--acked", default=None)
    parser.add_argument("--mode", choices=["mixed", "adds", "owned"], default="mixed")
    parser.add_argument("--tolerate-errors", action="store_true")
    parser.add_argument("--prefix", default="dw")
    parser.add_argument(
        "--log",
        default=None,
        help="mixed mode: append every write made (with its times) as a JSON line, to debug a divergence",
    )
    parser.add_argument(
        "--pause-ms", type=int, default=0, help="pause after each op, to stretch a load"
    )
    parser.add_argument(
        "--spread",
        default=None,
        help="comma-separated URLs (several proxy replicas): writer i writes through the i-th, round robin",
    )
    parser.add_argument(
        "--reads", action="store_true", help="after each write, a query and a count"
    )
    args = parser.parse_args()

    # The collections exist before any writer starts, created through the proxy.
    setup = client_for(args.url)
    for name in collection_names(args):
        setup.get_or_create_collection(
            name, metadata={"suite": "dual_write", "name": name}, embedding_function=None
        )
    del setup

    # fork: the children start at once, without importing chromadb again.
    context = multiprocessing.get_context("fork")
    start = context.Barrier(args.writers)
    results = context.Queue()
    processes = [
        context.Process(target=writer_main, args=(args, writer, start, results))
        for writer in range(args.writers)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get() for _ in processes]
    for process in processes:
        process.join()

    total = {"ops": 0, "errors": 0, "by_op": {}, "acked": 0, "error_kinds": {}, "reads": 0, "max_op_ms": 0.0}
    failed = False
    for writer, status, detail in sorted(outcomes, key=lambda o: o[0]):
        if status != "ok":
            failed = True
            print(f"writer {writer} failed:\n{detail}", file=sys.stderr)
            continue
        total["ops"] += detail["ops"]
        total["errors"] += detail["errors"]
        total["acked"] += detail["acked"]
        total["reads"] += detail["reads"]
        total["max_op_ms"] = max(total["max_op_ms"], detail["max_op_ms"])
        for key in ("by_op", "error_kinds"):
            for name, count in detail[key].items():
                total[key][name] = total[key].get(name, 0) + count
    print(json.dumps(total))
    sys.stdout.flush()
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    main()
