#!/usr/bin/env bash
# Spike (needs root, clang-19, bpftool, iperf3): what splicing one host-local
# TCP leg with sockmap/sk_msg saves. A pod namespace talks to the host
# namespace over a veth (one of the mesh's local legs: pod <-> its node's
# proxy); iperf3 single stream, plain and then spliced by splice.bpf.c.
# Prints Gb/s and CPU (both cores, whole machine) per GB moved.
# The receiver here keeps up with the sender; when it does not (the mesh's
# proxies), redirected bytes queue without bound: see BENCHMARKS.md,
# session 7, for why splicing was built into the datapath and reverted.
set -euo pipefail
cd "$(dirname "$0")"
out=""
cleanup() {
  bpftool cgroup detach "$cg" sock_ops pinned /sys/fs/bpf/zt-spike/ops 2>/dev/null || true
  rm -rf /sys/fs/bpf/zt-spike /sys/fs/bpf/zt-spike-maps
  pkill -f "iperf3 -s -B 10.99.0.1" 2>/dev/null || true
  ip netns del zt-spike 2>/dev/null || true
  ip link del zt-spike-h 2>/dev/null || true
  if [ -n "$out" ]; then rm -rf "$out"; fi
}
cg=$(mount -t cgroup2 | awk '{print $3; exit}')
cleanup
trap cleanup EXIT
out=$(mktemp -d)
clang-19 -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu -c splice.bpf.c -o "$out/splice.o"
ip netns add zt-spike
ip link add zt-spike-h type veth peer name zt-spike-p
ip link set zt-spike-p netns zt-spike
ip addr add 10.99.0.1/24 dev zt-spike-h
ip link set zt-spike-h up
ip netns exec zt-spike ip addr add 10.99.0.2/24 dev zt-spike-p
ip netns exec zt-spike ip link set zt-spike-p up
ip netns exec zt-spike ip link set lo up
measure() {
  iperf3 -s -B 10.99.0.1 -D -1 >/dev/null 2>&1
  sleep 0.5
  local c0 c1 bps
  c0=$(awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat)
  bps=$(ip netns exec zt-spike iperf3 -c 10.99.0.1 -t 4 -J |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
  c1=$(awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat)
  python3 -c "b=$bps; cpu=($c1-$c0)/100; gb=b*4/8/1e9; print(f'{b/1e9:.1f} Gb/s, {cpu/gb*1000:.0f} ms CPU per GB')"
}
echo -n "plain TCP over the veth: "
measure
bpftool prog loadall "$out/splice.o" /sys/fs/bpf/zt-spike pinmaps /sys/fs/bpf/zt-spike-maps
bpftool cgroup attach "$cg" sock_ops pinned /sys/fs/bpf/zt-spike/ops multi
bpftool prog attach pinned /sys/fs/bpf/zt-spike/msg msg_verdict pinned /sys/fs/bpf/zt-spike-maps/socks
echo -n "spliced by sockmap:      "
measure
