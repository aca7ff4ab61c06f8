//! The protocol scenarios every shim must pass, played against the shim binary over raw ttrpc
//! (see [`super`]). Each takes the [`Shim`] under test; a shim crate's test file calls them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};

use protobuf::{Message, MessageField};
use protos::shim::*;
use protos::shim_ttrpc::TaskClient;
use protos::task::Status;
use ttrpc::Code;

use super::*;
use crate::call;

/// 1. Create → Start → Wait → State → Delete → Shutdown, with fifo stdio, over raw ttrpc.
pub async fn happy_path(shim: &Shim) {
    let env = Env::new(shim, "happy");
    let id = "c1";
    let bundle = env.bundle(
        id,
        &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
        Root::Busybox,
    );
    let (out_path, err_path) = (bundle.join("stdout"), bundle.join("stderr"));
    mkfifo(&out_path);
    mkfifo(&err_path);
    let stdout = FifoReader::spawn(&out_path);
    let stderr = FifoReader::spawn(&err_path);

    let address = env.start_shim(id);
    let socket = socket_of(&address);
    assert_eq!(socket, bundle.join("shim.sock"), "socket not in the bundle");
    let meta = fs::symlink_metadata(&socket).expect("the socket is a file, not abstract");
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        socket.display()
    );
    let mode = meta.permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    assert_eq!(
        fs::read_to_string(bundle.join("address")).expect("address file"),
        address
    );
    let shim_pid = env.daemon_pid(id);
    assert!(pid_alive(shim_pid), "daemon {shim_pid} not running");

    // A second `start` for a served bundle answers with the same address, no second daemon.
    let again = env
        .shim_command(id, &[], "start")
        .output()
        .expect("running start again");
    assert!(again.status.success(), "second start: {again:?}");
    assert_eq!(String::from_utf8_lossy(&again.stdout), address);
    assert_eq!(env.daemon_pid(id), shim_pid, "a second daemon was started");

    let client = task_client(&address).await;
    let conn = call!(client, connect, connect_req(id)).unwrap();
    assert_eq!(conn.shim_pid, shim_pid, "Connect.shim_pid vs shim.pid");

    let mut req = create_req(id, &bundle);
    req.stdout = out_path.to_string_lossy().into_owned();
    req.stderr = err_path.to_string_lossy().into_owned();
    let created = call!(client, create, req).unwrap();
    assert!(created.pid > 0);
    let st = call!(client, state, state_req(id, "")).unwrap();
    assert_eq!(status_of(&st), Status::CREATED);
    assert_eq!(st.pid, created.pid);
    assert_eq!(Path::new(&st.bundle), bundle);
    assert_eq!(Path::new(&st.stdout), out_path);
    assert!(!st.terminal);

    let started = call!(client, start, start_req(id, "")).unwrap();
    assert_eq!(started.pid, created.pid);
    let waited = call!(client, wait, wait_req(id, "")).unwrap();
    assert_eq!(waited.exit_status, 3);
    assert!(waited.exited_at.is_some());
    assert_eq!(
        stdout.wait_eof(LONG).expect("stdout never reached EOF"),
        b"hello\n"
    );
    assert_eq!(
        stderr.wait_eof(LONG).expect("stderr never reached EOF"),
        b"oops\n"
    );

    let st = call!(client, state, state_req(id, "")).unwrap();
    assert_eq!(status_of(&st), Status::STOPPED);
    assert_eq!(st.exit_status, 3);
    assert!(st.exited_at.is_some());
    // A second Wait after the exit answers at once with the same status.
    assert_eq!(
        call!(client, wait, wait_req(id, "")).unwrap().exit_status,
        3
    );

    let deleted = call!(client, delete, delete_req(id, "")).unwrap();
    assert_eq!(deleted.exit_status, 3);
    assert_eq!(deleted.pid, created.pid);
    assert!(deleted.exited_at.is_some());
    expect_code(
        "State after Delete",
        call!(client, state, state_req(id, "")),
        Code::NOT_FOUND,
    );
    assert!(
        !env.runtime_state_exists(id),
        "runtime state (runc's, or the process shim's state file and cgroup) left after Delete"
    );

    shutdown(&client, id).await;
    env.assert_daemon_gone(id, &socket);
}

/// 2. Bad input gets the code containerd keys on, and the shim keeps serving.
pub async fn bad_input(shim: &Shim) {
    let env = Env::new(shim, "bad");
    let id = "c1";
    let bundle = env.bundle(id, &["sleep", "300"], Root::Busybox);
    let address = env.start_shim(id);
    let client = task_client(&address).await;
    call!(client, create, create_req(id, &bundle)).unwrap();
    let init_pid = call!(client, start, start_req(id, "")).unwrap().pid;
    still_serving(&client, id, "start").await;

    // Ids that could escape a directory, or are too long.
    let too_long = "x".repeat(77);
    for bad in ["../x", "/", "a/b", too_long.as_str()] {
        let what = format!("Create with id {bad:?}");
        expect_code(
            &what,
            call!(client, create, create_req(bad, &bundle)),
            Code::INVALID_ARGUMENT,
        );
        still_serving(&client, id, &what).await;
    }

    // A malformed config.json.
    let broken = env.bundle_path("broken");
    fs::create_dir_all(&broken).unwrap();
    fs::write(broken.join("config.json"), b"{\"ociVersion\": [1,").unwrap();
    expect_code(
        "Create with a malformed config.json",
        call!(client, create, create_req("broken", &broken)),
        Code::INVALID_ARGUMENT,
    );
    still_serving(&client, id, "malformed config.json").await;

    // No config.json at all.
    let empty = env.bundle_path("empty");
    fs::create_dir_all(&empty).unwrap();
    expect_code(
        "Create without config.json",
        call!(client, create, create_req("empty", &empty)),
        Code::INVALID_ARGUMENT,
    );
    still_serving(&client, id, "missing config.json").await;

    // A rootfs that does not exist, and no rootfs mounts to make one.
    let noroot = env.bundle("noroot", &["true"], Root::Path("/nonexistent/shp-rootfs"));
    expect_code(
        "Create with a missing rootfs",
        call!(client, create, create_req("noroot", &noroot)),
        Code::INVALID_ARGUMENT,
    );
    still_serving(&client, id, "missing rootfs").await;
    let norel = env.bundle("norel", &["true"], Root::Path("rootfs"));
    expect_code(
        "Create with a missing relative rootfs",
        call!(client, create, create_req("norel", &norel)),
        Code::INVALID_ARGUMENT,
    );
    still_serving(&client, id, "missing relative rootfs").await;

    // A duplicate container id.
    expect_code(
        "Create with a duplicate id",
        call!(client, create, create_req(id, &bundle)),
        Code::ALREADY_EXISTS,
    );
    still_serving(&client, id, "duplicate create").await;

    // Two Creates of one id at once: one wins, the other is ALREADY_EXISTS, and the loser's
    // failure must not tear down the winner (its runc container, its rootfs mount).
    let dup = env.bundle("dup", &["sleep", "300"], Root::InBundle);
    let mut req = create_req("dup", &dup);
    req.rootfs.push(bind_mount(&env.rootfs));
    let (a, b) = tokio::join!(
        rpc("create", client.create(ctx(), &req)),
        rpc("create", client.create(ctx(), &req))
    );
    let (winner, loser) = match (a, b) {
        (Ok(w), l @ Err(_)) | (l @ Err(_), Ok(w)) => (w, l),
        other => panic!("concurrent duplicate Creates: {other:?}"),
    };
    expect_code(
        "the second of two concurrent Creates",
        loser,
        Code::ALREADY_EXISTS,
    );
    let st = call!(client, state, state_req("dup", "")).unwrap();
    assert_eq!(status_of(&st), Status::CREATED);
    assert_eq!(st.pid, winner.pid);
    assert!(
        mount_points().contains(&dup.join("rootfs")),
        "the refused Create unmounted the winner's rootfs"
    );
    call!(client, start, start_req("dup", ""))
        .expect("Start of the container that won the concurrent Create");
    call!(client, kill, kill_req("dup", "", SIGKILL)).unwrap();
    assert_eq!(
        call!(client, wait, wait_req("dup", ""))
            .unwrap()
            .exit_status,
        137
    );
    call!(client, delete, delete_req("dup", "")).unwrap();
    assert!(!mount_points().contains(&dup.join("rootfs")));
    still_serving(&client, id, "concurrent duplicate creates").await;

    // An unknown container.
    let nope = "nope";
    expect_code(
        "State of an unknown container",
        call!(client, state, state_req(nope, "")),
        Code::NOT_FOUND,
    );
    expect_code(
        "Kill of an unknown container",
        call!(client, kill, kill_req(nope, "", SIGKILL)),
        Code::NOT_FOUND,
    );
    expect_code(
        "Delete of an unknown container",
        call!(client, delete, delete_req(nope, "")),
        Code::NOT_FOUND,
    );
    expect_code(
        "Wait of an unknown container",
        call!(client, wait, wait_req(nope, "")),
        Code::NOT_FOUND,
    );
    expect_code(
        "Pids of an unknown container",
        call!(client, pids, pids_req(nope)),
        Code::NOT_FOUND,
    );
    still_serving(&client, id, "calls on an unknown container").await;

    // An unknown exec id in a known container.
    expect_code(
        "State of an unknown exec",
        call!(client, state, state_req(id, "nope")),
        Code::NOT_FOUND,
    );
    expect_code(
        "Kill of an unknown exec",
        call!(client, kill, kill_req(id, "nope", SIGKILL)),
        Code::NOT_FOUND,
    );
    expect_code(
        "Start of an unknown exec",
        call!(client, start, start_req(id, "nope")),
        Code::NOT_FOUND,
    );
    expect_code(
        "Wait of an unknown exec",
        call!(client, wait, wait_req(id, "nope")),
        Code::NOT_FOUND,
    );
    expect_code(
        "Delete of an unknown exec",
        call!(client, delete, delete_req(id, "nope")),
        Code::NOT_FOUND,
    );
    still_serving(&client, id, "calls on an unknown exec").await;

    // Exec: duplicate id, escaping id, spec that is not JSON (or missing).
    call!(client, exec, exec_req(id, "e1", &["sleep", "300"])).unwrap();
    expect_code(
        "Exec with a duplicate exec id",
        call!(client, exec, exec_req(id, "e1", &["true"])),
        Code::ALREADY_EXISTS,
    );
    expect_code(
        "Exec with exec id ../e",
        call!(client, exec, exec_req(id, "../e", &["true"])),
        Code::INVALID_ARGUMENT,
    );
    let mut not_json = exec_req(id, "e2", &["true"]);
    not_json.spec = MessageField::some(raw_any(
        protos::type_urls::OCI_PROCESS,
        b"\x08\x01 not json".to_vec(),
    ));
    expect_code(
        "Exec with a spec that is not JSON",
        call!(client, exec, not_json),
        Code::INVALID_ARGUMENT,
    );
    let mut no_spec = exec_req(id, "e3", &["true"]);
    no_spec.spec = MessageField::none();
    expect_code(
        "Exec without a spec",
        call!(client, exec, no_spec),
        Code::INVALID_ARGUMENT,
    );
    still_serving(&client, id, "bad execs").await;
    // Neither refused exec was registered.
    expect_code(
        "State of the refused exec e2",
        call!(client, state, state_req(id, "e2")),
        Code::NOT_FOUND,
    );
    // Kill of an exec that was added but never started.
    expect_code(
        "Kill of a created exec",
        call!(client, kill, kill_req(id, "e1", SIGKILL)),
        Code::FAILED_PRECONDITION,
    );

    // An exec that ran and exited: Kill is NOT_FOUND ("already finished").
    call!(client, exec, exec_req(id, "etrue", &["true"])).unwrap();
    call!(client, start, start_req(id, "etrue")).unwrap();
    assert_eq!(
        call!(client, wait, wait_req(id, "etrue"))
            .unwrap()
            .exit_status,
        0
    );
    expect_code(
        "Kill of an exited exec",
        call!(client, kill, kill_req(id, "etrue", SIGKILL)),
        Code::NOT_FOUND,
    );
    expect_code(
        "Start of an exited exec",
        call!(client, start, start_req(id, "etrue")),
        Code::FAILED_PRECONDITION,
    );
    assert_eq!(
        call!(client, delete, delete_req(id, "etrue"))
            .unwrap()
            .exit_status,
        0
    );
    still_serving(&client, id, "an exited exec").await;

    // Delete of a running exec is refused.
    call!(client, start, start_req(id, "e1")).unwrap();
    expect_code(
        "Delete of a running exec",
        call!(client, delete, delete_req(id, "e1")),
        Code::FAILED_PRECONDITION,
    );
    still_serving(&client, id, "delete of a running exec").await;

    // An exec whose program does not exist: the runtime's refusal must not read as "no such
    // container" (NOT_FOUND); the exec stays created and can be deleted.
    call!(client, exec, exec_req(id, "missing", &["no-such-program"])).unwrap();
    let r = call!(client, start, start_req(id, "missing"));
    eprintln!("Start of an exec of a missing program -> {r:?}");
    let code = code_of("Start of an exec of a missing program", r);
    assert_ne!(
        code,
        Code::NOT_FOUND,
        "a missing program is not a missing container"
    );
    let st = call!(client, state, state_req(id, "missing")).unwrap();
    assert_eq!(status_of(&st), Status::CREATED);
    call!(client, delete, delete_req(id, "missing")).unwrap();
    still_serving(&client, id, "an exec of a missing program").await;

    // Starting the running init again.
    expect_code(
        "second Start of the init",
        call!(client, start, start_req(id, "")),
        Code::FAILED_PRECONDITION,
    );
    still_serving(&client, id, "double start").await;

    // Delete of a running container is refused and leaves it running.
    expect_code(
        "Delete of a running container",
        call!(client, delete, delete_req(id, "")),
        Code::FAILED_PRECONDITION,
    );
    still_serving(&client, id, "delete of a running container").await;
    assert!(
        env.init_alive(init_pid),
        "the init died after a refused Delete"
    );

    // Checkpoint is supported only where CRIU works. Where it does not, the answer says so
    // (UNIMPLEMENTED, or FAILED_PRECONDITION with CRIU's reason), never NOT_FOUND, which
    // containerd would read as "no such container". `--leave-running` keeps c1 alive if CRIU
    // does work here.
    let ckpt = CheckpointTaskRequest {
        id: id.into(),
        path: env.dir.path().join("ckpt").to_string_lossy().into_owned(),
        ..Default::default()
    };
    match call!(client, checkpoint, ckpt) {
        Ok(_) => eprintln!("Checkpoint succeeded: CRIU works on this host"),
        Err(ttrpc::Error::RpcStatus(s)) => assert!(
            matches!(s.code(), Code::UNIMPLEMENTED | Code::FAILED_PRECONDITION),
            "Checkpoint without a working CRIU: {:?} {:?}",
            s.code(),
            s.message()
        ),
        Err(e) => panic!("Checkpoint: {e:?}"),
    }
    still_serving(&client, id, "checkpoint").await;

    // A stdio scheme the shim does not support: UNIMPLEMENTED (Go: ErrNotImplemented).
    let tcp = env.bundle("tcpio", &["true"], Root::Busybox);
    let mut req = create_req("tcpio", &tcp);
    req.stdout = "tcp://127.0.0.1:9".into();
    expect_code(
        "Create with stdout tcp://",
        call!(client, create, req),
        Code::UNIMPLEMENTED,
    );
    still_serving(&client, id, "unsupported stdio scheme").await;

    // Options of a type the shim does not know are accepted.
    let unk = env.bundle("unk", &["true"], Root::Busybox);
    let mut req = create_req("unk", &unk);
    req.options = MessageField::some(raw_any("example.com/shim.test.Unknown", vec![1, 2, 3]));
    call!(client, create, req).expect("Create with options of an unknown type");
    let st = call!(client, state, state_req("unk", "")).unwrap();
    assert_eq!(status_of(&st), Status::CREATED);
    call!(client, delete, delete_req("unk", "")).expect("Delete of a created container");
    still_serving(&client, id, "unknown options").await;

    // runtimeoptions.v1.Options with a config_body that is not TOML.
    let toml = env.bundle("badtoml", &["true"], Root::Busybox);
    let mut ro = protos::runtimeoptions::Options::new();
    ro.config_body = b"binary = ".to_vec();
    let mut req = create_req("badtoml", &toml);
    req.options = MessageField::some(raw_any(
        protos::type_urls::RUNTIME_OPTIONS,
        ro.write_to_bytes().unwrap(),
    ));
    expect_code(
        "Create with malformed TOML settings",
        call!(client, create, req),
        Code::INVALID_ARGUMENT,
    );
    still_serving(&client, id, "bad TOML").await;

    // A container whose init exits: its execs can no longer start, Kill is NOT_FOUND.
    let c2 = env.bundle("c2", &["sleep", "300"], Root::Busybox);
    call!(client, create, create_req("c2", &c2)).unwrap();
    call!(client, start, start_req("c2", "")).unwrap();
    call!(client, exec, exec_req("c2", "late", &["true"])).unwrap();
    call!(client, kill, kill_req("c2", "", SIGKILL)).unwrap();
    assert_eq!(
        call!(client, wait, wait_req("c2", "")).unwrap().exit_status,
        137
    );
    expect_code(
        "Start of an exec after the init exited",
        call!(client, start, start_req("c2", "late")),
        Code::FAILED_PRECONDITION,
    );
    expect_code(
        "Exec after the init exited",
        call!(client, exec, exec_req("c2", "later", &["true"])),
        Code::FAILED_PRECONDITION,
    );
    expect_code(
        "Kill of an exited init",
        call!(client, kill, kill_req("c2", "", SIGKILL)),
        Code::NOT_FOUND,
    );
    expect_code(
        "second Start of an exited init",
        call!(client, start, start_req("c2", "")),
        Code::FAILED_PRECONDITION,
    );
    assert_eq!(
        call!(client, delete, delete_req("c2", ""))
            .unwrap()
            .exit_status,
        137
    );
    still_serving(&client, id, "an exited container").await;

    // Methods and services the server does not have, over a raw ttrpc request.
    let raw = connect(&address).await;
    let unknown_method = raw_request(&raw, protos::TASK_V2_SERVICE, "Nope").await;
    let unknown_service = raw_request(&raw, "containerd.task.v9.Task", "State").await;
    eprintln!(
        "unknown method containerd.task.v2.Task/Nope -> {unknown_method:?}; \
         unknown service containerd.task.v9.Task -> {unknown_service:?}"
    );
    // NOT_FOUND would read as "no such container" to containerd; Go ttrpc says UNIMPLEMENTED.
    assert_eq!(
        unknown_method.0,
        Code::UNIMPLEMENTED,
        "unknown method: {unknown_method:?}"
    );
    assert_ne!(unknown_service.0, Code::OK);
    still_serving(&client, id, "unknown method").await;

    // Clean up through the API: the exec dies with the init (private pid namespace).
    call!(client, kill, kill_req(id, "", SIGKILL)).unwrap();
    assert_eq!(
        call!(client, wait, wait_req(id, "")).unwrap().exit_status,
        137
    );
    assert_eq!(
        call!(client, delete, delete_req(id, ""))
            .unwrap()
            .exit_status,
        137
    );
    shutdown(&client, id).await;
    env.assert_daemon_gone(id, &socket_of(&address));
}

/// 3. Garbage on the socket does not take the server down.
pub async fn garbage_on_the_socket(shim: &Shim) {
    let env = Env::new(shim, "garbage");
    let id = "c1";
    let bundle = env.bundle(id, &["sleep", "300"], Root::Busybox);
    let address = env.start_shim(id);
    let socket = socket_of(&address);
    let daemon = env.daemon_pid(id);
    {
        let client = task_client(&address).await;
        call!(client, create, create_req(id, &bundle)).unwrap();
    }

    let serves = |what: &'static str| {
        let address = address.clone();
        async move {
            let client = task_client(&address).await;
            let st = call!(client, state, state_req(id, ""))
                .unwrap_or_else(|e| panic!("after {what}: State failed: {e:?}"));
            assert_eq!(status_of(&st), Status::CREATED, "after {what}");
            call!(client, connect, connect_req(id))
                .unwrap_or_else(|e| panic!("after {what}: Connect failed: {e:?}"));
        }
    };

    // Connect and hang up at once.
    drop(UnixStream::connect(&socket).unwrap());
    serves("an empty connection").await;

    // Random bytes.
    poke(&socket, &garbage(64 * 1024, 0x9e37_79b9_7f4a_7c15));
    serves("random bytes").await;

    // A header announcing a 4 GiB message, then nothing.
    poke(&socket, &header(u32::MAX, 1, 1, 0));
    serves("a huge length").await;

    // The same, held open while another connection is served.
    let mut hold = UnixStream::connect(&socket).unwrap();
    hold.write_all(&header(u32::MAX, 1, 1, 0)).unwrap();
    hold.write_all(&garbage(1000, 7)).unwrap();
    serves("a huge length, connection still open").await;
    drop(hold);

    // A plausible header with a body that is not a ttrpc Request.
    let mut bytes = header(32, 1, 1, 0);
    bytes.extend(garbage(32, 42));
    poke(&socket, &bytes);
    serves("an undecodable body").await;

    // Even stream id, unknown message type, a response sent to the server, half a header.
    poke(&socket, &header(0, 2, 1, 0));
    poke(&socket, &header(0, 1, 0x7f, 0xff));
    poke(&socket, &header(0, 1, 2, 0));
    poke(&socket, &header(8, 1, 1, 0)[..5]);
    serves("odd headers").await;

    assert!(pid_alive(daemon), "the daemon died");
    let client = task_client(&address).await;
    call!(client, delete, delete_req(id, "")).unwrap();
    shutdown(&client, id).await;
    env.assert_daemon_gone(id, &socket);
}

/// 4. The same socket serves `containerd.task.v3.Task`.
pub async fn task_api_v3(shim: &Shim) {
    use protos::shim_v3 as v3;
    let env = Env::new(shim, "v3");
    let id = "c1";
    let bundle = env.bundle(id, &["sleep", "300"], Root::Busybox);
    let address = env.start_shim(id);
    let conn = connect(&address).await;
    let v2 = TaskClient::new(conn.clone());
    let client = protos::shim_v3_ttrpc::TaskClient::new(conn);

    let c = call!(
        client,
        connect,
        v3::ConnectRequest {
            id: id.into(),
            ..Default::default()
        }
    )
    .unwrap();
    assert_eq!(c.shim_pid, env.daemon_pid(id));
    let st = |id: &str| v3::StateRequest {
        id: id.into(),
        ..Default::default()
    };
    expect_code(
        "v3 State of an unknown container",
        call!(client, state, st("nope")),
        Code::NOT_FOUND,
    );

    let created = call!(
        client,
        create,
        v3::CreateTaskRequest {
            id: id.into(),
            bundle: bundle.to_string_lossy().into_owned(),
            ..Default::default()
        }
    )
    .unwrap();
    // Both APIs see the same container.
    let s2 = call!(v2, state, state_req(id, "")).unwrap();
    assert_eq!(status_of(&s2), Status::CREATED);
    assert_eq!(s2.pid, created.pid);
    let s3 = call!(client, state, st(id)).unwrap();
    assert_eq!(s3.status.enum_value(), Ok(Status::CREATED));
    assert_eq!(s3.pid, created.pid);

    call!(
        client,
        start,
        v3::StartRequest {
            id: id.into(),
            ..Default::default()
        }
    )
    .unwrap();
    call!(
        client,
        kill,
        v3::KillRequest {
            id: id.into(),
            signal: SIGKILL,
            ..Default::default()
        }
    )
    .unwrap();
    let w = call!(
        client,
        wait,
        v3::WaitRequest {
            id: id.into(),
            ..Default::default()
        }
    )
    .unwrap();
    assert_eq!(w.exit_status, 137);
    let d = call!(
        client,
        delete,
        v3::DeleteRequest {
            id: id.into(),
            ..Default::default()
        }
    )
    .unwrap();
    assert_eq!(d.exit_status, 137);
    assert_eq!(d.pid, created.pid);
    // The reply may be lost to the exiting daemon; a refusal may not.
    let r = call!(
        client,
        shutdown,
        v3::ShutdownRequest {
            id: id.into(),
            ..Default::default()
        }
    );
    if let Err(ttrpc::Error::RpcStatus(s)) = r {
        panic!("v3 Shutdown refused: {s:?}");
    }
    env.assert_daemon_gone(id, &socket_of(&address));
}

/// 5. `shim delete` after the daemon was SIGKILLed cleans up the container, its rootfs mount
///    and the runtime state (see [`Env::assert_runtime_state_cleaned`]), and reports 137.
pub async fn delete_after_a_crash(shim: &Shim) {
    let env = Env::new(shim, "crash");
    let id = "c1";
    let bundle = env.bundle(id, &["sleep", "300"], Root::InBundle);
    let rootfs = bundle.join("rootfs");
    let address = env.start_shim(id);
    let daemon = env.daemon_pid(id);
    let init_pid = {
        let client = task_client(&address).await;
        let mut req = create_req(id, &bundle);
        req.rootfs.push(bind_mount(&env.rootfs));
        call!(client, create, req).unwrap();
        call!(client, start, start_req(id, "")).unwrap().pid
    };
    assert_eq!(env.recorded_init_pid(id), Some(init_pid));
    // Exec ids are the user's: ones named like the shim's own bundle files must not clobber
    // them (`shim delete` reads the recorded init pid to report it).
    {
        let client = task_client(&address).await;
        for exec_id in ["init", "shim", "config", "oci-runtime", "address"] {
            call!(client, exec, exec_req(id, exec_id, &["true"])).unwrap();
            call!(client, start, start_req(id, exec_id)).unwrap();
            let w = call!(client, wait, wait_req(id, exec_id)).unwrap();
            assert_eq!(w.exit_status, 0, "exec {exec_id}");
            call!(client, delete, delete_req(id, exec_id)).unwrap();
        }
        let st = call!(client, state, state_req(id, "")).unwrap();
        assert_eq!(status_of(&st), Status::RUNNING);
    }
    assert_eq!(
        env.recorded_init_pid(id),
        Some(init_pid),
        "an exec clobbered the recorded init pid"
    );
    assert_eq!(
        read_pid(&bundle.join("shim.pid")),
        Some(daemon),
        "an exec clobbered shim.pid"
    );
    assert!(
        fs::read(bundle.join("config.json")).is_ok_and(|c| c.starts_with(b"{")),
        "an exec clobbered config.json"
    );
    assert!(
        mount_points().contains(&rootfs),
        "Create did not mount the rootfs"
    );
    assert!(env.runtime_state_exists(id), "no runtime state");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        wait_until(LONG, || !pid_alive(daemon)),
        "daemon survived SIGKILL"
    );
    if shim.state == StateKind::VmState {
        // By design a VM dies with its shim (QEMU has PR_SET_PDEATHSIG): a guest cannot
        // outlive the process that owns its only channel.
        assert!(
            wait_until(LONG, || !env.init_alive(init_pid)),
            "the VM survived its shim"
        );
    } else {
        assert!(pid_alive(init_pid), "the container died with its shim");
    }

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
    let resp = DeleteResponse::parse_from_bytes(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not a DeleteResponse ({e}): {:?}", out.stdout));
    assert_eq!(resp.exit_status, 137);
    assert_eq!(resp.pid, init_pid);
    assert!(resp.exited_at.is_some());

    assert!(
        wait_until(LONG, || !env.init_alive(init_pid)),
        "container init {init_pid} survived `shim delete`"
    );
    assert!(
        !mount_points().contains(&rootfs),
        "`shim delete` left the rootfs mounted"
    );
    env.assert_runtime_state_cleaned(id);

    // The dead daemon's socket file is stale: a new `start` replaces it and serves.
    assert!(bundle.join("shim.sock").exists());
    fs::remove_file(bundle.join("log")).unwrap();
    let address = env.start_shim(id);
    let again = env.daemon_pid(id);
    assert_ne!(again, daemon);
    let client = task_client(&address).await;
    assert_eq!(
        call!(client, connect, connect_req(id)).unwrap().shim_pid,
        again
    );
    shutdown(&client, id).await;
    env.assert_daemon_gone(id, &socket_of(&address));
}

/// 6. `-info` prints a RuntimeInfo; `-v` prints the version.
pub fn info_and_version(shim: &Shim) {
    let mut child = Command::new(shim.binary)
        .arg("-info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // containerd writes the runtime options on stdin; they come back by type.
    let opts = raw_any(
        "containerd.runc.v1.Options",
        protos::runc_options::Options::new()
            .write_to_bytes()
            .unwrap(),
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&opts.write_to_bytes().unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "-info: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let info = protos::introspection::RuntimeInfo::parse_from_bytes(&out.stdout)
        .expect("-info stdout is a RuntimeInfo");
    assert_eq!(info.name, shim.runtime_name);
    assert!(!info.version.version.is_empty(), "no version in {info:?}");
    assert_eq!(info.options.type_url, "containerd.runc.v1.Options");

    // `start` refuses ids that could escape the bundle's directory, and binds nothing.
    let dir = tempfile::Builder::new()
        .prefix("shp-cli-")
        .tempdir_in("/tmp")
        .unwrap();
    for (ns, id) in [("ns", "../x"), ("ns", "a/b"), ("../n", "c1"), ("", "c1")] {
        let out = Command::new(shim.binary)
            .args([
                "-namespace",
                ns,
                "-id",
                id,
                "-address",
                CONTAINERD_ADDRESS,
                "start",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "start accepted ns {ns:?} id {id:?}");
        assert!(out.stdout.is_empty());
    }
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "start left files"
    );

    let out = Command::new(shim.binary)
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "-v: {:?}", out.status);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Version"));
}

/// Makes every mount read-only except the bundle, /proc, /dev, /dev/pts and the cgroup
/// hierarchies, checks that worked, then execs the rest of its arguments.
const READ_ONLY_SCRIPT: &str = r#"
set -eu
B="$1"; shift
mount --bind "$B" "$B"
cd "$B"
while read -r src mp fstype rest; do
    case "$fstype" in cgroup|cgroup2) continue ;; esac
    case "$mp" in
        "$B"|"$B"/*|/proc|/proc/*|/dev|/dev/pts) continue ;;
    esac
    mount -o remount,bind,ro "$mp" 2>/dev/null || echo "shp: cannot make $mp read-only" >&2
done < /proc/self/mounts
probe="/tmp/.shp-probe-$$"
if ( : > "$probe" ) 2>/dev/null; then
    rm -f "$probe"
    echo "shp: /tmp is still writable" >&2
    exit 90
fi
: > "$B/.probe"
rm -f "$B/.probe"
exec "$@"
"#;

/// 7. The shim writes nothing outside the bundle (besides /proc, /dev and the container's
///    cgroups).
pub async fn writes_nothing_outside_the_bundle(shim: &Shim) {
    let env = Env::new(shim, "ro");
    let id = "c1";
    let bundle = env.bundle(id, &["sleep", "300"], Root::InBundle);
    env.log_fifo(&bundle);
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(READ_ONLY_SCRIPT)
        .arg("sh")
        .arg(&bundle)
        .arg(shim.binary)
        .args(env.shim_args(id, &[], "start"))
        .current_dir(&bundle)
        .env_remove("TTRPC_ADDRESS")
        .stdin(Stdio::null())
        .output()
        .expect("running unshare");
    let address = env.finish_start(id, out);
    let daemon = env.daemon_pid(id);

    // The daemon really runs in the read-only view.
    assert_ne!(
        fs::read_link(format!("/proc/{daemon}/ns/mnt")).unwrap(),
        fs::read_link("/proc/self/ns/mnt").unwrap(),
        "the daemon shares the test's mount namespace"
    );
    let mounts = mountinfo_of(daemon);
    let opts_of = |p: &Path| {
        mounts
            .iter()
            .rev()
            .find(|(mp, _)| mp == p)
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("{} not mounted in the daemon's namespace", p.display()))
    };
    assert!(opts_of(Path::new("/")).starts_with("ro"), "/ is writable");
    assert!(
        opts_of(&bundle).starts_with("rw"),
        "the bundle is read-only"
    );

    let client = task_client(&address).await;
    let mut req = create_req(id, &bundle);
    req.rootfs.push(bind_mount(&env.rootfs));
    let pid = call!(client, create, req).unwrap().pid;
    assert_eq!(call!(client, start, start_req(id, "")).unwrap().pid, pid);

    // An exec with a terminal, and one without.
    let tty_out = bundle.join("tty-out");
    mkfifo(&tty_out);
    let tty_reader = FifoReader::spawn(&tty_out);
    let mut tty = exec_req(id, "tty", &["sh", "-c", "echo tty-ok"]);
    tty.terminal = true;
    tty.spec = MessageField::some(process_any(&["sh", "-c", "echo tty-ok"], true));
    tty.stdout = tty_out.to_string_lossy().into_owned();
    call!(client, exec, tty).unwrap();
    call!(client, start, start_req(id, "tty")).unwrap();
    assert_eq!(
        call!(client, wait, wait_req(id, "tty"))
            .unwrap()
            .exit_status,
        0
    );
    assert!(
        tty_reader.wait_for("tty-ok", LONG),
        "tty exec output: {:?}",
        tty_reader.text()
    );

    let plain_out = bundle.join("plain-out");
    mkfifo(&plain_out);
    let plain_reader = FifoReader::spawn(&plain_out);
    let mut plain = exec_req(id, "plain", &["sh", "-c", "echo plain-ok; exit 4"]);
    plain.stdout = plain_out.to_string_lossy().into_owned();
    call!(client, exec, plain).unwrap();
    call!(client, start, start_req(id, "plain")).unwrap();
    assert_eq!(
        call!(client, wait, wait_req(id, "plain"))
            .unwrap()
            .exit_status,
        4
    );
    assert_eq!(
        plain_reader.wait_eof(LONG).expect("exec stdout EOF"),
        b"plain-ok\n"
    );
    for e in ["tty", "plain"] {
        call!(client, delete, delete_req(id, e)).unwrap();
    }

    call!(client, kill, kill_req(id, "", SIGKILL)).unwrap();
    assert_eq!(
        call!(client, wait, wait_req(id, "")).unwrap().exit_status,
        137
    );
    assert_eq!(
        call!(client, delete, delete_req(id, ""))
            .unwrap()
            .exit_status,
        137
    );
    shutdown(&client, id).await;
    env.assert_daemon_gone(id, &socket_of(&address));

    let logs = env.logs();
    for needle in ["Read-only file system", "os error 30", "EROFS"] {
        assert!(!logs.contains(needle), "the shim hit {needle:?}:\n{logs}");
    }
}
