//! The Task API, written once over [`Runtime`]: the state machine, exit bookkeeping, waiters,
//! events and stdio of every container the daemon hosts.
//!
//! Each container sits behind its own async mutex. An RPC that changes a process holds it across
//! the runtime call and the event it publishes, and exits are applied under the same lock, so
//! the order containerd sees (create, start, exec-added, exec-started, exit, delete) is the
//! order things happened, without a global lock across containers.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use protobuf::well_known_types::empty::Empty;
use protobuf::{EnumOrUnknown, MessageField};
use protos::events::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use protos::shim::*;
use protos::task::{ProcessInfo, Status};
use tokio::sync::{watch, Notify};
use ttrpc::r#async::TtrpcContext;

use crate::binary_log::LogIdentity;
use crate::bundle::Bundle;
use crate::cgroups::OomWatcher;
use crate::error::{Error, Result};
use crate::events::{timestamp, to_any, Publisher};
use crate::id;
use crate::idle::IdleTrim;
use crate::mount::{self, Mount};
use crate::options::{default_settings_file, Options};
use crate::reaper::Exit;
use crate::runtime::{ContainerInfo, Runtime, Target};
use crate::stdio::{IoSession, Stdio};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

type ExitState = Option<(u32, SystemTime)>;

struct Process {
    pid: u32,
    stdio: Stdio,
    status: ProcStatus,
    exit: ExitState,
    exited: watch::Sender<ExitState>,
    io: Option<IoSession>,
    /// The OCI `Process` JSON of an exec, kept until it is started.
    spec: Vec<u8>,
}

impl Process {
    fn new(stdio: Stdio, spec: Vec<u8>) -> Process {
        Process {
            pid: 0,
            stdio,
            status: ProcStatus::Created,
            exit: None,
            exited: watch::channel(None).0,
            io: None,
            spec,
        }
    }

    fn set_exited(&mut self, exit: &Exit) {
        self.status = ProcStatus::Stopped;
        self.exit = Some((exit.status, exit.at));
        self.exited.send_replace(self.exit);
        if let Some(io) = self.io.as_mut() {
            // Nothing will read stdin any more; output pumps run on to EOF.
            io.close_stdin();
        }
    }

    fn is_running(&self) -> bool {
        matches!(self.status, ProcStatus::Running | ProcStatus::Paused)
    }
}

struct Container {
    info: ContainerInfo,
    init: Process,
    execs: HashMap<String, Process>,
    /// The init's exit, held back until every exec has exited (containerd wants it last).
    deferred_init_exit: Option<Exit>,
    oom: Option<Arc<OomWatcher>>,
    oom_task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(t) = &self.oom_task {
            t.abort();
        }
    }
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs.get(exec_id).ok_or_else(|| {
            Error::NotFound(format!(
                "exec {exec_id:?} not found in container {}",
                self.info.id
            ))
        })
    }

    fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let id = self.info.id.clone();
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id:?} not found in container {id}")))
    }
}

/// Who owns a pid, and exits that arrived before their pid was known.
#[derive(Default)]
struct PidIndex {
    owners: HashMap<u32, (String, String)>,
    unclaimed: HashMap<u32, (Exit, Instant)>,
}

const UNCLAIMED_TTL: Duration = Duration::from_secs(30);

pub struct TaskService<R: Runtime> {
    runtime: Arc<R>,
    publisher: Publisher,
    namespace: String,
    containers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Container>>>>,
    /// Ids whose Create is in flight: a second Create of one must not run (its failure path
    /// would force-delete the first one's container and unmount its rootfs).
    creating: Mutex<HashSet<String>>,
    pids: Mutex<PidIndex>,
    shutdown: Arc<Notify>,
    settings_file: PathBuf,
    idle: IdleTrim,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn status_of(p: &Process) -> Status {
    match p.status {
        ProcStatus::Created => Status::CREATED,
        ProcStatus::Running => Status::RUNNING,
        ProcStatus::Paused => Status::PAUSED,
        ProcStatus::Stopped => Status::STOPPED,
    }
}

impl<R: Runtime> TaskService<R> {
    pub fn new(runtime: Arc<R>, publisher: Publisher, namespace: String) -> Arc<Self> {
        let service = Arc::new(TaskService {
            runtime: runtime.clone(),
            publisher,
            namespace,
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            pids: Mutex::new(PidIndex::default()),
            shutdown: Arc::new(Notify::new()),
            settings_file: default_settings_file(R::NAME),
            idle: IdleTrim::start(),
        });
        let mut exits = runtime.exits();
        let weak = Arc::downgrade(&service);
        tokio::spawn(async move {
            while let Some(exit) = exits.recv().await {
                let Some(service) = weak.upgrade() else { break };
                service.on_exit(exit).await;
                service.idle.busy();
            }
        });
        service
    }

    /// Every request ends here: its answer, and the start of a quiet spell (see [`IdleTrim`]).
    fn reply<T>(&self, method: &str, r: Result<T>) -> ttrpc::Result<T> {
        self.idle.busy();
        r.map_err(|e| {
            log::debug!("{method}: {e}");
            e.into()
        })
    }

    /// Fires when Shutdown found no container left.
    pub fn shutdown_requested(&self) -> Arc<Notify> {
        self.shutdown.clone()
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    fn log_identity(&self, id: &str) -> LogIdentity {
        LogIdentity {
            namespace: self.namespace.clone(),
            container_id: id.to_string(),
        }
    }

    fn container(&self, id: &str) -> Result<Arc<tokio::sync::Mutex<Container>>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))
    }

    /// Records who owns `pid`; returns an exit that already happened, if any.
    fn claim_pid(&self, pid: u32, container: &str, exec_id: &str) -> Option<Exit> {
        let mut idx = lock(&self.pids);
        if let Some((exit, _)) = idx.unclaimed.remove(&pid) {
            return Some(exit);
        }
        idx.owners
            .insert(pid, (container.to_string(), exec_id.to_string()));
        None
    }

    async fn on_exit(&self, exit: Exit) {
        let owner = {
            let mut idx = lock(&self.pids);
            match idx.owners.remove(&exit.pid) {
                Some(o) => o,
                None => {
                    let now = Instant::now();
                    idx.unclaimed
                        .retain(|_, (_, seen)| now.duration_since(*seen) < UNCLAIMED_TTL);
                    idx.unclaimed.insert(exit.pid, (exit, now));
                    return;
                }
            }
        };
        let Ok(container) = self.container(&owner.0) else {
            return;
        };
        let mut c = container.lock().await;
        self.apply_exit(&mut c, &owner.1, exit);
    }

    /// Publishes `/tasks/oom` if the container's cgroup saw new OOM kills.
    fn report_oom(&self, c: &Container) {
        if let Some(w) = &c.oom {
            publish_new_ooms(&self.publisher, w, &c.info.id);
        }
    }

    fn apply_exit(&self, c: &mut Container, exec_id: &str, exit: Exit) {
        // An OOM kill is reported before the exit it caused.
        self.report_oom(c);
        if exec_id.is_empty() {
            if c.execs.values().any(Process::is_running) {
                log::debug!(
                    "init of {} exited; waiting for its execs before reporting",
                    c.info.id
                );
                c.deferred_init_exit = Some(exit);
                if !c.info.spec.has_private_pid_namespace() {
                    let runtime = self.runtime.clone();
                    let info = c.info.clone();
                    tokio::spawn(async move {
                        let target = Target::Init { pid: exit.pid };
                        let _ = runtime
                            .kill(&info, target, libc::SIGKILL as u32, true)
                            .await;
                    });
                }
                return;
            }
            self.report_exit(c, "", exit);
            return;
        }
        self.report_exit(c, exec_id, exit);
        if let Some(init_exit) = c.deferred_init_exit {
            if !c.execs.values().any(Process::is_running) {
                c.deferred_init_exit = None;
                self.report_exit(c, "", init_exit);
            }
        }
    }

    fn report_exit(&self, c: &mut Container, exec_id: &str, exit: Exit) {
        let Ok(p) = c.process_mut(exec_id) else {
            return;
        };
        if p.status == ProcStatus::Stopped {
            return;
        }
        p.set_exited(&exit);
        let mut ev = TaskExit::new();
        ev.container_id = c.info.id.clone();
        ev.id = if exec_id.is_empty() {
            c.info.id.clone()
        } else {
            exec_id.to_string()
        };
        ev.pid = exit.pid;
        ev.exit_status = exit.status;
        ev.exited_at = MessageField::some(timestamp(exit.at));
        self.publisher.publish("/tasks/exit", &ev);
    }

    async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        id::validate("container id", &req.id)?;
        let _creating = {
            let mut creating = lock(&self.creating);
            if creating.contains(&req.id) || lock(&self.containers).contains_key(&req.id) {
                return Err(Error::AlreadyExists(format!(
                    "container {:?} already exists",
                    req.id
                )));
            }
            creating.insert(req.id.clone());
            CreateGuard {
                set: &self.creating,
                id: req.id.clone(),
            }
        };
        if req.bundle.is_empty() {
            return Err(Error::InvalidArgument("bundle path is required".into()));
        }
        let bundle = Bundle::new(&req.bundle);
        let spec = bundle.spec()?;
        let options = Options::decode(req.options.as_ref())?;
        let settings = options.settings(&self.settings_file)?;
        let rootfs: Vec<Mount> = req
            .rootfs
            .iter()
            .map(|m| Mount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        if rootfs.is_empty() {
            let root = spec.root.as_ref().map(|r| r.path.as_str()).unwrap_or("");
            let path = bundle.path().join(root);
            if root.is_empty() || !path.is_dir() {
                return Err(Error::InvalidArgument(format!(
                    "rootfs {} does not exist",
                    path.display()
                )));
            }
        }
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let checkpoint = (!req.checkpoint.is_empty()).then(|| PathBuf::from(&req.checkpoint));
        let info = ContainerInfo {
            id: req.id.clone(),
            namespace: self.namespace.clone(),
            bundle: bundle.clone(),
            spec,
            options,
            settings,
            rootfs,
            checkpoint,
        };
        mount::mount_rootfs(&info.rootfs, &bundle.rootfs())?;
        let created = async {
            let (pio, mut session) = IoSession::open(&stdio, &self.log_identity(&req.id)).await?;
            let spawned = self.runtime.create(&info, pio).await?;
            if let Some(console) = spawned.console {
                session.attach_console(console)?;
            }
            Ok::<_, Error>((spawned.pid, session))
        }
        .await;
        let (pid, session) = match created {
            Ok(v) => v,
            Err(e) => {
                if !info.rootfs.is_empty() {
                    let _ = mount::unmount_all(&bundle.rootfs());
                }
                return Err(e);
            }
        };
        let mut init = Process::new(stdio.clone(), Vec::new());
        init.pid = pid;
        init.io = Some(session);
        let container = Arc::new(tokio::sync::Mutex::new(Container {
            info,
            init,
            execs: HashMap::new(),
            deferred_init_exit: None,
            oom: None,
            oom_task: None,
        }));
        let mut c = container.lock().await;
        match self.runtime.watch_oom(&c.info, pid) {
            Ok(w) => {
                let w = Arc::new(w);
                c.oom = Some(w.clone());
                c.oom_task = Some(self.spawn_oom_watch(w, Arc::downgrade(&container)));
            }
            Err(e) => log::warn!("not watching OOM of {}: {e}", req.id),
        }
        lock(&self.containers).insert(req.id.clone(), container.clone());
        let early_exit = if pid > 0 {
            self.claim_pid(pid, &req.id, "")
        } else {
            None
        };

        let mut ev = TaskCreate::new();
        ev.container_id = req.id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        let mut tio = TaskIO::new();
        tio.stdin = stdio.stdin;
        tio.stdout = stdio.stdout;
        tio.stderr = stdio.stderr;
        tio.terminal = stdio.terminal;
        ev.io = MessageField::some(tio);
        ev.checkpoint = req.checkpoint.clone();
        ev.pid = pid;
        self.publisher.publish("/tasks/create", &ev);
        if let Some(exit) = early_exit {
            self.apply_exit(&mut c, "", exit);
        }
        let mut resp = CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn spawn_oom_watch(
        &self,
        w: Arc<OomWatcher>,
        container: std::sync::Weak<tokio::sync::Mutex<Container>>,
    ) -> tokio::task::JoinHandle<()> {
        let publisher = self.publisher.clone();
        tokio::spawn(async move {
            while w.wait().await {
                let Some(c) = container.upgrade() else { break };
                let c = c.lock().await;
                publish_new_ooms(&publisher, &w, &c.info.id);
            }
        })
    }

    async fn do_start(&self, req: StartRequest) -> Result<StartResponse> {
        let container = self.container(&req.id)?;
        let mut c = container.lock().await;
        let mut resp = StartResponse::new();
        if req.exec_id.is_empty() {
            match c.init.status {
                ProcStatus::Created => {}
                ProcStatus::Stopped => {
                    return Err(Error::FailedPrecondition(format!(
                        "container {} has already exited",
                        req.id
                    )))
                }
                _ => {
                    return Err(Error::FailedPrecondition(format!(
                        "container {} is already started",
                        req.id
                    )))
                }
            }
            let mut early_exit = None;
            if let Some(restored) = self.runtime.start(&c.info).await? {
                c.init.pid = restored.pid;
                if let (Some(console), Some(io)) = (restored.console, c.init.io.as_mut()) {
                    io.attach_console(console)?;
                }
                early_exit = self.claim_pid(restored.pid, &req.id, "");
            }
            c.init.status = ProcStatus::Running;
            let mut ev = TaskStart::new();
            ev.container_id = req.id.clone();
            ev.pid = c.init.pid;
            self.publisher.publish("/tasks/start", &ev);
            if let Some(exit) = early_exit {
                self.apply_exit(&mut c, "", exit);
            }
            resp.pid = c.init.pid;
            return Ok(resp);
        }
        if !c.init.is_running() || c.deferred_init_exit.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "cannot start exec {}: container {} is not running",
                req.exec_id, req.id
            )));
        }
        // A new process in a frozen cgroup freezes too: the runtime call would never return
        // (and would hold this container's lock). runc refuses the same way.
        if c.init.status == ProcStatus::Paused {
            return Err(Error::FailedPrecondition(format!(
                "cannot start exec {}: container {} is paused",
                req.exec_id, req.id
            )));
        }
        let p = c.process(&req.exec_id)?;
        if p.status != ProcStatus::Created {
            return Err(Error::FailedPrecondition(format!(
                "exec {} is already started",
                req.exec_id
            )));
        }
        let stdio = p.stdio.clone();
        let spec = p.spec.clone();
        let (pio, mut session) = IoSession::open(&stdio, &self.log_identity(&req.id)).await?;
        let spawned = self.runtime.exec(&c.info, &req.exec_id, &spec, pio).await?;
        if let Some(console) = spawned.console {
            session.attach_console(console)?;
        }
        let pid = spawned.pid;
        let early_exit = self.claim_pid(pid, &req.id, &req.exec_id);
        {
            let p = c.process_mut(&req.exec_id)?;
            p.pid = pid;
            p.status = ProcStatus::Running;
            p.io = Some(session);
            p.spec = Vec::new();
        }
        let mut ev = TaskExecStarted::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        ev.pid = pid;
        self.publisher.publish("/tasks/exec-started", &ev);
        if let Some(exit) = early_exit {
            self.apply_exit(&mut c, &req.exec_id, exit);
        }
        resp.pid = pid;
        Ok(resp)
    }

    async fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
        id::validate("exec id", &req.exec_id)?;
        let container = self.container(&req.id)?;
        let mut c = container.lock().await;
        if c.execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {} already exists in container {}",
                req.exec_id, req.id
            )));
        }
        if c.init.status == ProcStatus::Stopped || c.deferred_init_exit.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        if serde_json::from_slice::<serde_json::Value>(&spec)
            .map(|v| !v.is_object())
            .unwrap_or(true)
        {
            return Err(Error::InvalidArgument(
                "exec spec must be an OCI Process as JSON".into(),
            ));
        }
        let stdio = Stdio {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
        };
        c.execs
            .insert(req.exec_id.clone(), Process::new(stdio, spec));
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id;
        ev.exec_id = req.exec_id;
        self.publisher.publish("/tasks/exec-added", &ev);
        Ok(())
    }

    async fn do_kill(&self, req: KillRequest) -> Result<()> {
        let container = self.container(&req.id)?;
        let c = container.lock().await;
        let p = c.process(&req.exec_id)?;
        if p.status == ProcStatus::Stopped
            || (req.exec_id.is_empty() && c.deferred_init_exit.is_some() && !req.all)
        {
            return Err(Error::NotFound("process already finished".into()));
        }
        if !req.exec_id.is_empty() && p.status == ProcStatus::Created {
            return Err(Error::FailedPrecondition(format!(
                "exec {} is not started",
                req.exec_id
            )));
        }
        let target = Target::of(&req.exec_id, p.pid);
        self.runtime
            .kill(&c.info, target, req.signal, req.all)
            .await
    }

    async fn do_resize(&self, req: ResizePtyRequest) -> Result<()> {
        let container = self.container(&req.id)?;
        let mut c = container.lock().await;
        let p = c.process_mut(&req.exec_id)?;
        let Some(io) = started_io(p, &req.id, &req.exec_id)? else {
            return Ok(());
        };
        io.resize(req.width, req.height)?;
        if p.status == ProcStatus::Stopped || !p.stdio.terminal {
            return Ok(());
        }
        let target = Target::of(&req.exec_id, p.pid);
        self.runtime
            .resize(&c.info, target, req.width, req.height)
            .await
    }

    async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let container = self.container(&req.id)?;
        let mut c = container.lock().await;
        let mut resp = DeleteResponse::new();
        if !req.exec_id.is_empty() {
            let p = c.process(&req.exec_id)?;
            if p.is_running() {
                return Err(Error::FailedPrecondition(format!(
                    "cannot delete running exec {}",
                    req.exec_id
                )));
            }
            let mut p = c.execs.remove(&req.exec_id).expect("looked up above");
            lock(&self.pids).owners.remove(&p.pid);
            if let Some(io) = p.io.as_mut() {
                let _ = tokio::time::timeout(Duration::from_secs(2), io.wait_output()).await;
            }
            fill_delete(&mut resp, &p);
            return Ok(resp);
        }
        if c.init.is_running() || c.deferred_init_exit.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "cannot delete running container {}",
                req.id
            )));
        }
        self.runtime.delete(&c.info).await?;
        if !c.info.rootfs.is_empty() {
            mount::unmount_all(&c.info.bundle.rootfs())?;
        }
        if let Some(io) = c.init.io.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), io.wait_output()).await;
        }
        c.init.io = None;
        c.execs.clear();
        {
            let mut idx = lock(&self.pids);
            idx.owners.retain(|_, (cid, _)| cid != &req.id);
        }
        lock(&self.containers).remove(&req.id);
        fill_delete(&mut resp, &c.init);
        let mut ev = TaskDelete::new();
        ev.container_id = req.id.clone();
        ev.pid = resp.pid;
        ev.exit_status = resp.exit_status;
        ev.exited_at = resp.exited_at.clone();
        self.publisher.publish("/tasks/delete", &ev);
        Ok(resp)
    }

    async fn do_state(&self, req: StateRequest) -> Result<StateResponse> {
        let container = self.container(&req.id)?;
        let c = container.lock().await;
        let p = c.process(&req.exec_id)?;
        let mut resp = StateResponse::new();
        resp.id = if req.exec_id.is_empty() {
            req.id.clone()
        } else {
            req.exec_id.clone()
        };
        resp.bundle = c.info.bundle.path().to_string_lossy().into_owned();
        resp.pid = p.pid;
        resp.status = EnumOrUnknown::new(status_of(p));
        resp.stdin = p.stdio.stdin.clone();
        resp.stdout = p.stdio.stdout.clone();
        resp.stderr = p.stdio.stderr.clone();
        resp.terminal = p.stdio.terminal;
        if let Some((status, at)) = p.exit {
            resp.exit_status = status;
            resp.exited_at = MessageField::some(timestamp(at));
        }
        resp.exec_id = req.exec_id;
        Ok(resp)
    }

    async fn do_wait(&self, req: WaitRequest) -> Result<WaitResponse> {
        let mut rx = {
            let container = self.container(&req.id)?;
            let c = container.lock().await;
            c.process(&req.exec_id)?.exited.subscribe()
        };
        let (status, at) = loop {
            if let Some(v) = *rx.borrow_and_update() {
                break v;
            }
            if rx.changed().await.is_err() {
                return Err(Error::NotFound(format!(
                    "process {} was deleted while waiting",
                    req.id
                )));
            }
        };
        let mut resp = WaitResponse::new();
        resp.exit_status = status;
        resp.exited_at = MessageField::some(timestamp(at));
        Ok(resp)
    }

    async fn do_pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        let container = self.container(&req.id)?;
        let c = container.lock().await;
        let pids = self.runtime.pids(&c.info, c.init.pid).await?;
        let mut resp = PidsResponse::new();
        for pid in pids {
            let mut info = ProcessInfo::new();
            info.pid = pid;
            if let Some((exec_id, _)) = c.execs.iter().find(|(_, p)| p.pid == pid && p.is_running())
            {
                let mut details = protos::runc_options::ProcessDetails::new();
                details.exec_id = exec_id.clone();
                info.info = MessageField::some(to_any(&details));
            }
            resp.processes.push(info);
        }
        Ok(resp)
    }

    async fn do_pause(&self, id: &str, pause: bool) -> Result<()> {
        let container = self.container(id)?;
        let mut c = container.lock().await;
        let (want, next) = if pause {
            (ProcStatus::Running, ProcStatus::Paused)
        } else {
            (ProcStatus::Paused, ProcStatus::Running)
        };
        if c.init.status != want {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not {}",
                if pause { "running" } else { "paused" }
            )));
        }
        if pause {
            self.runtime.pause(&c.info).await?;
            let mut ev = TaskPaused::new();
            ev.container_id = id.to_string();
            self.publisher.publish("/tasks/paused", &ev);
        } else {
            self.runtime.resume(&c.info).await?;
            let mut ev = TaskResumed::new();
            ev.container_id = id.to_string();
            self.publisher.publish("/tasks/resumed", &ev);
        }
        c.init.status = next;
        for p in c.execs.values_mut().filter(|p| p.status == want) {
            p.status = next;
        }
        Ok(())
    }

    async fn do_io(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut IoSession) -> Result<()>,
    ) -> Result<()> {
        let container = self.container(id)?;
        let mut c = container.lock().await;
        match started_io(c.process_mut(exec_id)?, id, exec_id)? {
            Some(io) => f(io),
            None => Ok(()),
        }
    }
}

/// The stdio of a started process; `None` once it stopped (there is nothing left to do to it),
/// FailedPrecondition before it started.
fn started_io<'a>(
    p: &'a mut Process,
    id: &str,
    exec_id: &str,
) -> Result<Option<&'a mut IoSession>> {
    let stopped = p.status == ProcStatus::Stopped;
    match p.io.as_mut() {
        Some(io) => Ok(Some(io)),
        None if stopped => Ok(None),
        None => Err(Error::FailedPrecondition(format!(
            "process {} is not started",
            if exec_id.is_empty() { id } else { exec_id }
        ))),
    }
}

fn publish_new_ooms(publisher: &Publisher, w: &OomWatcher, id: &str) {
    if w.take_new_kills() > 0 {
        let mut ev = TaskOOM::new();
        ev.container_id = id.to_string();
        publisher.publish("/tasks/oom", &ev);
    }
}

/// Releases a Create's claim on its id, however the Create ends.
struct CreateGuard<'a> {
    set: &'a Mutex<HashSet<String>>,
    id: String,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.id);
    }
}

fn fill_delete(resp: &mut DeleteResponse, p: &Process) {
    resp.pid = p.pid;
    if let Some((status, at)) = p.exit {
        resp.exit_status = status;
        resp.exited_at = MessageField::some(timestamp(at));
    } else {
        resp.exited_at = MessageField::some(timestamp(SystemTime::now()));
    }
}

#[async_trait]
impl<R: Runtime> protos::shim_ttrpc::Task for TaskService<R> {
    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        self.reply("state", self.do_state(req).await)
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        log::info!("create {} in {}", req.id, req.bundle);
        self.reply("create", self.do_create(req).await)
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        self.reply("start", self.do_start(req).await)
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        self.reply("delete", self.do_delete(req).await)
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        self.reply("pids", self.do_pids(req).await)
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        self.reply(
            "pause",
            self.do_pause(&req.id, true).await.map(|_| Empty::new()),
        )
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        self.reply(
            "resume",
            self.do_pause(&req.id, false).await.map(|_| Empty::new()),
        )
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        req: CheckpointTaskRequest,
    ) -> ttrpc::Result<Empty> {
        let r = async {
            let container = self.container(&req.id)?;
            let c = container.lock().await;
            let opts = req.options.clone().unwrap_or_default();
            self.runtime.checkpoint(&c.info, &req.path, &opts).await
        }
        .await;
        self.reply("checkpoint", r.map(|_| Empty::new()))
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        self.reply("kill", self.do_kill(req).await.map(|_| Empty::new()))
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        self.reply("exec", self.do_exec(req).await.map(|_| Empty::new()))
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let r = self.do_resize(req).await;
        self.reply("resize_pty", r.map(|_| Empty::new()))
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let r = self
            .do_io(&req.id, &req.exec_id, |io| {
                if req.stdin {
                    io.close_stdin();
                }
                Ok(())
            })
            .await;
        self.reply("close_io", r.map(|_| Empty::new()))
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let r = async {
            let container = self.container(&req.id)?;
            let c = container.lock().await;
            let resources = req
                .resources
                .as_ref()
                .map(|a| a.value.as_slice())
                .unwrap_or(b"{}");
            self.runtime.update(&c.info, resources).await
        }
        .await;
        self.reply("update", r.map(|_| Empty::new()))
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        self.reply("wait", self.do_wait(req).await)
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let r = async {
            let container = self.container(&req.id)?;
            let c = container.lock().await;
            let any = self.runtime.stats(&c.info, c.init.pid).await?;
            let mut resp = StatsResponse::new();
            resp.stats = MessageField::some(any);
            Ok(resp)
        }
        .await;
        self.reply("stats", r)
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        let r = async {
            let mut resp = ConnectResponse::new();
            resp.shim_pid = std::process::id();
            if let Ok(container) = self.container(&req.id) {
                resp.task_pid = container.lock().await.init.pid;
            }
            Ok(resp)
        }
        .await;
        self.reply("connect", r)
    }

    async fn shutdown(&self, _: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        if lock(&self.containers).is_empty() && lock(&self.creating).is_empty() {
            self.shutdown.notify_one();
        } else {
            log::debug!("shutdown ignored: containers remain");
        }
        Ok(Empty::new())
    }
}
