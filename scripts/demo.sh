#!/usr/bin/env bash
# Builds ringproxy, starts two demo backends (9001, 9002) and the proxy on config.toml (port 3000,
# admin API on 9901). Try: curl -i http://127.0.0.1:3000/ and the routes listed at the top of
# config.toml (curl -i -H 'Host: api.localhost' http://127.0.0.1:3000/v1/users). Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
python3 scripts/demo_backends.py 9001 9002 &
backends=$!
trap 'kill $backends 2>/dev/null || true' EXIT
# Health checks start at once: let the backends listen first, or they would start out down.
python3 - <<'PY'
import socket, sys, time
deadline = time.time() + 10
for port in (9001, 9002):
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.time() > deadline:
                sys.exit(f"demo backend on port {port} did not start")
            time.sleep(0.05)
PY
./target/release/ringproxy -c config.toml
