//! Protocol-level tests of `containerd-shim-oci-v1`: the test plays containerd, speaking ttrpc
//! to the daemon directly (the shared driver and scenarios are `shim_e2e::direct`), plus what
//! only the oci shim has: runc's state under `<bundle>/oci-root`.
//!
//! Needs root, runc and `/bin/busybox` (static).

use std::path::Path;
use std::process::{Command, Stdio};

use protos::task::Status;
use shim_e2e::call;
use shim_e2e::direct::*;

const SHIM: Shim = Shim::oci(env!("CARGO_BIN_EXE_containerd-shim-oci-v1"));

shim_e2e::protocol_scenarios!(SHIM);

/// What `runc state` says of `id` under `root`, or None when runc does not know it.
fn runc_status(root: &Path, id: &str) -> Option<String> {
    let out = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["state", id])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("running runc state");
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("runc state JSON");
    v["status"].as_str().map(str::to_string)
}

/// runc's state lives in `<bundle>/oci-root` and follows the container: created, running,
/// stopped, then gone after Delete (and, for a container that never started, after Delete too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_state_follows_the_container() {
    let env = Env::new(&SHIM, "runcstate");
    let id = "c1";
    let bundle = env.bundle(id, &["sleep", "300"], Root::Busybox);
    let root = bundle.join("oci-root");
    let address = env.start_shim(id);
    let client = task_client(&address).await;

    let pid = call!(client, create, create_req(id, &bundle)).unwrap().pid;
    assert_eq!(runc_status(&root, id).as_deref(), Some("created"));
    assert_eq!(read_pid(&bundle.join("init.pid")), Some(pid));
    call!(client, start, start_req(id, "")).unwrap();
    assert_eq!(runc_status(&root, id).as_deref(), Some("running"));
    call!(client, kill, kill_req(id, "", SIGKILL)).unwrap();
    assert_eq!(
        call!(client, wait, wait_req(id, "")).unwrap().exit_status,
        137
    );
    assert_eq!(runc_status(&root, id).as_deref(), Some("stopped"));
    call!(client, delete, delete_req(id, "")).unwrap();
    assert_eq!(runc_status(&root, id), None, "runc still knows {id}");
    assert!(!root.join(id).exists(), "runc state left after Delete");

    // A container deleted without ever starting.
    let c2 = env.bundle("c2", &["sleep", "300"], Root::Busybox);
    call!(client, create, create_req("c2", &c2)).unwrap();
    let st = call!(client, state, state_req("c2", "")).unwrap();
    assert_eq!(status_of(&st), Status::CREATED);
    let root2 = c2.join("oci-root");
    assert_eq!(runc_status(&root2, "c2").as_deref(), Some("created"));
    call!(client, delete, delete_req("c2", "")).unwrap();
    assert_eq!(runc_status(&root2, "c2"), None, "runc still knows c2");
    assert!(
        wait_until(LONG, || cgroup_dirs(&env.cgroup_path("c2")).is_empty()),
        "runc left the cgroup of c2"
    );

    shutdown(&client, id).await;
    env.assert_daemon_gone(id, &socket_of(&address));
}
