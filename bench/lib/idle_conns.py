"""Idle keep-alive scenario: open N client connections to a proxy, send one
keep-alive GET on each, keep them all open, and measure the proxy's RSS.

Prints one JSON record: RSS before/with the connections held, how many were
opened and how many the proxy had closed by the time of the measurement.
Connections are closed with RST (SO_LINGER 0) so no TIME_WAIT is left behind.

usage: idle_conns.py --port P --count N --pids "PID..." --proxy NAME --out FILE
"""
import argparse
import json
import resource
import signal
import socket
import ssl
import struct
import sys
import time

import procstat


def read_response(sock):
    """Read one response with a Content-Length body; return the status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before response head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside response body")
        body += chunk
    return status


def is_closed(s):
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True


def main():
    # On TERM exit through an exception, so subprocess.run kills the load generator.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--path", default="/small")
    ap.add_argument("--pids", required=True)
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait before measuring")
    ap.add_argument("--scenario", default="idle-10k")
    ap.add_argument("--tls", action="store_true", help="TLS 1.3 connections (the bench certificate)")
    a = ap.parse_args()
    ctx = None
    if a.tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    roots = a.pids.split()
    before = procstat.sample(roots)["rss_kb"]

    request = (f"GET {a.path} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n"
               "Connection: keep-alive\r\n\r\n").encode()
    socks, failed, non2xx, first_error, statuses = [], 0, 0, None, {}
    t0 = time.monotonic()
    for _ in range(a.count):
        s = socket.socket()
        s.settimeout(10)
        try:
            s.connect(("127.0.0.1", a.port))
            if ctx:
                s = ctx.wrap_socket(s, server_hostname="localhost")
            s.sendall(request)
            status = read_response(s)
            statuses[status] = statuses.get(status, 0) + 1
            if not 200 <= status < 300:
                non2xx += 1
            socks.append(s)
        except OSError as e:
            failed += 1
            first_error = first_error or repr(e)
            s.close()
    open_s = time.monotonic() - t0

    time.sleep(a.settle)
    after = procstat.sample(roots)["rss_kb"]

    # A connection the proxy closed reads EOF or fails; an open one has nothing to read.
    closed = sum(1 for s in socks if is_closed(s))
    linger = struct.pack("ii", 1, 0)
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.close()

    rec = {"kind": "idle", "scenario": a.scenario, "proxy": a.proxy, "count": a.count,
           "opened": len(socks), "failed": failed, "non2xx": non2xx, "closed_by_proxy": closed,
           "open_seconds": round(open_s, 2), "rss_before_kb": before, "rss_held_kb": after,
           "first_error": first_error, "statuses": statuses, "cmd": " ".join(["bench/lib/idle_conns.py"] + sys.argv[1:])}
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    problem = ""
    if failed or non2xx or closed:
        problem = (f"  !!! failed={failed} non2xx={non2xx} closed_by_proxy={closed} "
                   f"statuses={statuses} {first_error or ''}")
    sys.stderr.write(f"  {a.scenario:<12} {a.proxy:<9} opened {len(socks)}/{a.count} in {open_s:.1f} s, "
                     f"RSS {before} -> {after} KiB{problem}\n")


if __name__ == "__main__":
    main()
