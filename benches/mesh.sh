#!/usr/bin/env bash
# Mesh benchmark (needs root): pod-to-pod traffic across two node
# namespaces, direct vs through the two node proxies (mTLS HBONE), in one
# run: iperf3 1/4 streams, request/response p50/p99, HTTP requests/s (wrk),
# connections/s, agent CPU and RSS (idle and with 10,000 idle tunnels).
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/install-deps.sh
zt_install_deps
for tool in iperf3 wrk; do
  command -v "$tool" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null; }
done
cargo build --release --locked -p ztunnel --bin ztunnel
cargo run --release --locked -p ztunnel-e2e --bin mesh_bench
