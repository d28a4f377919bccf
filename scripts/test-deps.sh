#!/usr/bin/env bash
# Installs what the end-to-end tests run besides the proxy itself, on Debian or Ubuntu, when it
# is missing: nginx, gunicorn with Flask, Python requests and websockets, and curl, used by
# tests/e2e/real_servers.rs to compare real servers and clients through the proxy and directly;
# openssl (`s_client`, used by tests/e2e/tls.rs); and redis-server, which
# tests/e2e/fleet_limits.rs starts (on a free port, and stops) as the store of fleet-wide rate
# limits.
# Idempotent and quiet: does nothing when everything is there; otherwise apt-get update and
# install, as root (or through sudo). Exits non-zero, naming what is missing, if it cannot.
#
#   bash scripts/test-deps.sh
set -euo pipefail

packages=(nginx gunicorn python3 python3-flask python3-requests python3-websockets curl openssl redis-server)

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "test-deps: not a Debian system; install by hand: ${packages[*]}" >&2
    exit 1
fi

missing=()
for package in "${packages[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$package")
    fi
done

if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "test-deps: missing ${missing[*]} and no apt-get here; install them by hand" >&2
        exit 1
    fi
    sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "test-deps: missing ${missing[*]}; run this as root to install them" >&2
            exit 1
        fi
        sudo=(sudo)
    fi
    echo "test-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    log="$(mktemp)"
    trap 'rm -f "$log"' EXIT
    if ! { "${sudo[@]}" apt-get update -qq &&
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "test-deps: installing ${missing[*]} failed" >&2
        exit 1
    fi
fi

# What the tests call, checked the way they call it (the Debian interpreter, not a pyenv one).
for tool in /usr/sbin/nginx /usr/bin/python3 curl openssl /usr/bin/redis-server; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "test-deps: $tool is still missing after installing" >&2
        exit 1
    fi
done
if ! /usr/bin/python3 -c 'import flask, gunicorn, requests, websockets' 2>/dev/null; then
    echo "test-deps: /usr/bin/python3 cannot import flask, gunicorn, requests and websockets" >&2
    exit 1
fi
