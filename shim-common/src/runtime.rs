//! The one trait a runtime implements. Everything containerd-facing (the Task API, the state
//! machine, events, stdio, exit bookkeeping, the CLI) is written once over it.
//!
//! A runtime only answers "do this to that container": create a process, start it, signal it,
//! delete it, freeze it, list it. It reports exits as `(pid, status)`, and the framework maps
//! pids to processes. The same shape fits a runtime CLI (runc), a native runtime (the shim forks
//! the container itself) and a VM (an agent does it in the guest).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use protobuf::well_known_types::any::Any;

use crate::bundle::{Bundle, Spec};
use crate::error::{Error, Result};
use crate::mount::Mount;
use crate::options::Options;
use crate::reaper::{Reaper, Subscription};
use crate::stdio::ProcessIo;

/// What the daemon hands a runtime when it starts.
pub struct RuntimeContext {
    pub namespace: String,
    /// The daemon's waitpid loop: spawn children through it, never `wait` on them directly.
    pub reaper: Arc<Reaper>,
    pub debug: bool,
    /// The daemon's ttrpc socket. It lives in the first bundle, or beside containerd's state
    /// when it must outlive that bundle (a pod's shim): a runtime with state of its own that
    /// serves the whole pod (a VM) keeps it beside the socket for the same reason.
    pub socket: PathBuf,
}

/// One container as the runtime sees it. Built by the framework at Create.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub namespace: String,
    pub bundle: Bundle,
    pub spec: Spec,
    /// The Create request's options, decoded.
    pub options: Options,
    /// The TOML settings in force for this container (file, inline body or defaults).
    pub settings: toml::Table,
    pub rootfs: Vec<Mount>,
    /// Restore from this checkpoint image instead of creating afresh.
    pub checkpoint: Option<PathBuf>,
}

/// A process the runtime created: its host pid and, for a terminal, the pty master.
pub struct Spawned {
    pub pid: u32,
    pub console: Option<std::os::fd::OwnedFd>,
}

/// Which process a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Init { pid: u32 },
    Exec { exec_id: &'a str, pid: u32 },
}

impl<'a> Target<'a> {
    /// The init for an empty exec id, as the Task API names it.
    pub fn of(exec_id: &'a str, pid: u32) -> Target<'a> {
        if exec_id.is_empty() {
            Target::Init { pid }
        } else {
            Target::Exec { exec_id, pid }
        }
    }

    /// The Task API's name of the process: empty for the init.
    pub fn exec_id(self) -> &'a str {
        match self {
            Target::Init { .. } => "",
            Target::Exec { exec_id, .. } => exec_id,
        }
    }
}

#[async_trait]
pub trait Runtime: Send + Sync + Sized + 'static {
    /// Short name: binaries are `containerd-shim-<NAME>-v1`, the default settings file is
    /// `/etc/containerd/shim-<NAME>.toml`.
    const NAME: &'static str;

    fn new(ctx: RuntimeContext) -> Result<Self>;

    /// Exits of the processes this runtime created, as `(pid, status)`.
    fn exits(&self) -> Subscription;

    /// Creates the container's init process, stopped before the user's program runs. When
    /// `c.checkpoint` is set the process is restored at `start` instead: return pid 0 and keep
    /// `io` for then.
    async fn create(&self, c: &ContainerInfo, io: ProcessIo) -> Result<Spawned>;

    /// Lets the created init run its program; returns the process when it only now came to be
    /// (a restore from a checkpoint).
    async fn start(&self, c: &ContainerInfo) -> Result<Option<Spawned>>;

    /// Runs an additional process (an OCI `Process`, as JSON) in the container.
    async fn exec(
        &self,
        c: &ContainerInfo,
        exec_id: &str,
        process: &[u8],
        io: ProcessIo,
    ) -> Result<Spawned>;

    async fn kill(
        &self,
        c: &ContainerInfo,
        target: Target<'_>,
        signal: u32,
        all: bool,
    ) -> Result<()>;

    /// The process's terminal changed size. The framework has already resized the pty master
    /// it holds; a runtime whose real terminal is elsewhere (a VM's guest) passes it on.
    async fn resize(
        &self,
        _c: &ContainerInfo,
        _target: Target<'_>,
        _width: u32,
        _height: u32,
    ) -> Result<()> {
        Ok(())
    }

    /// Removes the container once its init has exited (or was never started).
    async fn delete(&self, c: &ContainerInfo) -> Result<()>;

    async fn pause(&self, _c: &ContainerInfo) -> Result<()> {
        Err(Error::Unimplemented("pause is not supported".into()))
    }

    async fn resume(&self, _c: &ContainerInfo) -> Result<()> {
        Err(Error::Unimplemented("resume is not supported".into()))
    }

    /// Every pid in the container.
    async fn pids(&self, c: &ContainerInfo, init_pid: u32) -> Result<Vec<u32>>;

    /// Applies new resources (a JSON `LinuxResources`).
    async fn update(&self, _c: &ContainerInfo, _resources: &[u8]) -> Result<()> {
        Err(Error::Unimplemented("update is not supported".into()))
    }

    /// cgroup metrics as an `Any` (`io.containerd.cgroups.v1.Metrics` or `.v2.Metrics`).
    async fn stats(&self, c: &ContainerInfo, init_pid: u32) -> Result<Any> {
        crate::cgroups::metrics(init_pid, c.spec.cgroups_path())
    }

    /// Where the container's OOM kills are seen: its host cgroup by default.
    fn watch_oom(&self, c: &ContainerInfo, init_pid: u32) -> Result<crate::cgroups::OomWatcher> {
        crate::cgroups::OomWatcher::new(init_pid, c.spec.cgroups_path())
    }

    async fn checkpoint(&self, _c: &ContainerInfo, _path: &str, _options: &Any) -> Result<()> {
        Err(Error::Unimplemented("checkpoint is not supported".into()))
    }

    /// `shim delete`: the daemon is gone; remove whatever of the container is left. Runs in a
    /// plain process, without the daemon's reaper. Returns the init pid if it is known.
    fn cleanup(bundle: &Bundle, id: &str, namespace: &str) -> Result<Option<u32>>;

    /// The runtime's OCI `features` document, for `-info`.
    fn features() -> Option<Vec<u8>> {
        None
    }
}
