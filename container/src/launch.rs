//! The runtime's side of creating a container: spawn the setup process (a re-exec of the
//! runtime's own binary), answer its requests (cgroup, id maps, hooks), collect its pid and
//! console, and later tell it to start.

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use oci_spec::runtime::Spec;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::cgroups::Cgroup;
use crate::channel::{self, AsyncChannel, Message};
use crate::error::{Error, Result};
use crate::init::{SetupConfig, CHANNEL_FD};

/// How to start the setup process: a binary that calls [`crate::init::main`] when run with
/// `args`.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// The process's stdio ends (ignored for a terminal, where the container opens its pty).
pub struct Stdio3 {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// A created process: its pid, its pty master, and the channel Start goes through.
pub struct Launched {
    pub pid: u32,
    pub console: Option<OwnedFd>,
    pub warnings: Vec<String>,
    channel: AsyncChannel,
}

impl Launched {
    /// Lets a created init run its program; returns once it exec'd (or failed to).
    pub async fn start(self) -> Result<()> {
        self.channel.send(&Message::Start).await?;
        finish(&self.channel).await
    }
}

/// Waits until the setup process is gone (its end closes when it execs) or reports a failure.
async fn finish(ch: &AsyncChannel) -> Result<()> {
    loop {
        match ch.recv().await? {
            None => return Ok(()),
            Some((Message::Failed { message }, _)) => return Err(Error::Setup(message)),
            Some(_) => continue,
        }
    }
}

/// A pidfd of `pid` (readable once it exited), or None when the kernel has none or the process
/// is already gone.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative return is a fresh descriptor (pidfds are close-on-exec).
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Waits (briefly) until the setup process is out of the container's cgroup. It joined the
/// cgroup so that the container's process is born in it, and it exits as soon as it reported
/// that pid; but its exit closes its end of the channel before the kernel takes it out of the
/// cgroup, so without this an exec's Start could return while the setup process still shows up
/// among the container's processes (in Pids, for one). Its pidfd turns readable only after the
/// kernel took it out of the cgroup, so that is waited for instead of polling the cgroup.
async fn setup_left(cgroup: Option<&Cgroup>, setup_pid: u32, exited: Option<OwnedFd>) {
    let Some(cg) = cgroup else { return };
    let still_in = || matches!(cg.pids(), Ok(pids) if pids.contains(&setup_pid));
    if !still_in() {
        return;
    }
    if let Some(fd) = exited {
        // SAFETY: the AsyncFd owns the pidfd for as long as it is registered.
        if let Ok(afd) = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
            let limit = std::time::Duration::from_secs(2);
            let _ = tokio::time::timeout(limit, afd.readable()).await;
        }
    }
    for _ in 0..400 {
        if !still_in() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await
    }
    log::warn!("the setup process {setup_pid} is still in the container's cgroup");
}

fn write_id_maps(pid: u32, spec: &Spec) -> Result<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    let fmt = |maps: Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.unwrap_or_default()
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let uid = fmt(linux.uid_mappings().clone());
    let gid = fmt(linux.gid_mappings().clone());
    if uid.is_empty() || gid.is_empty() {
        return Err(Error::Spec(
            "a new user namespace needs uidMappings and gidMappings".into(),
        ));
    }
    std::fs::write(format!("/proc/{pid}/uid_map"), uid)
        .map_err(|e| Error::io("writing uid_map", e))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), gid).map_err(|e| Error::io("writing gid_map", e))
}

impl Launcher {
    fn spawn(&self, io: Stdio3) -> Result<(std::process::Child, AsyncChannel)> {
        let (ours, theirs) = channel::pair()?;
        let theirs = theirs.into_fd();
        let raw = theirs.as_raw_fd();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .stdin(Stdio::from(io.stdin))
            .stdout(Stdio::from(io.stdout))
            .stderr(Stdio::from(io.stderr));
        // SAFETY: dup2 is async-signal-safe; it also clears close-on-exec on the copy.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, CHANNEL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", self.program.display()), e))?;
        drop(cmd);
        drop(theirs);
        Ok((child, ours.into_async()?))
    }

    /// Creates a container's init (stopped before its program) or an exec process (which runs
    /// at once). `on_namespaces_ready` runs the prestart and createRuntime hooks.
    pub async fn launch<F, Fut>(
        &self,
        config: SetupConfig,
        spec: &Spec,
        cgroup: Option<&Cgroup>,
        io: Stdio3,
        on_namespaces_ready: F,
    ) -> Result<Launched>
    where
        F: FnOnce(u32) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let is_exec = !matches!(config.mode, crate::init::SetupMode::Create);
        let (child, ch) = self.spawn(io)?;
        let setup_pid = child.id();
        // Opened while it certainly exists (it waits for its config): it is never waited on
        // here, the runtime's own loop (a child subreaper) reaps it.
        let mut exited = pidfd(setup_pid);
        drop(child);
        ch.send(&Message::Config(Box::new(config))).await?;
        let mut hooks = Some(on_namespaces_ready);
        let mut pid = None;
        let mut console = None;
        let mut warnings = Vec::new();
        loop {
            let Some((msg, fd)) = ch.recv().await? else {
                // An exec's setup ends by exec'ing: that is success once the pid is known.
                if is_exec {
                    if let Some(pid) = pid {
                        setup_left(cgroup, setup_pid, exited.take()).await;
                        return Ok(Launched {
                            pid,
                            console,
                            warnings,
                            channel: ch,
                        });
                    }
                }
                return Err(Error::Setup(
                    "the container's setup process exited without a word".into(),
                ));
            };
            match msg {
                Message::NeedCgroup => match cgroup {
                    Some(cg) => ch.send(&Message::JoinCgroup(cg.placement())).await?,
                    None => ch.send(&Message::Continue).await?,
                },
                Message::NeedIdMaps { pid } => {
                    write_id_maps(pid, spec)?;
                    ch.send(&Message::Continue).await?;
                }
                Message::Pid { pid: p } => pid = Some(p),
                Message::NamespacesReady => {
                    let p =
                        pid.ok_or_else(|| Error::Protocol("namespaces ready before pid".into()))?;
                    if let Some(h) = hooks.take() {
                        h(p).await?;
                    }
                    ch.send(&Message::Continue).await?;
                }
                Message::Console => {
                    console = Some(fd.ok_or_else(|| Error::Protocol("console without fd".into()))?)
                }
                Message::Warning { message } => warnings.push(message),
                Message::Failed { message } => return Err(Error::Setup(message)),
                Message::Created => {
                    let pid = pid.ok_or_else(|| Error::Protocol("created before pid".into()))?;
                    setup_left(cgroup, setup_pid, exited.take()).await;
                    return Ok(Launched {
                        pid,
                        console,
                        warnings,
                        channel: ch,
                    });
                }
                other => return Err(Error::Protocol(format!("unexpected {other:?}"))),
            }
        }
    }
}
