#!/usr/bin/env bash
# Ingress gateway benchmark (loopback, no root needed): ztunnel gateway vs
# nginx as a TLS-terminating reverse proxy, same certificate and backend,
# interleaved rounds; prints keep-alive requests/s and p99, new TLS
# connections/s, and the ratios ztunnel / nginx.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/install-deps.sh
zt_install_deps
for pkg in wrk nginx-light; do
  bin=${pkg%-light}
  command -v "$bin" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null; }
done
# The packaged nginx service is not needed (the benchmark starts its own).
systemctl disable --now nginx >/dev/null 2>&1 || true
cargo build --release --locked -p ztunnel --bin ztunnel
cargo run --release --locked -p ztunnel-e2e --bin gateway_bench
