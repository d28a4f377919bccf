#!/usr/bin/env bash
# A/B of two ringproxy binaries in one sitting: the same backend, the same pinning as
# compare.sh (proxy on core 1, backend + load generator on core 0), runs alternating A, B, A, B,
# so drift on the machine hits both alike. Prints CPU µs/request and req/s per run and the
# median of each, and the ratio B/A. For "a change to the request path states its before/after".
#
# usage: bash bench/ab.sh A_BIN B_BIN [--scenarios small-c64,close] [--pairs 4] [--duration 5]
#                         [--config-extra FILE]   (TOML appended to both proxies' config)
# scenarios: small-c64 small-c256 resp-16k resp-1m post-1m close, and over TLS (the TLS
# listener of compare.sh: same certificate, TLS 1.3, X25519) tls-small-c64 tls-1m
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIB="$BENCH_DIR/lib"
export PYTHONDONTWRITEBYTECODE=1
# shellcheck source=lib/common.sh
source "$LIB/common.sh"
# shellcheck source=lib/configs.sh
source "$LIB/configs.sh"

(($# >= 2)) || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
A_BIN=$(realpath "$1")
B_BIN=$(realpath "$2")
shift 2
SCENARIOS=small-c64,close
PAIRS=4
DURATION=5
EXTRA=""
while (($#)); do
    case "$1" in
        --scenarios) SCENARIOS=${2:?}; shift ;;
        --pairs) PAIRS=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        --config-extra) EXTRA=$(realpath "${2:?}"); shift ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[[ -x "$A_BIN" && -x "$B_BIN" ]] || die "both binaries must be executables"
UPSTREAM_IDLE=1024
IDLE_CONNS=0
KEEP_TMP=0

begin_run "$0 (A/B)" ringproxy-ab
RECORDS="$BENCH_TMP/records.jsonl"
: >"$RECORDS"

cpu_layout
raise_nofile
ensure_tools
read -r BACKEND_PORT PORT_A TLS_A < <(free_ports 3)
# The TLS listener only for TLS scenarios: builds from before TLS can then be compared.
if [[ ",$SCENARIOS," == *,tls-* ]]; then make_bench_cert; else TLS_A=""; fi

write_backend_conf "$BACKEND_PORT" "$OTHER_COUNT"
start_bg "$BENCH_TMP/backend.out" taskset -c "$OTHER_CORES" \
    nginx -p "$BENCH_TMP/backend" -e "$BENCH_TMP/backend/error.log" -c "$BENCH_TMP/backend.conf" -g 'daemon off;'
BACKEND_PID=$BG_LAST_PID
wait_port "$BACKEND_PORT" || die "backend nginx did not start"
write_ringproxy_conf "$PORT_A" "$BACKEND_PORT" "$TLS_A"
[[ -z "$EXTRA" ]] || cat "$EXTRA" >>"$BENCH_TMP/ringproxy.toml"

load_cmd() { # load_cmd SCENARIO PORT SECONDS
    local url="http://127.0.0.1:$2" secs=$3
    local wrk=(taskset -c "$OTHER_CORES" wrk -t"$OTHER_COUNT" -d"${secs}s" --timeout 5s --latency -s "$LIB/wrk_report.lua")
    case "$1" in
        small-c64) LOAD_CMD=("${wrk[@]}" -c64 "$url/small") ;;
        tls-small-c64) LOAD_CMD=("${wrk[@]}" -c64 "https://127.0.0.1:$TLS_A/small") ;;
        tls-1m) LOAD_CMD=("${wrk[@]}" -c16 "https://127.0.0.1:$TLS_A/1m") ;;
        small-c256) LOAD_CMD=("${wrk[@]}" -c256 "$url/small") ;;
        resp-16k) LOAD_CMD=("${wrk[@]}" -c64 "$url/16k") ;;
        resp-1m) LOAD_CMD=("${wrk[@]}" -c16 "$url/1m") ;;
        post-1m) LOAD_CMD=(env BENCH_POST_BYTES=1048576 "${wrk[@]}" -c16 "$url/sink") ;;
        close)
            if command -v oha >/dev/null; then
                LOAD_CMD=(taskset -c "$OTHER_CORES" oha -z "${secs}s" -c 64 --disable-keepalive --no-tui
                    --output-format json "$url/small")
            else
                LOAD_CMD=("${wrk[@]}" -c64 -H "Connection: close" "$url/small")
            fi ;;
        *) die "unknown scenario $1" ;;
    esac
}

run() { # run LABEL BIN SCENARIO REP
    local label=$1 bin=$2 scenario=$3 rep=$4 pid
    start_bg "$BENCH_TMP/$label.out" taskset -c "$PROXY_CORES" "$bin" -c "$BENCH_TMP/ringproxy.toml"
    pid=$BG_LAST_PID
    wait_port "$PORT_A" 10 || { tail "$BENCH_TMP/$label.out" >&2; die "$label did not start"; }
    sleep 0.3
    # One unmeasured second first: connections and pools warm.
    load_cmd "$scenario" "$PORT_A" 1
    run_fg python3 "$LIB/run_load.py" --proxy "$label" --scenario "$scenario" --rep 0 --pids "$pid" \
        --status-port "$BACKEND_PORT" --out "$RECORDS" --warmup -- "${LOAD_CMD[@]}" || true
    load_cmd "$scenario" "$PORT_A" "$DURATION"
    run_fg python3 "$LIB/run_load.py" --proxy "$label" --scenario "$scenario" --rep "$rep" --pids "$pid" \
        --status-port "$BACKEND_PORT" --out "$RECORDS" -- "${LOAD_CMD[@]}" || warn "run failed: $label $scenario"
    stop_pid "$pid"
    sleep 0.5
}

IFS=, read -r -a SEL <<<"$SCENARIOS"
log "A = $A_BIN"
log "B = $B_BIN"
for scenario in "${SEL[@]}"; do
    for ((i = 1; i <= PAIRS; i++)); do
        # Alternate which goes first, so neither always gets the warmer machine.
        if ((i % 2)); then run A "$A_BIN" "$scenario" "$i"; run B "$B_BIN" "$scenario" "$i"
        else run B "$B_BIN" "$scenario" "$i"; run A "$A_BIN" "$scenario" "$i"; fi
    done
done
stop_pid "$BACKEND_PID"

python3 - "$RECORDS" <<'EOF'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in recs:
    if r.get("kind") != "load":
        continue
    by.setdefault((r["scenario"], r["proxy"]), []).append(r)
print("| scenario | binary | CPU µs/req per run | median | req/s median | p99 ms median | errors |")
print("|---|---|---|---:|---:|---:|---:|")
meds = {}
for (scenario, label), rs in sorted(by.items()):
    cpu = [r["cpu_us_per_req"] for r in rs if r["cpu_us_per_req"] is not None]
    m = statistics.median(cpu) if cpu else float("nan")
    meds[(scenario, label)] = m
    print(f"| {scenario} | {label} | {' '.join(f'{c:.2f}' for c in cpu)} | {m:.2f} | "
          f"{statistics.median(r['rps'] for r in rs):.0f} | {statistics.median(r['p99_ms'] for r in rs):.2f} | "
          f"{sum(r['errors'] + r['non2xx'] for r in rs)} |")
for scenario in sorted({s for s, _ in meds}):
    a, b = meds.get((scenario, "A")), meds.get((scenario, "B"))
    if a and b:
        print(f"\n{scenario}: B/A CPU per request = {b / a:.3f}")
EOF
