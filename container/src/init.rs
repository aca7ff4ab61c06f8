//! The container's setup process: the runtime re-executes its own binary in a setup mode
//! (`Launcher`), which makes a fresh, single-threaded process. Only there are namespaces
//! entered, mounts made and identities dropped, so nothing unsafe ever happens after a fork
//! of the multi-threaded runtime. A runtime that runs one thread (the VM agent) may instead
//! be forked ([`forked_main`]): that child is as single-threaded as a fresh exec, starts
//! with the config and spec in memory, and never returns into the runtime's code.
//!
//! Stage 1 joins or creates the namespaces and forks; the child is stage 2, the container's
//! process (pid 1 of a new pid namespace). Stage 1 reports its pid and exits, so stage 2 is
//! re-parented to the runtime (a child subreaper). Stage 2 builds the filesystem, waits for
//! Start, then execs the program.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::unistd::ForkResult;
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use serde::{Deserialize, Serialize};

use crate::cgroups::{join_v2_slow, Placement};
use crate::channel::{Channel, Message};
use crate::error::{Error, Result};
use crate::fork::fork_into;
use crate::hooks::{self, State};
use crate::process::Prepared;
use crate::rootfs;

/// The fd the setup process finds its channel on.
pub const CHANNEL_FD: RawFd = 3;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SetupMode {
    /// The container's init, from the bundle's config.json.
    Create,
    /// An additional process in the running container of `init_pid`.
    Exec {
        init_pid: u32,
        process: serde_json::Value,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetupConfig {
    pub id: String,
    pub bundle: PathBuf,
    pub mode: SetupMode,
    pub terminal: bool,
    pub no_pivot: bool,
}

/// The bundle's config.json.
pub fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let data =
        std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&data).map_err(|e| Error::Spec(format!("{}: {e}", path.display())))
}

/// Our end of the channel, made close-on-exec: the runtime learns that the container's
/// program replaced the setup code from the EOF.
fn take_channel() -> Channel {
    // SAFETY: the launcher placed our end of the channel at CHANNEL_FD.
    let channel = unsafe { Channel::from_raw_fd(CHANNEL_FD) };
    let _ = nix::fcntl::fcntl(
        CHANNEL_FD,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    channel
}

/// Entry point of the setup mode; never returns.
pub fn main() -> ! {
    let channel = take_channel();
    let err = match stage1(&channel) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = channel.send(&Message::Failed {
        message: err.to_string(),
    });
    exit_now(1)
}

/// Ends the setup process without running exit handlers or thread-local destructors. In a
/// setup process forked from its runtime (see [`forked_main`]) those are the runtime's: its
/// async runtime's thread-locals would deregister descriptors from an epoll instance the
/// runtime still uses.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process at once.
    unsafe { libc::_exit(code) }
}

/// Entry point of a setup process forked (not re-executed) from a single-threaded runtime,
/// with the config and spec already in memory: its stdio is on 0-2, its channel on
/// [`CHANNEL_FD`] and every other descriptor closed (see `launch`). Never returns into the
/// runtime's code: it execs the container's program or exits.
pub(crate) fn forked_main(config: &SetupConfig, spec: &Spec) -> ! {
    // The runtime's handlers (its async runtime's SIGCHLD one, say) must not run here.
    crate::process::reset_signals();
    let channel = take_channel();
    let err = match stage1_with(&channel, config, spec) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = channel.send(&Message::Failed {
        message: err.to_string(),
    });
    exit_now(1)
}

fn expect_continue(ch: &Channel) -> Result<()> {
    match ch.recv()? {
        Some(Message::Continue) => Ok(()),
        Some(other) => Err(Error::Protocol(format!("expected continue, got {other:?}"))),
        None => Err(Error::Protocol("the runtime went away".into())),
    }
}

fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

fn setns(path: &Path, flag: CloneFlags) -> Result<()> {
    let f = File::open(path)
        .map_err(|e| Error::io(format!("opening namespace {}", path.display()), e))?;
    nix::sched::setns(f, flag)
        .map_err(|e| Error::sys(format!("joining namespace {}", path.display()), e))
}

/// What the container's process does about the cgroup namespace, once it exists: that
/// namespace is entered only by the child, after it was born in the container's cgroup, so
/// that a new one is rooted there (and so that moving into the cgroup never has to cross a
/// cgroup namespace).
enum CgroupNs {
    Keep,
    New,
    Join(File),
}

impl CgroupNs {
    fn enter(self) -> Result<()> {
        match self {
            CgroupNs::Keep => Ok(()),
            CgroupNs::New => nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| Error::sys("creating the cgroup namespace", e)),
            CgroupNs::Join(f) => nix::sched::setns(f, CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| Error::sys("joining the container's cgroup namespace", e)),
        }
    }
}

/// The namespaces of a new container: joined by path, or created. The user namespace comes
/// first (it owns the others), then the rest; the cgroup namespace is left to the child.
fn enter_namespaces(ch: &Channel, spec: &Spec) -> Result<(bool, CgroupNs)> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut new = CloneFlags::empty();
    let mut new_user = false;
    let (user, others): (Vec<_>, Vec<_>) = namespaces
        .iter()
        .partition(|n| n.typ() == LinuxNamespaceType::User);
    let mut cgroup_ns = CgroupNs::Keep;
    for n in user.iter().chain(others.iter()) {
        let flag = ns_flag(n.typ());
        match n.path() {
            Some(p) if !p.as_os_str().is_empty() && n.typ() == LinuxNamespaceType::Cgroup => {
                let f = File::open(p)
                    .map_err(|e| Error::io(format!("opening namespace {}", p.display()), e))?;
                cgroup_ns = CgroupNs::Join(f);
            }
            Some(p) if !p.as_os_str().is_empty() => setns(p, flag)?,
            _ if n.typ() == LinuxNamespaceType::Cgroup => cgroup_ns = CgroupNs::New,
            _ if n.typ() == LinuxNamespaceType::User => {
                nix::sched::unshare(flag)
                    .map_err(|e| Error::sys("creating the user namespace", e))?;
                ch.send(&Message::NeedIdMaps {
                    pid: std::process::id(),
                })?;
                expect_continue(ch)?;
                nix::unistd::setresgid(0.into(), 0.into(), 0.into())
                    .map_err(|e| Error::sys("becoming root in the user namespace", e))?;
                nix::unistd::setresuid(0.into(), 0.into(), 0.into())
                    .map_err(|e| Error::sys("becoming root in the user namespace", e))?;
                new_user = true;
            }
            _ => new |= flag,
        }
    }
    if !new.is_empty() {
        nix::sched::unshare(new)
            .map_err(|e| Error::sys(format!("creating namespaces {new:?}"), e))?;
    }
    Ok((new_user, cgroup_ns))
}

/// Joins the container's cgroup itself (see [`Placement`]): v1 hierarchies at once, and
/// returns the v2 directory for the fork to be born in. When the process is about to be in
/// another user namespace, it could no longer move anything into the host's cgroups, so v2
/// is joined now, the slow way.
fn join_cgroup(placement: &Placement, user_ns_ahead: bool) -> Result<Option<OwnedFd>> {
    let cgroup_err =
        |e: crate::cgroups::CgroupError| Error::Setup(format!("joining the cgroup: {e}"));
    placement.join_v1_current_thread().map_err(cgroup_err)?;
    let v2 = placement.open_v2().map_err(cgroup_err)?;
    match v2 {
        Some(dir) if user_ns_ahead => {
            join_v2_slow(&dir).map_err(|e| Error::io("joining the v2 cgroup", e))?;
            Ok(None)
        }
        v2 => Ok(v2),
    }
}

/// Whether the setup process will be in another user namespace than now when it forks.
fn user_ns_ahead(mode: &SetupMode, spec: &Spec) -> bool {
    match mode {
        SetupMode::Create => spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::User)),
        SetupMode::Exec { init_pid, .. } => {
            std::fs::read_link("/proc/self/ns/user").ok()
                != std::fs::read_link(format!("/proc/{init_pid}/ns/user")).ok()
        }
    }
}

fn stage1(ch: &Channel) -> Result<std::convert::Infallible> {
    let config = match ch.recv()? {
        Some(Message::Config(c)) => *c,
        other => {
            return Err(Error::Protocol(format!(
                "expected the config, got {other:?}"
            )))
        }
    };
    let spec = load_spec(&config.bundle)?;
    stage1_with(ch, &config, &spec)
}

fn stage1_with(
    ch: &Channel,
    config: &SetupConfig,
    spec: &Spec,
) -> Result<std::convert::Infallible> {
    ch.send(&Message::NeedCgroup)?;
    let v2 = match ch.recv()? {
        Some(Message::Continue) => None,
        Some(Message::JoinCgroup(placement)) => {
            join_cgroup(&placement, user_ns_ahead(&config.mode, spec))?
        }
        Some(other) => {
            return Err(Error::Protocol(format!(
                "expected the cgroup, got {other:?}"
            )))
        }
        None => return Err(Error::Protocol("the runtime went away".into())),
    };
    let (in_userns, cgroup_ns) = match &config.mode {
        SetupMode::Create => enter_namespaces(ch, spec)?,
        SetupMode::Exec { init_pid, .. } => join_container(*init_pid)?,
    };
    // The child waits until its pid is on the channel, so the runtime always learns the pid
    // before anything the child says.
    let (gate_r, gate_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("creating a pipe", e))?;
    // SAFETY: this process is single-threaded (a fresh exec, or a fork of a single-threaded
    // runtime), so the child may do anything.
    match unsafe { fork_into(v2.as_ref()) }? {
        ForkResult::Parent { child } => {
            drop(gate_r);
            ch.send(&Message::Pid {
                pid: child.as_raw() as u32,
            })?;
            let _ = nix::unistd::write(&gate_w, b"1");
            exit_now(0)
        }
        ForkResult::Child => {
            drop(gate_w);
            let mut b = [0u8; 1];
            if !matches!(nix::unistd::read(gate_r.as_raw_fd(), &mut b), Ok(1)) {
                exit_now(1);
            }
        }
    }
    drop(v2);
    cgroup_ns.enter()?;
    let err = match stage2(ch, config, spec, in_userns) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    Err(err)
}

/// Joins every namespace of the running container `pid` but the cgroup one, which is left
/// to the child (see [`CgroupNs`]). The fds are opened before any setns, since joining the
/// mount namespace changes what /proc means.
fn join_container(pid: u32) -> Result<(bool, CgroupNs)> {
    let own_user = std::fs::read_link("/proc/self/ns/user").ok();
    let mut targets = Vec::new();
    for (name, flag) in [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let path = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        let mine = std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
        let theirs = std::fs::read_link(&path).ok();
        if theirs.is_none() || mine == theirs {
            continue;
        }
        let f =
            File::open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        targets.push((name, f, flag));
    }
    let in_userns = targets.iter().any(|(n, _, _)| *n == "user")
        || own_user != std::fs::read_link(format!("/proc/{pid}/ns/user")).ok();
    let mut cgroup_ns = CgroupNs::Keep;
    for (name, f, flag) in targets {
        if flag == CloneFlags::CLONE_NEWCGROUP {
            cgroup_ns = CgroupNs::Join(f);
            continue;
        }
        nix::sched::setns(f, flag)
            .map_err(|e| Error::sys(format!("joining the container's {name} namespace"), e))?;
    }
    Ok((in_userns, cgroup_ns))
}

fn stage2(
    ch: &Channel,
    config: &SetupConfig,
    spec: &Spec,
    in_userns: bool,
) -> Result<std::convert::Infallible> {
    nix::unistd::setsid().map_err(|e| Error::sys("setsid", e))?;
    let process: Process = match &config.mode {
        SetupMode::Create => {
            create_filesystem(ch, config, spec, in_userns)?;
            spec.process()
                .clone()
                .ok_or_else(|| Error::Spec("the spec has no process".into()))?
        }
        SetupMode::Exec { process, .. } => serde_json::from_value(process.clone())
            .map_err(|e| Error::Spec(format!("exec process: {e}")))?,
    };
    if config.terminal {
        setup_terminal(ch)?;
    }
    let (prepared, warnings) = Prepared::new(spec, &process)?;
    for w in warnings {
        ch.send(&Message::Warning { message: w })?;
    }
    if config.mode == SetupMode::Create {
        ch.send(&Message::Created)?;
        match ch.recv()? {
            Some(Message::Start) => {}
            // The runtime deleted the container before starting it, or died.
            _ => exit_now(1),
        }
        if let Some(h) = spec
            .hooks()
            .as_ref()
            .and_then(|h| h.start_container().clone())
        {
            let state = State::new(
                spec,
                &config.id,
                "created",
                std::process::id(),
                &config.bundle,
            );
            hooks::run_blocking(&h, &state, "startContainer")?;
        }
    }
    Err(prepared.exec())
}

fn create_filesystem(
    ch: &Channel,
    config: &SetupConfig,
    spec: &Spec,
    in_userns: bool,
) -> Result<()> {
    let root_path = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .ok_or_else(|| Error::Spec("the spec has no root".into()))?;
    let root = config.bundle.join(root_path);
    let root = root
        .canonicalize()
        .map_err(|e| Error::io(format!("rootfs {}", root.display()), e))?;
    rootfs::prepare(spec, &config.bundle, &root, in_userns)?;
    if let Some(h) = spec.hostname().as_ref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).map_err(|e| Error::sys(format!("setting hostname {h}"), e))?;
    }
    if let Some(d) = spec.domainname().as_ref().filter(|d| !d.is_empty()) {
        // SAFETY: setdomainname with a valid buffer and its length.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(Error::io(
                format!("setting domainname {d}"),
                std::io::Error::last_os_error(),
            ));
        }
    }
    ch.send(&Message::NamespacesReady)?;
    expect_continue(ch)?;
    if let Some(h) = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.create_container().clone())
    {
        let state = State::new(
            spec,
            &config.id,
            "creating",
            std::process::id(),
            &config.bundle,
        );
        hooks::run_blocking(&h, &state, "createContainer")?;
    }
    rootfs::enter(&root, config.no_pivot)?;
    rootfs::finish(spec)
}

/// Allocates the pty inside the container (its devpts), hands the master to the runtime and
/// makes the slave our controlling terminal and stdio.
fn setup_terminal(ch: &Channel) -> Result<()> {
    let master = nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY)
        .map_err(|e| Error::sys("opening /dev/ptmx", e))?;
    nix::pty::grantpt(&master).map_err(|e| Error::sys("grantpt", e))?;
    nix::pty::unlockpt(&master).map_err(|e| Error::sys("unlockpt", e))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| Error::sys("ptsname", e))?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&name)
        .map_err(|e| Error::io(format!("opening {name}"), e))?;
    ch.send_fd(&Message::Console, Some(master.as_raw_fd()))?;
    drop(master);
    let fd = slave.as_raw_fd();
    for target in 0..3 {
        nix::unistd::dup2(fd, target).map_err(|e| Error::sys("dup2 of the terminal", e))?;
    }
    // SAFETY: ioctl making the slave (fd 0) our controlling terminal.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(Error::io(
            "setting the controlling terminal",
            std::io::Error::last_os_error(),
        ));
    }
    drop(slave);
    Ok(())
}
