#!/usr/bin/env python3
"""Two tiny HTTP backends for trying ringproxy on the example config.toml.

Listens on 127.0.0.1:9001 and 127.0.0.1:9002 (or the ports given as arguments), answers every
request with which backend served it, and echoes request bodies. Python standard library only.
"""
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(name):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, body=b""):
            payload = f"hello from {name} {self.command} {self.path}\n".encode() + body
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def do_GET(self):
            self._answer()

        do_HEAD = do_GET

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0") or 0)
            self._answer(self.rfile.read(length))

        do_PUT = do_POST

        def log_message(self, *args):
            pass

    return Handler


def main():
    ports = [int(p) for p in sys.argv[1:]] or [9001, 9002]
    servers = [ThreadingHTTPServer(("127.0.0.1", p), make_handler(f"backend:{p}")) for p in ports]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("demo backends on " + ", ".join(f"127.0.0.1:{p}" for p in ports), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
