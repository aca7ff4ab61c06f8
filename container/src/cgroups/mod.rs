//! cgroup v1 ("legacy"/"hybrid") and v2 ("unified") management for containers.
//!
//! The layout mirrors what runc does so that containers created by either runtime can be found,
//! updated and deleted by the other: an OCI `cgroupsPath` of "/ns/id" lives at
//! `<root>/<controller>/ns/id` in every v1 hierarchy (plus `<root>/unified/ns/id` on hybrid
//! hosts), or at `<root>/ns/id` on a pure v2 host.

mod devices;
mod ebpf;
mod fs;
mod v1;
mod v2;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroupfs operation (mkdir, read, rmdir, ...) failed.
    #[error("cgroup {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel rejected a value; the file and value are kept because that is what a user
    /// needs to fix their spec.
    #[error("cgroup write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    /// A resource value was refused before reaching the kernel.
    #[error("invalid cgroup value {value:?} for {file}: {reason}")]
    InvalidValue {
        file: String,
        value: String,
        reason: String,
    },
    /// The cgroups path or the requested combination of settings cannot be honoured.
    #[error("invalid cgroup argument: {0}")]
    InvalidArgument(String),
    /// `open` found no directory for the cgroup.
    #[error("cgroup {path:?} does not exist under {root}")]
    NotFound { path: String, root: PathBuf },
    /// A v2 setting needs a controller that is not enabled for this cgroup.
    #[error("cgroup controller {controller:?} is not available in {path} (cannot set {file})")]
    ControllerMissing {
        controller: String,
        file: String,
        path: PathBuf,
    },
    /// Freezing/thawing did not settle.
    #[error("cgroup {op} of {path} did not complete: {detail}")]
    Timeout {
        op: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// Loading or attaching the v2 device-filter eBPF program failed.
    #[error("cgroup device filter: bpf {op} for {path}: {source}{log}")]
    Bpf {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
        log: String,
    },
    /// Signalling a process of the cgroup failed for a reason other than it being gone.
    #[error("cgroup signal {signal} to pid {pid}: {source}")]
    Signal {
        pid: u32,
        signal: i32,
        #[source]
        source: Errno,
    },
    /// No cgroup hierarchy is mounted where one was expected.
    #[error("no cgroup hierarchy found under {0}")]
    NoHierarchy(PathBuf),
}

impl CgroupError {
    /// Lets callers treat "already gone" as success without matching on variants.
    pub fn is_not_found(&self) -> bool {
        match self {
            CgroupError::NotFound { .. } => true,
            CgroupError::Io { source, .. } | CgroupError::Write { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
            }
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, CgroupError>;

/// How cgroups are mounted on the host; decides where every setting goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup2 is mounted at the root itself.
    Unified,
    /// v1 hierarchies live in subdirectories of the root; `unified` is the cgroup2 mount of a
    /// hybrid host (conventionally `<root>/unified`), which only tracks membership.
    Legacy { unified: Option<PathBuf> },
}

/// Only the presence of `cgroup.controllers` is checked (rather than the filesystem magic) so
/// that tests can describe a host with a plain directory tree.
pub fn detect(root: &Path) -> Layout {
    if root.join("cgroup.controllers").exists() {
        return Layout::Unified;
    }
    let unified = root.join("unified");
    let unified = unified
        .join("cgroup.controllers")
        .exists()
        .then_some(unified);
    Layout::Legacy { unified }
}

/// A container's cgroup directories, as the setup process needs them to place the container's
/// process itself, without an RCU grace period.
///
/// Moving a process by writing its pid to `cgroup.procs` write-locks the kernel's global
/// threadgroup semaphore, which waits for an RCU grace period when no migration happened
/// lately: 10-25 ms on an idle host, the largest single cost of an exec. Two moves skip it. In
/// a v1 hierarchy, a thread writing `0` to `tasks` moves only itself, without the global lock;
/// the setup process is single-threaded, so that moves the whole process. In v2, a child can be
/// born in its cgroup (`clone3` with `CLONE_INTO_CGROUP`), which only read-locks it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    /// The container's directory in every v1 hierarchy.
    pub v1: Vec<PathBuf>,
    /// The container's v2 directory (a hybrid host's `unified` one, or the only one).
    pub v2: Option<PathBuf>,
}

impl Placement {
    /// Moves the calling thread into every v1 directory; in a single-threaded process that
    /// is the whole process, and its children are born there.
    pub fn join_v1_current_thread(&self) -> Result<()> {
        for dir in &self.v1 {
            fs::write(dir, "tasks", "0")?;
        }
        Ok(())
    }

    /// The v2 directory, opened for `CLONE_INTO_CGROUP` (or [`join_v2_slow`]).
    pub fn open_v2(&self) -> Result<Option<std::os::fd::OwnedFd>> {
        let Some(dir) = &self.v2 else { return Ok(None) };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|source| CgroupError::Io {
                op: "open",
                path: dir.clone(),
                source,
            })?;
        Ok(Some(f.into()))
    }
}

/// Moves the calling process into the v2 cgroup `dir` through its `cgroup.procs` (the path
/// with the grace period), for when a child cannot be cloned into it. Works through the fd,
/// so after the mount namespace changed as well.
pub fn join_v2_slow(dir: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: openat on a directory fd we own, with a constant NUL-terminated name; the
    // result is a new fd that the File takes over.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c"cgroup.procs".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(b"0")
}

/// One mounted v1 hierarchy and the container's directory in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct V1Dir {
    /// Controllers bound to the hierarchy ("cpu", "cpuacct", "name=systemd", ...).
    pub(crate) controllers: Vec<String>,
    /// Mount point of the hierarchy.
    pub(crate) mount: PathBuf,
    /// The container's cgroup directory inside the hierarchy.
    pub(crate) dir: PathBuf,
}

#[derive(Debug, Clone)]
enum Inner {
    V1 {
        hierarchies: Vec<V1Dir>,
        unified: Option<PathBuf>,
    },
    V2 {
        dir: PathBuf,
    },
}

/// A container's cgroup across every hierarchy of the host.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: String,
    root: PathBuf,
    inner: Inner,
}

impl Cgroup {
    /// Creates (mkdir -p) the cgroup for an OCI `linux.cgroupsPath`: absolute "/a/b", or
    /// relative "a/b" placed under the caller's own cgroup like runc does. The systemd
    /// "slice:prefix:name" form is refused because there is no systemd driver.
    pub fn create(root: &Path, cgroups_path: &str) -> Result<Cgroup> {
        let proc_cgroup = read_proc_self_cgroup();
        let cg = Self::resolve(root, cgroups_path, &proc_cgroup, &read_mountinfo())?;
        cg.make_dirs(true)?;
        Ok(cg)
    }

    /// Opens an existing cgroup (for exec, stats, delete after a restart) without creating
    /// anything.
    pub fn open(root: &Path, cgroups_path: &str) -> Result<Cgroup> {
        let proc_cgroup = read_proc_self_cgroup();
        let cg = Self::resolve(root, cgroups_path, &proc_cgroup, &read_mountinfo())?;
        let exists = match &cg.inner {
            Inner::V2 { dir } => dir.is_dir(),
            Inner::V1 { hierarchies, .. } => hierarchies.iter().any(|h| h.dir.is_dir()),
        };
        if !exists {
            return Err(CgroupError::NotFound {
                path: cg.path.clone(),
                root: cg.root.clone(),
            });
        }
        Ok(cg)
    }

    /// Computes every directory of the cgroup without touching the filesystem beyond discovery.
    pub(crate) fn resolve(
        root: &Path,
        cgroups_path: &str,
        proc_cgroup: &str,
        mountinfo: &str,
    ) -> Result<Cgroup> {
        let (relative, rel) = parse_cgroups_path(cgroups_path)?;
        let own = parse_proc_cgroup(proc_cgroup);
        let inner = match detect(root) {
            Layout::Unified => {
                let base = if relative {
                    join_abs(root, own.unified.as_deref().unwrap_or("/"))
                } else {
                    root.to_path_buf()
                };
                Inner::V2 {
                    dir: base.join(&rel),
                }
            }
            Layout::Legacy { unified } => {
                let mounts = discover_v1(root, mountinfo)?;
                let hierarchies = mounts
                    .into_iter()
                    .map(|m| {
                        let base = if relative {
                            let own_path = own.v1_path_for(&m.controllers, &m.mount_root);
                            join_abs(&m.mount, &own_path)
                        } else {
                            m.mount.clone()
                        };
                        V1Dir {
                            controllers: m.controllers,
                            mount: m.mount,
                            dir: base.join(&rel),
                        }
                    })
                    .collect();
                let unified = unified.map(|u| {
                    let base = if relative {
                        join_abs(&u, own.unified.as_deref().unwrap_or("/"))
                    } else {
                        u
                    };
                    base.join(&rel)
                });
                Inner::V1 {
                    hierarchies,
                    unified,
                }
            }
        };
        Ok(Cgroup {
            path: cgroups_path.to_string(),
            root: root.to_path_buf(),
            inner,
        })
    }

    /// `enable_controllers` exists so tests on a hybrid host's shared cgroup2 mount can run
    /// the v2 code without changing that mount's root `cgroup.subtree_control`.
    pub(crate) fn make_dirs(&self, enable_controllers: bool) -> Result<()> {
        match &self.inner {
            Inner::V1 {
                hierarchies,
                unified,
            } => {
                for h in hierarchies {
                    fs::mkdir_all(&h.dir)?;
                    if h.controllers.iter().any(|c| c == "cpuset") {
                        v1::populate_cpuset(&h.mount, &h.dir)?;
                    }
                }
                if let Some(u) = unified {
                    fs::mkdir_all(u)?;
                }
                Ok(())
            }
            Inner::V2 { dir } => {
                fs::mkdir_all(dir)?;
                if enable_controllers {
                    v2::enable_controllers(&self.root, dir)?;
                }
                Ok(())
            }
        }
    }

    /// Applies OCI LinuxResources; used both at creation and by Update, so anything left as
    /// `None` is left untouched (in particular `devices: None` keeps the current device
    /// access instead of resetting it).
    pub fn apply(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        match &self.inner {
            Inner::V1 { hierarchies, .. } => v1::apply(hierarchies, resources),
            Inner::V2 { dir } => v2::apply(dir, resources),
        }
    }

    /// Joins every hierarchy so that per-hierarchy stats and limits all cover the process.
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        for dir in self.all_dirs() {
            fs::write(&dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Where a new process of the container must go, for the setup process to join itself
    /// (see [`Placement`]).
    pub fn placement(&self) -> Placement {
        match &self.inner {
            Inner::V1 {
                hierarchies,
                unified,
            } => Placement {
                v1: hierarchies.iter().map(|h| h.dir.clone()).collect(),
                v2: unified.clone(),
            },
            Inner::V2 { dir } => Placement {
                v1: Vec::new(),
                v2: Some(dir.clone()),
            },
        }
    }

    /// Reads one hierarchy only: every hierarchy holds the same processes.
    pub fn pids(&self) -> Result<Vec<u32>> {
        fs::read_pids(&self.procs_dir())
    }

    /// Returns only once every task is actually frozen (not merely requested), so callers can
    /// inspect or signal a stable set of processes.
    pub fn freeze(&self) -> Result<()> {
        match &self.inner {
            Inner::V1 { .. } => match self.controller_dir("freezer") {
                Some(dir) => v1::freeze(&dir),
                None => Err(CgroupError::InvalidArgument(
                    "cannot freeze: no freezer hierarchy is mounted".into(),
                )),
            },
            Inner::V2 { dir } => v2::set_frozen(dir, true),
        }
    }

    pub fn thaw(&self) -> Result<()> {
        match &self.inner {
            Inner::V1 { .. } => match self.controller_dir("freezer") {
                Some(dir) => v1::thaw(&dir),
                None => Err(CgroupError::InvalidArgument(
                    "cannot thaw: no freezer hierarchy is mounted".into(),
                )),
            },
            Inner::V2 { dir } => v2::set_frozen(dir, false),
        }
    }

    /// Reports the kernel's settled state (FROZEN, `frozen 1`), not the last request, so a
    /// cgroup stuck half-way reads as not frozen.
    pub fn is_frozen(&self) -> bool {
        match &self.inner {
            Inner::V1 { .. } => self
                .controller_dir("freezer")
                .and_then(|d| fs::read(&d, "freezer.state").ok())
                .is_some_and(|s| s == "FROZEN"),
            Inner::V2 { dir } => v2::is_frozen(dir),
        }
    }

    /// Freezing around the signal loop keeps processes from forking children we would miss;
    /// v2's `cgroup.kill` does the same atomically in the kernel.
    pub fn kill_all(&self, signal: i32) -> Result<()> {
        let sig = Signal::try_from(signal).map_err(|_| CgroupError::InvalidValue {
            file: "signal".into(),
            value: signal.to_string(),
            reason: "not a valid signal number".into(),
        })?;
        if let Inner::V2 { dir } = &self.inner {
            if sig == Signal::SIGKILL && dir.join("cgroup.kill").exists() {
                return match fs::write(dir, "cgroup.kill", "1") {
                    Err(e) if e.is_not_found() => Ok(()),
                    r => r,
                };
            }
        }
        let procs_dir = match &self.inner {
            Inner::V1 { .. } => self
                .controller_dir("freezer")
                .unwrap_or_else(|| self.procs_dir()),
            Inner::V2 { dir } => dir.clone(),
        };
        if !procs_dir.is_dir() {
            return Ok(());
        }
        let can_freeze = match &self.inner {
            Inner::V1 { .. } => self.controller_dir("freezer").is_some(),
            Inner::V2 { dir } => dir.join("cgroup.freeze").exists(),
        };
        let was_frozen = can_freeze && self.is_frozen();
        if can_freeze && !was_frozen {
            self.freeze()?;
        }
        let result = signal_pids(&procs_dir, sig);
        // Thaw even when signalling failed: leaving the container frozen would be worse, and a
        // frozen process cannot act on SIGKILL/SIGTERM until it runs again. A cgroup that was
        // frozen (a paused container) stays frozen, except after SIGKILL: a v1-frozen task
        // does not die until thawed, so the kill would hang (runc thaws too).
        let thawed = if can_freeze && (!was_frozen || sig == Signal::SIGKILL) {
            self.thaw()
        } else {
            Ok(())
        };
        result.and(thawed)
    }

    /// Removes child cgroups the container may have made before its own directory, because
    /// rmdir refuses non-empty cgroups.
    pub fn delete(&self) -> Result<()> {
        let mut first_err = None;
        for dir in self.all_dirs() {
            if let Err(e) = fs::remove_cgroup_dir(&dir) {
                log::warn!("{e}");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Where memory events (v1 memory.oom_control eventfd, v2 memory.events) are watched.
    pub fn memory_dir(&self) -> Option<PathBuf> {
        match &self.inner {
            Inner::V1 { .. } => self.controller_dir("memory"),
            Inner::V2 { dir } => Some(dir.clone()),
        }
    }

    pub fn is_v2(&self) -> bool {
        matches!(self.inner, Inner::V2 { .. })
    }

    /// The path as given (e.g. "/ns/id"), for persisting.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where a controller's files live (for stats): the v1 hierarchy holding `controller`
    /// (e.g. "cpuacct", even when co-mounted with "cpu"), or the v2 directory.
    pub fn controller_dir(&self, controller: &str) -> Option<PathBuf> {
        match &self.inner {
            Inner::V1 { hierarchies, .. } => v1::dir_for(hierarchies, controller),
            Inner::V2 { dir } => Some(dir.clone()),
        }
    }

    /// Every directory that holds the container's processes: each real v1 hierarchy once,
    /// the hybrid cgroup2 directory, or the v2 directory.
    pub(crate) fn all_dirs(&self) -> Vec<PathBuf> {
        match &self.inner {
            Inner::V1 {
                hierarchies,
                unified,
            } => hierarchies
                .iter()
                .map(|h| h.dir.clone())
                .chain(unified.iter().cloned())
                .collect(),
            Inner::V2 { dir } => vec![dir.clone()],
        }
    }

    #[cfg(test)]
    pub(crate) fn v1_dirs(&self) -> Vec<V1Dir> {
        match &self.inner {
            Inner::V1 { hierarchies, .. } => hierarchies.clone(),
            Inner::V2 { .. } => Vec::new(),
        }
    }

    fn procs_dir(&self) -> PathBuf {
        match &self.inner {
            Inner::V1 {
                hierarchies,
                unified,
            } => v1::dir_for(hierarchies, "pids")
                .or_else(|| v1::dir_for(hierarchies, "memory"))
                .or_else(|| hierarchies.first().map(|h| h.dir.clone()))
                .or_else(|| unified.clone())
                .unwrap_or_else(|| self.root.clone()),
            Inner::V2 { dir } => dir.clone(),
        }
    }
}

fn signal_pids(procs_dir: &Path, sig: Signal) -> Result<()> {
    let pids = match fs::read_pids(procs_dir) {
        Ok(p) => p,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    };
    for pid in pids {
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        match nix::sys::signal::kill(Pid::from_raw(raw), sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(source) => {
                return Err(CgroupError::Signal {
                    pid,
                    signal: sig as i32,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Normalises lexically, the way runc does, so ".." can never climb out of the cgroup root.
/// Returns whether the path was relative and the normalised components.
fn parse_cgroups_path(cgroups_path: &str) -> Result<(bool, PathBuf)> {
    if cgroups_path.is_empty() {
        return Err(CgroupError::InvalidArgument(
            "empty cgroupsPath".to_string(),
        ));
    }
    let relative = !cgroups_path.starts_with('/');
    if relative && cgroups_path.split(':').count() == 3 {
        return Err(CgroupError::InvalidArgument(format!(
            "cgroupsPath {cgroups_path:?} uses the systemd \"slice:prefix:name\" form; \
             systemd cgroups are unsupported, use a cgroupfs path like \"/ns/id\""
        )));
    }
    if cgroups_path.contains('\0') || cgroups_path.contains('\n') {
        return Err(CgroupError::InvalidArgument(format!(
            "cgroupsPath {cgroups_path:?} contains a NUL or newline"
        )));
    }
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(cgroups_path).components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if parts.is_empty() {
        return Err(CgroupError::InvalidArgument(format!(
            "cgroupsPath {cgroups_path:?} names the cgroup root itself"
        )));
    }
    Ok((relative, parts.iter().collect()))
}

/// Joins an absolute cgroup path ("/a/b") below `base` instead of replacing it.
fn join_abs(base: &Path, abs: &str) -> PathBuf {
    let rel = abs.trim_start_matches('/');
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// The caller's own cgroups, as listed in /proc/self/cgroup.
#[derive(Debug, Default)]
struct OwnCgroups {
    /// "hierarchy-id:controllers:path" lines of v1 hierarchies, controllers split.
    v1: Vec<(Vec<String>, String)>,
    /// The "0::path" line.
    unified: Option<String>,
}

impl OwnCgroups {
    /// The kernel prints paths relative to the hierarchy root, but a mount may expose only a
    /// subtree (its mountinfo root), so that prefix is stripped to get a path under the mount.
    fn v1_path_for(&self, controllers: &[String], mount_root: &str) -> String {
        let found = self.v1.iter().find(|(ctrls, _)| {
            ctrls.iter().any(|c| {
                controllers
                    .iter()
                    .any(|m| m == c || c.strip_prefix("name=") == Some(m.as_str()))
            })
        });
        let Some((_, path)) = found else {
            return "/".to_string();
        };
        if mount_root != "/" {
            if let Some(rest) = path.strip_prefix(mount_root) {
                if rest.is_empty() || rest.starts_with('/') {
                    return if rest.is_empty() {
                        "/".into()
                    } else {
                        rest.into()
                    };
                }
            }
        }
        path.clone()
    }
}

fn read_proc_self_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default()
}

fn read_mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

fn parse_proc_cgroup(text: &str) -> OwnCgroups {
    let mut own = OwnCgroups::default();
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            own.unified = Some(path.to_string());
        } else if !ctrls.is_empty() {
            own.v1.push((
                ctrls.split(',').map(str::to_string).collect(),
                path.to_string(),
            ));
        }
    }
    own
}

/// A v1 hierarchy mounted directly under the root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct V1Mount {
    controllers: Vec<String>,
    mount: PathBuf,
    mount_root: String,
}

/// mountinfo knows the exact controller set of each hierarchy (co-mounts, `name=` ones); the
/// directory scan is the fallback for fake roots in tests and for unusual setups where the
/// root is not where the mounts are.
fn discover_v1(root: &Path, mountinfo: &str) -> Result<Vec<V1Mount>> {
    let canonical_root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut found: BTreeMap<PathBuf, V1Mount> = BTreeMap::new();
    for m in parse_mountinfo_v1(mountinfo) {
        if m.mount.parent() == Some(canonical_root.as_path()) && m.mount.is_dir() {
            found.entry(m.mount.clone()).or_insert(m);
        }
    }
    if found.is_empty() {
        found = scan_v1_dirs(root)?;
    }
    if found.is_empty() {
        return Err(CgroupError::NoHierarchy(root.to_path_buf()));
    }
    Ok(found.into_values().collect())
}

fn parse_mountinfo_v1(text: &str) -> Vec<V1Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 || post[0] != "cgroup" {
            continue;
        }
        let controllers: Vec<String> = post[2]
            .split(',')
            .filter(|o| !is_mount_flag(o))
            .map(str::to_string)
            .collect();
        if controllers.is_empty() {
            continue;
        }
        out.push(V1Mount {
            controllers,
            mount: PathBuf::from(unescape_mountinfo(pre[4])),
            mount_root: unescape_mountinfo(pre[3]),
        });
    }
    out
}

fn is_mount_flag(opt: &str) -> bool {
    matches!(
        opt,
        "rw" | "ro"
            | "noprefix"
            | "clone_children"
            | "xattr"
            | "cpuset_v2_mode"
            | "favordynmods"
            | "nofavordynmods"
            | "none"
            | "all"
    ) || opt.starts_with("release_agent=")
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every entry of the root that is a cgroup directory (has `cgroup.procs`) but not cgroup2;
/// symlinks such as "cpu" -> "cpu,cpuacct" collapse onto their target so each hierarchy is
/// written once, with the union of the names as its controllers.
fn scan_v1_dirs(root: &Path) -> Result<BTreeMap<PathBuf, V1Mount>> {
    let entries = std::fs::read_dir(root).map_err(|source| CgroupError::Io {
        op: "read dir",
        path: root.to_path_buf(),
        source,
    })?;
    let mut found: BTreeMap<PathBuf, V1Mount> = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.join("cgroup.procs").exists() || path.join("cgroup.controllers").exists() {
            continue;
        }
        let Ok(real) = std::fs::canonicalize(&path) else {
            continue;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        let m = found.entry(real.clone()).or_insert_with(|| V1Mount {
            controllers: Vec::new(),
            mount: real,
            mount_root: "/".to_string(),
        });
        for c in name.split(',') {
            if !m.controllers.iter().any(|x| x == c) {
                m.controllers.push(c.to_string());
            }
        }
    }
    Ok(found)
}

/// Polls `done` with a fixed sleep; cgroup state changes are asynchronous but quick, and
/// inotify on cgroupfs files is not available everywhere (v1 freezer.state never notifies).
fn wait_until(
    iterations: u32,
    interval: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<bool> {
    for _ in 0..iterations {
        if done()? {
            return Ok(true);
        }
        std::thread::sleep(interval);
    }
    done()
}
