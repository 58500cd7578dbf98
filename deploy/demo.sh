#!/usr/bin/env bash
# The main job on a fresh machine (README command 1).
#
# Today it builds ztunnel and walks the seed scenarios step by step (no policy,
# default-deny, allow DNS, bookstore, db/frontend, namespace selector, ipBlock
# egress, deny-public-net, nginx, busybox egress), printing the reachability
# matrix the policy engine computes after each step. The network-namespace
# cluster (node agents, eBPF enforcement, CA, mTLS) joins this script as those
# components land; see README.md for what is built.
set -euo pipefail
cd "$(dirname "$0")/.."

bold() { if [ -t 1 ]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust with rustup first" >&2
  exit 1
fi

bold "==> dependencies"
# shellcheck source=lib/install-deps.sh
. deploy/lib/install-deps.sh
zt_install_deps

bold "==> building ztunnel (release)"
cargo build --release --locked -p ztunnel 2>&1 | tail -n 1
zt=./target/release/ztunnel

workload=deploy/examples/workload
mapfile -t steps < <(ls deploy/examples/policies/*.yaml | sort)
# Port and external addresses worth showing at each step.
ports=("80/TCP" "80/TCP" "53/UDP" "80/TCP" "6379/TCP" "6379/TCP" "443/TCP" "443/TCP" "80/TCP" "443/TCP")
externals=(--external 203.0.113.10 --external 172.16.0.10 --external 172.16.0.40)

applied=()
for i in $(seq 0 "${#steps[@]}"); do
  echo
  if [ "$i" -eq 0 ]; then
    bold "==> step 0: no NetworkPolicy (everything reaches everything)"
  else
    file=${steps[$((i - 1))]}
    applied+=(-f "$file")
    summary=$(grep -m1 '^# ' "$file" | sed 's/^# //')
    bold "==> step $i: $(basename "$file")"
    echo "    $summary"
  fi
  "$zt" policy matrix -f "$workload" "${applied[@]}" "${externals[@]}" --port "${ports[$i]}"
done

echo
bold "==> explain one verdict"
"$zt" policy check -f "$workload" -f deploy/examples/policies --from default/db --to default/web --port 80/TCP || true
echo
echo "Try: $zt policy check -f deploy/examples --from NS/POD --to NS/POD --port PORT/PROTO"
