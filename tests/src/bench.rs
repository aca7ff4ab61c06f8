//! Measuring shims from the outside, for the `bench` and `demo` binaries and
//! the `soak` test: statistics, a shim's memory (smaps_rollup over its
//! process tree), zombies, commands whose output is only counted, and
//! tearing the private containerd down when a binary panics or is
//! interrupted (release builds abort on panic, skipping destructors).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::with_timeout;
use crate::procfs;
use crate::util::{excerpt, shell_join};

/// Median of `v` (mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// `a[i] / b[i]` for each pair.
pub fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// Memory of a set of processes, from `/proc/PID/smaps_rollup` and `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// Anonymous memory (heap, stacks): what the process itself allocated,
    /// whoever else maps its binary.
    pub anon_kib: u64,
    pub processes: usize,
    pub threads: usize,
}

impl std::ops::AddAssign for Memory {
    fn add_assign(&mut self, o: Memory) {
        self.rss_kib += o.rss_kib;
        self.pss_kib += o.pss_kib;
        self.anon_kib += o.anon_kib;
        self.processes += o.processes;
        self.threads += o.threads;
    }
}

/// RSS, PSS and anonymous memory (KiB) of one process; None if it is gone.
pub fn smaps_rollup(pid: u32) -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((field("Rss:")?, field("Pss:")?, field("Anonymous:")?))
}

/// `VmRSS` of `pid` in KiB, from `/proc/PID/status`.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// The shim's whole process tree without the container: `shim` and its
/// descendants that are not in cgroup `container_cgroup` (e.g. `/ns/id`).
pub fn shim_tree(shim: u32, container_cgroup: &str) -> Vec<u32> {
    procfs::descendants(shim)
        .into_iter()
        .filter(|&p| p == shim || !procfs::in_cgroup(p, container_cgroup))
        .collect()
}

/// Memory summed over `pids`.
pub fn memory_of(pids: &[u32]) -> Memory {
    let mut m = Memory::default();
    for &p in pids {
        if let Some((rss, pss, anon)) = smaps_rollup(p) {
            m += Memory {
                rss_kib: rss,
                pss_kib: pss,
                anon_kib: anon,
                processes: 1,
                threads: procfs::thread_count(p),
            };
        }
    }
    m
}

/// A zombie process on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zombie {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
}

/// Every zombie (state `Z`) on the host.
pub fn zombies() -> Vec<Zombie> {
    procfs::all_pids()
        .into_iter()
        .filter_map(|pid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let open = s.find('(')?;
            let close = s.rfind(')')?;
            let comm = s[open + 1..close].to_string();
            let mut rest = s[close + 2..].split_whitespace();
            let state = rest.next()?;
            let ppid = rest.next()?.parse().ok()?;
            (state == "Z").then_some(Zombie { pid, ppid, comm })
        })
        .collect()
}

/// What [`run_counting_stdout`] saw.
#[derive(Debug, Clone)]
pub struct Counted {
    pub code: i32,
    /// Bytes the command wrote to stdout (read and thrown away).
    pub stdout_bytes: u64,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
    pub cmdline: String,
}

impl Counted {
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nexit code: {} after {:.2?}, {} bytes on stdout\n--- stderr ---\n{}\n---",
            self.cmdline,
            self.code,
            self.elapsed,
            self.stdout_bytes,
            excerpt(&self.stderr, 4000)
        )
    }
}

/// Run `argv` (bounded by `limit`, stdin /dev/null) and count its stdout
/// without keeping it: a 1 MiB read loop, cheaper than any shim's copy.
pub fn run_counting_stdout(argv: &[String], limit: Duration) -> Counted {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let full = with_timeout(limit, argv);
    let cmdline = shell_join(argv);
    let started = Instant::now();
    let child = Command::new(&full[0])
        .args(&full[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return Counted {
                code: 127,
                stdout_bytes: 0,
                stderr: format!("cannot spawn: {e}").into_bytes(),
                elapsed: started.elapsed(),
                cmdline,
            }
        }
    };
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let status = child.wait().expect("waiting for a child process");
    let elapsed = started.elapsed();
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Counted {
        code,
        stdout_bytes: n,
        stderr: err_reader.join().unwrap_or_default(),
        elapsed,
        cmdline,
    }
}

/// The 1-minute load average (a noise indicator printed with results).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The daemon's version, as `ctr version` reports it (e.g. `1.6.20~ds1`).
pub fn server_version(d: &crate::PrivateContainerd) -> String {
    let out = d.ctr_raw(None, &["version"], Duration::from_secs(10));
    let text = out.stdout_str();
    text.split("Server:")
        .nth(1)
        .and_then(|server| {
            server
                .lines()
                .find_map(|l| l.trim().strip_prefix("Version:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "(version unknown)".to_string())
}

/// First line of `prog args...`'s output (for version banners).
pub fn first_line_of(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("{prog}: unavailable"))
}

/// For the `bench` and `demo` binaries: make sure the shared private
/// containerd is torn down however the program ends. Release builds abort on
/// panic (destructors and atexit handlers would not run), so a panic hook
/// prints the panic and exits with 101 instead, which runs the shared
/// daemon's atexit teardown; SIGINT, SIGTERM and SIGHUP exit with 128+N the
/// same way. Call first thing in `main`, before any thread exists (the
/// signals are blocked in every thread and taken by one waiting thread;
/// children get a clean mask from `std::process`).
pub fn exit_cleanly_on_panic_and_signals() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // Set once the process is exiting; a thread that panics afterwards (its
    // ctr was killed by the teardown) waits for the end instead of exiting twice.
    static EXITING: AtomicBool = AtomicBool::new(false);
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if EXITING.swap(true, Ordering::SeqCst) {
            loop {
                std::thread::park();
            }
        }
        default(info);
        std::process::exit(101);
    }));
    // SAFETY: plain signal-set manipulation on a local set; the process has one thread.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: waits on the set built above.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            if EXITING.swap(true, Ordering::SeqCst) {
                return;
            }
            eprintln!("\ninterrupted (signal {sig}): tearing down the private containerd");
            std::process::exit(128 + sig);
        }
    });
}

/// Remove the harness's logging `runc`/`crun` wrappers from the private
/// containerd's PATH, so shims run the real binaries (the benchmark measures
/// the shims, not a shell script per runtime call).
pub fn remove_oci_wrappers(bin_dir: &Path) {
    for name in ["runc", "crun"] {
        let _ = std::fs::remove_file(bin_dir.join(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(ratios(&[2.0, 3.0], &[4.0, 3.0]), vec![0.5, 1.0]);
    }

    #[test]
    fn own_memory_is_visible() {
        let (rss, pss, anon) = smaps_rollup(std::process::id()).expect("own smaps_rollup");
        assert!(rss > 0 && pss > 0 && pss <= rss && anon > 0 && anon <= rss);
        assert!(vm_rss_kib(std::process::id()).unwrap() > 0);
    }
}
