#!/usr/bin/env bash
# Runs every test of the project on a fresh machine (README command 2):
# installs what the tests need, then formatting, lints, the benchmark smoke
# run and the test suites. Privileged tests (network namespaces, eBPF) run
# when this is run as root; otherwise they skip loudly, and with CI=true a
# skip is a failure. Ends with one line: "tests: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
# One build from scratch: incremental caches would only cost disk (GBs).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

log() { printf '\n==> %s\n' "$*"; }

log "dependencies (apt packages, rustup components)"
# shellcheck source=../deploy/lib/install-deps.sh
. deploy/lib/install-deps.sh
zt_install_deps

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "benchmarks, once at small scale (smoke)"
# --workspace: the same feature set as the test run below, so the two share
# every compiled dependency instead of building them twice.
ZT_BENCH_SCALE=small cargo test --workspace --locked --benches

log "cargo test"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$out" | awk '{s+=$4} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$out" | awk '{s+=$1} END {print s+0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
