//! Protocol-level tests of `containerd-shim-vm-v1`: the test plays containerd over raw ttrpc
//! (`shim_e2e::direct`), with every container in a QEMU micro-VM. The guest image must be built
//! (`scripts/build-guest.sh`); the shim finds it beside its binary.
//!
//! Needs root, QEMU and `/bin/busybox` (static).

use shim_e2e::direct::scenarios;
use shim_e2e::direct::*;

const SHIM: Shim = Shim::vm(env!("CARGO_BIN_EXE_containerd-shim-vm-v1"));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_over_raw_ttrpc() {
    scenarios::happy_path(&SHIM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_code() {
    scenarios::bad_input(&SHIM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_socket() {
    scenarios::garbage_on_the_socket(&SHIM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_api_v3_on_the_same_socket() {
    scenarios::task_api_v3(&SHIM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_action_after_a_crash() {
    scenarios::delete_after_a_crash(&SHIM).await;
}

#[test]
fn info_and_version() {
    scenarios::info_and_version(&SHIM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_nothing_outside_the_bundle() {
    scenarios::writes_nothing_outside_the_bundle(&SHIM).await;
}
