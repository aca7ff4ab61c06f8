#!/usr/bin/env bash
# Benchmark our oci shim (runc) against containerd's Go shim io.containerd.runc.v2 (runc), side by
# side on one private containerd (as root). BENCH_N, BENCH_ROUNDS and BENCH_JSON=FILE tune it;
# BENCH_OURS=process-name measures the process shim instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p shim-oci -p shim-process -p shim-e2e
exec cargo run --release -q -p shim-e2e --bin bench
