#!/usr/bin/env bash
# Builds ringproxy, starts two demo backends (9001, 9002) and the proxy on config.toml (port 3000).
# Try it: curl -i http://127.0.0.1:3000/   Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
python3 scripts/demo_backends.py &
backends=$!
trap 'kill $backends 2>/dev/null || true' EXIT
exec_status=0
./target/release/ringproxy -c config.toml || exec_status=$?
exit $exec_status
