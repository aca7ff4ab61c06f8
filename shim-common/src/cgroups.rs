//! Reading a container's cgroup into containerd's `Metrics` messages, for v1 and v2 hosts.
//!
//! The host layout decides the type: a unified (v2) host yields `io.containerd.cgroups.v2.Metrics`;
//! a v1 or hybrid host (v1 controllers, with a cgroup2 mount beside them) yields the v1 type, as
//! the Go shim does. The cgroup is found from the init's `/proc/<pid>/cgroup`, and from the
//! spec's `cgroupsPath` once the init has exited (containerd still asks for a stopped task).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protobuf::well_known_types::any::Any;
use protobuf::MessageField;
use protos::{metrics_v1 as v1, metrics_v2 as v2};

use crate::error::{Error, Result};
use crate::events::to_any;

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only cgroup2, mounted at /sys/fs/cgroup.
    Unified,
    /// v1 controllers (possibly with cgroup2 at /sys/fs/cgroup/unified beside them).
    Legacy,
}

pub fn mode() -> Mode {
    if Path::new(ROOT).join("cgroup.controllers").exists() {
        Mode::Unified
    } else {
        Mode::Legacy
    }
}

/// `controller -> path` from `/proc/<pid>/cgroup`; the v2 entry is keyed by "".
pub fn paths_of(pid: u32) -> Option<HashMap<String, String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    Some(parse_proc_cgroup(&text))
}

fn parse_proc_cgroup(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            out.insert(String::new(), path.to_string());
        }
        for c in ctrls.split(',') {
            let c = c.trim_start_matches("name=");
            out.insert(c.to_string(), path.to_string());
        }
    }
    out
}

struct Locator {
    mode: Mode,
    by_pid: Option<HashMap<String, String>>,
    fallback: Option<String>,
}

impl Locator {
    fn dir(&self, controller: &str) -> Option<PathBuf> {
        let rel = self
            .by_pid
            .as_ref()
            .and_then(|m| m.get(controller).cloned())
            .or_else(|| self.fallback.clone())?;
        let rel = rel.trim_start_matches('/');
        let dir = match self.mode {
            Mode::Unified => Path::new(ROOT).join(rel),
            Mode::Legacy => Path::new(ROOT).join(controller).join(rel),
        };
        dir.is_dir().then_some(dir)
    }
}

fn read_u64(dir: &Path, file: &str) -> u64 {
    fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|s| {
            let s = s.trim();
            if s == "max" {
                Some(u64::MAX)
            } else {
                s.parse().ok()
            }
        })
        .unwrap_or(0)
}

fn read_kv(dir: &Path, file: &str) -> HashMap<String, u64> {
    fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The container's metrics as an `Any`, or NotFound when its cgroup is gone.
pub fn metrics(init_pid: u32, cgroups_path: Option<&str>) -> Result<Any> {
    let loc = Locator {
        mode: mode(),
        by_pid: (init_pid > 0).then(|| paths_of(init_pid)).flatten(),
        fallback: cgroups_path.map(str::to_string),
    };
    match loc.mode {
        Mode::Legacy => v1_metrics(&loc).map(|m| to_any(&m)),
        Mode::Unified => v2_metrics(&loc).map(|m| to_any(&m)),
    }
}

fn not_found() -> Error {
    Error::NotFound("the container's cgroup does not exist".into())
}

fn v1_metrics(loc: &Locator) -> Result<v1::Metrics> {
    let mut m = v1::Metrics::new();
    let mut found = false;
    if let Some(dir) = loc.dir("memory") {
        found = true;
        let entry = |prefix: &str| {
            let mut e = v1::MemoryEntry::new();
            e.usage = read_u64(&dir, &format!("{prefix}usage_in_bytes"));
            e.limit = read_u64(&dir, &format!("{prefix}limit_in_bytes"));
            e.max = read_u64(&dir, &format!("{prefix}max_usage_in_bytes"));
            e.failcnt = read_u64(&dir, &format!("{prefix}failcnt"));
            e
        };
        let s = read_kv(&dir, "memory.stat");
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        let mut mem = v1::MemoryStat::new();
        mem.cache = g("cache");
        mem.rss = g("rss");
        mem.rss_huge = g("rss_huge");
        mem.mapped_file = g("mapped_file");
        mem.dirty = g("dirty");
        mem.writeback = g("writeback");
        mem.pg_pg_in = g("pgpgin");
        mem.pg_pg_out = g("pgpgout");
        mem.pg_fault = g("pgfault");
        mem.pg_maj_fault = g("pgmajfault");
        mem.inactive_anon = g("inactive_anon");
        mem.active_anon = g("active_anon");
        mem.inactive_file = g("inactive_file");
        mem.active_file = g("active_file");
        mem.unevictable = g("unevictable");
        mem.hierarchical_memory_limit = g("hierarchical_memory_limit");
        mem.hierarchical_swap_limit = g("hierarchical_memsw_limit");
        mem.total_cache = g("total_cache");
        mem.total_rss = g("total_rss");
        mem.total_rss_huge = g("total_rss_huge");
        mem.total_mapped_file = g("total_mapped_file");
        mem.total_dirty = g("total_dirty");
        mem.total_writeback = g("total_writeback");
        mem.total_pg_pg_in = g("total_pgpgin");
        mem.total_pg_pg_out = g("total_pgpgout");
        mem.total_pg_fault = g("total_pgfault");
        mem.total_pg_maj_fault = g("total_pgmajfault");
        mem.total_inactive_anon = g("total_inactive_anon");
        mem.total_active_anon = g("total_active_anon");
        mem.total_inactive_file = g("total_inactive_file");
        mem.total_active_file = g("total_active_file");
        mem.total_unevictable = g("total_unevictable");
        mem.usage = MessageField::some(entry("memory."));
        mem.swap = MessageField::some(entry("memory.memsw."));
        mem.kernel = MessageField::some(entry("memory.kmem."));
        mem.kernel_tcp = MessageField::some(entry("memory.kmem.tcp."));
        m.memory = MessageField::some(mem);
        let oom = read_kv(&dir, "memory.oom_control");
        let mut oc = v1::MemoryOomControl::new();
        oc.oom_kill_disable = oom.get("oom_kill_disable").copied().unwrap_or(0);
        oc.under_oom = oom.get("under_oom").copied().unwrap_or(0);
        oc.oom_kill = oom.get("oom_kill").copied().unwrap_or(0);
        m.memory_oom_control = MessageField::some(oc);
    }
    let mut cpu = v1::CPUStat::new();
    if let Some(dir) = loc.dir("cpuacct") {
        found = true;
        let mut u = v1::CPUUsage::new();
        u.total = read_u64(&dir, "cpuacct.usage");
        u.per_cpu = fs::read_to_string(dir.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // cpuacct.stat counts USER_HZ ticks; the message wants nanoseconds.
        let ticks = read_kv(&dir, "cpuacct.stat");
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as u64;
        let ns = |k: &str| ticks.get(k).copied().unwrap_or(0) * (1_000_000_000 / hz.max(1));
        u.user = ns("user");
        u.kernel = ns("system");
        cpu.usage = MessageField::some(u);
    }
    if let Some(dir) = loc.dir("cpu") {
        let s = read_kv(&dir, "cpu.stat");
        let mut t = v1::Throttle::new();
        t.periods = s.get("nr_periods").copied().unwrap_or(0);
        t.throttled_periods = s.get("nr_throttled").copied().unwrap_or(0);
        t.throttled_time = s.get("throttled_time").copied().unwrap_or(0);
        cpu.throttling = MessageField::some(t);
    }
    m.cpu = MessageField::some(cpu);
    if let Some(dir) = loc.dir("pids") {
        found = true;
        let mut p = v1::PidsStat::new();
        p.current = read_u64(&dir, "pids.current");
        let limit = read_u64(&dir, "pids.max");
        p.limit = if limit == u64::MAX { 0 } else { limit };
        m.pids = MessageField::some(p);
    }
    if let Some(dir) = loc.dir("blkio") {
        let mut b = v1::BlkIOStat::new();
        b.io_service_bytes_recursive = blkio_entries(&dir, "blkio.throttle.io_service_bytes");
        b.io_serviced_recursive = blkio_entries(&dir, "blkio.throttle.io_serviced");
        m.blkio = MessageField::some(b);
    }
    if found {
        Ok(m)
    } else {
        Err(not_found())
    }
}

fn blkio_entries(dir: &Path, file: &str) -> Vec<v1::BlkIOEntry> {
    fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 3 {
                return None;
            }
            let (maj, min) = f[0].split_once(':')?;
            let mut e = v1::BlkIOEntry::new();
            e.major = maj.parse().ok()?;
            e.minor = min.parse().ok()?;
            e.op = f[1].to_string();
            e.value = f[2].parse().ok()?;
            Some(e)
        })
        .collect()
}

fn v2_metrics(loc: &Locator) -> Result<v2::Metrics> {
    let dir = loc.dir("").ok_or_else(not_found)?;
    let mut m = v2::Metrics::new();
    let mut p = v2::PidsStat::new();
    p.current = read_u64(&dir, "pids.current");
    let limit = read_u64(&dir, "pids.max");
    p.limit = if limit == u64::MAX { 0 } else { limit };
    m.pids = MessageField::some(p);
    let c = read_kv(&dir, "cpu.stat");
    let g = |s: &HashMap<String, u64>, k: &str| s.get(k).copied().unwrap_or(0);
    let mut cpu = v2::CPUStat::new();
    cpu.usage_usec = g(&c, "usage_usec");
    cpu.user_usec = g(&c, "user_usec");
    cpu.system_usec = g(&c, "system_usec");
    cpu.nr_periods = g(&c, "nr_periods");
    cpu.nr_throttled = g(&c, "nr_throttled");
    cpu.throttled_usec = g(&c, "throttled_usec");
    m.cpu = MessageField::some(cpu);
    let s = read_kv(&dir, "memory.stat");
    let mut mem = v2::MemoryStat::new();
    mem.anon = g(&s, "anon");
    mem.file = g(&s, "file");
    mem.kernel_stack = g(&s, "kernel_stack");
    mem.slab = g(&s, "slab");
    mem.sock = g(&s, "sock");
    mem.shmem = g(&s, "shmem");
    mem.file_mapped = g(&s, "file_mapped");
    mem.file_dirty = g(&s, "file_dirty");
    mem.file_writeback = g(&s, "file_writeback");
    mem.anon_thp = g(&s, "anon_thp");
    mem.inactive_anon = g(&s, "inactive_anon");
    mem.active_anon = g(&s, "active_anon");
    mem.inactive_file = g(&s, "inactive_file");
    mem.active_file = g(&s, "active_file");
    mem.unevictable = g(&s, "unevictable");
    mem.slab_reclaimable = g(&s, "slab_reclaimable");
    mem.slab_unreclaimable = g(&s, "slab_unreclaimable");
    mem.pgfault = g(&s, "pgfault");
    mem.pgmajfault = g(&s, "pgmajfault");
    mem.usage = read_u64(&dir, "memory.current");
    mem.usage_limit = read_u64(&dir, "memory.max");
    mem.swap_usage = read_u64(&dir, "memory.swap.current");
    mem.swap_limit = read_u64(&dir, "memory.swap.max");
    mem.max_usage = read_u64(&dir, "memory.peak");
    m.memory = MessageField::some(mem);
    let e = read_kv(&dir, "memory.events");
    let mut ev = v2::MemoryEvents::new();
    ev.low = g(&e, "low");
    ev.high = g(&e, "high");
    ev.max = g(&e, "max");
    ev.oom = g(&e, "oom");
    ev.oom_kill = g(&e, "oom_kill");
    m.memory_events = MessageField::some(ev);
    Ok(m)
}

/// Watches a container's memory cgroup for OOM kills.
///
/// The kernel signals an eventfd (v1: `cgroup.event_control` on `memory.oom_control`) or
/// modifies `memory.events` (v2, seen with inotify); either only wakes us up. What is reported is
/// the rise of the `oom_kill` counter, read again at every wake-up and once more before the
/// init's exit is published, so an OOM is reported exactly once and always before the exit.
pub struct OomWatcher {
    source: OomSource,
    seen: std::sync::atomic::AtomicU64,
}

enum OomSource {
    /// A host memory cgroup: the counter file, and the wake-up fd (eventfd or inotify, plus
    /// the v1 control fd) that keeps the kernel registration alive.
    Cgroup {
        counter_file: PathBuf,
        wake: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
        _control: Option<std::fs::File>,
    },
    /// Kills counted by the runtime itself (a VM's agent reports its guest's).
    Counted(Arc<OomCounter>),
}

/// The runtime's side of a counted [`OomWatcher`]: it records each kill as it learns of it.
#[derive(Default)]
pub struct OomCounter {
    kills: std::sync::atomic::AtomicU64,
    wake: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl OomCounter {
    pub fn record(&self) {
        self.kills.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Ends the watch (the container is gone).
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }
}

fn oom_kills(file: &Path) -> Option<u64> {
    read_kv(file.parent()?, file.file_name()?.to_str()?)
        .get("oom_kill")
        .copied()
}

impl OomWatcher {
    /// A watcher fed by the runtime through the returned counter instead of a host cgroup.
    pub fn counted() -> (OomWatcher, Arc<OomCounter>) {
        let counter = Arc::new(OomCounter::default());
        let w = OomWatcher {
            source: OomSource::Counted(counter.clone()),
            seen: 0.into(),
        };
        (w, counter)
    }

    pub fn new(init_pid: u32, cgroups_path: Option<&str>) -> Result<OomWatcher> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let loc = Locator {
            mode: mode(),
            by_pid: (init_pid > 0).then(|| paths_of(init_pid)).flatten(),
            fallback: cgroups_path.map(str::to_string),
        };
        let register = |fd: OwnedFd| {
            // SAFETY: the AsyncFd owns the fd for its whole life.
            unsafe { tokio::io::unix::AsyncFd::register(fd) }
                .map_err(|e| Error::io("watching OOM", std::io::Error::other(e.to_string())))
        };
        let (counter_file, wake, control) = match loc.mode {
            Mode::Legacy => {
                let dir = loc.dir("memory").ok_or_else(not_found)?;
                let counter_file = dir.join("memory.oom_control");
                let control = std::fs::File::open(&counter_file)
                    .map_err(|e| Error::path("opening", &counter_file, e))?;
                // SAFETY: plain syscall; the result is checked.
                let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
                if efd < 0 {
                    return Err(Error::io("eventfd", std::io::Error::last_os_error()));
                }
                // SAFETY: eventfd just returned this fd.
                let efd = unsafe { OwnedFd::from_raw_fd(efd) };
                let line = format!("{} {}", efd.as_raw_fd(), control.as_raw_fd());
                fs::write(dir.join("cgroup.event_control"), line)
                    .map_err(|e| Error::path("registering OOM eventfd in", &dir, e))?;
                (counter_file, register(efd)?, Some(control))
            }
            Mode::Unified => {
                let dir = loc.dir("").ok_or_else(not_found)?;
                let counter_file = dir.join("memory.events");
                // SAFETY: plain syscalls; results are checked.
                let ifd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
                if ifd < 0 {
                    return Err(Error::io("inotify", std::io::Error::last_os_error()));
                }
                // SAFETY: inotify_init1 just returned this fd.
                let fd = unsafe { OwnedFd::from_raw_fd(ifd) };
                let cpath = std::ffi::CString::new(counter_file.as_os_str().as_encoded_bytes())
                    .map_err(|_| Error::InvalidArgument("cgroup path contains NUL".into()))?;
                // SAFETY: valid fd and NUL-terminated path.
                if unsafe {
                    libc::inotify_add_watch(fd.as_raw_fd(), cpath.as_ptr(), libc::IN_MODIFY)
                } < 0
                {
                    return Err(Error::path(
                        "watching",
                        &counter_file,
                        std::io::Error::last_os_error(),
                    ));
                }
                (counter_file, register(fd)?, None)
            }
        };
        let seen = oom_kills(&counter_file).unwrap_or(0);
        Ok(OomWatcher {
            source: OomSource::Cgroup {
                counter_file,
                wake,
                _control: control,
            },
            seen: seen.into(),
        })
    }

    /// Waits for the next wake-up; false once the cgroup (or the counted container) is gone.
    pub async fn wait(&self) -> bool {
        use std::os::fd::AsRawFd;
        use std::sync::atomic::Ordering;
        match &self.source {
            OomSource::Cgroup {
                counter_file, wake, ..
            } => {
                let Ok(mut guard) = wake.readable().await else {
                    return false;
                };
                let mut buf = [0u8; 4096];
                // SAFETY: draining the eventfd/inotify fd into our buffer.
                unsafe { libc::read(wake.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                guard.clear_ready();
                counter_file.exists()
            }
            OomSource::Counted(c) => {
                if c.closed.load(Ordering::SeqCst) {
                    return false;
                }
                c.wake.notified().await;
                !c.closed.load(Ordering::SeqCst)
            }
        }
    }

    /// How many OOM kills happened since the last call.
    pub fn take_new_kills(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let now = match &self.source {
            OomSource::Cgroup { counter_file, .. } => match oom_kills(counter_file) {
                Some(n) => n,
                None => return 0,
            },
            OomSource::Counted(c) => c.kills.load(Ordering::SeqCst),
        };
        now.saturating_sub(self.seen.swap(now, Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_lines() {
        let m = parse_proc_cgroup(
            "12:memory:/ns/c1\n4:cpu,cpuacct:/ns/c1\n1:name=systemd:/x\n0::/ns/c1\n",
        );
        assert_eq!(m["memory"], "/ns/c1");
        assert_eq!(m["cpuacct"], "/ns/c1");
        assert_eq!(m["systemd"], "/x");
        assert_eq!(m[""], "/ns/c1");
    }

    #[test]
    fn own_cgroup_reads() {
        let any = metrics(std::process::id(), None).unwrap();
        assert!(any.type_url.starts_with("io.containerd.cgroups.v"));
    }
}
