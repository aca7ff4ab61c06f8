//! Starting the micro-VM: the QEMU command line measured in vm-guest.md §4.1, the choice between
//! KVM and TCG (§5), and the host TSC frequency TCG guests need.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use shim_common::reaper::Reaper;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The agent's virtio-serial socket, the QMP socket and the pid file, relative to the VM's run
/// directory (QEMU runs there, which keeps socket paths under the 108-byte limit).
pub const AGENT_SOCKET: &str = "agent.sock";
/// The output port's socket: process output, guest → host (see [`crate::output`]).
pub const OUTPUT_SOCKET: &str = "output.sock";
pub const QMP_SOCKET: &str = "qmp.sock";
pub const PID_FILE: &str = "qemu.pid";
/// Every file QEMU may leave in its run directory (sockets, pid file, its own output, the
/// guest console), for whoever cleans the directory up.
pub const RUN_FILES: &[&str] = &[
    AGENT_SOCKET,
    OUTPUT_SOCKET,
    QMP_SOCKET,
    PID_FILE,
    "qemu.log",
    "console.log",
];

/// The CPU model under TCG: everything TCG emulates, except the fast-string flags.
///
/// Why: with ERMS (or FSRM) the guest kernel copies and clears memory with `rep movsb` /
/// `rep stosb`, which TCG runs one byte per iteration; without them it uses `rep movsq` or
/// unrolled loops, 8 bytes at a time. Measured with the boot test, back to back on a loaded
/// host: `dd` to /dev/null in the guest 291 → 1774 MiB/s, through a pipe 68 → 223 MiB/s,
/// stdout through the output port 73 → 256 MiB/s. Exec latency did not change, and boot time
/// moved within the noise.
pub const TCG_CPU: &str = "max,-erms,-fsrm";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator the fast checks allow, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// Decides between KVM and TCG in well under a millisecond, never by a boot that could hang.
///
/// TCG when `/dev/kvm` cannot be opened read-write, when it is PVM's (`kvm_pvm` loaded: it
/// only runs guests built for PVM, and a stock kernel hangs silently), or when the CPU has no
/// `vmx`/`svm` or neither `kvm_intel` nor `kvm_amd` is loaded. Otherwise KVM is only a
/// candidate: the caller boots with a deadline and falls back to TCG when it does not come up.
pub fn choose_accel() -> AccelChoice {
    choose_accel_from(
        Path::new("/dev/kvm"),
        Path::new("/sys/module"),
        &std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
    )
}

fn choose_accel_from(dev_kvm: &Path, sys_module: &Path, cpuinfo: &str) -> AccelChoice {
    let tcg = |reason: &str| AccelChoice {
        accel: Accel::Tcg,
        reason: reason.to_string(),
    };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm)
        .is_err()
    {
        return tcg("no usable /dev/kvm");
    }
    if sys_module.join("kvm_pvm").exists() {
        return tcg("/dev/kvm is PVM (kvm_pvm), which cannot run a stock guest kernel");
    }
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    if !flags.split_whitespace().any(|f| f == "vmx" || f == "svm") {
        return tcg("the CPU has no vmx/svm flag");
    }
    if !sys_module.join("kvm_intel").exists() && !sys_module.join("kvm_amd").exists() {
        return tcg("neither kvm_intel nor kvm_amd is loaded");
    }
    AccelChoice {
        accel: Accel::Kvm,
        reason: "hardware virtualization present (to be confirmed by a boot)".into(),
    }
}

/// The host TSC frequency in kHz, for the guest's `tsc_early_khz=`.
///
/// Why: on microvm under TCG the guest's PIT-based TSC calibration fails at random and the boot
/// then hangs (vm-guest.md §4.3); under TCG the guest TSC is the host's, so the host can tell
/// it. `cpu MHz` is trusted only with `tsc_known_freq` (the kernel then reports the TSC, not a
/// current clock); otherwise the TSC is measured against CLOCK_MONOTONIC for 20 ms.
pub fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    tsc_khz_from_cpuinfo(&cpuinfo).or_else(measure_tsc_khz)
}

fn tsc_khz_from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    let known = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))?
        .split_whitespace()
        .any(|f| f == "tsc_known_freq");
    if !known {
        return None;
    }
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(target_arch = "x86_64")]
fn measure_tsc_khz() -> Option<u64> {
    // SAFETY: rdtsc has no preconditions on x86_64.
    let t0 = unsafe { core::arch::x86_64::_rdtsc() };
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(20));
    let t1 = unsafe { core::arch::x86_64::_rdtsc() };
    let ns = start.elapsed().as_nanos() as u64;
    (ns > 0 && t1 > t0).then(|| (t1 - t0) * 1_000_000 / ns)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_tsc_khz() -> Option<u64> {
    None
}

/// One VM's settings.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub accel: Accel,
    /// Appended to the kernel command line.
    pub extra_cmdline: Vec<String>,
    /// Send the guest console here (slower to boot; for debugging).
    pub console_log: Option<PathBuf>,
    /// A private directory for this VM's sockets and pid file; never shared between VMs (an
    /// exiting QEMU unlinks its socket paths even if another VM re-created them).
    pub run_dir: PathBuf,
    /// A host directory exported to the guest over virtio-9p with the tag `share`, mounted by
    /// the agent on `/mnt/share` at boot.
    pub share: Option<PathBuf>,
    pub tsc_khz: Option<u64>,
    /// QEMU's `-M` instead of the measured microvm line.
    pub machine: Option<String>,
    /// Guest RAM from a file instead of anonymous memory: a VM template's (see [`crate::template`]).
    pub memory_file: Option<MemoryFile>,
    /// Start paused, waiting for a migration stream (`-incoming defer`): this file, handed to
    /// QEMU as an inherited descriptor and named over QMP by [`crate::template::restore`].
    pub incoming: Option<PathBuf>,
}

/// Guest RAM backed by a file (`memory-backend-file`, id [`MEMORY_ID`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryFile {
    pub path: PathBuf,
    /// `share=on`: writes reach the file (making a template). `share=off`: a private
    /// copy-on-write mapping (a VM restored from it): pages the guest never writes stay the
    /// file's page cache, shared by every VM made from the template.
    pub shared: bool,
}

/// The id of the guest RAM backend; a migration names RAM blocks by it, so a template and the
/// VMs restored from it must agree.
pub const MEMORY_ID: &str = "mem";

/// Escapes a value for QEMU's `key=value,...` option syntax, where a comma is doubled.
pub fn opt_value(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

impl VmConfig {
    pub fn new(kernel: PathBuf, initrd: PathBuf, run_dir: PathBuf) -> Self {
        VmConfig {
            qemu: PathBuf::from("qemu-system-x86_64"),
            kernel,
            initrd,
            memory_mib: 256,
            vcpus: 1,
            accel: Accel::Tcg,
            extra_cmdline: Vec::new(),
            console_log: None,
            run_dir,
            share: None,
            tsc_khz: None,
            machine: None,
            memory_file: None,
            incoming: None,
        }
    }

    /// The kernel command line (vm-guest.md §4.1 "BASE"). Every flag there was measured:
    /// `cryptomgr.notests` alone saves about 0.25 s; `tsc_early_khz` prevents the TCG hang;
    /// `panic=-1` with `-no-reboot` turns a guest panic (an agent crash is one) into QEMU's exit.
    pub fn kernel_cmdline(&self) -> String {
        let mut p: Vec<String> = [
            "panic=-1",
            "quiet",
            "cryptomgr.notests",
            "mitigations=off",
            "init_on_alloc=0",
            "audit=0",
            "apparmor=0",
            "tsc=reliable",
            "no_timer_check",
            "rcupdate.rcu_expedited=1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if self.accel == Accel::Tcg {
            if let Some(khz) = self.tsc_khz {
                p.push(format!("tsc_early_khz={khz}"));
            }
        }
        if self.console_log.is_some() {
            p.push("console=ttyS0".into());
        } else {
            p.push("8250.nr_uarts=0".into());
        }
        if self.share.is_some() {
            p.push(format!("agent.share={}", vm_channel::SHARE_TAG));
        }
        p.extend(self.extra_cmdline.iter().cloned());
        p.join(" ")
    }

    /// QEMU's arguments; paths of sockets are relative to `run_dir`, where QEMU runs.
    pub fn args(&self) -> Vec<String> {
        let mut machine = match &self.machine {
            Some(m) => m.clone(),
            None if self.console_log.is_none() => {
                "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=off".to_string()
            }
            None => "microvm,x-option-roms=off,pit=off,pic=off".to_string(),
        };
        if self.memory_file.is_some() {
            machine.push_str(&format!(",memory-backend={MEMORY_ID}"));
        }
        let mut a: Vec<String> = vec![
            "-M".into(),
            machine,
            "-accel".into(),
            self.accel.as_str().into(),
            "-cpu".into(),
            if self.accel == Accel::Kvm {
                "host"
            } else {
                TCG_CPU
            }
            .into(),
            "-m".into(),
            format!("{}M", self.memory_mib),
        ];
        if let Some(m) = &self.memory_file {
            a.push("-object".into());
            a.push(format!(
                "memory-backend-file,id={MEMORY_ID},size={}M,mem-path={},share={}",
                self.memory_mib,
                opt_value(&m.path),
                if m.shared { "on" } else { "off" }
            ));
        }
        a.extend([
            "-smp".into(),
            self.vcpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            self.kernel_cmdline(),
            "-device".into(),
            "virtio-serial-device,id=vser0".into(),
            "-chardev".into(),
            format!("socket,id=agent,path={AGENT_SOCKET},server=on,wait=off"),
            "-device".into(),
            format!(
                "virtserialport,bus=vser0.0,chardev=agent,name={}",
                vm_channel::PORT_NAME
            ),
            "-chardev".into(),
            format!("socket,id=output,path={OUTPUT_SOCKET},server=on,wait=off"),
            "-device".into(),
            format!(
                "virtserialport,bus=vser0.0,chardev=output,name={}",
                vm_channel::OUTPUT_PORT_NAME
            ),
            "-qmp".into(),
            format!("unix:{QMP_SOCKET},server=on,wait=off"),
            "-pidfile".into(),
            PID_FILE.into(),
        ]);
        if self.incoming.is_some() {
            a.push("-incoming".into());
            a.push("defer".into());
        }
        if let Some(log) = &self.console_log {
            a.push("-serial".into());
            a.push(format!("file:{}", log.display()));
        }
        if let Some(share) = &self.share {
            a.push("-fsdev".into());
            a.push(format!(
                "local,id=fs0,path={},security_model=passthrough",
                opt_value(share)
            ));
            a.push("-device".into());
            a.push(format!(
                "virtio-9p-device,fsdev=fs0,mount_tag={}",
                vm_channel::SHARE_TAG
            ));
        }
        a
    }
}

/// A running QEMU, spawned through the daemon's reaper (whose waitpid loop is the only one
/// allowed to reap it). Killed when dropped.
pub struct Vm {
    pid: u32,
    /// The inherited descriptor of the migration stream, for a VM started `-incoming`.
    pub incoming_fd: Option<i32>,
    exit: tokio::sync::watch::Receiver<Option<u32>>,
    pub run_dir: PathBuf,
    pub started: Instant,
}

impl VmConfig {
    /// The QEMU command, ready to spawn: run in `run_dir`, output to `qemu.log` there, and
    /// SIGKILLed when the thread that spawns it exits (PR_SET_PDEATHSIG), so a VM never
    /// outlives a crashed shim. Spawn it from a thread that lives as long as the VM.
    pub fn command(&self) -> Result<Command> {
        self.command_with_incoming().map(|(cmd, _)| cmd)
    }

    /// [`command`](Self::command), plus the descriptor number QEMU inherits for `incoming`:
    /// the file is opened here, before the fork, and only made inheritable in the child.
    pub fn command_with_incoming(&self) -> Result<(Command, Option<i32>)> {
        let log_path = self.run_dir.join("qemu.log");
        let log = File::create(&log_path)
            .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("duplicating the log fd", e))?;
        let mut cmd = Command::new(&self.qemu);
        cmd.args(self.args())
            .current_dir(&self.run_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let incoming = match &self.incoming {
            Some(p) => {
                Some(File::open(p).map_err(|e| Error::io(format!("opening {}", p.display()), e))?)
            }
            None => None,
        };
        let incoming_fd = incoming.as_ref().map(|f| {
            use std::os::fd::AsRawFd;
            f.as_raw_fd()
        });
        // SAFETY: prctl and fcntl are async-signal-safe. The closure owns `incoming`, so the
        // descriptor stays open until the command is dropped, after the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(f) = &incoming {
                    use std::os::fd::AsRawFd;
                    if libc::fcntl(f.as_raw_fd(), libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok((cmd, incoming_fd))
    }
}

impl Vm {
    /// Starts QEMU in `config.run_dir`, its stdout and stderr in `qemu.log` there.
    pub fn spawn(config: &VmConfig, reaper: &Arc<Reaper>) -> Result<Vm> {
        let (mut cmd, incoming_fd) = config.command_with_incoming()?;
        let started = Instant::now();
        let spawned = reaper
            .spawn(&mut cmd)
            .map_err(|e| Error::Unavailable(format!("starting {}: {e}", config.qemu.display())))?;
        let pid = spawned.child.id();
        let (tx, exit) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            let e = spawned.wait().await;
            let _ = tx.send(Some(e.status));
        });
        drop(cmd);
        Ok(Vm {
            pid,
            incoming_fd,
            exit,
            run_dir: config.run_dir.clone(),
            started,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn agent_socket(&self) -> PathBuf {
        self.run_dir.join(AGENT_SOCKET)
    }

    pub fn output_socket(&self) -> PathBuf {
        self.run_dir.join(OUTPUT_SOCKET)
    }

    /// QEMU's own output so far (errors, and the guest console when not logged elsewhere).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("qemu.log")).unwrap_or_default()
    }

    /// QEMU's exit status (as the reaper reports it: code, or 128 + signal) if it has exited.
    pub fn exited(&self) -> Option<u32> {
        *self.exit.borrow()
    }

    /// Resolves with the exit status once QEMU has exited.
    pub async fn wait(&self) -> u32 {
        let mut rx = self.exit.clone();
        let status = match rx.wait_for(Option::is_some).await {
            Ok(v) => *v,
            Err(_) => None,
        };
        match status {
            Some(s) => s,
            // The watcher task is gone only with the runtime.
            None => std::future::pending().await,
        }
    }

    /// Waits up to `timeout` for QEMU to exit on its own.
    pub async fn wait_timeout(&self, timeout: Duration) -> Option<u32> {
        tokio::time::timeout(timeout, self.wait()).await.ok()
    }

    /// SIGKILL (the reaper collects it).
    pub fn kill(&self) {
        if self.exited().is_none() {
            // SAFETY: plain syscall on the pid we spawned and have not seen exit (so it has
            // not been reaped and cannot have been reused).
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where a KVM verdict is remembered: one line per (host kernel, QEMU, guest kernel).
const ACCEL_CACHE: &str = "accel.cache";

/// What a KVM verdict depends on: the host kernel, the QEMU binary and the guest kernel file.
pub fn accel_cache_key(config: &VmConfig) -> String {
    use sha2::{Digest, Sha256};
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                format!("{}:{}:{}", p.display(), m.len(), m.mtime())
            })
            .unwrap_or_default()
    };
    let qemu = which(&config.qemu).unwrap_or_else(|| config.qemu.clone());
    let digest = Sha256::digest(format!(
        "{}\0{}\0{}",
        host.trim(),
        stamp(&qemu),
        stamp(&config.kernel)
    ));
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return Some(program.to_path_buf());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// The remembered verdict for `key` in `dir`, if any.
pub fn cached_accel(dir: &Path, key: &str) -> Option<Accel> {
    let text = std::fs::read_to_string(dir.join(ACCEL_CACHE)).ok()?;
    text.lines().rev().find_map(|l| match l.split_once('=') {
        Some((k, "kvm")) if k == key => Some(Accel::Kvm),
        Some((k, "tcg")) if k == key => Some(Accel::Tcg),
        _ => None,
    })
}

/// Remembers the verdict for `key` (appends; the last line for a key wins).
pub fn remember_accel(dir: &Path, key: &str, accel: Accel) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(ACCEL_CACHE);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    writeln!(f, "{key}={}", accel.as_str())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// A started VM whose agent answered.
pub struct Booted {
    pub vm: Vm,
    pub agent: crate::agent::Agent,
    pub accel: Accel,
}

/// How long a KVM boot may take before it counts as not working (vm-guest.md §5: it should
/// take well under a second; a stock kernel on PVM hangs silently instead).
pub const KVM_DEADLINE: Duration = Duration::from_secs(3);

/// Boots the VM and connects to its agent, choosing the accelerator as vm-guest.md §5 says:
/// the fast checks of [`choose_accel`] first; when they allow KVM, the verdict remembered in
/// `cache_dir`, else one boot under KVM with [`KVM_DEADLINE`], falling back to TCG (and
/// remembering either answer). `config.accel` is ignored; `tcg_deadline` bounds a TCG boot.
pub async fn boot(
    config: &VmConfig,
    reaper: &Arc<Reaper>,
    cache_dir: Option<&Path>,
    tcg_deadline: Duration,
) -> Result<Booted> {
    let mut config = config.clone();
    let choice = choose_accel();
    let key = accel_cache_key(&config);
    let try_kvm = choice.accel == Accel::Kvm
        && cache_dir.and_then(|d| cached_accel(d, &key)) != Some(Accel::Tcg);
    if try_kvm {
        config.accel = Accel::Kvm;
        match boot_with(&config, reaper, KVM_DEADLINE).await {
            Ok(b) => {
                if let Some(d) = cache_dir {
                    let _ = remember_accel(d, &key, Accel::Kvm);
                }
                return Ok(b);
            }
            Err(_) => {
                if let Some(d) = cache_dir {
                    let _ = remember_accel(d, &key, Accel::Tcg);
                }
                for f in [AGENT_SOCKET, OUTPUT_SOCKET, QMP_SOCKET, PID_FILE] {
                    let _ = std::fs::remove_file(config.run_dir.join(f));
                }
            }
        }
    }
    config.accel = Accel::Tcg;
    if config.tsc_khz.is_none() {
        config.tsc_khz = host_tsc_khz();
    }
    boot_with(&config, reaper, tcg_deadline).await
}

pub async fn boot_with(
    config: &VmConfig,
    reaper: &Arc<Reaper>,
    deadline: Duration,
) -> Result<Booted> {
    let vm = Vm::spawn(config, reaper)?;
    let end = vm.started + deadline;
    let socket = vm.agent_socket();
    // QEMU exiting early (a bad option, a KVM abort) must not cost the whole deadline.
    let connect = crate::agent::Agent::connect(&socket, end);
    tokio::pin!(connect);
    let outcome = tokio::select! {
        r = &mut connect => Ok(r),
        status = vm.wait() => Err(status),
    };
    match outcome {
        Ok(Ok(agent)) => Ok(Booted {
            vm,
            agent,
            accel: config.accel,
        }),
        Ok(Err(e)) => {
            let log = vm.log();
            vm.kill();
            Err(Error::Agent(format!("{e}; qemu: {}", log.trim())))
        }
        Err(status) => Err(Error::Command(format!(
            "qemu exited with status {status} before the agent answered: {}",
            vm.log().trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_rules() {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("kvm");
        let modules = dir.path().join("module");
        std::fs::create_dir_all(&modules).unwrap();
        let vmx = "flags\t: fpu vmx sse\n";
        assert_eq!(
            choose_accel_from(&kvm, &modules, vmx).accel,
            Accel::Tcg,
            "no /dev/kvm"
        );
        std::fs::write(&kvm, b"").unwrap();
        std::fs::create_dir(modules.join("kvm_intel")).unwrap();
        assert_eq!(choose_accel_from(&kvm, &modules, vmx).accel, Accel::Kvm);
        assert_eq!(
            choose_accel_from(&kvm, &modules, "flags\t: fpu sse hypervisor\n").accel,
            Accel::Tcg
        );
        std::fs::create_dir(modules.join("kvm_pvm")).unwrap();
        let c = choose_accel_from(&kvm, &modules, vmx);
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("PVM"));
    }

    #[test]
    fn accel_verdicts_are_remembered_per_key() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cached_accel(dir.path(), "k1"), None);
        remember_accel(dir.path(), "k1", Accel::Kvm).unwrap();
        remember_accel(dir.path(), "k2", Accel::Tcg).unwrap();
        assert_eq!(cached_accel(dir.path(), "k1"), Some(Accel::Kvm));
        assert_eq!(cached_accel(dir.path(), "k2"), Some(Accel::Tcg));
        remember_accel(dir.path(), "k1", Accel::Tcg).unwrap();
        assert_eq!(cached_accel(dir.path(), "k1"), Some(Accel::Tcg));
        let c = VmConfig::new("/nonexistent/k".into(), "/i".into(), "/r".into());
        let key = accel_cache_key(&c);
        assert_eq!(key.len(), 24);
        assert_eq!(key, accel_cache_key(&c));
    }

    #[test]
    fn tsc_from_cpuinfo_only_when_known() {
        let known = "cpu MHz\t\t: 2596.138\nflags\t\t: tsc constant_tsc tsc_known_freq\n";
        assert_eq!(tsc_khz_from_cpuinfo(known), Some(2_596_138));
        let unknown = "cpu MHz\t\t: 2596.138\nflags\t\t: tsc constant_tsc\n";
        assert_eq!(tsc_khz_from_cpuinfo(unknown), None);
    }

    #[test]
    fn command_line() {
        let mut c = VmConfig::new("/k".into(), "/i".into(), "/run/x".into());
        c.tsc_khz = Some(2_596_130);
        let line = c.kernel_cmdline();
        assert!(line.contains("tsc_early_khz=2596130"));
        assert!(line.contains("8250.nr_uarts=0"));
        assert!(!line.contains("rtc=off"));
        let args = c.args().join(" ");
        assert!(args.contains("isa-serial=off"));
        assert!(args.contains("-cpu max,-erms,-fsrm"));
        assert!(args.contains("path=agent.sock,server=on,wait=off"));
        assert!(args.contains("name=agent"));
        assert!(args.contains("path=output.sock,server=on,wait=off"));
        assert!(args.contains("chardev=output,name=stream"));
        c.accel = Accel::Kvm;
        c.console_log = Some("/tmp/console.log".into());
        assert!(!c.kernel_cmdline().contains("tsc_early_khz"));
        assert!(c.kernel_cmdline().contains("console=ttyS0"));
        let args = c.args().join(" ");
        assert!(!args.contains("isa-serial=off"));
        assert!(args.contains("-cpu host"));
    }
}
