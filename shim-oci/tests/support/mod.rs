//! Playing containerd's role against the oci shim binary: bundles, the `log` fifo, `start`,
//! a ttrpc client, and a clean-up that leaves nothing behind even when a test fails.
//!
//! Every test owns one [`Env`]: a short temp dir `/tmp/shp-XXXXXX` holding a busybox rootfs and
//! bundles at `<dir>/<ns>/<id>` (so `shim.sock` stays far below `sun_path`). Each container gets
//! a cgroup path of its own, one level deep (`/shp-XXXXXX-<id>`), so parallel tests never share
//! (or remove) a parent cgroup.

#![allow(dead_code)]

use std::fs;
use std::future::Future;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use protos::shim::*;
use protos::shim_ttrpc::TaskClient;

pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);
pub const CONTAINERD_ADDRESS: &str = "/tmp/none.sock";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_containerd-shim-oci-v1")
}

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
        $crate::support::rpc(
            stringify!($method),
            $client.$method($crate::support::ctx(), &$req),
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

pub async fn connect(address: &str) -> ttrpc::r#async::Client {
    tokio::time::timeout(RPC_TIMEOUT, ttrpc::r#async::Client::connect(address))
        .await
        .expect("connecting timed out")
        .unwrap_or_else(|e| panic!("connecting to {address}: {e:?}"))
}

pub async fn task_client(address: &str) -> TaskClient {
    TaskClient::new(connect(address).await)
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

// ---- the environment -----------------------------------------------------------------------

fn spec_template() -> &'static serde_json::Value {
    static SPEC: OnceLock<serde_json::Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("shp-spec-")
            .tempdir_in("/tmp")
            .unwrap();
        let out = Command::new("runc")
            .arg("spec")
            .current_dir(dir.path())
            .output()
            .expect("running `runc spec`");
        assert!(out.status.success(), "runc spec: {out:?}");
        serde_json::from_slice(&fs::read(dir.path().join("config.json")).unwrap()).unwrap()
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

pub struct Env {
    pub dir: tempfile::TempDir,
    pub ns: String,
    /// The busybox rootfs: `/bin/busybox` plus applet links and mount points.
    pub rootfs: PathBuf,
    containers: Mutex<Vec<Container>>,
    logs: Mutex<Vec<(PathBuf, FifoReader)>>,
    daemons: Mutex<Vec<u32>>,
}

impl Env {
    pub fn new(ns: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("shp-")
            .tempdir_in("/tmp")
            .expect("creating the test dir");
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copying busybox");
        for applet in ["sh", "cat", "echo", "sleep", "true", "false", "ls"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::create_dir_all(dir.path().join(ns)).unwrap();
        Env {
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
        let mut spec = spec_template().clone();
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
        let cgroup = format!("/{}-{id}", self.tag());
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
        let mut cmd = Command::new(bin());
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
        // cgroups runc did not remove (one level deep, ours alone).
        if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
            let hierarchies: Vec<PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
            for c in &containers {
                for h in &hierarchies {
                    let dir = h.join(c.cgroup.trim_start_matches('/'));
                    if dir.exists() {
                        wait_until(Duration::from_secs(5), || {
                            fs::remove_dir(&dir).is_ok() || !dir.exists()
                        });
                    }
                }
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
