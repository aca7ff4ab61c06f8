#!/usr/bin/env bash
# Sets up the machine and runs every test: unit tests, protocol tests of the shim binaries, and
# the end-to-end scenarios on a private containerd (reference Go shim and our shims).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins
cargo test --workspace -- --test-threads="${TEST_THREADS:-4}"
