//! The agent's service outside a VM: `vm-agent --listen unix:PATH` on this host, driven
//! through the same client and handshake the VM shim uses. Creates a busybox container, execs
//! into it, moves stdio through the stream calls, waits for exit codes, removes it, and shuts
//! the agent down. The container code is the same as in the guest; only pivot_root differs.
//!
//! Needs root (namespaces, cgroups) and a static busybox; skipped with the reason otherwise.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use protos::agent::*;
use shim_vm::agent::Agent;
use shim_vm::output::OutputLink;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn skip(why: &str) {
    println!("SKIP agent host test: {why}");
}

fn busybox() -> Option<std::path::PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v busybox"])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    if path.is_empty() {
        return None;
    }
    // Dynamically linked busybox would need its libraries in the rootfs.
    let ldd = Command::new("ldd").arg(&path).output().ok()?;
    (!ldd.status.success()).then(|| path.into())
}

fn spec(args: &[&str], cgroup: &str) -> Vec<u8> {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/"
        },
        "root": {"path": "rootfs"},
        "hostname": "agent-test",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
            "cgroupsPath": cgroup
        }
    })
    .to_string()
    .into_bytes()
}

fn streams(prefix: &str) -> StdioStreams {
    let mut s = StdioStreams::new();
    s.stdin = format!("{prefix}-in");
    s.stdout = format!("{prefix}-out");
    s.stderr = format!("{prefix}-err");
    s
}

const T: Duration = Duration::from_secs(20);

async fn read_all(agent: &Agent, id: &str, stderr: bool) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut req = ReadStreamRequest::new();
        req.stream_id = id.to_string();
        let resp = if stderr {
            agent.client.read_stderr(Agent::ctx(T), &req).await
        } else {
            agent.client.read_stdout(Agent::ctx(T), &req).await
        }
        .unwrap_or_else(|e| panic!("reading {id}: {e}"));
        out.extend_from_slice(&resp.data);
        if resp.eof {
            return out;
        }
    }
}

async fn wait(agent: &Agent, id: &str, exec_id: &str) -> u32 {
    let mut req = WaitProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    let resp = agent
        .client
        .wait_process(Agent::ctx(T), &req)
        .await
        .unwrap_or_else(|e| panic!("waiting for {id}/{exec_id}: {e}"));
    assert!(resp.exited_at.is_some());
    resp.exit_status
}

const BULK_BLOCKS: usize = 24;

fn bulk_len(i: usize) -> usize {
    300_007 + i * 4099
}

/// A pipe whose write end (non-blocking, registered) goes to an output channel, and a thread
/// collecting what comes out of the read end.
fn collected_pipe() -> (
    std::sync::Arc<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    std::thread::JoinHandle<Vec<u8>>,
) {
    use std::os::fd::AsRawFd;
    let (r, w) = nix::unistd::pipe().unwrap();
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    // SAFETY: the AsyncFd owns the descriptor.
    let w = unsafe { tokio::io::unix::AsyncFd::register(w) }.unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut v).unwrap();
        v
    });
    (std::sync::Arc::new(w), reader)
}

/// Execs a writer of numbered blocks (stdout) and lines (stderr) with both on output channels
/// of `link`; returns what each channel delivered, once both ended.
async fn bulk_exec(
    agent: &Agent,
    link: &OutputLink,
    id: &str,
    exec_id: &str,
) -> (Vec<u8>, Vec<u8>) {
    let (out_w, out_r) = collected_pipe();
    let (err_w, err_r) = collected_pipe();
    let mut out_ch = link.open(out_w);
    let mut err_ch = link.open(err_w);
    let script = format!(
        "i=0; while [ $i -lt {BULK_BLOCKS} ]; do printf 'out %03d\\n' $i; \
         busybox head -c $((300007 + i * 4099)) /zeros; echo \"err $i\" >&2; i=$((i + 1)); done"
    );
    let mut exec = ExecProcessRequest::new();
    exec.container_id = id.into();
    exec.exec_id = exec_id.into();
    exec.process = serde_json::json!({
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/sh", "-c", script],
        "env": ["PATH=/bin"],
        "cwd": "/"
    })
    .to_string()
    .into_bytes();
    let mut streams = StdioStreams::new();
    streams.stdout_channel = out_ch.channel;
    streams.stderr_channel = err_ch.channel;
    exec.stdio = protobuf::MessageField::some(streams);
    agent
        .client
        .exec_process(Agent::ctx(T), &exec)
        .await
        .unwrap();
    tokio::time::timeout(T, async {
        out_ch.done().await;
        err_ch.done().await;
    })
    .await
    .expect("both channels end");
    drop((out_ch, err_ch));
    (out_r.join().unwrap(), err_r.join().unwrap())
}

#[test]
fn container_lifecycle_through_the_agent() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root");
    }
    let Some(busybox) = busybox() else {
        return skip("needs a static busybox on PATH");
    };
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(bundle.join("rootfs/proc")).unwrap();
    std::fs::copy(&busybox, bin.join("busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bin.join("sh")).unwrap();
    // The bulk writer's source: the rootfs has no /dev.
    std::fs::write(
        bundle.join("rootfs/zeros"),
        vec![0u8; bulk_len(BULK_BLOCKS)],
    )
    .unwrap();

    let sock = dir.path().join("agent.sock");
    let _agent = Kill(
        Command::new(env!("CARGO_BIN_EXE_vm-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .spawn()
            .unwrap(),
    );
    let id = format!("c{}", std::process::id());
    let cgroup = format!("/vm-agent-test/{id}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let agent = Agent::connect(&sock, Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        let health = agent.health(T).await.unwrap();
        assert_eq!(health.protocol_version, protos::AGENT_PROTOCOL_VERSION);
        assert_eq!(health.version, env!("CARGO_PKG_VERSION"));

        let mut create = CreateContainerRequest::new();
        create.container_id = id.clone();
        create.bundle = bundle.display().to_string();
        create.spec = spec(
            &[
                "/bin/sh",
                "-c",
                "echo out; echo err >&2; read x; echo got $x; exit 3",
            ],
            &cgroup,
        );
        create.stdio = protobuf::MessageField::some(streams("init"));
        let created = agent
            .client
            .create_container(Agent::ctx(T), &create)
            .await
            .unwrap();
        assert!(created.pid > 0);

        // A second container of the same id, or a reused stream name, is refused.
        let err = agent
            .client
            .create_container(Agent::ctx(T), &create)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");

        let mut start = StartContainerRequest::new();
        start.container_id = id.clone();
        agent
            .client
            .start_container(Agent::ctx(T), &start)
            .await
            .unwrap();

        // An exec while the init waits on stdin.
        let mut exec = ExecProcessRequest::new();
        exec.container_id = id.clone();
        exec.exec_id = "e1".into();
        exec.process = serde_json::json!({
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", "echo from-exec $(cat /proc/1/comm 2>/dev/null); exit 5"],
            "env": ["PATH=/bin"],
            "cwd": "/"
        })
        .to_string()
        .into_bytes();
        let mut exec_streams = StdioStreams::new();
        exec_streams.stdout = "e1-out".into();
        exec.stdio = protobuf::MessageField::some(exec_streams);
        let e = agent
            .client
            .exec_process(Agent::ctx(T), &exec)
            .await
            .unwrap();
        assert!(e.pid > 0);
        let exec_out = String::from_utf8(read_all(&agent, "e1-out", false).await).unwrap();
        assert!(exec_out.starts_with("from-exec"), "{exec_out:?}");
        assert_eq!(wait(&agent, &id, "e1").await, 5);

        // Output through the output port (here its stand-in socket), twice: the second time
        // from a new connection, which must start on a frame boundary.
        let out_sock = dir.path().join("agent.sock.output");
        for round in 0..2 {
            let link = OutputLink::connect(&out_sock, Instant::now() + Duration::from_secs(10))
                .await
                .unwrap();
            let exec_id = format!("bulk{round}");
            let (out, err) = bulk_exec(&agent, &link, &id, &exec_id).await;
            let mut expected = Vec::new();
            let mut expected_err = String::new();
            for i in 0..BULK_BLOCKS {
                expected.extend_from_slice(format!("out {i:03}\n").as_bytes());
                expected.resize(expected.len() + bulk_len(i), 0);
                expected_err.push_str(&format!("err {i}\n"));
            }
            assert_eq!(
                out.len(),
                expected.len(),
                "round {round}: stderr {:?}",
                String::from_utf8_lossy(&err)
            );
            assert!(out == expected, "round {round}: stdout differs");
            assert_eq!(String::from_utf8_lossy(&err), expected_err, "round {round}");
            assert_eq!(wait(&agent, &id, &exec_id).await, 0);
        }

        let mut list = ListProcessesRequest::new();
        list.container_id = id.clone();
        let procs = agent
            .client
            .list_processes(Agent::ctx(T), &list)
            .await
            .unwrap();
        assert!(
            procs.processes.iter().any(|p| p.pid == created.pid),
            "init {} not in {:?}",
            created.pid,
            procs.processes
        );

        let mut sig = SignalProcessRequest::new();
        sig.container_id = id.clone();
        sig.exec_id = "e1".into();
        sig.signal = 15;
        let err = agent
            .client
            .signal_process(Agent::ctx(T), &sig)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already finished"), "{err}");

        let mut write = WriteStdinRequest::new();
        write.stream_id = "init-in".into();
        write.data = b"hello\n".to_vec();
        let w = agent
            .client
            .write_stdin(Agent::ctx(T), &write)
            .await
            .unwrap();
        assert_eq!(w.written, 6);
        let mut close = CloseStdinRequest::new();
        close.stream_id = "init-in".into();
        agent
            .client
            .close_stdin(Agent::ctx(T), &close)
            .await
            .unwrap();

        let out = read_all(&agent, "init-out", false).await;
        let err = read_all(&agent, "init-err", true).await;
        assert_eq!(String::from_utf8_lossy(&out), "out\ngot hello\n");
        assert_eq!(String::from_utf8_lossy(&err), "err\n");
        assert_eq!(wait(&agent, &id, "").await, 3);

        let mut stats = StatsContainerRequest::new();
        stats.container_id = id.clone();
        match agent.client.stats_container(Agent::ctx(T), &stats).await {
            Ok(s) => assert!(s.stats.type_url.contains("cgroups")),
            // The cgroup of an exited container may have no metrics left to read.
            Err(e) => println!("stats after exit: {e}"),
        }

        let mut remove = RemoveContainerRequest::new();
        remove.container_id = id.clone();
        agent
            .client
            .remove_container(Agent::ctx(T), &remove)
            .await
            .unwrap();
        let err = agent
            .client
            .wait_process(Agent::ctx(T), &{
                let mut r = WaitProcessRequest::new();
                r.container_id = id.clone();
                r
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");

        agent.shutdown(T).await.unwrap();
    });
    let mut child = _agent;
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "agent exited with {status}");
            break;
        }
        assert!(
            Instant::now() < end,
            "the agent did not exit after Shutdown"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory{cgroup}")).exists());
    // The parent the container library created on the way: leave the host as we found it.
    if let Ok(dirs) = std::fs::read_dir("/sys/fs/cgroup") {
        for d in dirs.flatten() {
            let _ = std::fs::remove_dir(d.path().join("vm-agent-test"));
        }
    }
    let _ = std::fs::remove_dir("/sys/fs/cgroup/vm-agent-test");
}
