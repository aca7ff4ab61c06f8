//! Protocol-level tests of `containerd-shim-process-v1`: the test plays containerd, speaking
//! ttrpc to the daemon directly. The shared scenarios (`shim_e2e::direct::scenarios`) run first;
//! then what the process shim does itself because it is the runtime: refusing bad bundles
//! cleanly, terminals, signalling and freezing the cgroup, Update and Stats, `shim delete`.
//!
//! Needs root and `/bin/busybox` (static).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use protobuf::{Message, MessageField};
use protos::shim::*;
use protos::shim_ttrpc::TaskClient;
use protos::task::Status;
use shim_e2e::call;
use shim_e2e::direct::*;
use shim_e2e::procfs;
use ttrpc::Code;

const SHIM: Shim = Shim::process(env!("CARGO_BIN_EXE_containerd-shim-process-v1"));

// ---- the shared protocol suite -------------------------------------------------------------

shim_e2e::protocol_scenarios!(SHIM);

// ---- helpers ---------------------------------------------------------------------------------

fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The directory of cgroup `path` holding `controller`'s files.
fn controller_dir(controller: &str, path: &str) -> PathBuf {
    let rel = path.trim_start_matches('/');
    if cgroup_v2() {
        Path::new("/sys/fs/cgroup").join(rel)
    } else {
        Path::new("/sys/fs/cgroup").join(controller).join(rel)
    }
}

fn read_trimmed(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Whether the kernel reports cgroup `path` frozen (v1 `freezer.state`, v2 `cgroup.events`).
fn frozen(path: &str) -> bool {
    let dir = controller_dir("freezer", path);
    if cgroup_v2() {
        read_trimmed(&dir.join("cgroup.events"))
            .lines()
            .any(|l| l == "frozen 1")
    } else {
        read_trimmed(&dir.join("freezer.state")) == "FROZEN"
    }
}

/// A running container `id` in a fresh shim: returns the client, the address and the init pid.
async fn running(env: &Env, id: &str, args: &[&str]) -> (TaskClient, String, u32) {
    let bundle = env.bundle(id, args, Root::Busybox);
    let address = env.start_shim(id);
    let client = task_client(&address).await;
    call!(client, create, create_req(id, &bundle)).unwrap();
    let pid = call!(client, start, start_req(id, "")).unwrap().pid;
    (client, address, pid)
}

async fn start_exec(client: &TaskClient, id: &str, exec_id: &str, args: &[&str]) -> u32 {
    call!(client, exec, exec_req(id, exec_id, args)).unwrap();
    call!(client, start, start_req(id, exec_id)).unwrap().pid
}

async fn state(client: &TaskClient, id: &str, exec_id: &str) -> Status {
    status_of(&call!(client, state, state_req(id, exec_id)).unwrap())
}

/// Kills, waits for and deletes `id`, then shuts the shim down.
async fn finish(env: &Env, client: &TaskClient, address: &str, id: &str) {
    if state(client, id, "").await != Status::STOPPED {
        call!(client, kill, kill_req(id, "", SIGKILL)).unwrap();
        call!(client, wait, wait_req(id, "")).unwrap();
    }
    call!(client, delete, delete_req(id, "")).unwrap();
    assert!(
        wait_until(LONG, || cgroup_dirs(&env.cgroup_path(id)).is_empty()),
        "Delete left the cgroup of {id}"
    );
    shutdown(client, id).await;
    env.assert_daemon_gone(id, &socket_of(address));
}

// ---- bad bundles -----------------------------------------------------------------------------

enum RootfsMount {
    None,
    /// A bind of the test's busybox rootfs, as containerd would send a snapshot.
    Busybox,
    Path(&'static str),
}

struct BadBundle {
    /// Names the test's namespace directory too.
    name: &'static str,
    args: &'static [&'static str],
    root: Root<'static>,
    /// A rootfs mount for Create (with `Root::InBundle`).
    rootfs_mount: RootfsMount,
    patch: fn(&mut serde_json::Value),
    code: Code,
    /// What the error message must name.
    needles: &'static [&'static str],
}

impl Default for BadBundle {
    fn default() -> Self {
        BadBundle {
            name: "",
            args: &["sleep", "300"],
            root: Root::Busybox,
            rootfs_mount: RootfsMount::None,
            patch: |_| {},
            code: Code::INVALID_ARGUMENT,
            needles: &[],
        }
    }
}

/// Create of a bad bundle is refused with `case.code` and a message naming the problem, leaves
/// nothing behind (no process, cgroup, mount or file), and the shim keeps serving: the same id
/// is created once the bundle is fixed, and another container runs.
async fn refused(case: BadBundle) {
    let env = Env::new(&SHIM, case.name);
    let id = "bad";
    let bundle = env.bundle_with(id, case.args, case.root, case.patch);
    let address = env.start_shim(id);
    let daemon = env.daemon_pid(id);
    let cgroup = env.cgroup_path(id);
    // The shim's own files (socket, address, shim.pid, log) are there from `start` on.
    let before = tree(&bundle);
    let client = task_client(&address).await;

    let mut req = create_req(id, &bundle);
    match case.rootfs_mount {
        RootfsMount::None => {}
        RootfsMount::Busybox => req.rootfs.push(bind_mount(&env.rootfs)),
        RootfsMount::Path(src) => req.rootfs.push(bind_mount(Path::new(src))),
    }
    let (code, message) = status_err(
        &format!("Create of the bad bundle {}", case.name),
        call!(client, create, req),
    );
    eprintln!("{}: Create -> {code:?} {message:?}", case.name);
    assert_eq!(code, case.code, "{}: wrong code ({message:?})", case.name);
    for needle in case.needles {
        assert!(
            message.contains(needle),
            "{}: the error does not name {needle:?}: {message:?}",
            case.name
        );
    }

    // Nothing left behind.
    assert!(
        wait_until(LONG, || procfs::descendants(daemon) == vec![daemon]),
        "{}: processes left under the shim: {:?}",
        case.name,
        procfs::descendants(daemon)
            .iter()
            .map(|p| (*p, procfs::cmdline(*p)))
            .collect::<Vec<_>>()
    );
    assert!(
        wait_until(LONG, || cgroup_dirs(&cgroup).is_empty()),
        "{}: cgroup left: {:?}",
        case.name,
        cgroup_dirs(&cgroup)
    );
    let mounts: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(&bundle))
        .collect();
    assert!(mounts.is_empty(), "{}: mounts left: {mounts:?}", case.name);
    assert_eq!(
        tree(&bundle),
        before,
        "{}: files left in the bundle",
        case.name
    );
    expect_code(
        "State of the refused container",
        call!(client, state, state_req(id, "")),
        Code::NOT_FOUND,
    );

    // The shim keeps serving: another container runs, and the id is free again.
    let good = env.bundle("good", &["sh", "-c", "exit 5"], Root::Busybox);
    call!(client, create, create_req("good", &good)).unwrap();
    call!(client, start, start_req("good", "")).unwrap();
    assert_eq!(
        call!(client, wait, wait_req("good", ""))
            .unwrap()
            .exit_status,
        5
    );
    call!(client, delete, delete_req("good", "")).unwrap();
    let fixed = env.bundle(id, &["sleep", "300"], Root::Busybox);
    call!(client, create, create_req(id, &fixed)).expect("Create of the fixed bundle");
    call!(client, start, start_req(id, "")).unwrap();
    still_serving(&client, id, case.name).await;
    finish(&env, &client, &address, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_missing_rootfs() {
    refused(BadBundle {
        name: "norootfs",
        root: Root::Path("/nonexistent/shp-rootfs"),
        needles: &["/nonexistent/shp-rootfs"],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_missing_rootfs_mount_source() {
    refused(BadBundle {
        name: "nosnapshot",
        root: Root::InBundle,
        rootfs_mount: RootfsMount::Path("/nonexistent/shp-snapshot"),
        code: Code::UNKNOWN,
        needles: &["/nonexistent/shp-snapshot"],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_unknown_namespace_type() {
    refused(BadBundle {
        name: "bogusns",
        patch: |s| {
            s["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"type": "bogus"}))
        },
        needles: &["bogus"],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_bind_mount_of_a_missing_source() {
    refused(BadBundle {
        name: "badmount",
        root: Root::InBundle,
        rootfs_mount: RootfsMount::Busybox,
        patch: |s| {
            s["mounts"].as_array_mut().unwrap().push(serde_json::json!({
                "destination": "/tmp",
                "type": "bind",
                "source": "/nonexistent/shp-mount-source",
                "options": ["rbind", "ro"],
            }))
        },
        code: Code::UNKNOWN,
        needles: &["/nonexistent/shp-mount-source", "/tmp"],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_uid_out_of_range() {
    // (uid_t)-1 means "unchanged" to setresuid: taken as is, the container would run as root.
    refused(BadBundle {
        name: "baduid",
        patch: |s| s["process"]["user"]["uid"] = serde_json::json!(4294967295u32),
        needles: &["4294967295"],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_gid_out_of_range() {
    refused(BadBundle {
        name: "badgid",
        patch: |s| s["process"]["user"]["additionalGids"] = serde_json::json!([10, 4294967295u32]),
        needles: &["4294967295"],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_invalid_seccomp_action() {
    refused(BadBundle {
        name: "badseccomp",
        patch: |s| {
            s["linux"]["seccomp"] = serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_BOGUS"}],
            })
        },
        needles: &["SCMP_ACT_BOGUS"],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_unknown_capability() {
    refused(BadBundle {
        name: "badcap",
        patch: |s| {
            s["process"]["capabilities"]["bounding"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!("CAP_BOGUS"))
        },
        needles: &["CAP_BOGUS"],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_empty_args() {
    refused(BadBundle {
        name: "noargs",
        args: &[],
        needles: &["args"],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_relative_cwd() {
    refused(BadBundle {
        name: "relcwd",
        patch: |s| s["process"]["cwd"] = serde_json::json!("tmp"),
        needles: &["cwd", "tmp"],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_missing_program() {
    refused(BadBundle {
        name: "noprog",
        args: &["no-such-program"],
        code: Code::UNKNOWN,
        needles: &["no-such-program"],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_failing_prestart_hook() {
    refused(BadBundle {
        name: "prestart",
        patch: |s| s["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/false"}]}),
        code: Code::UNKNOWN,
        needles: &["prestart", "/bin/false"],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_missing_create_runtime_hook() {
    refused(BadBundle {
        name: "nohook",
        patch: |s| {
            s["hooks"] = serde_json::json!({"createRuntime": [{"path": "/nonexistent/shp-hook"}]})
        },
        code: Code::UNKNOWN,
        needles: &["/nonexistent/shp-hook"],
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_failing_create_container_hook() {
    refused(BadBundle {
        name: "createctr",
        patch: |s| {
            s["hooks"] = serde_json::json!({"createContainer": [
                {"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}
            ]})
        },
        code: Code::UNKNOWN,
        needles: &["createContainer", "/bin/sh"],
        ..Default::default()
    })
    .await;
}

// ---- the container's life, as its own runtime --------------------------------------------------

/// `shim delete` after the daemon was SIGKILLed kills every process of the paused container (the
/// init, a running exec and its child) and removes its cgroup from every hierarchy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_a_crash_empties_and_removes_the_cgroup() {
    let env = Env::new(&SHIM, "crashcg");
    let id = "c1";
    let bundle = env.bundle(id, &["sleep", "300"], Root::InBundle);
    let cgroup = env.cgroup_path(id);
    let address = env.start_shim(id);
    let daemon = env.daemon_pid(id);
    let client = task_client(&address).await;
    let mut req = create_req(id, &bundle);
    req.rootfs.push(bind_mount(&env.rootfs));
    call!(client, create, req).unwrap();
    let init = call!(client, start, start_req(id, "")).unwrap().pid;
    let exec = start_exec(&client, id, "e1", &["sh", "-c", "sleep 300 & wait"]).await;
    assert!(
        wait_until(LONG, || cgroup_pids(&cgroup).len() >= 3),
        "cgroup pids: {:?}",
        cgroup_pids(&cgroup)
    );
    let pids = cgroup_pids(&cgroup);
    assert!(pids.contains(&init) && pids.contains(&exec), "{pids:?}");
    // Paused: `shim delete` must also kill a frozen container.
    let pause = PauseRequest {
        id: id.into(),
        ..Default::default()
    };
    call!(client, pause, pause).unwrap();
    assert!(frozen(&cgroup));
    drop(client);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(LONG, || !pid_alive(daemon)), "daemon survived");
    assert!(
        pids.iter().all(|p| pid_alive(*p)),
        "the container died with its shim"
    );

    let bundle_arg = bundle.to_string_lossy().into_owned();
    let out = env
        .shim_command(id, &["-bundle", &bundle_arg], "delete")
        .output()
        .expect("running delete");
    assert!(
        out.status.success(),
        "delete failed: {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let resp = DeleteResponse::parse_from_bytes(&out.stdout).expect("a DeleteResponse");
    assert_eq!(resp.pid, init);
    assert_eq!(resp.exit_status, 137);
    for p in &pids {
        assert!(
            wait_until(LONG, || !pid_alive(*p)),
            "{p} ({:?}) survived `shim delete`",
            procfs::cmdline(*p)
        );
    }
    env.assert_runtime_state_cleaned(id);
    assert!(!mount_points().contains(&bundle.join("rootfs")));
}

/// Delete of a created, never started container kills its waiting init and removes its cgroup
/// and state file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_a_created_container_leaves_nothing() {
    let env = Env::new(&SHIM, "created");
    let id = "c1";
    let bundle = env.bundle(id, &["sleep", "300"], Root::Busybox);
    let address = env.start_shim(id);
    let daemon = env.daemon_pid(id);
    let client = task_client(&address).await;
    let pid = call!(client, create, create_req(id, &bundle)).unwrap().pid;
    assert!(pid_alive(pid));
    assert_eq!(cgroup_pids(&env.cgroup_path(id)), vec![pid]);
    assert!(env.runtime_state_exists(id));
    let d = call!(client, delete, delete_req(id, "")).unwrap();
    assert_eq!(d.pid, pid);
    assert!(
        wait_until(LONG, || !pid_alive(pid)),
        "the created init survived Delete"
    );
    assert!(
        !env.runtime_state_exists(id),
        "state or cgroup left after Delete"
    );
    assert!(
        wait_until(LONG, || procfs::descendants(daemon) == vec![daemon]),
        "processes left: {:?}",
        procfs::descendants(daemon)
    );
    shutdown(&client, id).await;
    env.assert_daemon_gone(id, &socket_of(&address));
}

/// A terminal init and a terminal exec: output comes through the pty, ResizePty changes the
/// size the program sees, State says terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_init_and_exec_resize() {
    let env = Env::new(&SHIM, "tty");
    let id = "c1";
    let bundle = env.bundle_with(
        id,
        &["sh", "-c", "read a; stty size; read b; exit 7"],
        Root::Busybox,
        |s| s["process"]["terminal"] = serde_json::json!(true),
    );
    let (stdin_path, stdout_path) = (bundle.join("in"), bundle.join("out"));
    mkfifo(&stdin_path);
    mkfifo(&stdout_path);
    let mut stdin = fifo_writer(&stdin_path);
    let stdout = FifoReader::spawn(&stdout_path);
    let address = env.start_shim(id);
    let client = task_client(&address).await;
    let mut req = create_req(id, &bundle);
    req.terminal = true;
    req.stdin = stdin_path.to_string_lossy().into_owned();
    req.stdout = stdout_path.to_string_lossy().into_owned();
    call!(client, create, req).unwrap();
    assert!(call!(client, state, state_req(id, "")).unwrap().terminal);
    call!(client, start, start_req(id, "")).unwrap();

    let resize = |exec_id: &str, width, height| ResizePtyRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        width,
        height,
        ..Default::default()
    };
    call!(client, resize_pty, resize("", 91, 33)).unwrap();
    stdin.write_all(b"go\n").unwrap();
    assert!(
        stdout.wait_for("33 91", LONG),
        "init output after ResizePty 91x33: {:?}",
        stdout.text()
    );

    // A terminal exec, resized while it runs.
    let (ein, eout) = (bundle.join("ein"), bundle.join("eout"));
    mkfifo(&ein);
    mkfifo(&eout);
    let mut exec_stdin = fifo_writer(&ein);
    let exec_stdout = FifoReader::spawn(&eout);
    let mut req = exec_req(id, "t1", &[]);
    req.terminal = true;
    req.spec = MessageField::some(process_any(&["sh", "-c", "read a; stty size; tty"], true));
    req.stdin = ein.to_string_lossy().into_owned();
    req.stdout = eout.to_string_lossy().into_owned();
    call!(client, exec, req).unwrap();
    call!(client, start, start_req(id, "t1")).unwrap();
    assert!(call!(client, state, state_req(id, "t1")).unwrap().terminal);
    call!(client, resize_pty, resize("t1", 120, 44)).unwrap();
    exec_stdin.write_all(b"x\n").unwrap();
    assert_eq!(
        call!(client, wait, wait_req(id, "t1")).unwrap().exit_status,
        0
    );
    assert!(
        exec_stdout.wait_for("44 120", LONG) && exec_stdout.wait_for("/dev/pts/", LONG),
        "exec output after ResizePty 120x44: {:?}",
        exec_stdout.text()
    );
    call!(client, delete, delete_req(id, "t1")).unwrap();

    stdin.write_all(b"bye\n").unwrap();
    assert_eq!(
        call!(client, wait, wait_req(id, "")).unwrap().exit_status,
        7
    );
    finish(&env, &client, &address, id).await;
}

/// An exec whose program does not exist, or whose process is invalid, fails at Start with an
/// error naming it (never NOT_FOUND); no process is left, the container keeps running and takes
/// further execs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_failures_leave_the_container_running() {
    let env = Env::new(&SHIM, "execfail");
    let id = "c1";
    let (client, address, init) = running(&env, id, &["sleep", "300"]).await;
    let daemon = env.daemon_pid(id);
    let cgroup = env.cgroup_path(id);

    let bad_cwd = serde_json::json!({
        "user": {"uid": 0, "gid": 0}, "args": ["true"], "env": ["PATH=/bin"], "cwd": "tmp",
    });
    let cases: Vec<(&str, protobuf::well_known_types::any::Any, &str)> = vec![
        (
            "missing",
            process_any(&["no-such-program"], false),
            "no-such-program",
        ),
        (
            "absolute",
            process_any(&["/bin/no-such-program"], false),
            "/bin/no-such-program",
        ),
        (
            "badcwd",
            raw_any(
                protos::type_urls::OCI_PROCESS,
                serde_json::to_vec(&bad_cwd).unwrap(),
            ),
            "cwd",
        ),
    ];
    for (exec_id, spec, needle) in cases {
        let mut req = exec_req(id, exec_id, &[]);
        req.spec = MessageField::some(spec);
        call!(client, exec, req).unwrap();
        let (code, message) = status_err(
            &format!("Start of exec {exec_id}"),
            call!(client, start, start_req(id, exec_id)),
        );
        eprintln!("exec {exec_id}: Start -> {code:?} {message:?}");
        assert_ne!(code, Code::NOT_FOUND, "exec {exec_id}: {message:?}");
        assert!(
            message.contains(needle),
            "exec {exec_id}: the error does not name {needle:?}: {message:?}"
        );
        assert_eq!(state(&client, id, exec_id).await, Status::CREATED);
        call!(client, delete, delete_req(id, exec_id)).unwrap();
        still_serving(&client, id, exec_id).await;
    }
    assert!(
        wait_until(LONG, || cgroup_pids(&cgroup) == vec![init]),
        "processes left in the cgroup: {:?}",
        cgroup_pids(&cgroup)
    );
    assert!(
        wait_until(LONG, || procfs::descendants(daemon) == vec![daemon, init]),
        "processes left under the shim: {:?}",
        procfs::descendants(daemon)
    );
    start_exec(&client, id, "ok", &["true"]).await;
    assert_eq!(
        call!(client, wait, wait_req(id, "ok")).unwrap().exit_status,
        0
    );
    call!(client, delete, delete_req(id, "ok")).unwrap();
    finish(&env, &client, &address, id).await;
}

/// Kill with all=true signals every process in the container's cgroup, not only the init.
/// SIGTERM shows it: the init (pid 1 of the container, no handler) ignores it, everything else
/// dies of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_signals_every_process_in_the_cgroup() {
    let env = Env::new(&SHIM, "killall");
    let id = "c1";
    let (client, address, init) = running(&env, id, &["sleep", "300"]).await;
    let cgroup = env.cgroup_path(id);
    let e1 = start_exec(&client, id, "e1", &["sleep", "300"]).await;
    let e2 = start_exec(&client, id, "e2", &["sh", "-c", "sleep 300 & wait"]).await;
    assert!(
        wait_until(LONG, || cgroup_pids(&cgroup).len() == 4),
        "cgroup pids: {:?}",
        cgroup_pids(&cgroup)
    );
    let pids = cgroup_pids(&cgroup);
    for p in [init, e1, e2] {
        assert!(pids.contains(&p), "{p} not in the cgroup: {pids:?}");
    }

    // Without all, SIGTERM goes to the init alone, which ignores it.
    call!(client, kill, kill_req(id, "", SIGTERM)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        cgroup_pids(&cgroup),
        pids,
        "SIGTERM without all reached others"
    );
    for e in ["", "e1", "e2"] {
        assert_eq!(state(&client, id, e).await, Status::RUNNING, "{e:?}");
    }

    let mut all = kill_req(id, "", SIGTERM);
    all.all = true;
    call!(client, kill, all).unwrap();
    for e in ["e1", "e2"] {
        assert_eq!(
            call!(client, wait, wait_req(id, e)).unwrap().exit_status,
            143,
            "exec {e}"
        );
    }
    assert!(
        wait_until(LONG, || cgroup_pids(&cgroup) == vec![init]),
        "left after kill --all SIGTERM: {:?}",
        cgroup_pids(&cgroup)
    );
    assert_eq!(state(&client, id, "").await, Status::RUNNING);

    let mut all = kill_req(id, "", SIGKILL);
    all.all = true;
    call!(client, kill, all).unwrap();
    assert_eq!(
        call!(client, wait, wait_req(id, "")).unwrap().exit_status,
        137
    );
    assert!(wait_until(LONG, || cgroup_pids(&cgroup).is_empty()));
    finish(&env, &client, &address, id).await;
}

/// Pids as a map: pid → the exec id its `ProcessDetails` names (None for no details).
async fn pids_of(client: &TaskClient, id: &str) -> std::collections::BTreeMap<u32, Option<String>> {
    let resp = call!(client, pids, pids_req(id)).unwrap();
    resp.processes
        .iter()
        .map(|p| {
            let exec_id = p.info.as_ref().map(|any| {
                assert!(
                    protos::type_urls::matches(
                        &any.type_url,
                        protos::type_urls::RUNC_PROCESS_DETAILS
                    ),
                    "info of {} is a {}",
                    p.pid,
                    any.type_url
                );
                protos::runc_options::ProcessDetails::parse_from_bytes(&any.value)
                    .expect("ProcessDetails")
                    .exec_id
            });
            (p.pid, exec_id)
        })
        .collect()
}

/// Pids lists the init and every exec, the execs with `ProcessDetails.exec_id`, and nothing
/// else, also right after an exec's Start returned (the exec's setup process is gone by then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_lists_execs_with_their_exec_id() {
    let env = Env::new(&SHIM, "pids");
    let id = "c1";
    let (client, address, init) = running(&env, id, &["sleep", "300"]).await;
    let mut want = std::collections::BTreeMap::new();
    want.insert(init, None);
    assert_eq!(pids_of(&client, id).await, want, "the init alone");
    for n in 1..=4 {
        let exec_id = format!("e{n}");
        let pid = start_exec(&client, id, &exec_id, &["sleep", "300"]).await;
        want.insert(pid, Some(exec_id.clone()));
        assert_eq!(
            pids_of(&client, id).await,
            want,
            "right after {exec_id} started"
        );
    }
    finish(&env, &client, &address, id).await;
}

/// Pause freezes the container's cgroup (the kernel says so), Resume thaws it; State follows,
/// for the init and its execs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_freeze_the_cgroup() {
    let env = Env::new(&SHIM, "pause");
    let id = "c1";
    let (client, address, _) = running(&env, id, &["sleep", "300"]).await;
    let cgroup = env.cgroup_path(id);
    start_exec(&client, id, "e1", &["sleep", "300"]).await;
    assert!(!frozen(&cgroup));

    let pause = PauseRequest {
        id: id.into(),
        ..Default::default()
    };
    let resume = ResumeRequest {
        id: id.into(),
        ..Default::default()
    };
    call!(client, pause, pause).unwrap();
    assert!(frozen(&cgroup), "the cgroup is not frozen after Pause");
    assert_eq!(state(&client, id, "").await, Status::PAUSED);
    assert_eq!(state(&client, id, "e1").await, Status::PAUSED);
    expect_code(
        "second Pause",
        call!(client, pause, pause),
        Code::FAILED_PRECONDITION,
    );
    // No exec starts in a frozen container (its setup would freeze with it): refused at once,
    // as runc refuses ("cannot exec in a paused container"); the exec can start after Resume.
    call!(client, exec, exec_req(id, "late", &["true"])).unwrap();
    expect_code(
        "Start of an exec in a paused container",
        call!(client, start, start_req(id, "late")),
        Code::FAILED_PRECONDITION,
    );
    assert_eq!(state(&client, id, "late").await, Status::CREATED);
    assert!(frozen(&cgroup), "the refused exec thawed the container");
    call!(client, resume, resume).unwrap();
    assert!(!frozen(&cgroup), "the cgroup is still frozen after Resume");
    assert_eq!(state(&client, id, "").await, Status::RUNNING);
    assert_eq!(state(&client, id, "e1").await, Status::RUNNING);
    call!(client, start, start_req(id, "late")).unwrap();
    assert_eq!(
        call!(client, wait, wait_req(id, "late"))
            .unwrap()
            .exit_status,
        0
    );
    call!(client, delete, delete_req(id, "late")).unwrap();
    expect_code(
        "Resume of a running container",
        call!(client, resume, resume),
        Code::FAILED_PRECONDITION,
    );
    // A frozen container can still be killed and deleted.
    call!(client, pause, pause).unwrap();
    call!(client, kill, kill_req(id, "", SIGKILL)).unwrap();
    assert_eq!(
        call!(client, wait, wait_req(id, "")).unwrap().exit_status,
        137
    );
    finish(&env, &client, &address, id).await;
}

/// Update applies new resources to the cgroup: the memory limit and the pids limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_the_memory_limit() {
    let env = Env::new(&SHIM, "update");
    let id = "c1";
    let (client, address, _) = running(&env, id, &["sleep", "300"]).await;
    let cgroup = env.cgroup_path(id);
    let limit: u64 = 64 << 20;
    let resources = serde_json::json!({"memory": {"limit": limit}, "pids": {"limit": 77}});
    let req = UpdateTaskRequest {
        id: id.into(),
        resources: MessageField::some(raw_any(
            protos::type_urls::OCI_LINUX_RESOURCES,
            serde_json::to_vec(&resources).unwrap(),
        )),
        ..Default::default()
    };
    call!(client, update, req).unwrap();
    let (mem_file, pids_dir) = if cgroup_v2() {
        ("memory.max", controller_dir("", &cgroup))
    } else {
        ("memory.limit_in_bytes", controller_dir("pids", &cgroup))
    };
    assert_eq!(
        read_trimmed(&controller_dir("memory", &cgroup).join(mem_file)),
        limit.to_string()
    );
    assert_eq!(read_trimmed(&pids_dir.join("pids.max")), "77");

    let bad = UpdateTaskRequest {
        id: id.into(),
        resources: MessageField::some(raw_any(
            protos::type_urls::OCI_LINUX_RESOURCES,
            b"{\"memory\": 5".to_vec(),
        )),
        ..Default::default()
    };
    expect_code(
        "Update with resources that are not JSON",
        call!(client, update, bad),
        Code::INVALID_ARGUMENT,
    );
    still_serving(&client, id, "a bad Update").await;
    finish(&env, &client, &address, id).await;
}

/// Stats answers with the host's cgroup metrics type and real numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_reports_cgroup_metrics() {
    let env = Env::new(&SHIM, "stats");
    let id = "c1";
    let (client, address, _) = running(&env, id, &["sleep", "300"]).await;
    let req = StatsRequest {
        id: id.into(),
        ..Default::default()
    };
    let stats = call!(client, stats, req).unwrap();
    let any = stats.stats.into_option().expect("Stats without metrics");
    if cgroup_v2() {
        assert_eq!(any.type_url, protos::type_urls::CGROUPS_V2_METRICS);
        let m = protos::metrics_v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert!(m.memory.usage > 0, "memory usage 0: {m:?}");
        assert!(m.pids.current >= 1, "no pids: {m:?}");
    } else {
        assert_eq!(any.type_url, protos::type_urls::CGROUPS_V1_METRICS);
        let m = protos::metrics_v1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert!(m.memory.usage.usage > 0, "memory usage 0: {m:?}");
        assert!(m.pids.current >= 1, "no pids: {m:?}");
    }
    finish(&env, &client, &address, id).await;
}
