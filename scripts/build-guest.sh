#!/usr/bin/env bash
# Builds the VM shim's guest image in one command: Debian's kernel package (fetched with apt),
# the vmlinux extracted from its bzImage, the modules the guest needs, and an initramfs whose
# /init is our statically linked agent, and the VM template: that guest booted once under QEMU
# and saved, which the shim restores instead of booting. Prints the paths (kernel=…, initrd=…,
# template=…).
#
# Rebuilds only what changed (the kernel package version, the module list, the agent binary;
# for the template also QEMU and the VM's command line). The cache is <workspace>/target/guest
# unless --cache-dir DIR (or CARGO_TARGET_DIR) says otherwise; other options:
# --kernel-package PKG, --modules a,b,c, --agent PATH, --qemu PATH, --no-template.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet -p shim-vm --bin shim-vm-image -- --workspace "$PWD" "$@"
