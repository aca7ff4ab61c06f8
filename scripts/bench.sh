#!/usr/bin/env bash
# Benchmark our shims against containerd's Go shim io.containerd.runc.v2 (runc), side by side on
# one private containerd (as root).
#   scripts/bench.sh       our oci shim (runc); BENCH_OURS=process-name measures the process shim
#   scripts/bench.sh vm    our VM shim (builds the guest image first)
# BENCH_N, BENCH_ROUNDS and BENCH_JSON=FILE tune both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "${1:-}" = vm ]; then
  cargo build --release -p shim-vm -p shim-e2e
  scripts/build-guest.sh >/dev/null
  export SHIM_BIN_DIR="$PWD/target/release"
  exec cargo run --release -q -p shim-e2e --bin bench-vm
fi
cargo build --release -p shim-oci -p shim-process -p shim-e2e
exec cargo run --release -q -p shim-e2e --bin bench
