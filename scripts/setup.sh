#!/usr/bin/env bash
# Installs what building and testing the shims needs on a fresh Debian machine (run as root).
set -euo pipefail

need=()
for pair in containerd:containerd ctr:containerd runc:runc crun:crun busybox:busybox-static \
            script:bsdutils unshare:util-linux qemu-system-x86_64:qemu-system-x86; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
# busybox must be the static build: its copy becomes the test image.
if command -v busybox >/dev/null 2>&1 && ldd "$(command -v busybox)" >/dev/null 2>&1; then
  need+=(busybox-static)
fi
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
