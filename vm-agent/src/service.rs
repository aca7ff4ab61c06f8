//! The `shimvm.agent.v1.Agent` service: containers created inside the guest with the
//! `container` library, the way the process shim creates them on a host.
//!
//! Differences from the process shim, and why:
//! * the spec comes in the request, not from the bundle: the bundle is the host's, seen through
//!   the 9p share, and the host adapts the spec to the guest (root path, hooks, cgroups), so the
//!   agent writes it to a directory of its own and never writes into the share;
//! * the root of the guest is the initramfs, where pivot_root is refused, so containers enter
//!   their rootfs by move-mount and chroot (`no_pivot`);
//! * prestart/createRuntime hooks name host programs and belong to the host; the agent does not
//!   run them (the container library still runs createContainer/startContainer hooks, inside
//!   the container, as the spec asks);
//! * exits are kept until the container is removed, so a host that reconnects can still wait.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use container::cgroups::Cgroup;
use container::init::{SetupConfig, SetupMode};
use container::launch::{Launched, Launcher};
use oci_spec::runtime::{LinuxResources, Spec};
use protobuf::well_known_types::empty::Empty;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::MessageField;
use protos::agent::*;
use shim_common::{Error, Result};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use ttrpc::r#async::TtrpcContext;

use crate::output::{self, OutputLink};
use crate::reaper::{ExitWatch, Reaper};
use crate::stdio::{self, Kind, Streams};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

struct Proc {
    pid: u32,
    exit: ExitWatch,
    console: Option<Arc<AsyncFd<OwnedFd>>>,
    streams: Vec<String>,
    /// Outputs going to the output port; dropping them ends their channels (with EOF).
    _pumps: Vec<output::Pump>,
}

struct Container {
    dir: PathBuf,
    /// Shared by the execs, not copied for each: an exec's latency is what `ctr task exec`
    /// waits for.
    spec: Arc<Spec>,
    cgroup_path: String,
    /// The created init, until StartContainer.
    pending: Option<Launched>,
    init: Proc,
    execs: HashMap<String, Proc>,
    oom_task: Option<tokio::task::JoinHandle<()>>,
}

pub struct Agent {
    reaper: Arc<Reaper>,
    /// PID 1 of a guest (as opposed to a test on a host).
    guest: bool,
    launcher: Launcher,
    state_root: PathBuf,
    containers: Mutex<HashMap<String, Container>>,
    streams: Streams,
    /// The output port (or its stand-in socket), for outputs the host asked to get there.
    output: Arc<OutputLink>,
    shutdown: watch::Sender<bool>,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    /// The 9p tags the host asked for (`agent.share=`), mounted at the first CreateContainer,
    /// not at boot: a VM template is saved before any share may be mounted (see boot.rs).
    shares: Vec<String>,
    /// Whether `shares` are mounted; the lock keeps two first Creates from mounting twice.
    shares_mounted: tokio::sync::Mutex<bool>,
}

fn typed(e: container::Error) -> Error {
    match e {
        container::Error::Spec(m) => Error::InvalidArgument(m),
        other => Error::Runtime(other.to_string()),
    }
}

fn cgroup_err(e: container::cgroups::CgroupError) -> Error {
    Error::Runtime(format!("cgroup: {e}"))
}

fn signal(pid: u32, sig: u32) -> Result<()> {
    use nix::sys::signal::{kill, Signal};
    let s = Signal::try_from(sig as i32)
        .map_err(|_| Error::InvalidArgument(format!("invalid signal {sig}")))?;
    match kill(nix::unistd::Pid::from_raw(pid as i32), s) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ESRCH) => Err(Error::NotFound("process already finished".into())),
        Err(e) => Err(Error::sys(format!("signalling {pid}"), e)),
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The spec with `root.path` absolute in the guest (relative paths are relative to `bundle`).
fn guest_spec(spec: &[u8], bundle: &str) -> Result<Vec<u8>> {
    let mut v: serde_json::Value =
        serde_json::from_slice(spec).map_err(|e| Error::InvalidArgument(format!("spec: {e}")))?;
    let root = v
        .get("root")
        .and_then(|r| r.get("path"))
        .and_then(|p| p.as_str())
        .ok_or_else(|| Error::InvalidArgument("the spec has no root.path".into()))?;
    if !Path::new(root).is_absolute() {
        if bundle.is_empty() {
            return Err(Error::InvalidArgument(
                "a relative root.path needs the bundle directory".into(),
            ));
        }
        let abs = Path::new(bundle).join(root).to_string_lossy().into_owned();
        v["root"]["path"] = serde_json::Value::String(abs);
    }
    serde_json::to_vec(&v).map_err(|e| Error::Other(format!("spec: {e}")))
}

impl Agent {
    pub fn new(
        reaper: Arc<Reaper>,
        guest: bool,
        shares: Vec<String>,
        output: Arc<OutputLink>,
    ) -> Agent {
        let state_root = if guest {
            PathBuf::from("/run/vm-agent/containers")
        } else {
            std::env::temp_dir().join(format!("vm-agent-{}", std::process::id()))
        };
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        Agent {
            reaper,
            guest,
            launcher: Launcher {
                program: PathBuf::from("/proc/self/exe"),
                args: vec![crate::SETUP_ARG.to_string()],
                // The agent runs one thread (see main), so the setup process is a fork of it.
                fork_when_single_threaded: true,
            },
            state_root,
            containers: Mutex::new(HashMap::new()),
            streams: Streams::default(),
            output,
            shutdown: watch::channel(false).0,
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
            shares,
            shares_mounted: tokio::sync::Mutex::new(false),
        }
    }

    /// Mounts the host's shares the first time a container needs them; a failure is the
    /// Create's, and the next Create tries again.
    async fn ensure_shares(&self) -> Result<()> {
        let mut mounted = self.shares_mounted.lock().await;
        if *mounted || self.shares.is_empty() {
            return Ok(());
        }
        let tags = self.shares.clone();
        tokio::task::spawn_blocking(move || {
            tags.iter().try_for_each(|t| crate::boot::mount_share(t))
        })
        .await
        .map_err(|e| Error::Other(format!("mounting the shares: {e}")))?
        .map_err(Error::Other)?;
        *mounted = true;
        Ok(())
    }

    /// SyncGuest: the host's clock and entropy (see agent.proto). Only in a guest: outside a
    /// VM (tests) the clock and pool are the host's own.
    fn apply_sync(&self, req: &SyncGuestRequest) -> Result<()> {
        if !self.guest {
            return Ok(());
        }
        if let Some(now) = req.now.as_ref() {
            crate::boot::set_realtime(now.seconds, now.nanos)
                .map_err(|e| Error::io("setting the clock".to_string(), e))?;
        }
        crate::boot::add_entropy(&req.entropy)
            .map_err(|e| Error::io("adding the host's entropy".to_string(), e))?;
        log::debug!("clock set, {} bytes of entropy added", req.entropy.len());
        Ok(())
    }

    /// Resolves once Shutdown was called.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Removes the agent's own state directory (outside a VM it is under /tmp).
    pub fn remove_state(&self) {
        let _ = std::fs::remove_dir_all(&self.state_root);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start_pumps(&self, channels: Vec<(u32, Arc<AsyncFd<OwnedFd>>)>) -> Vec<output::Pump> {
        channels
            .into_iter()
            .map(|(channel, pipe)| output::spawn_pump(self.output.clone(), channel, pipe))
            .collect()
    }

    fn register_streams(&self, streams: Vec<(String, Arc<stdio::Stream>)>) -> Vec<String> {
        let mut ids = Vec::new();
        for (id, s) in streams {
            ids.push(id.clone());
            self.streams.insert(id, s);
        }
        ids
    }

    /// The exit watch of a process, or NotFound.
    fn process(&self, id: &str, exec_id: &str) -> Result<(u32, ExitWatch, String)> {
        let map = self.lock();
        let c = map
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
        let p = if exec_id.is_empty() {
            &c.init
        } else {
            c.execs
                .get(exec_id)
                .ok_or_else(|| Error::NotFound(format!("exec {exec_id} not found in {id}")))?
        };
        Ok((p.pid, p.exit.clone(), c.cgroup_path.clone()))
    }

    async fn create(&self, req: CreateContainerRequest) -> Result<CreateContainerResponse> {
        let id = req.container_id.clone();
        shim_common::id::validate("container", &id)?;
        if self.lock().contains_key(&id) {
            return Err(Error::AlreadyExists(format!(
                "container {id} already exists"
            )));
        }
        let stdio_ids = req.stdio.clone().unwrap_or_default();
        self.streams
            .check_free(&[&stdio_ids.stdin, &stdio_ids.stdout, &stdio_ids.stderr])?;
        self.ensure_shares().await?;
        let dir = self.state_root.join(&id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let result = self.create_in(&req, &dir, &stdio_ids).await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    async fn create_in(
        &self,
        req: &CreateContainerRequest,
        dir: &Path,
        ids: &StdioStreams,
    ) -> Result<CreateContainerResponse> {
        let id = &req.container_id;
        let spec_json = guest_spec(&req.spec, &req.bundle)?;
        std::fs::write(dir.join("config.json"), &spec_json)
            .map_err(|e| Error::io("writing config.json", e))?;
        let spec = container::init::load_spec(dir).map_err(typed)?;
        if spec.process().is_none() {
            return Err(Error::InvalidArgument("the spec has no process".into()));
        }
        if let Some(h) = spec.hooks() {
            let host_hooks = h.prestart().as_ref().map_or(0, Vec::len)
                + h.create_runtime().as_ref().map_or(0, Vec::len);
            if host_hooks > 0 {
                log::warn!("container {id}: {host_hooks} prestart/createRuntime hooks not run in the guest");
            }
        }
        let cgroup_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| format!("/vm-agent/{id}"));
        let cgroup = Cgroup::create(Path::new(CGROUP_ROOT), &cgroup_path).map_err(cgroup_err)?;
        let launched = async {
            let mut res = spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().clone())
                .unwrap_or_default();
            // No device list means the default allow-list, not open device access.
            if res.devices().is_none() {
                res.set_devices(Some(Vec::new()));
            }
            cgroup.apply(&res).map_err(cgroup_err)?;
            let pending = stdio::prepare(ids, req.terminal)?;
            let config = SetupConfig {
                id: id.clone(),
                bundle: dir.to_path_buf(),
                mode: SetupMode::Create,
                terminal: req.terminal,
                no_pivot: self.guest,
            };
            let mark = self.reaper.mark();
            let mut launched = self
                .launcher
                .launch(config, &spec, Some(&cgroup), pending.child, |_| async {
                    Ok(())
                })
                .await
                .map_err(typed)?;
            Ok::<_, Error>((
                launched.console.take(),
                launched,
                pending.streams,
                pending.channels,
                mark,
            ))
        }
        .await;
        let (console, launched, streams, channels, mark) = match launched {
            Ok(l) => l,
            Err(e) => {
                let _ = cgroup.kill_all(libc::SIGKILL);
                let _ = cgroup.delete();
                return Err(e);
            }
        };
        let pid = launched.pid;
        let exit = self.reaper.watch(pid, mark);
        let (console, streams) = self.console_streams(console, ids, streams)?;
        let warnings = launched.warnings.clone();
        let oom_task = self.watch_oom(id, pid, &cgroup_path);
        let proc = Proc {
            pid,
            exit,
            console,
            streams: self.register_streams(streams),
            _pumps: self.start_pumps(channels),
        };
        self.lock().insert(
            id.clone(),
            Container {
                dir: dir.to_path_buf(),
                spec: Arc::new(spec),
                cgroup_path,
                pending: Some(launched),
                init: proc,
                execs: HashMap::new(),
                oom_task,
            },
        );
        let mut resp = CreateContainerResponse::new();
        resp.pid = pid;
        resp.warnings = warnings;
        Ok(resp)
    }

    /// For a terminal, the pty master as the stdin/stdout streams.
    #[allow(clippy::type_complexity)]
    fn console_streams(
        &self,
        console: Option<OwnedFd>,
        ids: &StdioStreams,
        mut streams: Vec<(String, Arc<stdio::Stream>)>,
    ) -> Result<(
        Option<Arc<AsyncFd<OwnedFd>>>,
        Vec<(String, Arc<stdio::Stream>)>,
    )> {
        let Some(master) = console else {
            return Ok((None, streams));
        };
        let master = stdio::async_fd(master).map_err(|e| Error::io("the pty master", e))?;
        streams.extend(stdio::terminal(ids, &master));
        Ok((Some(master), streams))
    }

    /// Forwards the container's OOM kills to GetOOMEvent. Best effort: no memory controller,
    /// no events.
    fn watch_oom(&self, id: &str, pid: u32, path: &str) -> Option<tokio::task::JoinHandle<()>> {
        let watcher = match shim_common::cgroups::OomWatcher::new(pid, Some(path)) {
            Ok(w) => w,
            Err(e) => {
                log::debug!("container {id}: no OOM events: {e}");
                return None;
            }
        };
        let tx = self.oom_tx.clone();
        let id = id.to_string();
        Some(tokio::spawn(async move {
            while watcher.wait().await {
                for _ in 0..watcher.take_new_kills() {
                    let _ = tx.send(id.clone());
                }
            }
        }))
    }

    async fn start(&self, id: &str) -> Result<()> {
        let pending = {
            let mut map = self.lock();
            let c = map
                .get_mut(id)
                .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
            c.pending.take()
        };
        let launched = pending.ok_or_else(|| {
            Error::FailedPrecondition(format!("container {id} is already started"))
        })?;
        launched.start().await.map_err(typed)
    }

    async fn exec(&self, req: ExecProcessRequest) -> Result<ExecProcessResponse> {
        let t0 = std::time::Instant::now();
        let id = &req.container_id;
        shim_common::id::validate("exec", &req.exec_id)?;
        let process: serde_json::Value = serde_json::from_slice(&req.process)
            .map_err(|e| Error::InvalidArgument(format!("exec process: {e}")))?;
        let (spec, init_pid, cgroup_path, dir) = {
            let map = self.lock();
            let c = map
                .get(id)
                .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(Error::AlreadyExists(format!(
                    "exec {} already exists",
                    req.exec_id
                )));
            }
            (
                c.spec.clone(),
                c.init.pid,
                c.cgroup_path.clone(),
                c.dir.clone(),
            )
        };
        let ids = req.stdio.clone().unwrap_or_default();
        self.streams
            .check_free(&[&ids.stdin, &ids.stdout, &ids.stderr])?;
        let cgroup = Cgroup::open(Path::new(CGROUP_ROOT), &cgroup_path).ok();
        let pending = stdio::prepare(&ids, req.terminal)?;
        let config = SetupConfig {
            id: id.clone(),
            bundle: dir,
            mode: SetupMode::Exec { init_pid, process },
            terminal: req.terminal,
            no_pivot: self.guest,
        };
        let mark = self.reaper.mark();
        let mut launched = self
            .launcher
            .launch(config, &spec, cgroup.as_ref(), pending.child, |_| async {
                Ok(())
            })
            .await
            .map_err(typed)?;
        let pid = launched.pid;
        let exit = self.reaper.watch(pid, mark);
        let (console, streams) =
            self.console_streams(launched.console.take(), &ids, pending.streams)?;
        let proc = Proc {
            pid,
            exit,
            console,
            streams: self.register_streams(streams),
            _pumps: self.start_pumps(pending.channels),
        };
        let mut map = self.lock();
        match map.get_mut(id) {
            Some(c) => {
                c.execs.insert(req.exec_id.clone(), proc);
            }
            None => {
                // Removed meanwhile: the process is in a dead container; kill it.
                let _ = signal(pid, libc::SIGKILL as u32);
                return Err(Error::NotFound(format!("container {id} not found")));
            }
        }
        let mut resp = ExecProcessResponse::new();
        resp.pid = pid;
        log::debug!(
            "exec {}/{}: pid {pid} in {:?}",
            req.container_id,
            req.exec_id,
            t0.elapsed()
        );
        Ok(resp)
    }

    async fn kill(&self, req: &SignalProcessRequest) -> Result<()> {
        let (pid, exit, cgroup_path) = self.process(&req.container_id, &req.exec_id)?;
        if req.all && req.exec_id.is_empty() {
            return Cgroup::open(Path::new(CGROUP_ROOT), &cgroup_path)
                .and_then(|g| g.kill_all(req.signal as i32))
                .map_err(cgroup_err);
        }
        if exit.borrow().is_some() {
            return Err(Error::NotFound("process already finished".into()));
        }
        signal(pid, req.signal)
    }

    async fn wait(&self, req: &WaitProcessRequest) -> Result<WaitProcessResponse> {
        let (_, mut exit, _) = self.process(&req.container_id, &req.exec_id)?;
        let e = exit
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| Error::Other("the reaper is gone".into()))?
            .ok_or_else(|| Error::Other("no exit".into()))?;
        let mut resp = WaitProcessResponse::new();
        resp.pid = e.pid;
        resp.exit_status = e.status;
        let since = e.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        resp.exited_at = MessageField::some(Timestamp {
            seconds: since.as_secs() as i64,
            nanos: since.subsec_nanos() as i32,
            ..Default::default()
        });
        Ok(resp)
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let Some(mut c) = self.lock().remove(id) else {
            return Ok(());
        };
        c.pending.take();
        if let Some(t) = c.oom_task.take() {
            t.abort();
        }
        for p in std::iter::once(&c.init).chain(c.execs.values()) {
            if p.exit.borrow().is_none() {
                let _ = signal(p.pid, libc::SIGKILL as u32);
            }
            for s in &p.streams {
                self.streams.remove(s);
            }
        }
        if let Ok(cg) = Cgroup::open(Path::new(CGROUP_ROOT), &c.cgroup_path) {
            let _ = cg.kill_all(libc::SIGKILL);
            let mut last = Ok(());
            for _ in 0..50 {
                last = cg.delete();
                if last.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            last.map_err(cgroup_err)?;
        }
        let _ = std::fs::remove_dir_all(&c.dir);
        Ok(())
    }

    fn with_cgroup<T>(
        &self,
        id: &str,
        f: impl FnOnce(&Cgroup) -> container::cgroups::Result<T>,
    ) -> Result<T> {
        let path = self
            .lock()
            .get(id)
            .map(|c| c.cgroup_path.clone())
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
        let cg = Cgroup::open(Path::new(CGROUP_ROOT), &path).map_err(cgroup_err)?;
        f(&cg).map_err(cgroup_err)
    }

    async fn read(&self, req: &ReadStreamRequest, kind: Kind) -> Result<ReadStreamResponse> {
        let s = self.streams.get(&req.stream_id, &[kind])?;
        let max = match req.max_bytes as usize {
            0 => stdio::CHUNK_DEFAULT,
            n => n,
        };
        let (data, eof) = s
            .read(max)
            .await
            .map_err(|e| Error::io(format!("reading {}", req.stream_id), e))?;
        let mut resp = ReadStreamResponse::new();
        resp.data = data;
        resp.eof = eof;
        Ok(resp)
    }
}

fn empty() -> Empty {
    Empty::new()
}

#[async_trait]
impl protos::agent_ttrpc::Agent for Agent {
    async fn health(
        &self,
        _ctx: &TtrpcContext,
        req: HealthRequest,
    ) -> ttrpc::Result<HealthResponse> {
        log::debug!("health check from host {}", req.host_version);
        let mut resp = HealthResponse::new();
        resp.version = env!("CARGO_PKG_VERSION").to_string();
        resp.protocol_version = protos::AGENT_PROTOCOL_VERSION;
        resp.kernel_release = kernel_release();
        resp.uptime_ms = crate::boot::uptime().as_millis() as u64;
        let ms = |d: Option<&Duration>| d.map_or(0, |d| d.as_millis() as u64);
        resp.init_started_ms = ms(crate::boot::INIT_STARTED.get());
        resp.serving_ms = ms(crate::boot::SERVING.get());
        Ok(resp)
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        log::info!("shutdown requested");
        self.shutdown.send_replace(true);
        Ok(empty())
    }

    async fn sync_guest(&self, _ctx: &TtrpcContext, req: SyncGuestRequest) -> ttrpc::Result<Empty> {
        self.apply_sync(&req)?;
        Ok(empty())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        Ok(self.create(req).await?)
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.start(&req.container_id).await?;
        Ok(empty())
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        Ok(self.exec(req).await?)
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.kill(&req).await?;
        Ok(empty())
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        Ok(self.wait(&req).await?)
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.remove(&req.container_id).await?;
        Ok(empty())
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: WriteStdinRequest,
    ) -> ttrpc::Result<WriteStdinResponse> {
        let s = self.streams.get(&req.stream_id, &[Kind::Stdin])?;
        let n = s
            .write(&req.data)
            .await
            .map_err(|e| Error::io(format!("writing {}", req.stream_id), e))?;
        let mut resp = WriteStdinResponse::new();
        resp.written = n as u32;
        Ok(resp)
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        Ok(self.read(&req, Kind::Stdout).await?)
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        Ok(self.read(&req, Kind::Stderr).await?)
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
        // Dropping our end is the EOF the process reads (a pty master stays open for output).
        self.streams.get(&req.stream_id, &[Kind::Stdin])?;
        self.streams.remove(&req.stream_id);
        Ok(empty())
    }

    async fn resize_tty(&self, _ctx: &TtrpcContext, req: ResizeTtyRequest) -> ttrpc::Result<Empty> {
        let console = {
            let map = self.lock();
            let c = map.get(&req.container_id).ok_or_else(|| {
                Error::NotFound(format!("container {} not found", req.container_id))
            })?;
            let p = if req.exec_id.is_empty() {
                Some(&c.init)
            } else {
                c.execs.get(&req.exec_id)
            };
            p.and_then(|p| p.console.clone())
        };
        let console =
            console.ok_or_else(|| Error::NotFound("the process has no terminal".into()))?;
        let ws = libc::winsize {
            ws_row: req.height.min(u16::MAX as u32) as u16,
            ws_col: req.width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize on our pty master.
        if unsafe { libc::ioctl(console.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(Error::io("resizing the terminal", std::io::Error::last_os_error()).into());
        }
        Ok(empty())
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        let (pid, _, path) = self.process(&req.container_id, "")?;
        let any = shim_common::cgroups::metrics(pid, Some(&path))?;
        let mut resp = StatsContainerResponse::new();
        resp.stats = MessageField::some(any);
        Ok(resp)
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.with_cgroup(&req.container_id, |g| g.freeze())?;
        Ok(empty())
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.with_cgroup(&req.container_id, |g| g.thaw())?;
        Ok(empty())
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let res: LinuxResources = serde_json::from_slice(&req.resources)
            .map_err(|e| Error::InvalidArgument(format!("resources: {e}")))?;
        self.with_cgroup(&req.container_id, |g| g.apply(&res))?;
        Ok(empty())
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        let pids = self.with_cgroup(&req.container_id, |g| g.pids())?;
        let names: HashMap<u32, String> = self
            .lock()
            .get(&req.container_id)
            .map(|c| c.execs.iter().map(|(id, p)| (p.pid, id.clone())).collect())
            .unwrap_or_default();
        let mut resp = ListProcessesResponse::new();
        for pid in pids {
            let mut e = ProcessEntry::new();
            e.pid = pid;
            e.exec_id = names.get(&pid).cloned().unwrap_or_default();
            resp.processes.push(e);
        }
        Ok(resp)
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        _req: GetOOMEventRequest,
    ) -> ttrpc::Result<OOMEvent> {
        let id = self
            .oom_rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| Error::Other("OOM events ended".into()))?;
        let mut ev = OOMEvent::new();
        ev.container_id = id;
        Ok(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_path_made_absolute() {
        let spec = br#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&guest_spec(spec, "/mnt/share/c1").unwrap()).unwrap();
        assert_eq!(out["root"]["path"], "/mnt/share/c1/rootfs");
        let abs = br#"{"root":{"path":"/x"}}"#;
        let out: serde_json::Value = serde_json::from_slice(&guest_spec(abs, "").unwrap()).unwrap();
        assert_eq!(out["root"]["path"], "/x");
        assert!(guest_spec(br#"{"root":{"path":"rootfs"}}"#, "").is_err());
        assert!(guest_spec(b"{}", "/b").is_err());
        assert!(guest_spec(b"not json", "/b").is_err());
    }
}
