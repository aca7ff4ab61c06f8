//! Playing containerd's role against a shim binary directly, over raw ttrpc: bundles, the `log`
//! fifo, `start`, a ttrpc client, and a clean-up that leaves nothing behind even when a test
//! fails. No containerd is involved, which reaches inputs `ctr` cannot send (bad ids, broken
//! specs, garbage on the socket, unknown methods, task API v3, the `delete` action after a
//! crash).
//!
//! The driver is shim-agnostic: a [`Shim`] names the binary, the runtime name it reports and
//! where its runtime keeps a container's state ([`StateKind`]). [`scenarios`] holds the protocol
//! scenarios every shim must pass; each shim crate calls them from a thin test file with its
//! `env!("CARGO_BIN_EXE_…")`, next to its own shim-specific tests.
//!
//! Every test owns one [`Env`]: a short temp dir `/tmp/shp-XXXXXX` holding a busybox rootfs and
//! bundles at `<dir>/<ns>/<id>` (so `shim.sock` stays far below `sun_path`). Each container gets
//! a cgroup path of its own, one level deep (`/shp-XXXXXX-<id>`), so parallel tests never share
//! (or remove) a parent cgroup.
//!
//! Needs root and `/bin/busybox` (static); the oci shim's tests also need runc.

pub mod scenarios;

use std::fs;
use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message;
use protos::shim::*;
use protos::shim_ttrpc::TaskClient;
use protos::task::Status;
use ttrpc::Code;

use crate::procfs;

pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);
pub const CONTAINERD_ADDRESS: &str = "/tmp/none.sock";
/// How long a test waits for something the shim does asynchronously.
pub const LONG: Duration = Duration::from_secs(20);
pub const SIGKILL: u32 = 9;
pub const SIGTERM: u32 = 15;

// ---- the shim under test -------------------------------------------------------------------

/// Where a shim's runtime keeps what it knows of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// An OCI runtime CLI (runc): its `--root` is `<bundle>/oci-root`, the init's pid is in
    /// `<bundle>/init.pid`.
    OciRoot,
    /// The process shim is the runtime: `<bundle>/process-state.json` (init pid and cgroup
    /// path, for `shim delete`) and the container's cgroup.
    ProcessState,
    /// The VM shim: `<bundle>/vm-state.json` (guest init pid, QEMU pid, the VM's directory).
    VmState,
}

/// A shim binary under test.
#[derive(Debug, Clone, Copy)]
pub struct Shim {
    /// Absolute path of the binary (`env!("CARGO_BIN_EXE_…")`).
    pub binary: &'static str,
    /// What `-info` reports as `RuntimeInfo.name`.
    pub runtime_name: &'static str,
    pub state: StateKind,
}

impl Shim {
    /// `containerd-shim-oci-v1`, driving runc with its state in the bundle.
    pub const fn oci(binary: &'static str) -> Shim {
        Shim {
            binary,
            runtime_name: "io.containerd.oci.v1",
            state: StateKind::OciRoot,
        }
    }

    /// `containerd-shim-process-v1`, its own runtime.
    pub const fn process(binary: &'static str) -> Shim {
        Shim {
            binary,
            runtime_name: "io.containerd.process.v1",
            state: StateKind::ProcessState,
        }
    }
}

impl Shim {
    /// `containerd-shim-vm-v1`: containers in a QEMU micro-VM; the pids it reports are the
    /// guest's.
    pub const fn vm(binary: &'static str) -> Shim {
        Shim {
            binary,
            runtime_name: "io.containerd.vm.v1",
            state: StateKind::VmState,
        }
    }
}

/// The VM shim's record of a container (`vm-state.json`).
pub const VM_STATE_FILE: &str = "vm-state.json";

/// The process shim's record of a container (`process-state.json`).
pub const PROCESS_STATE_FILE: &str = "process-state.json";

// ---- ttrpc -----------------------------------------------------------------------------------

/// A ttrpc context carrying the same deadline the test enforces.
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(RPC_TIMEOUT.as_nanos() as i64)
}

/// Awaits one RPC, failing the test if it does not answer within [`RPC_TIMEOUT`].
pub async fn rpc<T, F: Future<Output = ttrpc::Result<T>>>(what: &str, f: F) -> ttrpc::Result<T> {
    match tokio::time::timeout(RPC_TIMEOUT + Duration::from_secs(1), f).await {
        Ok(r) => r,
        Err(_) => panic!("{what}: no answer within {RPC_TIMEOUT:?}"),
    }
}

/// `client.method(ctx(), &req)` bounded by the timeout.
#[macro_export]
macro_rules! call {
    ($client:expr, $method:ident, $req:expr) => {
        $crate::direct::rpc(
            stringify!($method),
            $client.$method($crate::direct::ctx(), &$req),
        )
        .await
    };
}

/// The ttrpc status code of a failed call; panics on success or on a transport error.
pub fn code_of<T: std::fmt::Debug>(what: &str, r: ttrpc::Result<T>) -> ttrpc::Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("{what}: expected an RPC status error, got {other:?}"),
    }
}

/// Asserts a call failed with exactly `want`.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(what: &str, r: ttrpc::Result<T>, want: ttrpc::Code) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => assert_eq!(
            s.code(),
            want,
            "{what}: wrong code (message {:?})",
            s.message()
        ),
        other => panic!("{what}: expected {want:?}, got {other:?}"),
    }
}

/// The status of a failed call: code and message; panics on success or a transport error.
#[track_caller]
pub fn status_err<T: std::fmt::Debug>(what: &str, r: ttrpc::Result<T>) -> (Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("{what}: expected an RPC status error, got {other:?}"),
    }
}

pub async fn connect(address: &str) -> ttrpc::r#async::Client {
    tokio::time::timeout(RPC_TIMEOUT, ttrpc::r#async::Client::connect(address))
        .await
        .expect("connecting timed out")
        .unwrap_or_else(|e| panic!("connecting to {address}: {e:?}"))
}

pub async fn task_client(address: &str) -> TaskClient {
    TaskClient::new(connect(address).await)
}

pub fn status_of(st: &StateResponse) -> Status {
    st.status
        .enum_value()
        .unwrap_or_else(|v| panic!("unknown status {v}"))
}

pub fn socket_of(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").expect("unix:// address"))
}

/// Shutdown may lose its reply to the exiting daemon (containerd ignores that too); anything
/// but an RPC error is fine.
pub async fn shutdown(client: &TaskClient, id: &str) {
    match call!(client, shutdown, shutdown_req(id)) {
        Ok(_) => {}
        Err(ttrpc::Error::RpcStatus(s)) => panic!("Shutdown refused: {s:?}"),
        Err(_) => {}
    }
}

/// After a refused call the daemon must still answer normal calls (`id` is running).
pub async fn still_serving(client: &TaskClient, id: &str, after: &str) {
    let st = call!(client, state, state_req(id, ""))
        .unwrap_or_else(|e| panic!("after {after}: State of {id} failed: {e:?}"));
    assert_eq!(status_of(&st), Status::RUNNING, "after {after}");
    call!(client, connect, connect_req(id))
        .unwrap_or_else(|e| panic!("after {after}: Connect failed: {e:?}"));
}

/// Sends a request by service and method name; returns the status code and message.
pub async fn raw_request(
    client: &ttrpc::r#async::Client,
    service: &str,
    method: &str,
) -> (Code, String) {
    let req = ttrpc::Request {
        service: service.into(),
        method: method.into(),
        timeout_nano: RPC_TIMEOUT.as_nanos() as i64,
        payload: StateRequest::new().write_to_bytes().unwrap(),
        ..Default::default()
    };
    match rpc(method, client.request(req)).await {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        Ok(resp) => (
            resp.status.as_ref().map(|s| s.code()).unwrap_or(Code::OK),
            String::new(),
        ),
        Err(e) => panic!("{service}/{method}: transport error {e:?}"),
    }
}

// ---- raw bytes on the socket -------------------------------------------------------------------

/// A tiny deterministic generator for garbage bytes.
pub fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// A ttrpc frame header.
pub fn header(len: u32, stream: u32, kind: u8, flags: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(10);
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&stream.to_be_bytes());
    h.push(kind);
    h.push(flags);
    h
}

/// Writes `bytes` on a fresh connection, reads whatever comes back for a moment, closes.
pub fn poke(socket: &Path, bytes: &[u8]) {
    let mut s = UnixStream::connect(socket).expect("connecting a raw stream");
    let _ = s.write_all(bytes);
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut sink = [0u8; 4096];
    let _ = s.read(&mut sink);
}

// ---- request builders ----------------------------------------------------------------------

pub fn create_req(id: &str, bundle: &Path) -> CreateTaskRequest {
    CreateTaskRequest {
        id: id.into(),
        bundle: bundle.to_string_lossy().into_owned(),
        ..Default::default()
    }
}

pub fn state_req(id: &str, exec_id: &str) -> StateRequest {
    StateRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    }
}

pub fn start_req(id: &str, exec_id: &str) -> StartRequest {
    StartRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    }
}

pub fn wait_req(id: &str, exec_id: &str) -> WaitRequest {
    WaitRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    }
}

pub fn delete_req(id: &str, exec_id: &str) -> DeleteRequest {
    DeleteRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    }
}

pub fn kill_req(id: &str, exec_id: &str, signal: u32) -> KillRequest {
    KillRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        signal,
        ..Default::default()
    }
}

pub fn pids_req(id: &str) -> PidsRequest {
    PidsRequest {
        id: id.into(),
        ..Default::default()
    }
}

pub fn connect_req(id: &str) -> ConnectRequest {
    ConnectRequest {
        id: id.into(),
        ..Default::default()
    }
}

pub fn shutdown_req(id: &str) -> ShutdownRequest {
    ShutdownRequest {
        id: id.into(),
        ..Default::default()
    }
}

/// An OCI `Process` (JSON) packed the way containerd packs an exec spec.
pub fn process_any(args: &[&str], terminal: bool) -> protobuf::well_known_types::any::Any {
    let p = serde_json::json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin", "TERM=xterm"],
        "cwd": "/",
    });
    raw_any(
        protos::type_urls::OCI_PROCESS,
        serde_json::to_vec(&p).unwrap(),
    )
}

pub fn raw_any(type_url: &str, value: Vec<u8>) -> protobuf::well_known_types::any::Any {
    let mut a = protobuf::well_known_types::any::Any::new();
    a.type_url = type_url.into();
    a.value = value;
    a
}

pub fn exec_req(id: &str, exec_id: &str, args: &[&str]) -> ExecProcessRequest {
    ExecProcessRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        spec: protobuf::MessageField::some(process_any(args, false)),
        ..Default::default()
    }
}

/// A rootfs entry containerd would send for a bind-mounted snapshot.
pub fn bind_mount(source: &Path) -> protos::mount::Mount {
    let mut m = protos::mount::Mount::new();
    m.type_ = "bind".into();
    m.source = source.to_string_lossy().into_owned();
    m.options = vec!["rbind".into(), "ro".into()];
    m
}

// ---- processes and the file system -----------------------------------------------------------

/// True while `pid` exists and is not a zombie (the daemon and containers are re-parented to an
/// init that may never reap them).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("");
    !matches!(state, "Z" | "X" | "x" | "")
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

/// Mount points listed in `/proc/self/mountinfo`, unescaped.
pub fn mount_points() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount(p)))
        .collect()
}

/// The `(mount point, per-mount options)` pairs of another process's mount namespace.
pub fn mountinfo_of(pid: u32) -> Vec<(PathBuf, String)> {
    let text = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let mp = f.nth(4)?;
            let opts = f.next()?;
            Some((PathBuf::from(unescape_mount(mp)), opts.to_string()))
        })
        .collect()
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Existing directories of cgroup `path` (e.g. `/shp-x-c1`), in every hierarchy.
pub fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    procfs::cgroup_dirs(path)
}

/// Every pid in cgroup `path`, over all hierarchies.
pub fn cgroup_pids(path: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = cgroup_dirs(path)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Every path below `dir` (not following symlinks, not entering mount points), relative to it.
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, mounts: &[PathBuf], out: &mut Vec<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap_or(&p).to_path_buf());
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir && !mounts.contains(&p) {
                walk(base, &p, mounts, out);
            }
        }
    }
    let mounts = mount_points();
    let mut out = Vec::new();
    walk(dir, dir, &mounts, &mut out);
    out.sort();
    out
}

// ---- fifo readers ----------------------------------------------------------------------------

/// Reads a fifo to EOF on a thread of its own, keeping everything it read.
pub struct FifoReader {
    path: PathBuf,
    data: Arc<Mutex<Vec<u8>>>,
    done: Arc<AtomicBool>,
}

impl FifoReader {
    /// Opens `path` for reading (blocking until a writer appears) on a thread.
    pub fn spawn(path: &Path) -> FifoReader {
        let data = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (p, d, fin) = (path.to_path_buf(), data.clone(), done.clone());
        std::thread::spawn(move || {
            if let Ok(mut f) = fs::File::open(&p) {
                let mut buf = [0u8; 8192];
                loop {
                    match f.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => d.lock().unwrap().extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
            }
            fin.store(true, Ordering::SeqCst);
        });
        FifoReader {
            path: path.to_path_buf(),
            data,
            done,
        }
    }

    pub fn contents(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.contents()).into_owned()
    }

    /// Waits until every writer closed the fifo; returns what was read.
    pub fn wait_eof(&self, timeout: Duration) -> Option<Vec<u8>> {
        wait_until(timeout, || self.done.load(Ordering::SeqCst)).then(|| self.contents())
    }

    /// Waits until what was read contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.text().contains(needle))
    }
}

impl Drop for FifoReader {
    fn drop(&mut self) {
        if !self.done.load(Ordering::SeqCst) {
            // Unblock an `open` still waiting for a writer; the thread then sees EOF.
            let _ = fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.path);
        }
    }
}

/// The write end of a stdin fifo, opened without waiting for a reader (`O_RDWR`).
pub fn fifo_writer(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {} for writing: {e}", path.display()))
}

// ---- the environment -----------------------------------------------------------------------

/// `runc spec` (runc 1.1), the template every bundle's config.json is patched from. Embedded,
/// so shims that do not use runc do not need it to be installed.
fn spec_template() -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// Where a bundle's spec points its root.
#[derive(Clone, Copy)]
pub enum Root<'a> {
    /// The shared busybox rootfs, by absolute path (no rootfs mounts needed in Create).
    Busybox,
    /// `rootfs` in the bundle: Create must mount something there.
    InBundle,
    /// Anything else (e.g. a path that does not exist).
    Path(&'a str),
}

struct Container {
    id: String,
    bundle: PathBuf,
    cgroup: String,
}

/// Busybox applets linked in the test rootfs.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "true", "false", "ls", "stty", "tty", "id",
];

pub struct Env {
    pub shim: Shim,
    pub dir: tempfile::TempDir,
    pub ns: String,
    /// The busybox rootfs: `/bin/busybox` plus applet links and mount points.
    pub rootfs: PathBuf,
    containers: Mutex<Vec<Container>>,
    logs: Mutex<Vec<(PathBuf, FifoReader)>>,
    daemons: Mutex<Vec<u32>>,
}

impl Env {
    pub fn new(shim: &Shim, ns: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("shp-")
            .tempdir_in("/tmp")
            .expect("creating the test dir");
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copying busybox");
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::create_dir_all(dir.path().join(ns)).unwrap();
        Env {
            shim: *shim,
            dir,
            ns: ns.to_string(),
            rootfs,
            containers: Mutex::new(Vec::new()),
            logs: Mutex::new(Vec::new()),
            daemons: Mutex::new(Vec::new()),
        }
    }

    fn tag(&self) -> String {
        self.dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    pub fn bundle_path(&self, id: &str) -> PathBuf {
        self.dir.path().join(&self.ns).join(id)
    }

    /// The `linux.cgroupsPath` [`Env::bundle`] gives container `id`: unique to this test.
    pub fn cgroup_path(&self, id: &str) -> String {
        format!("/{}-{id}", self.tag())
    }

    /// Creates `<dir>/<ns>/<id>` with a patched `runc spec` running `args`.
    pub fn bundle(&self, id: &str, args: &[&str], root: Root<'_>) -> PathBuf {
        self.bundle_with(id, args, root, |_| {})
    }

    pub fn bundle_with(
        &self,
        id: &str,
        args: &[&str],
        root: Root<'_>,
        patch: impl FnOnce(&mut serde_json::Value),
    ) -> PathBuf {
        let bundle = self.bundle_path(id);
        fs::create_dir_all(&bundle).unwrap();
        let mut spec = spec_template();
        let root_path = match root {
            Root::Busybox => self.rootfs.to_string_lossy().into_owned(),
            Root::InBundle => {
                fs::create_dir_all(bundle.join("rootfs")).unwrap();
                "rootfs".to_string()
            }
            Root::Path(p) => p.to_string(),
        };
        spec["root"] = serde_json::json!({"path": root_path, "readonly": true});
        spec["process"]["args"] = serde_json::json!(args);
        spec["process"]["terminal"] = serde_json::json!(false);
        spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
        spec["process"]["cwd"] = serde_json::json!("/");
        let cgroup = self.cgroup_path(id);
        spec["linux"]["cgroupsPath"] = serde_json::json!(cgroup);
        if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
        }
        patch(&mut spec);
        fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        self.containers.lock().unwrap().push(Container {
            id: id.to_string(),
            bundle: bundle.clone(),
            cgroup,
        });
        bundle
    }

    /// Makes the `log` fifo in `bundle` and drains it for the rest of the test.
    pub fn log_fifo(&self, bundle: &Path) {
        let path = bundle.join("log");
        mkfifo(&path);
        let reader = FifoReader::spawn(&path);
        self.logs.lock().unwrap().push((path, reader));
    }

    /// Everything the shims wrote to their log fifos so far.
    pub fn logs(&self) -> String {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .map(|(p, r)| format!("--- {} ---\n{}", p.display(), r.text()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The shim's arguments as containerd passes them, for `id`, ending with `action`.
    pub fn shim_args(&self, id: &str, extra: &[&str], action: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "-namespace",
            &self.ns,
            "-id",
            id,
            "-address",
            CONTAINERD_ADDRESS,
            "-debug",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        args.push(action.to_string());
        args
    }

    /// The shim command line containerd uses, for `id` (cwd = its bundle).
    pub fn shim_command(&self, id: &str, extra: &[&str], action: &str) -> Command {
        let mut cmd = Command::new(self.shim.binary);
        cmd.args(self.shim_args(id, extra, action));
        cmd.current_dir(self.bundle_path(id))
            .env_remove("TTRPC_ADDRESS")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `start` for `id` (its bundle must exist) and returns the address it printed.
    pub fn start_shim(&self, id: &str) -> String {
        let bundle = self.bundle_path(id);
        self.log_fifo(&bundle);
        let out = self
            .shim_command(id, &[], "start")
            .output()
            .expect("running start");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let address = self.finish_start(id, out);
        // containerd reads stdout and stderr together: a successful start says nothing else.
        assert!(stderr.is_empty(), "start wrote to stderr: {stderr}");
        address
    }

    /// Records the daemon a `start` spawned and returns the address it printed.
    pub fn finish_start(&self, id: &str, out: Output) -> String {
        let bundle = self.bundle_path(id);
        if let Some(pid) = read_pid(&bundle.join("shim.pid")) {
            self.daemons.lock().unwrap().push(pid);
        }
        assert!(
            out.status.success(),
            "start failed: {:?}\nstderr: {}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        if !out.stderr.is_empty() {
            eprintln!("start stderr: {}", String::from_utf8_lossy(&out.stderr));
        }
        let address = String::from_utf8(out.stdout).expect("address is UTF-8");
        assert!(
            address.starts_with("unix:///"),
            "start printed {address:?}, not a unix socket address"
        );
        address
    }

    pub fn daemon_pid(&self, id: &str) -> u32 {
        read_pid(&self.bundle_path(id).join("shim.pid")).expect("shim.pid")
    }

    /// Asserts the shim daemon serving `id` exited and removed its socket.
    pub fn assert_daemon_gone(&self, id: &str, socket: &Path) {
        let pid = self.daemon_pid(id);
        assert!(
            wait_until(LONG, || !pid_alive(pid)),
            "the shim daemon {pid} did not exit after Shutdown"
        );
        assert!(
            wait_until(LONG, || !socket.exists()),
            "the daemon left its socket {} behind",
            socket.display()
        );
    }

    // ---- the runtime's state, by shim -------------------------------------------------------

    /// Whether the container of init `pid` still runs. A VM's pids are the guest's, invisible
    /// to the host: there the question is whether a VM of this test still runs.
    pub fn init_alive(&self, pid: u32) -> bool {
        if self.shim.state != StateKind::VmState {
            return pid_alive(pid);
        }
        let Ok(dir) = fs::read_dir("/proc") else {
            return false;
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| pid_alive(*p))
            .any(|p| {
                fs::read_link(format!("/proc/{p}/cwd"))
                    .is_ok_and(|c| c.starts_with(self.dir.path()))
                    && fs::read_link(format!("/proc/{p}/exe"))
                        .is_ok_and(|e| e.to_string_lossy().contains("qemu-system"))
            })
    }

    /// The init pid the runtime recorded in the bundle for `shim delete`.
    pub fn recorded_init_pid(&self, id: &str) -> Option<u32> {
        let bundle = self.bundle_path(id);
        match self.shim.state {
            StateKind::OciRoot => read_pid(&bundle.join("init.pid")),
            StateKind::ProcessState | StateKind::VmState => {
                let file = if self.shim.state == StateKind::VmState {
                    VM_STATE_FILE
                } else {
                    PROCESS_STATE_FILE
                };
                let data = fs::read(bundle.join(file)).ok()?;
                let v: serde_json::Value = serde_json::from_slice(&data).ok()?;
                v["init_pid"].as_u64().map(|p| p as u32)
            }
        }
    }

    /// Whether the runtime still holds state for container `id` (runc's state directory; the
    /// process shim's state file or the container's cgroup).
    pub fn runtime_state_exists(&self, id: &str) -> bool {
        let bundle = self.bundle_path(id);
        match self.shim.state {
            StateKind::OciRoot => bundle.join("oci-root").join(id).exists(),
            StateKind::ProcessState => {
                bundle.join(PROCESS_STATE_FILE).exists()
                    || !cgroup_dirs(&self.cgroup_path(id)).is_empty()
            }
            StateKind::VmState => bundle.join(VM_STATE_FILE).exists() || bundle.join("vm").exists(),
        }
    }

    /// After `shim delete`: nothing of the runtime's state of `id` is left.
    pub fn assert_runtime_state_cleaned(&self, id: &str) {
        let bundle = self.bundle_path(id);
        match self.shim.state {
            StateKind::OciRoot => {
                assert!(
                    !bundle.join("oci-root").exists(),
                    "`shim delete` left runc state in {}",
                    bundle.join("oci-root").display()
                );
                let st = Command::new("runc")
                    .arg("--root")
                    .arg(bundle.join("oci-root"))
                    .args(["state", id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap();
                assert!(!st.success(), "runc still knows the container");
            }
            StateKind::ProcessState => {
                assert!(
                    !bundle.join(PROCESS_STATE_FILE).exists(),
                    "`shim delete` left {}",
                    bundle.join(PROCESS_STATE_FILE).display()
                );
                let cgroup = self.cgroup_path(id);
                assert!(
                    wait_until(LONG, || cgroup_dirs(&cgroup).is_empty()),
                    "`shim delete` left the cgroup: {:?} (pids {:?})",
                    cgroup_dirs(&cgroup),
                    cgroup_pids(&cgroup)
                );
            }
            StateKind::VmState => {
                assert!(
                    !bundle.join(VM_STATE_FILE).exists(),
                    "`shim delete` left {}",
                    bundle.join(VM_STATE_FILE).display()
                );
                assert!(
                    !bundle.join("vm").exists(),
                    "`shim delete` left the VM's directory {}",
                    bundle.join("vm").display()
                );
                let vm = bundle.join("vm");
                let mounts: Vec<_> = mount_points()
                    .into_iter()
                    .filter(|m| m.starts_with(&vm))
                    .collect();
                assert!(mounts.is_empty(), "`shim delete` left mounts {mounts:?}");
            }
        }
    }

    /// Best-effort removal of everything the test created, also after a failure.
    fn cleanup(&self) {
        for &pid in self.daemons.lock().unwrap().iter() {
            if pid_alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let containers = std::mem::take(&mut *self.containers.lock().unwrap());
        for c in &containers {
            let root = c.bundle.join("oci-root");
            if root.exists() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", &c.id])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            // A container process runc no longer knows (its state is gone): kill it, but only
            // if it is still in this container's cgroup (never a recycled pid).
            if let Some(pid) = read_pid(&c.bundle.join("init.pid")) {
                let in_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|s| s.contains(&c.cgroup));
                if in_cgroup && pid_alive(pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        // Mounts (rootfs binds) left under the test dir, deepest first.
        let base = self.dir.path().to_path_buf();
        let mut mounts: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&base))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        // cgroups the runtime did not remove (one level deep, ours alone): kill what is still
        // in them, then remove them. Thaw every hierarchy first: a task of a frozen v1 cgroup
        // does not die of SIGKILL, and every hierarchy holds it until it does.
        let dirs: Vec<PathBuf> = containers
            .iter()
            .flat_map(|c| cgroup_dirs(&c.cgroup))
            .collect();
        for dir in &dirs {
            let _ = fs::write(dir.join("freezer.state"), "THAWED");
            let _ = fs::write(dir.join("cgroup.freeze"), "0");
        }
        for dir in &dirs {
            procfs::kill_and_remove_cgroup(dir);
            if dir.exists() {
                wait_until(Duration::from_secs(5), || {
                    fs::remove_dir(dir).is_ok() || !dir.exists()
                });
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("shim logs of the failed test:\n{}", self.logs());
        }
        self.cleanup();
        self.logs.lock().unwrap().clear();
    }
}

/// The shared protocol scenarios ([`scenarios`]) as one `#[test]` each, for the shim `$shim`
/// (a `const Shim`): what every shim crate's `tests/protocol.rs` starts with.
#[macro_export]
macro_rules! protocol_scenarios {
    ($shim:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn happy_path_over_raw_ttrpc() {
            $crate::direct::scenarios::happy_path(&$shim).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn bad_input_gets_the_right_code() {
            $crate::direct::scenarios::bad_input(&$shim).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn garbage_on_the_socket() {
            $crate::direct::scenarios::garbage_on_the_socket(&$shim).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn task_api_v3_on_the_same_socket() {
            $crate::direct::scenarios::task_api_v3(&$shim).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn delete_action_after_a_crash() {
            $crate::direct::scenarios::delete_after_a_crash(&$shim).await;
        }

        #[test]
        fn info_and_version() {
            $crate::direct::scenarios::info_and_version(&$shim);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn writes_nothing_outside_the_bundle() {
            $crate::direct::scenarios::writes_nothing_outside_the_bundle(&$shim).await;
        }
    };
}
