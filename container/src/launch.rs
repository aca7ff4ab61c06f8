//! The runtime's side of creating a container: start the setup process (a re-exec of the
//! runtime's own binary, or, for a single-threaded runtime that asks for it, a fork of the
//! runtime), answer its requests (cgroup, id maps, hooks), collect its pid and console, and
//! later tell it to start.

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
    /// Fork the runtime itself instead of re-executing `program`, whenever the runtime has one
    /// thread at that moment (checked on every launch; with more threads it re-executes).
    ///
    /// Why: a fork of a single-threaded process may do anything in the child, and it skips
    /// what a re-exec costs on every container and exec: loading and relocating the binary,
    /// its startup, and reading and parsing the spec again. Under an emulating hypervisor
    /// (TCG) that was most of an exec's time, the more so because a new process's code lands
    /// at new (randomised) addresses and is translated again, while a fork runs code at the
    /// addresses earlier forks already had translated. The child runs only the setup code (see
    /// [`crate::init`]) and never returns into the runtime's.
    pub fork_when_single_threaded: bool,
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
    if exited.as_ref().is_some_and(already_readable) {
        return;
    }
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

/// Whether `fd` (a pidfd) is readable now: the process is gone, and out of its cgroup.
fn already_readable(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) == 1 && p.revents & libc::POLLIN != 0 }
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

/// Whether this process has exactly one thread (`num_threads`, field 20 of /proc/self/stat).
fn single_threaded() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return false;
    };
    // Fields after the command (which may hold spaces and parentheses) start at field 3.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    rest.split_whitespace().nth(17) == Some("1")
}

/// The lowest descriptor [`fork_setup`] moves its fds to before placing them: above 0-3, so
/// that placing one never overwrites another still to be placed.
const PARK_FD: RawFd = 10;

/// In the forked child: stdio on 0-2, the channel on [`CHANNEL_FD`], every other descriptor
/// closed (they are the runtime's: its event loop, other processes' pipes). Only raw
/// syscalls, so a failure exits at once.
fn place_fds(io: &Stdio3, channel: RawFd) {
    let fail = || -> ! {
        // SAFETY: _exit ends the child without touching the runtime's state.
        unsafe { libc::_exit(127) }
    };
    let sources = [
        io.stdin.as_raw_fd(),
        io.stdout.as_raw_fd(),
        io.stderr.as_raw_fd(),
        channel,
    ];
    let mut parked = [0; 4];
    for (i, fd) in sources.iter().enumerate() {
        // SAFETY: fcntl(F_DUPFD) on a descriptor we own.
        let p = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, PARK_FD) };
        if p < 0 {
            fail();
        }
        parked[i] = p;
    }
    for (target, fd) in parked.iter().enumerate() {
        // SAFETY: dup2 onto 0-3; the copy is not close-on-exec.
        if unsafe { libc::dup2(*fd, target as RawFd) } < 0 {
            fail();
        }
    }
    // SAFETY: closes every descriptor from 4 up; nothing in this process uses them again.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) };
    if closed != 0 {
        // Kernels before 5.9: close one by one up to the limit.
        // SAFETY: sysconf and close take plain integers.
        let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(4, 1 << 20) as RawFd;
        for fd in 4..max {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }
}

impl Launcher {
    /// The setup process as a fork of this (single-threaded) process; it starts with the config
    /// and spec it would otherwise receive and read.
    fn fork_setup(
        &self,
        io: Stdio3,
        config: &SetupConfig,
        spec: &Spec,
    ) -> Result<(u32, AsyncChannel)> {
        let (ours, theirs) = channel::pair()?;
        let theirs = theirs.into_fd();
        // SAFETY: the caller checked that this process has one thread, so the child may run
        // any code; it runs only `forked_main`, which never returns.
        match unsafe { libc::fork() } {
            -1 => Err(Error::io(
                "forking the setup process",
                std::io::Error::last_os_error(),
            )),
            0 => {
                place_fds(&io, theirs.as_raw_fd());
                crate::init::forked_main(config, spec)
            }
            pid => {
                drop(theirs);
                drop(io);
                Ok((pid as u32, ours.into_async()?))
            }
        }
    }

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
        // The setup process's pidfd is never waited on here: the runtime's own loop (a child
        // subreaper) reaps it.
        let (setup_pid, ch, mut exited) = if self.fork_when_single_threaded && single_threaded() {
            let (pid, ch) = self.fork_setup(io, &config, spec)?;
            // Opened before this task yields: the runtime's loop runs on this thread (the only
            // one), so it has not reaped the child yet, even one that already exited.
            (pid, ch, pidfd(pid))
        } else {
            let (child, ch) = self.spawn(io)?;
            let pid = child.id();
            // Opened while it certainly exists (it waits for its config).
            let exited = pidfd(pid);
            drop(child);
            ch.send(&Message::Config(Box::new(config))).await?;
            (pid, ch, exited)
        };
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
