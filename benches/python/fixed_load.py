#!/usr/bin/env python3
"""Closed-loop HTTP/1.1 keep-alive load for profiling: C connections send N requests in all.

    fixed_load.py URL C N [BODY_FILE]

GET without a body file, POST of the file's bytes (JSON) with one. A fixed number of requests
(not a fixed time) gives repeatable per-request counts under callgrind or `perf stat` (see
benches/RESULTS.md, "the access log off the request path"). Reconnects when the server closes a
connection (nginx does after 1,000 requests); any status but 200 stops it. Prints the time taken.
"""
import asyncio, sys, time

async def conn(host, port, req, counter, n):
    r, w = await asyncio.open_connection(host, port)
    while True:
        if counter[0] >= n:
            break
        counter[0] += 1
        w.write(req)
        try:
            head = await r.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            w.close(); r, w = await asyncio.open_connection(host, port); w.write(req)
            head = await r.readuntil(b"\r\n\r\n")
        status = head[9:12]
        if status != b"200":
            print("status", head[:200], file=sys.stderr); sys.exit(1)
        h = head.lower()
        i = h.find(b"content-length:")
        if i >= 0:
            ln = int(h[i+15:h.find(b"\r\n", i)])
            await r.readexactly(ln)
        else:
            # chunked
            while True:
                line = await r.readuntil(b"\r\n")
                size = int(line.strip(), 16)
                await r.readexactly(size + 2)
                if size == 0:
                    break
    w.close()

async def main():
    url, c, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    body = open(sys.argv[4], 'rb').read() if len(sys.argv) > 4 else b""
    hostport, path = url.split("://")[1].split("/", 1)
    host, port = hostport.split(":")
    if body:
        req = (f"POST /{path} HTTP/1.1\r\nhost: {hostport}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body
    else:
        req = f"GET /{path} HTTP/1.1\r\nhost: {hostport}\r\n\r\n".encode()
    counter = [0]
    t = time.time()
    await asyncio.gather(*[conn(host, int(port), req, counter, n) for _ in range(c)])
    print(f"{n} requests in {time.time()-t:.2f}s")

asyncio.run(main())
