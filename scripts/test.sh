#!/usr/bin/env bash
# The test suite, as README.md gives it and CI runs it: installs what the end-to-end tests need
# besides the proxy (scripts/test-deps.sh: real servers and clients to compare against), then
# runs `cargo test` with any arguments given here.
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh --test e2e retries::  # one area of the end-to-end tests
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-deps.sh
exec cargo test "$@"
