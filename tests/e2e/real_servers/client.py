"""Differential client for tests/real_servers.rs: runs one suite of exchanges with Python
`requests` (or `websockets`) against a server directly and through the proxy, and prints one
JSON line per exchange and target. The Rust test compares the two targets and bounds the time.

Usage: client.py SUITE DIRECT_PORT PROXY_PORT   (SUITE: nginx, app, ws)
"""
import asyncio
import hashlib
import json
import sys
import time

TIMEOUT = 2.0  # seconds, per connect and per read: a response that never ends fails fast
COMPARED_HEADERS = [
    "content-type", "content-length", "content-encoding", "content-range", "accept-ranges",
    "location", "set-cookie", "etag", "last-modified", "cache-control", "vary",
]


def emit(case, target, **fields):
    print(json.dumps(dict(case=case, target=target, **fields), sort_keys=True), flush=True)


def run_requests(suite, target, port):
    import requests

    base = f"http://127.0.0.1:{port}"
    session = requests.Session()  # one keep-alive connection across the cases, as a browser would
    validators = {}

    def exchange(case, method, path, **kwargs):
        kwargs.setdefault("allow_redirects", False)
        start = time.monotonic()
        try:
            r = session.request(method, base + path, timeout=TIMEOUT, **kwargs)
            body = r.content
        except Exception as e:  # noqa: BLE001 - every failure is a finding, reported as such
            emit(case, target, error=f"{type(e).__name__}: {e}", ms=(time.monotonic() - start) * 1000)
            return None
        ms = (time.monotonic() - start) * 1000
        headers = {name: r.raw.headers.getlist(name) for name in COMPARED_HEADERS if name in r.raw.headers}
        emit(
            case, target, status=r.status_code, history=[h.status_code for h in r.history],
            final_path=r.url.split(str(port), 1)[-1], headers=headers, len=len(body),
            sha256=hashlib.sha256(body).hexdigest(), ms=ms, error=None,
        )
        return r

    if suite == "nginx":
        exchange("empty file", "GET", "/empty.txt")
        exchange("one-byte file", "GET", "/one.txt")
        exchange("1 MiB file (sendfile)", "GET", "/1m.bin")
        exchange("gzip on the fly", "GET", "/text.txt", headers={"Accept-Encoding": "gzip"})
        exchange("index page", "GET", "/dir/")
        exchange("directory redirect, 301 with body", "GET", "/dir")
        exchange("directory redirect followed", "GET", "/dir", allow_redirects=True)
        exchange("302 with empty body", "GET", "/redirect-empty")
        exchange("302 with empty body followed", "GET", "/redirect-empty", allow_redirects=True)
        exchange("return 302 with body", "GET", "/return-302")
        exchange("return 204", "GET", "/return-204")
        exchange("empty POST to return 204", "POST", "/return-204", data=b"")
        exchange("not found", "GET", "/missing")
        head = exchange("HEAD of 1 MiB file", "HEAD", "/1m.bin")
        exchange("HEAD of empty file", "HEAD", "/empty.txt")
        if head is not None:
            validators = {"etag": head.headers.get("ETag"), "last_modified": head.headers.get("Last-Modified")}
        exchange("304 by If-None-Match", "GET", "/1m.bin", headers={"If-None-Match": validators.get("etag") or "-"})
        exchange(
            "304 by If-Modified-Since", "GET", "/1m.bin",
            headers={"If-Modified-Since": validators.get("last_modified") or "-"},
        )
        exchange("range 100-199", "GET", "/1m.bin", headers={"Range": "bytes=100-199"})
        exchange("suffix range", "GET", "/1m.bin", headers={"Range": "bytes=-10"})
        exchange("unsatisfiable range", "GET", "/1m.bin", headers={"Range": "bytes=9999999-"})
        exchange("still in step after all that", "GET", "/one.txt")
    elif suite == "app":
        exchange("redirect chain followed", "GET", "/redirect/3", allow_redirects=True)
        exchange("redirect with body", "GET", "/redirect/2")
        exchange("empty-body redirect chain followed", "GET", "/redirect-empty/3", allow_redirects=True)
        exchange("empty 201 to an empty POST", "POST", "/created", data=b"")
        exchange("204", "GET", "/status/204")
        exchange("304 without validators", "GET", "/status/304")
        exchange("304 by If-None-Match", "GET", "/etag", headers={"If-None-Match": '"v1"'})
        exchange("200 with ETag", "GET", "/etag")
        exchange("streamed chunked response", "GET", "/stream/40")
        exchange("slow chunks", "GET", "/drip")
        exchange("POST form", "POST", "/echo", data={"a": "1", "b": ["x", "y"]})
        exchange("POST JSON", "POST", "/echo", json={"x": [1, 2, 3], "y": None})
        exchange("POST empty body", "POST", "/echo", data=b"")
        exchange("PUT 1 MiB", "PUT", "/echo", data=bytes(range(256)) * 4096)
        exchange("chunked upload", "POST", "/echo", data=(bytes([i]) * 3000 for i in range(40)))
        exchange("gzip body", "GET", "/gzip")
        exchange("cookies set and sent back", "GET", "/cookies/set", allow_redirects=True)
        exchange("HEAD", "HEAD", "/get")
        exchange("DELETE with empty answer", "DELETE", "/status/204")
        exchange("still in step after all that", "GET", "/get?done=1")
    else:
        raise SystemExit(f"unknown suite {suite}")


def run_websocket(target, port):
    import websockets

    messages = ["hello", bytes(range(256)) * 256, "", "x" * 70000, b"\x00\xff"]

    async def session():
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo", max_size=None, open_timeout=TIMEOUT) as ws:
            echoed = []
            for message in messages:
                await ws.send(message)
                echoed.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
            return echoed

    start = time.monotonic()
    try:
        echoed = asyncio.run(asyncio.wait_for(session(), 4 * TIMEOUT))
    except Exception as e:  # noqa: BLE001
        emit("websocket echo", target, error=f"{type(e).__name__}: {e}", ms=(time.monotonic() - start) * 1000)
        return
    digest = hashlib.sha256()
    for message in echoed:
        digest.update(message.encode() if isinstance(message, str) else message)
    emit(
        "websocket echo", target, status=101, history=[], final_path="/echo", headers={},
        len=sum(len(m) for m in echoed), sha256=digest.hexdigest(), ms=(time.monotonic() - start) * 1000,
        error=None if echoed == messages else "echo differs from what was sent",
    )


def main():
    suite, direct, proxy = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for target, port in (("direct", direct), ("proxy", proxy)):
        if suite == "ws":
            run_websocket(target, port)
        else:
            run_requests(suite, target, port)


main()
