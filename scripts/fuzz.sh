#!/usr/bin/env bash
# Fuzzes ringproxy's HTTP/1.1 parsers (the cargo-fuzz project in fuzz/): installs cargo-fuzz if
# missing, builds the targets, runs each one for SECONDS_PER_TARGET seconds (default 60) from
# the seeds in fuzz/seeds/, and exits non-zero if any target crashed, printing the crashing
# input's path and bytes. Bounded: build, then at most targets x seconds (+ a minute each).
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# Environment:
#   FUZZ_TARGETS    targets to run (default: all three), e.g. "chunked_body"
#   FUZZ_SANITIZER  none (default) or address; see fuzz/README.md for why none
#   FUZZ_STRICT=1   also fail on the known, reported proxy deviations (fuzz/src/known.rs)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]  (a whole number of seconds, at least 1)" >&2
    exit 2
fi
read -r -a targets <<<"${FUZZ_TARGETS:-request_head chunked_body response_head}"
sanitizer="${FUZZ_SANITIZER:-none}"

# Without a sanitizer, cargo-fuzz passes only stable flags. A sanitizer is a nightly flag
# (-Zsanitizer), which the stable toolchain takes with RUSTC_BOOTSTRAP; that also makes build
# scripts that probe for nightly features (proc-macro2 and others) turn them on, so it is set
# only when needed.
if [[ "$sanitizer" != none ]]; then
    export RUSTC_BOOTSTRAP=1
fi
export CARGO_TERM_COLOR=never

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
# libfuzzer-sys compiles libFuzzer, which is C++.
if ! command -v c++ >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing a C++ compiler for libFuzzer"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
    else
        echo "error: a C++ compiler (c++) is needed to build libFuzzer" >&2
        exit 1
    fi
fi

# One set of build flags for build and run, so `cargo fuzz run` finds the build up to date.
build_flags=(--release --debug-assertions --sanitizer "$sanitizer")
if [[ "${FUZZ_STRICT:-0}" == 1 ]]; then
    build_flags+=(--features strict)
fi

echo "== building fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build "${build_flags[@]}"

# The chunked decoder's size-line cap is 4096 bytes: longer inputs reach it.
max_len_of() {
    case "$1" in
        chunked_body) echo 10000 ;;
        *) echo 4096 ;;
    esac
}

failed=()
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    artifacts="fuzz/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    for seed in "fuzz/seeds/$target"/*; do
        [[ -e "$corpus/${seed##*/}" ]] || cp "$seed" "$corpus/"
    done
    stamp="$(mktemp)"
    log="$(mktemp)"
    echo "== fuzzing $target for ${seconds}s"
    status=0
    # timeout is a backstop only: libFuzzer stops itself after max_total_time, and a single input
    # running over 10 s is reported as a crash (timeout-*) rather than hanging the job.
    timeout --signal=KILL "$((seconds + 60))" \
        cargo fuzz run "${build_flags[@]}" "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len="$(max_len_of "$target")" -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)"
    corpus_size="$(find "$corpus" -type f | wc -l)"
    echo "   $target: ${runs:-?} runs, ${rate:-?} exec/s, corpus $corpus_size inputs, exit $status"
    crashes="$(find "$artifacts" -type f -newer "$stamp" | sort)"
    if [[ "$status" != 0 || -n "$crashes" ]]; then
        failed+=("$target")
        echo "!! $target failed:"
        # The failed assertion (or libFuzzer's own report), without the backtrace.
        if ! grep -m1 -A4 -E "panicked at|ERROR: libFuzzer|^error" "$log" | sed 's/^/   | /'; then
            tail -n 20 "$log" | sed 's/^/   | /'
        fi
        for crash in $crashes; do
            echo "!! crash input: $crash"
            od -An -tx1 -v "$crash" | head -n 64 | sed 's/^/   /'
            echo "   reproduce: ${RUSTC_BOOTSTRAP:+RUSTC_BOOTSTRAP=1 }cargo fuzz run ${build_flags[*]} $target $crash"
        done
    fi
    rm -f "$stamp" "$log"
done

if ((${#failed[@]})); then
    echo "fuzzing found crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzzing: no crash in ${targets[*]} (${seconds}s each)"
