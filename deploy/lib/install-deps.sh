#!/usr/bin/env bash
# Installs what building and testing ztunnel needs on a fresh Debian-based
# machine: clang-19 and libbpf-dev (the eBPF datapath is compiled by
# ebpf/build.rs), iproute2, openssl (CA tests), tcpdump (mesh tests), curl,
# testssl.sh and python3-grpcio (gateway tests), and
# the rustfmt/clippy components. Idempotent:
# installs only what is missing. Sourced by deploy/demo.sh and tests/run.sh.

zt_install_deps() {
  local pkgs=()
  command -v clang-19 >/dev/null 2>&1 || command -v clang >/dev/null 2>&1 || pkgs+=(clang-19)
  [ -f /usr/include/bpf/bpf_helpers.h ] || pkgs+=(libbpf-dev)
  command -v ip >/dev/null 2>&1 || pkgs+=(iproute2)
  # The agent's unknown-interface guard (--pod-interface-prefix) is an nftables table.
  command -v nft >/dev/null 2>&1 || pkgs+=(nftables)
  # jemalloc (the agent's allocator) is built from source: configure + make.
  command -v make >/dev/null 2>&1 || pkgs+=(make)
  # The CA tests check issued chains with an independent implementation.
  command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
  # The mesh tests capture the node-to-node link to prove it carries no plaintext.
  command -v tcpdump >/dev/null 2>&1 || pkgs+=(tcpdump)
  # The ingress gateway tests use real clients and a TLS scanner.
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  command -v testssl >/dev/null 2>&1 || pkgs+=(testssl.sh)
  # ... and a real gRPC client and server (Debian's python3, not a pyenv one).
  /usr/bin/python3 -c 'import grpc' >/dev/null 2>&1 || pkgs+=(python3-grpcio)
  if [ "${#pkgs[@]}" -gt 0 ]; then
    echo "installing: ${pkgs[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
  if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || echo "warning: could not add rustfmt/clippy with rustup"
  fi
}
