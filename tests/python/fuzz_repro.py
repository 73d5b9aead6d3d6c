"""Replays each defect the fuzz run (tests/fuzz.rs) found, alone and minimized, against a Chroma
directly (D) and chroma-shift in front of two stores (P1 old/primary, P2 new/secondary), and
prints for each: the request, Chroma's direct answer, the proxy's answer, and what each store
holds afterwards (once the journal has drained, or after 10 s).

Each scenario uses collection names of its own, so one set of servers serves them all.

Usage: fuzz_repro.py --direct URL --proxy URL --old URL --new URL --admin URL --token TOKEN
       [--only NAME ...]
"""

import argparse
import json
import socket
import sys
import time
import urllib.parse
import urllib.request

DB = "/api/v2/tenants/default_tenant/databases/default_database"


def raw(url, request: bytes):
    """Sends raw bytes; the status and body (Connection: close)."""
    u = urllib.parse.urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if b"chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return status, body.decode("utf-8", "replace")


def http(url, method, path, body=None, raw_body=None, headers=None):
    u = urllib.parse.urlparse(url)
    data = raw_body if raw_body is not None else (b"" if body is None else json.dumps(body).encode())
    head = f"{method} {path} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n"
    if method not in ("GET",) or data:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    return raw(url, head.encode() + b"\r\n" + data)


def jget(url, path):
    status, body = http(url, "GET", path)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


class Sides:
    def __init__(self, args):
        self.d, self.p, self.old, self.new = args.direct, args.proxy, args.old, args.new
        self.admin, self.token = args.admin, args.token

    def both(self, method, path_for, **kw):
        """Sends one request to D and to the proxy; path_for(side_url) builds the path."""
        d = http(self.d, method, path_for(self.d), **kw)
        p = http(self.p, method, path_for(self.p), **kw)
        return d, p

    def drain(self):
        deadline = time.time() + 10
        while time.time() < deadline:
            req = urllib.request.Request(
                self.admin + "/admin/status", headers={"Authorization": "Bearer " + self.token}
            )
            status = json.load(urllib.request.urlopen(req, timeout=5))
            if status["journal"][status["topology"]["secondary"]]["entries"] == 0:
                dead = status["dead_letters"]["count"]
                reasons = "; ".join(d["reason"][:200] for d in status["dead_letters"]["first"])
                return "drained", f"{dead} {reasons}" if dead else 0
            time.sleep(0.2)
        return (
            f"NOT drained: {status['journal'][status['topology']['secondary']]['entries']} entries left",
            status["dead_letters"]["count"],
        )


def collection_id(url, name, db=DB):
    status, body = jget(url, f"{db}/collections/{name}")
    return body.get("id") if status == 200 and isinstance(body, dict) else None


def holdings(url, names, db=DB):
    """name -> sorted record ids (or 'absent')."""
    out = {}
    for name in names:
        cid = collection_id(url, name, db)
        if cid is None:
            out[name] = "absent"
            continue
        status, body = http(url, "POST", f"{db}/collections/{cid}/get", body={"include": ["documents"]})
        got = json.loads(body)
        out[name] = sorted(zip(got["ids"], got["documents"] or [None] * len(got["ids"])))
    return out


def report(title, request, d, p, sides, names, db=DB, extra=None):
    state, dead = sides.drain()
    print(f"\n=== {title}")
    print(f"request: {request}")
    print(f"Chroma directly: {d[0]} {d[1][:300]}")
    print(f"proxy:           {p[0]} {p[1][:300]}")
    print(f"journal {state}; dead letters so far: {dead}")
    for label, url in (("D ", sides.d), ("P1", sides.old), ("P2", sides.new)):
        print(f"  {label} holds: {json.dumps(holdings(url, names, db))}")
    if extra:
        extra()


def create(sides, name, records=0, db=DB, metadata=None):
    for url in (sides.d, sides.p):
        body = {"name": name}
        if metadata:
            body["metadata"] = metadata
        status, text = http(url, "POST", f"{db}/collections", body=body)
        assert status == 200, (url, status, text)
        if records:
            cid = json.loads(text)["id"]
            ids = [f"r{i}" for i in range(records)]
            status, text = http(
                url,
                "POST",
                f"{db}/collections/{cid}/add",
                body={"ids": ids, "embeddings": [[1.0, 2.0, float(i)] for i in range(records)], "documents": ids},
            )
            assert status == 201, (url, status, text)


def path_of(name, suffix="", spelling=lambda i: i, db=DB):
    return lambda url: f"{db}/collections/{spelling(collection_id(url, name, db) or '00000000-0000-4000-8000-000000000000')}{suffix}"


SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


@scenario
def rename_to_existing(s):
    create(s, "ren_a", 2)
    create(s, "ren_b", 1)
    path = path_of("ren_a")
    d, p = s.both("PUT", path, body={"new_name": "ren_b"})
    report("rename to a name that exists", "PUT .../collections/{id of ren_a} {\"new_name\":\"ren_b\"}", d, p, s, ["ren_a", "ren_b"])


@scenario
def rename_to_existing_then_add(s):
    for url in (s.d, s.p):
        status, text = http(url, "POST", f"{DB}/collections", body={"name": "ren2_a", "configuration": {"hnsw": {"space": "cosine"}}})
        assert status == 200, (status, text)
    create(s, "ren2_b", 0)
    s.both("PUT", path_of("ren2_a"), body={"new_name": "ren2_b"})
    d, p = s.both("POST", path_of("ren2_a", "/add"), body={"ids": ["x1"], "embeddings": [[1.0, 2.0, 3.0]], "documents": ["d"]})
    report(
        "add to a collection (created with a configuration) after a failed rename",
        'POST .../collections {"name":"ren2_a","configuration":{"hnsw":{"space":"cosine"}}}; PUT ren2_a {"new_name":"ren2_b"} (500, ren2_b exists); POST .../{id of ren2_a}/add x1',
        d, p, s, ["ren2_a", "ren2_b"],
    )


@scenario
def fork(s):
    create(s, "fork_a", 2)
    d, p = s.both("POST", path_of("fork_a", "/fork"), body={"new_name": "fork_b"})
    report("fork (unsupported on a single node)", "POST .../collections/{id of fork_a}/fork {\"new_name\":\"fork_b\"}", d, p, s, ["fork_a", "fork_b"])


@scenario
def delete_by_uuid(s):
    create(s, "del_uuid", 2)
    d, p = s.both("DELETE", path_of("del_uuid"))
    report("DELETE of a collection by its id", "DELETE .../collections/{id of del_uuid}", d, p, s, ["del_uuid"])


@scenario
def function_attach(s):
    create(s, "fn_a", 1)
    d, p = s.both(
        "POST",
        path_of("fn_a", "/functions/attach"),
        body={"name": "f", "function_id": "record_counter", "output_collection": "fn_out", "params": {}},
    )
    # Later writes, to this and to another collection.
    create(s, "fn_later", 1)
    report("function attach", "POST .../collections/{id of fn_a}/functions/attach {...}; then create fn_later with 1 record", d, p, s, ["fn_a", "fn_later"])


@scenario
def function_detach(s):
    create(s, "fnd_a", 1)
    d, p = s.both("POST", path_of("fnd_a", "/attached_functions/f/detach"), body={"delete_output": True})
    create(s, "fnd_later", 1)
    report("function detach", "POST .../collections/{id of fnd_a}/attached_functions/f/detach {\"delete_output\":true}; then create fnd_later with 1 record", d, p, s, ["fnd_a", "fnd_later"])


def raw_write(s, title, name, op, body: bytes, records=0, shown=None):
    """Creates `name` with `records` records, sends `body` as is as its `op`, and reports both
    answers; the request shows as `shown` (the body's repr when None)."""
    create(s, name, records)
    d, p = s.both("POST", path_of(name, f"/{op}"), raw_body=body)
    shown = repr(body) if shown is None else shown
    report(title, f"POST .../{op} {shown}", d, p, s, [name])


def record_write_with_document(s, name, op, document_json: bytes, title):
    body = b'{"ids":["x1"],"embeddings":[[1.0,2.0,3.0]],"documents":[' + document_json + b"]}"
    raw_write(s, title, name, op, body)


@scenario
def invalid_utf8(s):
    record_write_with_document(s, "utf8_bad", "add", b'"bad \xff bytes"', "add with a document holding invalid UTF-8")


@scenario
def invalid_utf8_unknown_field(s):
    body = b'{"ids":["x1"],"embeddings":[[1.0,2.0,3.0]],"documents":["d"],"x":"bad \xff bytes"}'
    raw_write(s, "add with invalid UTF-8 in a field Chroma ignores", "utf8_field", "add", body)


@scenario
def lone_surrogate_unknown_field(s):
    body = rb'{"ids":["x1"],"embeddings":[[1.0,2.0,3.0]],"documents":["d"],"x":"lone \ud800"}'
    raw_write(s, "upsert with a lone surrogate in a field Chroma ignores", "surr_field", "upsert", body)


@scenario
def lone_surrogate(s):
    record_write_with_document(s, "surrogate", "upsert", rb'"lone \ud800"', "upsert with a lone surrogate in a document")


@scenario
def deep_nesting(s):
    body = b'{"ids":["x1"],"embeddings":[[1.0,2.0,3.0]],"documents":["deep"],"x":' + b"[" * 130 + b"1" + b"]" * 130 + b"}"
    raw_write(s, "add with an unknown field nested 130 levels deep", "deep", "add", body, shown='{ids:[x1],...,"x":[[[...130...]]]}')


@scenario
def id_spellings(s):
    for spelling, fn in (
        ("upper case", str.upper),
        ("braces", lambda i: "{" + i + "}"),
        ("32 hex digits", lambda i: i.replace("-", "")),
        ("urn:uuid:", lambda i: "urn:uuid:" + i),
    ):
        name = "spell_" + spelling.split()[0].replace(":", "")
        create(s, name, 0)
        d, p = s.both("POST", path_of(name, "/add", fn), body={"ids": ["x1"], "embeddings": [[1.0, 2.0, 3.0]], "documents": ["d"]})
        report(f"add to a collection id spelled in {spelling}", f"POST .../collections/{{id in {spelling}}}/add", d, p, s, [name])


@scenario
def upper_case_tenant(s):
    d, p = s.both("POST", lambda u: "/api/v2/tenants", body={"name": "UPPER_T"})
    def extra():
        for label, url in (("D ", s.d), ("P1", s.old), ("P2", s.new)):
            print(f"  {label} GET /api/v2/tenants/UPPER_T: {jget(url, '/api/v2/tenants/UPPER_T')}")
    report("create tenant with an upper-case name", 'POST /api/v2/tenants {"name":"UPPER_T"}', d, p, s, [], extra=extra)


@scenario
def upper_case_tenant_collection(s):
    d, p = s.both("POST", lambda u: "/api/v2/tenants/DEFAULT_TENANT/databases", body={"name": "upper_db"})
    db = "/api/v2/tenants/DEFAULT_TENANT/databases/upper_db"
    create(s, "upper_c", 1, db=db)
    report(
        "database and collection in an upper-case spelling of an existing tenant",
        'POST /api/v2/tenants/DEFAULT_TENANT/databases {"name":"upper_db"}; create upper_c there with 1 record',
        d, p, s, ["upper_c"], db=db,
    )


@scenario
def options_star(s):
    d = raw(s.d, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    p = raw(s.p, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    report("OPTIONS *", "OPTIONS * HTTP/1.1", d, p, s, [])


@scenario
def absolute_form(s):
    create(s, "abs_a", 0)
    results = []
    for url in (s.d, s.p):
        u = urllib.parse.urlparse(url)
        body = json.dumps({"name": "abs_b"}).encode()
        req = (
            f"POST http://{u.netloc}{DB}/collections HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        results.append(raw(url, req))
    report("create collection with an absolute-form request target", "POST http://HOST:PORT/api/v2/.../collections {\"name\":\"abs_b\"}", results[0], results[1], s, ["abs_b"])


@scenario
def update_missing_ids_invalid(s):
    create(s, "upd_bad", 1)
    for title, body in (
        ("wrong dimension", b'{"ids":["missing"],"embeddings":[[1.0,2.0]]}'),
        ("duplicate keys", b'{"ids":["missing"],"embeddings":[[1.0,2.0,3.0]],"ids":["missing2"]}'),
        ("non-object metadata", b'{"ids":["missing"],"metadatas":[5]}'),
    ):
        d, p = s.both("POST", path_of("upd_bad", "/update"), raw_body=body)
        report(f"update of a missing id with {title}", f"POST .../update {body.decode()}", d, p, s, ["upd_bad"])


@scenario
def duplicate_keys_add(s):
    body = b'{"ids":["a1"],"embeddings":[[1.0,2.0,3.0]],"documents":["a"],"ids":["b1"]}'
    raw_write(s, "upsert with a duplicate key", "dup_add", "upsert", body, shown=body.decode())


@scenario
def unknown_route(s):
    create(s, "unk", 1)
    d, p = s.both("POST", path_of("unk", "/frobnicate"), body={"ids": ["r0"]})
    report("unknown non-GET route under a collection", "POST .../collections/{id}/frobnicate", d, p, s, ["unk"])


@scenario
def configuration_and_schema(s):
    # The suite's dead letters: a collection created with a configuration is created on the
    # secondary with both configuration and schema.
    for url in (s.d, s.p):
        status, text = http(url, "POST", f"{DB}/collections", body={"name": "cfg_a", "configuration": {"hnsw": {"space": "cosine"}}})
        assert status == 200, (status, text)
    d, p = s.both("POST", path_of("cfg_a", "/add"), body={"ids": ["x1"], "embeddings": [[1.0, 2.0, 3.0]], "documents": ["d"]})
    report("add to a collection created with a configuration", 'POST .../collections {"name":"cfg_a","configuration":{"hnsw":{"space":"cosine"}}}; then add x1', d, p, s, ["cfg_a"])


@scenario
def hnsw_metadata(s):
    # Found by Chroma's test_index_params through the proxy (dead letters on the new store).
    body = {"name": "hnsw_meta", "metadata": {"hnsw:space": "cosine"}, "configuration": None, "schema": None, "get_or_create": False}
    d, p = s.both("POST", lambda u: f"{DB}/collections", body=body)
    s.both("POST", path_of("hnsw_meta", "/add"), body={"ids": ["x1"], "embeddings": [[1.0, 2.0, 3.0]], "documents": ["d"]})
    report(
        "create a collection with legacy hnsw metadata (as the Python client sends it), then add",
        f"POST .../collections {json.dumps(body)}; POST .../add x1",
        d, p, s, ["hnsw_meta"],
    )


@scenario
def update_fixes_dimension(s):
    # Found by the fuzz (seed 7): Chroma fixes an empty collection's dimension on an update of
    # missing ids; the proxy drops such an update, so a later upsert of another dimension is
    # refused directly and applied through the proxy.
    create(s, "dim_fix", 0)
    s.both("POST", path_of("dim_fix", "/update"), body={"ids": ["missing"], "embeddings": [[1.0, 2.0, 3.0]]})
    d, p = s.both("POST", path_of("dim_fix", "/upsert"), body={"ids": ["a"], "embeddings": [[1.0, 2.0]], "documents": ["two dims"]})
    report(
        "update of a missing id on an empty collection, then an upsert of another dimension",
        'POST .../update {"ids":["missing"],"embeddings":[[1,2,3]]} (200 on both); POST .../upsert {"ids":["a"],"embeddings":[[1,2]]}',
        d, p, s, ["dim_fix"],
    )


@scenario
def update_non_object_metadata(s):
    body = b'{"embeddings":[[1.0,2.0,3.0]],"ids":["missing"],"metadatas":[5]}'
    raw_write(s, "update of a missing id with a non-object metadata and an embedding", "upd_meta", "update", body, records=1, shown=body.decode())


@scenario
def database_delete_then_recreate(s):
    # Found by the fuzz (seed 2 of the kinds without open defects, #188..#535).
    base = "/api/v2/tenants/default_tenant/databases"
    db = f"{base}/gone_db"
    s.both("POST", lambda u: base, body={"name": "gone_db"})
    create(s, "again", 1, db=db)
    s.both("DELETE", lambda u: db)
    s.both("POST", lambda u: base, body={"name": "gone_db"})
    d, p = s.both("POST", lambda u: f"{db}/collections", body={"name": "again", "get_or_create": True})
    s.both("POST", path_of("again", "/add", db=db), body={"ids": ["x1"], "embeddings": [[1.0, 2.0, 3.0]], "documents": ["d"]})
    report(
        "a collection created again after its database was deleted and created again",
        'POST .../databases {"name":"gone_db"}; create "again" there with 1 record; DELETE .../databases/gone_db; '
        'POST .../databases {"name":"gone_db"}; POST .../gone_db/collections {"name":"again","get_or_create":true}; add x1',
        d, p, s, ["again"], db=db,
    )


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--direct", "--proxy", "--old", "--new", "--admin", "--token"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--only", nargs="*")
    if sys.argv[1:] == ["--list"]:
        print(" ".join(SCENARIOS))
        return 0
    args = parser.parse_args()
    sides = Sides(args)
    for name, fn in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        try:
            fn(sides)
        except Exception as error:  # a scenario that cannot run says why, the others go on
            print(f"\n=== {name}: could not run: {error!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
