//! The VM shim's runtime: every container of this shim (one, or a pod's) runs inside one QEMU
//! micro-VM, created by our agent there.
//!
//! The VM boots at the first Create, with its run directory (QEMU's sockets, pid file and
//! logs) and its one 9p share in that container's bundle (`<bundle>/vm`). Each container's
//! rootfs and bind-mount sources are bind-mounted under the share (microvm cannot hot-plug a
//! device per container), its spec adapted to the guest ([`crate::guest_spec`]), and the agent
//! creates it. The pids containerd sees are the guest's: they are what `ctr task ps` lists and
//! what a pod's later containers name in `/proc/<pid>/ns/...`.
//!
//! Exits come from the agent (WaitProcess, one per process) and reach the framework through an
//! exit channel of their own; OOM kills from the agent's GetOOMEvent. When QEMU dies, every
//! process in it has exited (status 137). The VM is shut down when its last container is
//! deleted, and dies with the shim in any case (PR_SET_PDEATHSIG).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use protobuf::well_known_types::any::Any;
use protobuf::MessageField;
use protos::agent::*;
use protos::ttrpc;
use serde::{Deserialize, Serialize};
use shim_common::bundle::Bundle;
use shim_common::cgroups::{OomCounter, OomWatcher};
use shim_common::reaper::{Exit, Reaper, Subscription};
use shim_common::stdio::ProcessIo;
use shim_common::{ContainerInfo, Error, Result, Runtime, RuntimeContext, Spawned, Target};

use crate::agent::Agent;
use crate::guest_io::{PreparedIo, Pumps};
use crate::guest_spec;
use crate::output::OutputLink;
use crate::qemu::{self, Accel, Vm, VmConfig};
use crate::settings::VmSettings;

/// The VM's directory inside the first container's bundle; the share is `share` in it.
const RUN_DIR: &str = "vm";
const SHARE_DIR: &str = "share";
/// What `shim delete` needs once the daemon is gone; in every container's bundle.
const STATE_FILE: &str = "vm-state.json";
/// A bound for agent calls that do not wait on a process.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an exit waits for the process's output to drain before it is reported.
const OUTPUT_GRACE: Duration = Duration::from_secs(5);
/// How long the output port may take to answer once the agent did (it looks for the port in
/// the background, for up to a second).
const OUTPUT_CONNECT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    init_pid: u32,
    qemu_pid: u32,
    /// The shim that started QEMU: while it lives, QEMU is its child and not ours to kill.
    shim_pid: u32,
    run_dir: PathBuf,
    /// Host mount points of this container under the share, to unmount.
    mounts: Vec<PathBuf>,
    share_dir: PathBuf,
}

/// The VM: QEMU, its agent, and where its share is on the host.
struct Sandbox {
    vm: Vm,
    agent: Agent,
    /// The output port, when it answered (else output goes through ReadStdout/ReadStderr).
    output: Option<Arc<OutputLink>>,
    run_dir: PathBuf,
    share: PathBuf,
}

struct GuestProcess {
    pid: u32,
    exited: bool,
}

/// One container in the VM.
struct Guest {
    share_dir: PathBuf,
    mounts: Vec<PathBuf>,
    init_pid: u32,
    oom: Option<Arc<OomCounter>>,
    processes: HashMap<String, GuestProcess>,
}

struct Inner {
    reaper: Arc<Reaper>,
    socket: PathBuf,
    /// Guest exits, kept apart from the daemon's host children.
    exits: Arc<Reaper>,
    sandbox: tokio::sync::Mutex<Option<Arc<Sandbox>>>,
    guests: Mutex<HashMap<String, Guest>>,
}

pub struct VmRuntime {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The agent's refusal as the same status containerd would get from a host runtime.
fn agent_err(call: &str, e: ttrpc::Error) -> Error {
    use ttrpc::Code;
    match e {
        ttrpc::Error::RpcStatus(s) => {
            let msg = s.message().to_string();
            match s.code() {
                Code::NOT_FOUND => Error::NotFound(msg),
                Code::ALREADY_EXISTS => Error::AlreadyExists(msg),
                Code::FAILED_PRECONDITION => Error::FailedPrecondition(msg),
                Code::INVALID_ARGUMENT => Error::InvalidArgument(msg),
                Code::UNIMPLEMENTED => Error::Unimplemented(msg),
                _ => Error::Runtime(format!("{call}: {msg}")),
            }
        }
        other => Error::Runtime(format!("{call}: the VM's agent did not answer: {other}")),
    }
}

fn ctx() -> ttrpc::context::Context {
    Agent::ctx(CALL_TIMEOUT)
}

/// `MS_BIND | MS_REC` of `src` onto `dst` (created as a file or directory to match).
fn bind(src: &Path, dst: &Path) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    let meta = std::fs::metadata(src).map_err(|e| Error::path("sharing", src, e))?;
    if meta.is_dir() {
        std::fs::create_dir_all(dst).map_err(|e| Error::path("creating", dst, e))?;
    } else {
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p).map_err(|e| Error::path("creating", p, e))?;
        }
        std::fs::write(dst, b"").map_err(|e| Error::path("creating", dst, e))?;
    }
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        Error::sys(
            format!("bind-mounting {} on {}", src.display(), dst.display()),
            e,
        )
    })
}

/// The parent pid of `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn unmount(path: &Path) {
    use nix::mount::{umount2, MntFlags};
    // Detached: a guest file still open through 9p must not keep the host mount busy.
    if let Err(e) = umount2(path, MntFlags::MNT_DETACH) {
        if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
            log::warn!("unmounting {}: {e}", path.display());
        }
    }
}

/// Removes a container's share directory once nothing is mounted in it: never recursive
/// across a mount, so a failed unmount can never delete the container's files.
fn remove_share_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = std::fs::remove_dir(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// QEMU's files in the run directory, and the directory itself.
fn remove_run_dir(run_dir: &Path) {
    for f in qemu::RUN_FILES {
        let _ = std::fs::remove_file(run_dir.join(f));
    }
    let _ = std::fs::remove_dir(run_dir.join(SHARE_DIR));
    let _ = std::fs::remove_dir(run_dir);
}

impl Inner {
    /// The running VM, booted now with `settings` if there is none yet.
    async fn sandbox(self: &Arc<Self>, c: &ContainerInfo) -> Result<Arc<Sandbox>> {
        let mut slot = self.sandbox.lock().await;
        if let Some(s) = slot.as_ref() {
            if s.vm.exited().is_none() {
                return Ok(s.clone());
            }
            return Err(Error::FailedPrecondition(
                "the VM of this shim has stopped".into(),
            ));
        }
        let settings = VmSettings::from_table(&c.settings)?;
        let sandbox = Arc::new(self.boot(c, &settings).await?);
        *slot = Some(sandbox.clone());
        self.watch_vm(&sandbox);
        self.forward_ooms(&sandbox);
        Ok(sandbox)
    }

    async fn boot(&self, c: &ContainerInfo, settings: &VmSettings) -> Result<Sandbox> {
        let (kernel, initrd) = settings.guest_files()?;
        // A pod's VM outlives its first container's bundle, which containerd removes (with
        // everything mounted below it) as soon as that container is deleted: it then lives
        // beside the pod's socket instead, which is kept apart for the same reason.
        let run_dir = if self.socket.starts_with(c.bundle.path()) {
            c.bundle.path().join(RUN_DIR)
        } else {
            let mut p = self.socket.clone().into_os_string();
            p.push(".vm");
            PathBuf::from(p)
        };
        let share = run_dir.join(SHARE_DIR);
        std::fs::create_dir_all(&share).map_err(|e| Error::path("creating", &share, e))?;
        let mut config = settings.vm_config(kernel, initrd, run_dir.clone(), share.clone());
        let mut how = "cold boot";
        let mut booted = None;
        // From /proc/cpuinfo, or measured for 20 ms: off the runtime's one thread.
        let tsc_khz = tokio::task::spawn_blocking(qemu::host_tsc_khz)
            .await
            .ok()
            .flatten();
        if let Some(restore) = self.template_for(settings, &config, tsc_khz) {
            match crate::template::restore(&restore, &self.reaper, settings.boot_timeout()).await {
                Ok(b) => {
                    match b.agent.sync_guest(CALL_TIMEOUT).await {
                        Ok(()) => {
                            how = "from template";
                            booted = Some(b);
                        }
                        Err(e) => {
                            log::warn!("VM for {}: the restored guest refused SyncGuest ({e}); booting cold", c.id);
                            b.vm.kill();
                            let _ = b.vm.wait_timeout(Duration::from_secs(5)).await;
                        }
                    }
                }
                Err(e) => log::warn!(
                    "VM for {}: restoring the template failed ({e}); booting cold",
                    c.id
                ),
            }
            if booted.is_none() {
                for f in [
                    qemu::AGENT_SOCKET,
                    qemu::OUTPUT_SOCKET,
                    qemu::QMP_SOCKET,
                    qemu::PID_FILE,
                ] {
                    let _ = std::fs::remove_file(run_dir.join(f));
                }
            }
        }
        let booted = match booted {
            Some(b) => b,
            None => {
                let booted = match settings.forced_accel() {
                    Some(accel) => {
                        config.accel = accel;
                        if accel == Accel::Tcg {
                            config.tsc_khz = tsc_khz;
                        }
                        qemu::boot_with(&config, &self.reaper, settings.boot_timeout()).await
                    }
                    None => {
                        config.tsc_khz = tsc_khz;
                        qemu::boot(&config, &self.reaper, None, settings.boot_timeout()).await
                    }
                };
                let booted = booted.map_err(|e| {
                    remove_run_dir(&run_dir);
                    Error::Runtime(format!("starting the VM: {e}"))
                })?;
                // A cold-booted guest has the right clock already; fresh entropy still helps.
                if let Err(e) = booted.agent.sync_guest(CALL_TIMEOUT).await {
                    log::warn!("VM for {}: {e}", c.id);
                }
                booted
            }
        };
        log::info!(
            "VM for {} up ({}, {how}) in {} ms, QEMU pid {}",
            c.id,
            booted.accel.as_str(),
            booted.vm.started.elapsed().as_millis(),
            booted.vm.pid()
        );
        // The agent answered, so its output port is being served (or does not exist).
        let output = match OutputLink::connect(
            &booted.vm.output_socket(),
            std::time::Instant::now() + OUTPUT_CONNECT,
        )
        .await
        {
            Ok(link) => Some(link),
            Err(e) => {
                log::warn!("VM for {}: output through the agent: {e}", c.id);
                None
            }
        };
        Ok(Sandbox {
            vm: booted.vm,
            agent: booted.agent,
            output,
            run_dir,
            share,
        })
    }

    /// The restore configuration when the image's template fits these settings, decided from
    /// its manifest before anything starts; otherwise `None`, with the reason logged.
    fn template_for(
        &self,
        settings: &VmSettings,
        config: &VmConfig,
        tsc_khz: Option<u64>,
    ) -> Option<VmConfig> {
        if !settings.template {
            log::debug!("VM template: disabled by the settings");
            return None;
        }
        let dir = settings.template_dir()?;
        let template = match crate::template::Template::load(&dir) {
            Ok(Some(t)) => t,
            Ok(None) => {
                log::info!("VM template: none in {}; cold boot", dir.display());
                return None;
            }
            Err(e) => {
                log::warn!("VM template: {e}; cold boot");
                return None;
            }
        };
        // The accelerator a cold boot would start with; KVM candidates are the template's
        // only if it was made under KVM (and a failed restore still falls back).
        let accel = settings
            .forced_accel()
            .unwrap_or_else(|| qemu::choose_accel().accel);
        let mut candidate = config.clone();
        candidate.accel = accel;
        if accel == Accel::Tcg {
            candidate.tsc_khz = tsc_khz;
        }
        match template
            .mismatch(&candidate)
            .or_else(|| template.unusable_here())
        {
            None => Some(template.restore_config(&candidate)),
            Some(why) => {
                log::info!(
                    "VM template {} not used: {why}; cold boot",
                    template.dir.display()
                );
                None
            }
        }
    }

    /// When QEMU exits, everything in it has: report every process still running as killed.
    fn watch_vm(self: &Arc<Self>, sandbox: &Arc<Sandbox>) {
        let weak = Arc::downgrade(sandbox);
        let inner = Arc::downgrade(self);
        tokio::spawn(async move {
            let Some(s) = weak.upgrade() else { return };
            let status = s.vm.wait().await;
            drop(s);
            let Some(inner) = inner.upgrade() else { return };
            let mut pending = Vec::new();
            for g in lock(&inner.guests).values_mut() {
                for p in g.processes.values_mut() {
                    if !p.exited {
                        p.exited = true;
                        pending.push(p.pid);
                    }
                }
            }
            if !pending.is_empty() {
                log::warn!(
                    "the VM exited (status {status}) with {} process(es) running",
                    pending.len()
                );
            }
            for pid in pending {
                inner.exits.publish(Exit {
                    pid,
                    status: 128 + libc::SIGKILL as u32,
                    at: SystemTime::now(),
                });
            }
        });
    }

    /// The agent's OOM events, counted per container.
    fn forward_ooms(self: &Arc<Self>, sandbox: &Arc<Sandbox>) {
        let agent = sandbox.agent.clone();
        let inner = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let ev = match agent
                    .client
                    .get_oom_event(crate::guest_io::unbounded(), &GetOOMEventRequest::new())
                    .await
                {
                    Ok(ev) => ev,
                    Err(e) => {
                        log::debug!("OOM events ended: {e}");
                        return;
                    }
                };
                let Some(inner) = inner.upgrade() else { return };
                let counter = lock(&inner.guests)
                    .get(&ev.container_id)
                    .and_then(|g| g.oom.clone());
                if let Some(c) = counter {
                    c.record();
                }
            }
        });
    }

    /// Waits for a guest process's exit (and its output), then reports it once.
    fn wait_exit(self: &Arc<Self>, agent: Agent, id: String, exec_id: String, mut pumps: Pumps) {
        let inner = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut req = WaitProcessRequest::new();
            req.container_id = id.clone();
            req.exec_id = exec_id.clone();
            let r = agent
                .client
                .wait_process(crate::guest_io::unbounded(), &req)
                .await;
            let status = match r {
                Ok(resp) => resp.exit_status,
                Err(e) => {
                    log::debug!("waiting for {id}/{exec_id}: {e}");
                    128 + libc::SIGKILL as u32
                }
            };
            let _ = tokio::time::timeout(OUTPUT_GRACE, pumps.outputs_done()).await;
            let Some(inner) = inner.upgrade() else { return };
            let pid = {
                let mut guests = lock(&inner.guests);
                let p = guests
                    .get_mut(&id)
                    .and_then(|g| g.processes.get_mut(&exec_id));
                match p {
                    Some(p) if !p.exited => {
                        p.exited = true;
                        p.pid
                    }
                    _ => return,
                }
            };
            inner.exits.publish(Exit {
                pid,
                status,
                at: SystemTime::now(),
            });
        });
    }

    fn agent_of(&self, sandbox: &Option<Arc<Sandbox>>) -> Result<Agent> {
        sandbox
            .as_ref()
            .map(|s| s.agent.clone())
            .ok_or_else(|| Error::FailedPrecondition("the VM is not running".into()))
    }

    async fn agent(&self) -> Result<Agent> {
        let s = self.sandbox.lock().await;
        self.agent_of(&s)
    }

    /// Shares the container's files under the VM's share; returns the mount points made.
    fn share(&self, sandbox: &Sandbox, id: &str, binds: &[guest_spec::Bind]) -> Result<PathBuf> {
        let dir = sandbox.share.join(id);
        if dir.exists() {
            return Err(Error::AlreadyExists(format!(
                "container {id} is already shared with the VM"
            )));
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::path("creating", &dir, e))?;
        let mut done: Vec<PathBuf> = Vec::new();
        for b in binds {
            let at = dir.join(&b.at);
            if let Err(e) = bind(&b.host, &at) {
                for m in done.iter().rev() {
                    unmount(m);
                }
                remove_share_dir(&dir);
                return Err(e);
            }
            done.push(at);
        }
        Ok(dir)
    }

    async fn shutdown_vm(&self) {
        let Some(s) = self.sandbox.lock().await.take() else {
            return;
        };
        let _ = s.agent.shutdown(Duration::from_secs(2)).await;
        if s.vm.wait_timeout(Duration::from_secs(3)).await.is_none() {
            log::warn!("the VM did not power off; killing QEMU");
            s.vm.kill();
            let _ = s.vm.wait_timeout(Duration::from_secs(2)).await;
        }
        remove_run_dir(&s.run_dir);
    }
}

impl VmRuntime {
    /// Creates a process in the guest through `create` and starts its pumps and exit waiter.
    async fn spawn_in_guest<F, Fut>(
        &self,
        agent: &Agent,
        output: Option<&OutputLink>,
        id: &str,
        exec_id: &str,
        io: ProcessIo,
        create: F,
    ) -> Result<Spawned>
    where
        F: FnOnce(StdioStreams, bool) -> Fut,
        Fut: std::future::Future<Output = Result<u32>>,
    {
        let prefix = if exec_id.is_empty() {
            format!("{id}.init")
        } else {
            format!("{id}.{exec_id}")
        };
        let mut prepared = PreparedIo::new(io, &prefix, output)?;
        let console = prepared.console.take();
        let pid = create(prepared.streams.clone(), prepared.terminal).await?;
        let pumps = prepared.start(agent);
        {
            let mut guests = lock(&self.inner.guests);
            if let Some(g) = guests.get_mut(id) {
                g.processes
                    .insert(exec_id.to_string(), GuestProcess { pid, exited: false });
            }
        }
        self.inner
            .wait_exit(agent.clone(), id.to_string(), exec_id.to_string(), pumps);
        Ok(Spawned { pid, console })
    }

    fn persist(&self, c: &ContainerInfo, sandbox: &Sandbox, init_pid: u32) {
        let guests = lock(&self.inner.guests);
        let Some(g) = guests.get(&c.id) else { return };
        let p = Persisted {
            init_pid,
            qemu_pid: sandbox.vm.pid(),
            shim_pid: std::process::id(),
            run_dir: sandbox.run_dir.clone(),
            mounts: g.mounts.clone(),
            share_dir: g.share_dir.clone(),
        };
        if let Ok(data) = serde_json::to_vec(&p) {
            if let Err(e) = c.bundle.write_file(STATE_FILE, &data) {
                log::warn!("container {}: {e}", c.id);
            }
        }
    }

    async fn create_container(&self, c: &ContainerInfo, io: ProcessIo) -> Result<Spawned> {
        let sandbox = self.inner.sandbox(c).await?;
        let config = c.bundle.path().join("config.json");
        let spec = std::fs::read(&config).map_err(|e| Error::path("reading", config, e))?;
        let root = c
            .spec
            .root
            .as_ref()
            .map(|r| r.path.clone())
            .unwrap_or_else(|| "rootfs".into());
        let rootfs = c.bundle.path().join(root);
        let first_pid = lock(&self.inner.guests)
            .values()
            .map(|g| g.init_pid)
            .find(|p| *p > 0);
        let guest_dir = format!("{}/{}", vm_channel::GUEST_SHARE_DIR, c.id);
        let adapted =
            guest_spec::adapt(&spec, &rootfs, &guest_dir, &c.namespace, &c.id, first_pid)?;
        for w in &adapted.warnings {
            log::warn!("container {}: {w}", c.id);
        }
        let share_dir = self.inner.share(&sandbox, &c.id, &adapted.binds)?;
        let mounts: Vec<PathBuf> = adapted
            .binds
            .iter()
            .map(|b| share_dir.join(&b.at))
            .collect();
        lock(&self.inner.guests).insert(
            c.id.clone(),
            Guest {
                share_dir: share_dir.clone(),
                mounts: mounts.clone(),
                init_pid: 0,
                oom: None,
                processes: HashMap::new(),
            },
        );
        let agent = sandbox.agent.clone();
        let call = agent.clone();
        let id = c.id.clone();
        let created = self
            .spawn_in_guest(
                &agent,
                sandbox.output.as_deref(),
                &c.id,
                "",
                io,
                |streams, terminal| async move {
                    let mut req = CreateContainerRequest::new();
                    req.container_id = id;
                    req.bundle = guest_dir;
                    req.spec = adapted.json;
                    req.stdio = MessageField::some(streams);
                    req.terminal = terminal;
                    let resp = call
                        .client
                        .create_container(ctx(), &req)
                        .await
                        .map_err(|e| agent_err("CreateContainer", e))?;
                    for w in &resp.warnings {
                        log::warn!("container {}: {w}", req.container_id);
                    }
                    Ok(resp.pid)
                },
            )
            .await;
        match created {
            Ok(spawned) => {
                if let Some(g) = lock(&self.inner.guests).get_mut(&c.id) {
                    g.init_pid = spawned.pid;
                }
                self.persist(c, &sandbox, spawned.pid);
                Ok(spawned)
            }
            Err(e) => {
                lock(&self.inner.guests).remove(&c.id);
                for m in mounts.iter().rev() {
                    unmount(m);
                }
                remove_share_dir(&share_dir);
                if lock(&self.inner.guests).is_empty() {
                    self.inner.shutdown_vm().await;
                }
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Runtime for VmRuntime {
    const NAME: &'static str = "vm";

    fn new(ctx: RuntimeContext) -> Result<Self> {
        Ok(VmRuntime {
            inner: Arc::new(Inner {
                reaper: ctx.reaper,
                socket: ctx.socket,
                exits: Reaper::channel(),
                sandbox: tokio::sync::Mutex::new(None),
                guests: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn exits(&self) -> Subscription {
        self.inner.exits.subscribe()
    }

    async fn create(&self, c: &ContainerInfo, io: ProcessIo) -> Result<Spawned> {
        if c.checkpoint.is_some() {
            return Err(Error::Unimplemented(
                "the VM shim cannot restore checkpoints".into(),
            ));
        }
        self.create_container(c, io).await
    }

    async fn start(&self, c: &ContainerInfo) -> Result<Option<Spawned>> {
        let agent = self.inner.agent().await?;
        let mut req = StartContainerRequest::new();
        req.container_id = c.id.clone();
        agent
            .client
            .start_container(ctx(), &req)
            .await
            .map_err(|e| agent_err("StartContainer", e))?;
        Ok(None)
    }

    async fn exec(
        &self,
        c: &ContainerInfo,
        exec_id: &str,
        process: &[u8],
        io: ProcessIo,
    ) -> Result<Spawned> {
        let t0 = std::time::Instant::now();
        let (agent, output) = {
            let s = self.inner.sandbox.lock().await;
            let output = s.as_ref().and_then(|s| s.output.clone());
            (self.inner.agent_of(&s)?, output)
        };
        let call = agent.clone();
        let (id, exec) = (c.id.clone(), exec_id.to_string());
        let process = process.to_vec();
        let output = output.as_deref();
        self.spawn_in_guest(
            &agent,
            output,
            &c.id,
            exec_id,
            io,
            |streams, terminal| async move {
                let mut req = ExecProcessRequest::new();
                req.container_id = id;
                req.exec_id = exec;
                req.process = process;
                req.stdio = MessageField::some(streams);
                req.terminal = terminal;
                let pid = call
                    .client
                    .exec_process(ctx(), &req)
                    .await
                    .map(|r| r.pid)
                    .map_err(|e| agent_err("ExecProcess", e))?;
                log::debug!(
                    "exec {}/{}: guest pid {pid} in {:?}",
                    req.container_id,
                    req.exec_id,
                    t0.elapsed()
                );
                Ok(pid)
            },
        )
        .await
    }

    async fn kill(
        &self,
        c: &ContainerInfo,
        target: Target<'_>,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let agent = self.inner.agent().await?;
        let mut req = SignalProcessRequest::new();
        req.container_id = c.id.clone();
        req.exec_id = target.exec_id().to_string();
        req.signal = signal;
        req.all = all;
        agent
            .client
            .signal_process(ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| agent_err("SignalProcess", e))
    }

    async fn resize(
        &self,
        c: &ContainerInfo,
        target: Target<'_>,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let agent = self.inner.agent().await?;
        let mut req = ResizeTtyRequest::new();
        req.container_id = c.id.clone();
        req.exec_id = target.exec_id().to_string();
        req.width = width;
        req.height = height;
        agent
            .client
            .resize_tty(ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| agent_err("ResizeTty", e))
    }

    async fn delete(&self, c: &ContainerInfo) -> Result<()> {
        let guest = lock(&self.inner.guests).remove(&c.id);
        let Some(guest) = guest else {
            return Ok(());
        };
        if let Some(o) = &guest.oom {
            o.close();
        }
        let running = self
            .inner
            .sandbox
            .lock()
            .await
            .as_ref()
            .filter(|s| s.vm.exited().is_none())
            .map(|s| s.agent.clone());
        if let Some(agent) = running {
            let mut req = RemoveContainerRequest::new();
            req.container_id = c.id.clone();
            match agent.client.remove_container(ctx(), &req).await {
                Ok(_) => {}
                Err(e) => match agent_err("RemoveContainer", e) {
                    Error::NotFound(_) => {}
                    other => log::warn!("container {}: {other}", c.id),
                },
            }
        }
        for m in guest.mounts.iter().rev() {
            unmount(m);
        }
        remove_share_dir(&guest.share_dir);
        c.bundle.remove_file(STATE_FILE);
        if lock(&self.inner.guests).is_empty() {
            self.inner.shutdown_vm().await;
        }
        Ok(())
    }

    async fn pause(&self, c: &ContainerInfo) -> Result<()> {
        let agent = self.inner.agent().await?;
        let mut req = PauseContainerRequest::new();
        req.container_id = c.id.clone();
        agent
            .client
            .pause_container(ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| agent_err("PauseContainer", e))
    }

    async fn resume(&self, c: &ContainerInfo) -> Result<()> {
        let agent = self.inner.agent().await?;
        let mut req = ResumeContainerRequest::new();
        req.container_id = c.id.clone();
        agent
            .client
            .resume_container(ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| agent_err("ResumeContainer", e))
    }

    async fn pids(&self, c: &ContainerInfo, _init_pid: u32) -> Result<Vec<u32>> {
        let agent = self.inner.agent().await?;
        let mut req = ListProcessesRequest::new();
        req.container_id = c.id.clone();
        let resp = agent
            .client
            .list_processes(ctx(), &req)
            .await
            .map_err(|e| agent_err("ListProcesses", e))?;
        Ok(resp.processes.iter().map(|p| p.pid).collect())
    }

    async fn update(&self, c: &ContainerInfo, resources: &[u8]) -> Result<()> {
        let agent = self.inner.agent().await?;
        let mut req = UpdateContainerRequest::new();
        req.container_id = c.id.clone();
        req.resources = resources.to_vec();
        agent
            .client
            .update_container(ctx(), &req)
            .await
            .map(|_| ())
            .map_err(|e| agent_err("UpdateContainer", e))
    }

    async fn stats(&self, c: &ContainerInfo, _init_pid: u32) -> Result<Any> {
        let agent = self.inner.agent().await?;
        let mut req = StatsContainerRequest::new();
        req.container_id = c.id.clone();
        let resp = agent
            .client
            .stats_container(ctx(), &req)
            .await
            .map_err(|e| agent_err("StatsContainer", e))?;
        Ok(resp.stats.into_option().unwrap_or_default())
    }

    fn watch_oom(&self, c: &ContainerInfo, _init_pid: u32) -> Result<OomWatcher> {
        let (watcher, counter) = OomWatcher::counted();
        match lock(&self.inner.guests).get_mut(&c.id) {
            Some(g) => g.oom = Some(counter),
            None => return Err(Error::NotFound(format!("container {} not found", c.id))),
        }
        Ok(watcher)
    }

    fn cleanup(bundle: &Bundle, _id: &str, _namespace: &str) -> Result<Option<u32>> {
        let Some(data) = bundle.read_file(STATE_FILE) else {
            return Ok(None);
        };
        let p: Persisted = serde_json::from_slice(&data)
            .map_err(|e| Error::Other(format!("reading {STATE_FILE}: {e}")))?;
        // Only the QEMU of this VM (a recycled pid runs somewhere else), and only once its
        // shim is gone: `shim delete` also runs after a failed Create of a pod's later
        // container, while the VM still serves the others.
        let cwd = std::fs::read_link(format!("/proc/{}/cwd", p.qemu_pid)).ok();
        let orphaned = parent_of(p.qemu_pid).is_some_and(|pp| pp != p.shim_pid);
        let ours = p.qemu_pid > 0 && cwd.as_deref() == Some(p.run_dir.as_path());
        if ours && orphaned {
            // SAFETY: plain syscall; the pid was checked to be this VM's QEMU just above.
            unsafe { libc::kill(p.qemu_pid as i32, libc::SIGKILL) };
            for _ in 0..50 {
                if !Path::new(&format!("/proc/{}", p.qemu_pid)).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for m in p.mounts.iter().rev() {
            unmount(m);
        }
        remove_share_dir(&p.share_dir);
        if !ours || orphaned {
            // Only what is empty goes: the share of a VM that still serves others stays.
            remove_run_dir(&p.run_dir);
        }
        bundle.remove_file(STATE_FILE);
        Ok(Some(p.init_pid))
    }
}
