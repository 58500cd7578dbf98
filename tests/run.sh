#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests
# need, then formatting, lints and the test suites. Privileged tests (network
# namespaces, eBPF) run when this is run as root; otherwise they skip loudly,
# and with CI=true a skip is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

log "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || echo "warning: could not add rustfmt/clippy with rustup"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test"
cargo test --workspace --all-targets --locked

log "benchmarks compile and run once (smoke)"
cargo test --locked -p ztunnel-benches --benches -- --test >/dev/null

log "all tests passed"
