# shellcheck shell=bash disable=SC2034 # the variables set here are used by compare.sh
# Shared helpers for bench/compare.sh: logging, installing tools, starting and
# cleaning up background processes, waiting for ports, CPU layout.

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
warn() { printf '[bench %(%H:%M:%S)T] WARNING: %s\n' -1 "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# Installs wrk, nginx, haproxy (apt) and oha (cargo) when missing.
# oha is only needed for the connection-per-request scenario; if it cannot
# be installed that scenario falls back to wrk.
ensure_tools() {
    local missing=() pkg
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || missing+=(nginx)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v taskset >/dev/null || missing+=(util-linux)
    if ((${#missing[@]})); then
        log "installing with apt-get: ${missing[*]}"
        apt-get update -qq || warn "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
    fi
    for pkg in wrk nginx haproxy taskset python3; do
        command -v "$pkg" >/dev/null || die "$pkg is required but not installed"
    done
    # Debian's nginx/haproxy packages may start a system instance where an
    # init system exists; it listens on port 80 only and does not bother us.
    if ! command -v oha >/dev/null && [[ -x "$HOME/.cargo/bin/oha" ]]; then
        PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v oha >/dev/null; then
        log "installing oha with cargo install (a few minutes on 2 cores)"
        if cargo install --locked oha >"$BENCH_TMP/cargo-install-oha.log" 2>&1; then
            PATH="$HOME/.cargo/bin:$PATH"
        else
            warn "cargo install oha failed (see the log below); the close scenario will use wrk"
            tail -n 20 "$BENCH_TMP/cargo-install-oha.log" >&2
        fi
    fi
}

# Background processes we started; killed by pid on exit.
BG_PIDS=()
FG_PID=""

# Runs a command and waits for it. In the background + wait, so that a
# TERM/INT trap runs at once instead of after the command ends.
run_fg() {
    local rc=0
    "$@" 9>&- &
    FG_PID=$!
    wait "$FG_PID" || rc=$?
    FG_PID=""
    return "$rc"
}

start_bg() { # start_bg LOGFILE CMD... ; sets BG_LAST_PID
    "${@:2}" >"$1" 2>&1 9>&- & # 9: the run lock, not for children
    BG_LAST_PID=$!
    BG_PIDS+=("$BG_LAST_PID")
}

stop_pid() { # stop_pid PID: TERM, wait up to 5 s, then KILL it and any child left (nginx workers)
    local pid=$1 i kids=""
    kill -0 "$pid" 2>/dev/null || return 0
    if command -v pgrep >/dev/null; then kids=$(pgrep -P "$pid" || true); fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        for i in $kids; do kill -KILL "$i" 2>/dev/null || true; done
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    set +e # clean up as much as possible whatever fails
    trap - EXIT INT TERM
    [[ -z "$FG_PID" ]] || stop_pid "$FG_PID" # a load run: its Python wrapper ends wrk/oha
    for pid in "${BG_PIDS[@]}"; do stop_pid "$pid"; done
    [[ -z "${LOCK:-}" ]] || rm -f "$LOCK.info"
    if [[ -n "${BENCH_TMP:-}" && -d "$BENCH_TMP" ]]; then
        if ((KEEP_TMP)); then
            log "kept temp dir $BENCH_TMP"
        else
            rm -rf "$BENCH_TMP"
        fi
    fi
}

# begin_run DESCRIPTION TMP_NAME: one bench run at a time per machine (two would share core 1
# and skew each other); makes BENCH_TMP, removed on exit with every process started.
begin_run() {
    LOCK=/tmp/ringproxy-bench.lock
    exec 9>>"$LOCK"
    flock -n 9 || die "another bench run is in progress ($(cat "$LOCK.info" 2>/dev/null)); wait for it to finish"
    echo "pid $$, started $(date '+%H:%M:%S'): $1" >"$LOCK.info"
    BENCH_TMP=$(mktemp -d "/tmp/$2.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

wait_port() { # wait_port PORT [SECONDS]: poll TCP connect
    local port=$1 deadline=$((SECONDS + ${2:-10}))
    while ((SECONDS < deadline)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

free_ports() { # free_ports N: prints N free loopback TCP ports
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# CPU layout. Proxies run on core 1 (cores 1-2 for the 2-worker scaling run);
# backend and load generator share the remaining cores (core 0 on 2 cores).
cpu_layout() {
    NCPU=$(nproc)
    ((NCPU >= 2)) || die "need at least 2 cores (proxy on one, backend + load generator on another)"
    PROXY_CORES=1
    if ((NCPU >= 4)); then
        PROXY_CORES2=1,2
        OTHER_CORES=0
        local c
        for ((c = 3; c < NCPU; c++)); do OTHER_CORES+=",$c"; done
        OTHER_COUNT=$((NCPU - 2))
    else
        PROXY_CORES2=""
        OTHER_CORES=0
        OTHER_COUNT=1
        if ((NCPU == 3)); then OTHER_CORES=0,2; OTHER_COUNT=2; fi
    fi
}

raise_nofile() { # sets NOFILE: the open files limit every process inherits
    ulimit -Hn 200000 2>/dev/null || true # needs CAP_SYS_RESOURCE; fine when it fails
    ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
    NOFILE=$(ulimit -n)
    [[ "$NOFILE" != unlimited ]] || NOFILE=200000
    if ((NOFILE < IDLE_CONNS + 1000)); then
        warn "open files limit is $NOFILE; the idle scenario needs $((IDLE_CONNS + 1000)) per process"
    fi
}
