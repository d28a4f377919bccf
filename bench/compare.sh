#!/usr/bin/env bash
# Benchmark ringproxy against nginx and HAProxy, side by side, in one run.
#
# usage: bash bench/compare.sh [--quick] [--scenarios a,b] [--duration S] [--reps N]
#                              [--proxies ringproxy,nginx,haproxy] [--warmup S]
#                              [--idle-conns N] [--output FILE] [--keep-tmp]
#                              [--scaling-anyway] [--ringproxy-bin PATH]
# See bench/README.md for what each scenario means and how metrics are computed.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
LIB="$BENCH_DIR/lib"
export PYTHONDONTWRITEBYTECODE=1 # keep bench/lib free of __pycache__
# shellcheck source=lib/common.sh
source "$LIB/common.sh"
# shellcheck source=lib/configs.sh
source "$LIB/configs.sh"

ALL_SCENARIOS=(small-c64 small-c256 resp-16k resp-1m post-1m close routes-1 routes-1k limit-1 idle-10k scaling
    tls-small-c64 tls-handshake tls-resume tls-1m tls-idle-10k)
SCENARIOS="small-c64,small-c256,resp-16k,resp-1m,post-1m,close,routes-1,routes-1k,limit-1,idle-10k,scaling,tls-small-c64,tls-handshake,tls-resume,tls-1m,tls-idle-10k"
PROXIES="ringproxy,nginx,haproxy"
DURATION=10
REPS=3
WARMUP=2
QUICK=0
IDLE_CONNS=10000
KEEP_TMP=0
SCALING_ANYWAY=0
# Idle upstream keep-alive connections kept per worker (nginx `keepalive`,
# ringproxy `max_idle_per_backend`; HAProxy keeps all). Larger than any
# scenario's concurrency so no proxy churns upstream connections.
UPSTREAM_IDLE=1024
OUTPUT="$BENCH_DIR/RESULTS.md"
RINGPROXY_BIN="" # empty: cargo build --release and use that binary
DURATION_SET=0
REPS_SET=0
ORIG_ARGS="$*"

usage() { sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while (($#)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --scenarios) SCENARIOS=${2:?}; shift ;;
        --duration) DURATION=${2:?}; DURATION_SET=1; shift ;;
        --reps) REPS=${2:?}; REPS_SET=1; shift ;;
        --proxies) PROXIES=${2:?}; shift ;;
        --warmup) WARMUP=${2:?}; shift ;;
        --idle-conns) IDLE_CONNS=${2:?}; shift ;;
        --output) OUTPUT=${2:?}; shift ;;
        --keep-tmp) KEEP_TMP=1 ;;
        --scaling-anyway) SCALING_ANYWAY=1 ;;
        --ringproxy-bin) RINGPROXY_BIN=${2:?}; shift ;;
        -h | --help) usage 0 ;;
        *) printf 'unknown argument: %s\n' "$1" >&2; usage 2 ;;
    esac
    shift
done
if ((QUICK)); then
    ((DURATION_SET)) || DURATION=3
    ((REPS_SET)) || REPS=1
    WARMUP=1
fi
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 ]] || die "--duration must be a whole number of seconds >= 1"
[[ "$REPS" =~ ^[0-9]+$ && "$REPS" -ge 1 ]] || die "--reps must be >= 1"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "--warmup must be a whole number of seconds"

IFS=, read -r -a SEL_SCENARIOS <<<"$SCENARIOS"
IFS=, read -r -a SEL_PROXIES <<<"$PROXIES"
for s in "${SEL_SCENARIOS[@]}"; do
    [[ " ${ALL_SCENARIOS[*]} " == *" $s "* ]] || die "unknown scenario '$s' (known: ${ALL_SCENARIOS[*]})"
done
for p in "${SEL_PROXIES[@]}"; do
    [[ "$p" =~ ^(ringproxy|nginx|haproxy)$ ]] || die "unknown proxy '$p' (known: ringproxy nginx haproxy)"
done
has_scenario() { [[ ",$SCENARIOS," == *",$1,"* ]]; }
has_proxy() { [[ ",$PROXIES," == *",$1,"* ]]; }

begin_run "$0 $ORIG_ARGS" ringproxy-bench
RECORDS="$BENCH_TMP/records.jsonl"
META="$BENCH_TMP/meta.tsv"
: >"$RECORDS"

# ---------------------------------------------------------------- setup
cpu_layout
raise_nofile
ensure_tools

if has_proxy ringproxy && [[ -n "$RINGPROXY_BIN" ]]; then
    [[ -x "$RINGPROXY_BIN" ]] || die "--ringproxy-bin $RINGPROXY_BIN is not an executable"
    log "using the given ringproxy binary $RINGPROXY_BIN (not building)"
elif has_proxy ringproxy; then
    log "building ringproxy (cargo build --release)"
    (cd "$ROOT" && cargo build --release) || die "cargo build --release failed (or drop it: --proxies nginx,haproxy)"
    TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    RINGPROXY_BIN="$TARGET_DIR/release/ringproxy"
    [[ -x "$RINGPROXY_BIN" ]] || die "no binary at $RINGPROXY_BIN"
fi
# The TLS client for new connections per request (full handshakes, or resumed): see
# examples/tls_load.rs.
TLS_LOAD_BIN=""
if has_scenario tls-handshake || has_scenario tls-resume; then
    log "building the TLS load client (cargo build --release --example tls_load)"
    (cd "$ROOT" && cargo build --release --example tls_load) || die "cannot build examples/tls_load.rs"
    TLS_LOAD_BIN="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples/tls_load"
fi

read -r BACKEND_PORT PORT_ringproxy PORT_nginx PORT_haproxy TLS_ringproxy TLS_nginx TLS_haproxy < <(free_ports 7)
declare -A PORT=([ringproxy]=$PORT_ringproxy [nginx]=$PORT_nginx [haproxy]=$PORT_haproxy [direct]=$BACKEND_PORT)
# Each proxy's TLS listener (same certificate, TLS 1.3, X25519, session tickets on).
declare -A TLS_PORT=([ringproxy]=$TLS_ringproxy [nginx]=$TLS_nginx [haproxy]=$TLS_haproxy)
make_bench_cert
declare -A PID=()
LG_THREADS=$OTHER_COUNT

meta() { printf '%s\t%s\n' "$1" "$2" >>"$META"; }
first_line() { "$@" 2>&1 | head -n 1 || true; }
meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta command "bash bench/compare.sh $ORIG_ARGS"
meta mode "$( ((QUICK)) && echo quick || echo full)"
meta duration_s "$DURATION"
meta reps "$REPS"
meta warmup_s "$WARMUP"
meta nproc "$NCPU"
meta cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
meta kernel "$(uname -r)"
meta nofile "$NOFILE"
meta proxy_cores "$PROXY_CORES"
meta other_cores "$OTHER_CORES"
meta nginx "$(first_line nginx -v)"
meta haproxy "$(first_line haproxy -v)"
meta wrk "$(first_line wrk -v)"
meta oha "$(command -v oha >/dev/null && first_line oha --version || echo 'not installed (close scenario used wrk)')"
meta rustc "$(first_line rustc --version)"
meta proxies "$PROXIES"
meta loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)"
if has_proxy ringproxy; then
    v=$("$RINGPROXY_BIN" --version 2>/dev/null | head -n 1) || v=""
    [[ -n "$v" ]] || v="ringproxy $(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n 1) (no --version flag)"
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || rev="no commit"
    if [[ "$RINGPROXY_BIN" == "${TARGET_DIR:-}/release/ringproxy" ]]; then
        meta ringproxy "$v, built from git $rev$(git -C "$ROOT" status --porcelain -- src 2>/dev/null | grep -q . && echo ' + uncommitted changes in src/')"
    else
        meta ringproxy "$v, binary given with --ringproxy-bin $RINGPROXY_BIN"
    fi
fi

# ---------------------------------------------------------------- processes
start_backend() {
    write_backend_conf "$BACKEND_PORT" "$OTHER_COUNT"
    start_bg "$BENCH_TMP/backend.out" taskset -c "$OTHER_CORES" \
        nginx -p "$BENCH_TMP/backend" -e "$BENCH_TMP/backend/error.log" -c "$BENCH_TMP/backend.conf" -g 'daemon off;'
    PID[backend]=$BG_LAST_PID
    wait_port "$BACKEND_PORT" || { cat "$BENCH_TMP/backend.out" >&2; die "backend nginx did not start"; }
    python3 "$LIB/checks.py" backend "$BACKEND_PORT" "$SMALL_BODY" || die "backend self-check failed"
}

start_proxy() { # start_proxy NAME WORKERS CORES
    local name=$1 workers=$2 cores=$3 port=${PORT[$1]}
    case "$name" in
        ringproxy)
            write_ringproxy_conf "$port" "$BACKEND_PORT" "${TLS_PORT[$name]}"
            # workers = "auto": one worker per CPU allowed by taskset.
            start_bg "$BENCH_TMP/ringproxy.out" taskset -c "$cores" "$RINGPROXY_BIN" -c "$BENCH_TMP/ringproxy.toml" ;;
        nginx)
            write_nginx_proxy_conf "$port" "$BACKEND_PORT" "$workers" "$cores" "${TLS_PORT[$name]}"
            start_bg "$BENCH_TMP/nginx.out" taskset -c "$cores" \
                nginx -p "$BENCH_TMP/nginx" -e "$BENCH_TMP/nginx/error.log" -c "$BENCH_TMP/nginx.conf" -g 'daemon off;' ;;
        haproxy)
            write_haproxy_conf "$port" "$BACKEND_PORT" "$workers" "$cores" "${TLS_PORT[$name]}"
            start_bg "$BENCH_TMP/haproxy.out" taskset -c "$cores" haproxy -db -f "$BENCH_TMP/haproxy.cfg" ;;
    esac
    PID[$name]=$BG_LAST_PID
    if ! wait_port "$port" 10; then
        warn "$name did not start listening on $port; its output:"
        tail -n 20 "$BENCH_TMP/$name.out" >&2
        return 1
    fi
    sleep 0.3 # let all workers come up
    sed -n '1,20p' "$BENCH_TMP/$name.out" | sed "s|^|$name, $workers worker(s): |" >>"$BENCH_TMP/startup.txt"
    python3 "$LIB/checks.py" affinity "$name" "$cores" "${PID[$name]}" >>"$BENCH_TMP/affinity.txt" \
        || warn "$name runs threads outside cores $cores (see RESULTS.md)"
}

start_proxies() { # start_proxies WORKERS CORES
    local p
    for p in "${SEL_PROXIES[@]}"; do
        if ! start_proxy "$p" "$1" "$2"; then
            meta "failed_$p" "did not start with $1 worker(s)"
            unset 'PID[$p]'
        fi
    done
}

stop_proxies() {
    local p
    for p in "${SEL_PROXIES[@]}"; do
        if [[ -n "${PID[$p]:-}" ]]; then stop_pid "${PID[$p]}"; fi
        unset 'PID[$p]'
    done
    sleep 0.5
}

# ---------------------------------------------------------------- scenarios
# Sets LOAD_CMD to the load generator command for SCENARIO against PORT.
load_cmd() { # load_cmd SCENARIO PORT SECONDS (PORT: the TLS port for tls-*)
    local url="http://127.0.0.1:$2" secs=$3 wrk tls_load
    wrk=(taskset -c "$OTHER_CORES" wrk -t"$LG_THREADS" -d"${secs}s" --timeout 5s --latency -s "$LIB/wrk_report.lua")
    tls_load=(taskset -c "$OTHER_CORES" "$TLS_LOAD_BIN" --port "$2" --path /small --connections 32
        --seconds "$secs" --groups "${BENCH_TLS_CLIENT_GROUPS:-X25519}")
    case "$1" in
        tls-small-c64) LOAD_CMD=("${wrk[@]}" -c64 "https://127.0.0.1:$2/small") ;;
        tls-1m) LOAD_CMD=("${wrk[@]}" -c16 "https://127.0.0.1:$2/1m") ;;
        tls-handshake) LOAD_CMD=("${tls_load[@]}") ;;
        tls-resume) LOAD_CMD=("${tls_load[@]}" --resume) ;;
        small-c64 | routes-1 | routes-1k | limit-1) LOAD_CMD=("${wrk[@]}" -c64 "$url/small") ;;
        small-c256 | scaling) LOAD_CMD=("${wrk[@]}" -c256 "$url/small") ;;
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
    esac
}

run_one() { # run_one SCENARIO TARGET REP [--warmup]
    local scenario=$1 target=$2 rep=$3 pids="" secs=$DURATION flags=()
    # direct: the CPU measured is the backend's own (serving the request with no proxy in between).
    if [[ "$target" == direct ]]; then pids=${PID[backend]}; else pids=${PID[$target]}; fi
    if [[ "${4:-}" == --warmup ]]; then
        ((WARMUP > 0)) || return 0
        secs=$WARMUP
        flags=(--warmup)
    fi
    local port=${PORT[$target]}
    [[ "$scenario" == tls-* ]] && port=${TLS_PORT[$target]}
    load_cmd "$scenario" "$port" "$secs"
    run_fg python3 "$LIB/run_load.py" --proxy "$target" --scenario "$scenario" --rep "$rep" --pids "$pids" \
        --status-port "$BACKEND_PORT" --out "$RECORDS" --timeout $((secs + 60)) "${flags[@]}" -- "${LOAD_CMD[@]}" \
        || warn "run failed: $scenario $target rep $rep"
}

run_load_scenario() { # run_load_scenario SCENARIO; reps interleave the proxies
    local scenario=$1 targets=() t rep i n
    for t in "${SEL_PROXIES[@]}"; do
        [[ -n "${PID[$t]:-}" ]] || continue
        local check_port=${PORT[$t]}
        [[ "$scenario" == tls-* ]] && check_port=${TLS_PORT[$t]}
        if python3 "$LIB/checks.py" scenario "$scenario" "$check_port" "$SMALL_BODY"; then
            targets+=("$t")
        else
            warn "$t failed the $scenario correctness check; skipped in this scenario"
            printf '{"kind":"skipped","scenario":"%s","proxy":"%s","reason":"failed the correctness check"}\n' \
                "$scenario" "$t" >>"$RECORDS"
        fi
    done
    [[ "$scenario" == small-c* ]] && targets+=(direct)
    ((${#targets[@]})) || return 0
    log "scenario $scenario: ${targets[*]} x $REPS rep(s) of ${DURATION}s"
    n=${#targets[@]}
    for ((rep = 1; rep <= REPS; rep++)); do
        for ((i = 0; i < n; i++)); do
            t=${targets[$(((i + rep - 1) % n))]} # rotate the order from rep to rep
            ((rep > 1)) || run_one "$scenario" "$t" 0 --warmup
            run_one "$scenario" "$t" "$rep"
        done
    done
}

run_idle_scenario() { # run_idle_scenario SCENARIO: idle-10k, or tls-idle-10k over TLS
    local t scenario=$1 port flags=()
    log "scenario $scenario: $IDLE_CONNS idle keep-alive connections per proxy"
    for t in "${SEL_PROXIES[@]}"; do
        [[ -n "${PID[$t]:-}" ]] || continue
        port=${PORT[$t]}
        if [[ "$scenario" == tls-* ]]; then port=${TLS_PORT[$t]}; flags=(--tls); fi
        run_fg taskset -c "$OTHER_CORES" python3 "$LIB/idle_conns.py" --port "$port" --count "$IDLE_CONNS" \
            --pids "${PID[$t]}" --proxy "$t" --scenario "$scenario" --out "$RECORDS" "${flags[@]}" \
            || warn "$scenario failed for $t"
        sleep 1
    done
}

run_scaling() {
    local cores=$PROXY_CORES2
    if [[ -z "$cores" ]]; then
        if ((SCALING_ANYWAY)); then
            cores=0-$((NCPU - 1))
            meta scaling "confounded: 2 workers on cores $cores share them with the backend and the load generator"
        else
            meta scaling "n/a ($NCPU cores: load generator shares)"
            log "scenario scaling: n/a on $NCPU cores (use --scaling-anyway to run it confounded)"
            return 0
        fi
    else
        meta scaling "2 workers on cores $cores vs 1 worker on core $PROXY_CORES, small-c256"
    fi
    has_scenario small-c256 || run_load_scenario small-c256
    log "scenario scaling: restarting the proxies with 2 workers on cores $cores"
    stop_proxies
    start_proxies 2 "$cores"
    run_load_scenario scaling
}

# ---------------------------------------------------------------- main
log "layout: proxies on core $PROXY_CORES; backend + load generator on core(s) $OTHER_CORES; ${DURATION}s x $REPS rep(s)"
start_backend
start_proxies 1 "$PROXY_CORES"
for s in small-c64 small-c256 resp-16k resp-1m post-1m close tls-small-c64 tls-handshake tls-resume tls-1m; do
    has_scenario "$s" && run_load_scenario "$s"
done
# Routing: each proxy restarted with the scenario's routes (bench/lib/configs.sh), then back
# to the plain configs for what follows.
# limit-1 is routes-1 with a rate limit that never refuses on the route.
for s in routes-1 routes-1k limit-1; do
    has_scenario "$s" || continue
    log "scenario $s: restarting the proxies with its routes"
    stop_proxies
    if [[ "$s" == limit-1 ]]; then ROUTES=1 LIMIT=1; else ROUTES=${s#routes-} LIMIT=""; fi
    start_proxies 1 "$PROXY_CORES"
    run_load_scenario "$s"
done
if [[ -n "$ROUTES" ]] && { has_scenario idle-10k || has_scenario tls-idle-10k || has_scenario scaling; }; then
    ROUTES="" LIMIT=""
    stop_proxies
    start_proxies 1 "$PROXY_CORES"
fi
has_scenario idle-10k && run_idle_scenario idle-10k
has_scenario tls-idle-10k && run_idle_scenario tls-idle-10k
has_scenario scaling && run_scaling
stop_proxies
meta loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"

status=0
python3 "$LIB/report.py" --records "$RECORDS" --meta "$META" --affinity "$BENCH_TMP/affinity.txt" \
    --startup "$BENCH_TMP/startup.txt" --output "$OUTPUT" || status=$?
log "results written to $OUTPUT"
exit "$status"
