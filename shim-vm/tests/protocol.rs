//! Protocol-level tests of `containerd-shim-vm-v1`: the test plays containerd over raw ttrpc
//! (`shim_e2e::direct`), with every container in a QEMU micro-VM. The guest image must be built
//! (`scripts/build-guest.sh`); the shim finds it beside its binary.
//!
//! Needs root, QEMU and `/bin/busybox` (static).

use shim_e2e::direct::*;

const SHIM: Shim = Shim::vm(env!("CARGO_BIN_EXE_containerd-shim-vm-v1"));

shim_e2e::protocol_scenarios!(SHIM);
