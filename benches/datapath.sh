#!/usr/bin/env bash
# Datapath benchmark (needs root): iperf3 throughput, request/response
# latency and connection rate between two pod namespaces on two node
# namespaces, without programs, with programs and one policy, and with the
# 10,000-policy cluster loaded. Prints ratios against the no-program run.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/install-deps.sh
zt_install_deps
command -v iperf3 >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null; }
cargo run --release --locked -p ztunnel-e2e --bin datapath_bench
