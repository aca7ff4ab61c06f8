//! Looking at the host through /proc and /sys/fs/cgroup.

use std::path::{Path, PathBuf};

/// All pids currently in /proc.
pub fn all_pids() -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The argv of `pid` (empty if it is gone or a kernel thread).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match stat_field(pid, 0) {
        Some(state) => state != "Z" && state != "X",
        None => false,
    }
}

/// Field `n` (0 = state, 1 = ppid, ...) of /proc/PID/stat after the comm.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(n).map(str::to_string)
}

/// Parent pid of `pid`.
pub fn ppid(pid: u32) -> Option<u32> {
    stat_field(pid, 1)?.parse().ok()
}

/// `pid` and all its descendants that are alive.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, ppid(p)?)))
        .collect();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out.retain(|p| alive(*p));
    out
}

/// argv contains `flag` immediately followed by `value` (accepts `-flag value`,
/// `--flag value`, `-flag=value` and `--flag=value`).
pub fn argv_has_flag(argv: &[String], flag: &str, value: &str) -> bool {
    argv.iter().enumerate().any(|(i, a)| {
        let name = a.trim_start_matches('-');
        if !a.starts_with('-') {
            return false;
        }
        if name == flag {
            argv.get(i + 1).map(String::as_str) == Some(value)
        } else {
            name == format!("{flag}={value}")
        }
    })
}

/// Shim processes for container `id` in namespace `ns`: argv contains `-id ID`
/// and `-namespace NS`, and no `start`/`delete` action (those are short-lived).
pub fn shim_pids(ns: &str, id: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| {
            let argv = cmdline(p);
            argv_has_flag(&argv, "id", id)
                && argv_has_flag(&argv, "namespace", ns)
                && !argv.iter().any(|a| a == "start" || a == "delete")
                && alive(p)
        })
        .collect()
}

/// Whether `pid` is in cgroup `rel` (e.g. `/ns/id`) in some hierarchy.
pub fn in_cgroup(pid: u32, rel: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|s| {
            s.lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .any(|path| path == rel || path.starts_with(&format!("{rel}/")))
        })
        .unwrap_or(false)
}

/// Number of threads of `pid`.
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

/// Open fds of `pid`, with their targets (for messages).
pub fn fds(pid: u32) -> Vec<(u32, String)> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut v: Vec<(u32, String)> = rd
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            Some((n, target))
        })
        .collect();
    v.sort();
    v
}

/// One line of /proc/self/mountinfo, reduced to what the tests need.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
}

fn unescape_mount(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host's mounts (our own mount namespace).
pub fn mounts() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountEntry {
                mount_point: unescape_mount(f.get(4)?),
                fs_type: f.get(sep + 1)?.to_string(),
                source: unescape_mount(f.get(sep + 2)?),
            })
        })
        .collect()
}

/// Mounts at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<MountEntry> {
    let d = dir.display().to_string();
    let prefix = format!("{}/", d.trim_end_matches('/'));
    mounts()
        .into_iter()
        .filter(|m| m.mount_point == d || m.mount_point.starts_with(&prefix))
        .collect()
}

/// The cgroup v1 hierarchies and the unified one, as directories.
pub fn cgroup_roots() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").exists())
                .collect()
        })
        .unwrap_or_default();
    if Path::new("/sys/fs/cgroup/cgroup.procs").exists() {
        v.push(PathBuf::from("/sys/fs/cgroup"));
    }
    v.sort();
    v
}

/// Existing cgroup directories `<root>/<rel>` over all hierarchies.
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    cgroup_roots()
        .into_iter()
        .map(|r| r.join(rel.trim_start_matches('/')))
        .filter(|p| p.is_dir())
        .collect()
}

/// Kill every process in cgroup `dir` and below (thawing a frozen one), then
/// remove the directories bottom-up. Best effort.
pub fn kill_and_remove_cgroup(dir: &Path) {
    let mut subdirs = Vec::new();
    collect_dirs(dir, &mut subdirs);
    for d in &subdirs {
        let _ = std::fs::write(d.join("freezer.state"), "THAWED");
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
            }
        }
    }
    // Deepest first.
    subdirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &subdirs {
        for _ in 0..50 {
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Unix sockets at or below `dir`.
pub fn sockets_under(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_socket() {
                out.push(e.path());
            } else if ft.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Live children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| ppid(p) == Some(pid) && alive(p))
        .collect()
}

/// Whether `pid` runs a QEMU system emulator (`qemu-system-*`).
pub fn is_qemu(pid: u32) -> bool {
    cmdline(pid).first().is_some_and(|a0| {
        Path::new(a0)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("qemu-system"))
    })
}

/// Every live QEMU process on the host.
pub fn qemu_pids() -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| is_qemu(p) && alive(p))
        .collect()
}

/// The working directory of `pid`.
pub fn cwd(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}
