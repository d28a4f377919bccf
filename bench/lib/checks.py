"""Correctness checks run before measuring, so a fast wrong answer is not a result.

checks.py backend PORT SMALL_BODY        the backend serves what the scenarios expect, and
                                         /sink answers only after the whole POST body arrived
checks.py scenario NAME PORT SMALL_BODY  one request of that scenario through a proxy
checks.py affinity NAME CORES PID        every thread of the tree may only run on CORES;
                                         prints one line per thread
"""
import http.client
import select
import socket
import ssl
import sys

import procstat

MIB = 1 << 20


def cpu_set(spec):
    out = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def tls_context():
    """The bench certificate is self-signed: not verified; TLS 1.3 as the scenarios use."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def request(port, method, path, body=None, headers=None, tls=False):
    if tls:
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls_context())
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def expect(cond, msg):
    if not cond:
        sys.stderr.write(f"check failed: {msg}\n")
        sys.exit(1)


def check_sink_reads_body(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: {MIB}\r\n\r\n".encode() + b"x" * (MIB // 2))
    early, _, _ = select.select([s], [], [], 0.3)
    expect(not early, "backend /sink answered before the whole body arrived")
    s.sendall(b"x" * (MIB - MIB // 2))
    s.settimeout(5)
    expect(s.recv(12) == b"HTTP/1.1 200", "backend /sink did not answer 200 after the body")
    s.close()


def check_backend(port, small):
    expect(request(port, "GET", "/small") == (200, small.encode()), "backend /small")
    status, body = request(port, "GET", "/16k")
    expect(status == 200 and len(body) == 16384, "backend /16k")
    status, body = request(port, "GET", "/1m")
    expect(status == 200 and len(body) == MIB, "backend /1m")
    check_sink_reads_body(port)


def check_close(port, small):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    data = b""
    while True:  # the proxy must close the connection after the response
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    expect(data.startswith(b"HTTP/1.1 200") and data.endswith(small.encode()),
           f"Connection: close request: got {data[:200]!r}")


def check_scenario(name, port, small):
    if name.startswith("routes-") or name == "limit-1":
        # Only /small has a route: anything else must be answered without the backend.
        status, _ = request(port, "GET", "/unrouted")
        expect(status in (404, 503), f"GET /unrouted with {name}'s routes: got {status}, not 404/503")
    if name in ("small-c64", "small-c256", "scaling", "routes-1", "routes-1k", "limit-1"):
        got = request(port, "GET", "/small")
        expect(got == (200, small.encode()), f"GET /small: got {got[0]} {got[1][:100]!r}")
    elif name in ("resp-16k", "resp-1m"):
        size = 16384 if name == "resp-16k" else MIB
        status, body = request(port, "GET", "/16k" if name == "resp-16k" else "/1m")
        expect(status == 200 and len(body) == size, f"GET {name}: got {status}, {len(body)} bytes")
    elif name == "post-1m":
        got = request(port, "POST", "/sink", body=b"x" * MIB, headers={"Content-Type": "application/octet-stream"})
        expect(got == (200, b"ok\n"), f"POST /sink 1 MiB: got {got[0]} {got[1][:100]!r}")
    elif name == "close":
        check_close(port, small)
    elif name in ("tls-small-c64", "tls-handshake", "tls-resume"):
        got = request(port, "GET", "/small", tls=True)
        expect(got == (200, small.encode()), f"GET /small over TLS: got {got[0]} {got[1][:100]!r}")
    elif name == "tls-1m":
        status, body = request(port, "GET", "/1m", tls=True)
        expect(status == 200 and len(body) == MIB, f"GET /1m over TLS: got {status}, {len(body)} bytes")


def check_affinity(name, cores, pid):
    allowed = cpu_set(cores)
    ok = True
    for thread, cpus in sorted(procstat.affinity([pid]).items()):
        inside = cpus != "?" and cpu_set(cpus) <= allowed
        ok = ok and inside
        print(f"{name}\t{thread}\t{cpus}\t{'ok' if inside else 'OUTSIDE ' + cores}")
    return ok


def main(argv):
    cmd = argv[0] if argv else ""
    if cmd == "backend":
        check_backend(int(argv[1]), argv[2])
    elif cmd == "scenario":
        check_scenario(argv[1], int(argv[2]), argv[3])
    elif cmd == "affinity":
        sys.exit(0 if check_affinity(argv[1], argv[2], argv[3]) else 1)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (OSError, http.client.HTTPException) as e:
        sys.stderr.write(f"check failed: {e!r}\n")
        sys.exit(1)
