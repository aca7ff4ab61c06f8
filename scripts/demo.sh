#!/usr/bin/env bash
# One command on a fresh Debian 12 machine (as root): install the dependencies, build the shim,
# and run containers through it on a private containerd (runc, crun, exec), then tear down.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p shim-oci -p shim-e2e
exec cargo run --release -q -p shim-e2e --bin demo
