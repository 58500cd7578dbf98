#!/usr/bin/env bash
# The main job on a fresh machine (README command 1).
#
# Builds everything, then brings up a local cluster in a box: two node
# network namespaces joined by a link, the example workload's pods as
# namespaces with real servers, an external host, the CA, and one ztunnel
# agent per node (eBPF NetworkPolicy + mTLS mesh). It walks the seed
# NetworkPolicies step by step printing observed vs expected reachability,
# proves cross-node traffic is mutual TLS with a capture of the node link,
# rotates the CA root during a running transfer, and leaves the cluster
# running (logs and state under /tmp/ztunnel-demo).
#
#   ./deploy/demo.sh          bring it up (removes a previous run first)
#   ./deploy/demo.sh down     remove it
#
# Needs root (network namespaces, BPF); re-runs itself with sudo if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

bold() { if [ -t 1 ]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }

if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E env "PATH=$PATH" "$0" "$@"
fi

if [ "${1:-up}" = "down" ]; then
  if [ -x target/release/demo ]; then
    target/release/demo down
  else
    pkill -f /tmp/ztunnel-demo || true
    for ns in $(ip netns list | awk '/^ztdemo-/ {print $1}'); do ip netns del "$ns"; done
    umount /tmp/ztunnel-demo/bpf 2>/dev/null || true
    rm -rf /tmp/ztunnel-demo
  fi
  exit 0
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust with rustup first" >&2
  exit 1
fi

bold "==> dependencies"
# shellcheck source=lib/install-deps.sh
. deploy/lib/install-deps.sh
zt_install_deps

bold "==> building ztunnel and the demo driver (release)"
cargo build --release --locked -p ztunnel -p ztunnel-e2e --bin ztunnel --bin demo 2>&1 | tail -n 1

exec target/release/demo up --ztunnel target/release/ztunnel
