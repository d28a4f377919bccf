#!/usr/bin/env bash
# A small change to the request path, measured inside one process: a build with
# `--features bench-ab` alternates requests, 2^16 at a time (about a second), between two ways of
# one step and sums the worker thread's CPU time per way (src/net/bench_ab.rs). Separate runs of two
# binaries (ab.sh) differ by ±10% on a noisy VM; alternating within one process and one set of
# connections resolves about ±1.5% (95% interval over ~100 pairs of phases in 240 s).
#
# usage: bash bench/inproc_ab.sh EXPERIMENT [--scenario small-c64] [--duration 240]
#   EXPERIMENT: idle-check=A,B   A, B of posted (ringproxy's: the receive posted at check-in, seen
#                                without a syscall, reads the answer), peek (recv MSG_PEEK|
#                                MSG_DONTWAIT at check-out), poll (poll(2), no wait), none (no
#                                check): a pooled connection's check
#               coalesce=A,B     A, B of writev (ringproxy's: a Content-Length piece over 4 KiB
#                                goes behind the head in one writev), copy (up to 16 KiB copied)
#   scenario: small-c64 (64-byte responses) or resp-16k (16 KiB files); wrk -c64, keep-alive
# Prints a line every 2^20 requests; the last one is the result: the CPU per request of each way,
# and the mean of the pairs' ratios (second way over first) with its 95% interval.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
LIB="$BENCH_DIR/lib"
# shellcheck source=lib/common.sh
source "$LIB/common.sh"
# shellcheck source=lib/configs.sh
source "$LIB/configs.sh"

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
(($#)) || usage
EXPERIMENT=$1
shift
SCENARIO=small-c64
DURATION=240
while (($#)); do
    case "$1" in
        --scenario) SCENARIO=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        *) usage ;;
    esac
    shift
done
[[ "$EXPERIMENT" =~ ^(idle-check=(posted|peek|poll|none),(posted|peek|poll|none)|coalesce=(writev|copy),(writev|copy))$ ]] \
    || die "unknown experiment: $EXPERIMENT"
case "$SCENARIO" in
    small-c64) URL_PATH=/small ;;
    resp-16k) URL_PATH=/16k ;;
    *) die "--scenario: small-c64 or resp-16k" ;;
esac
((DURATION >= 30 && DURATION <= 600)) || die "--duration: 30 to 600 seconds"
UPSTREAM_IDLE=1024
IDLE_CONNS=0
KEEP_TMP=0

begin_run "$0 $EXPERIMENT" ringproxy-inproc

cpu_layout
raise_nofile
ensure_tools
log "building with --features bench-ab (target/bench-ab)"
(cd "$REPO" && CARGO_TARGET_DIR=target/bench-ab cargo build --release --quiet --features bench-ab) \
    || die "build failed"
BIN="$REPO/target/bench-ab/release/ringproxy"

read -r BACKEND_PORT PORT < <(free_ports 2)
write_backend_conf "$BACKEND_PORT" "$OTHER_COUNT"
start_bg "$BENCH_TMP/backend.out" taskset -c "$OTHER_CORES" \
    nginx -p "$BENCH_TMP/backend" -e "$BENCH_TMP/backend/error.log" -c "$BENCH_TMP/backend.conf" -g 'daemon off;'
BACKEND_PID=$BG_LAST_PID
wait_port "$BACKEND_PORT" || die "backend nginx did not start"
write_ringproxy_conf "$PORT" "$BACKEND_PORT"

start_bg "$BENCH_TMP/ringproxy.out" env RINGPROXY_BENCH_AB="$EXPERIMENT" taskset -c "$PROXY_CORES" \
    "$BIN" -c "$BENCH_TMP/ringproxy.toml"
PROXY_PID=$BG_LAST_PID
wait_port "$PORT" 10 || { tail "$BENCH_TMP/ringproxy.out" >&2; die "ringproxy did not start"; }
log "$EXPERIMENT; load: wrk -c64 $URL_PATH for ${DURATION}s"
taskset -c "$OTHER_CORES" wrk -t"$OTHER_COUNT" -c64 -d"${DURATION}s" --timeout 5s \
    "http://127.0.0.1:$PORT$URL_PATH" | grep -E "requests in|Requests/sec|Non-2xx|errors" >&2 || true
stop_pid "$PROXY_PID"
stop_pid "$BACKEND_PID"
grep BENCH_AB "$BENCH_TMP/ringproxy.out" || die "no figures: too few requests for one report (2^20)"
