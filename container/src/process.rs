//! Turning the setup process into the container's program: limits, identity, capabilities,
//! security labels, seccomp, then execve.
//!
//! The order matters and follows what the kernel allows: raise limits and drop the bounding set
//! while still privileged; keep capabilities across the uid change; set the final sets; then
//! no_new_privs and seccomp last, so the filter cannot block our own setup syscalls.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, Spec};

use crate::capabilities::CapSets;
use crate::error::{Error, Result};
use crate::seccomp;

/// Everything computed before any privilege is dropped.
pub struct Prepared {
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    caps: Option<CapSets>,
    seccomp: Option<(seccomp::Program, u32)>,
    no_new_privs: bool,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    umask: Option<u32>,
    cwd: PathBuf,
    apparmor: Option<String>,
    selinux: Option<String>,
    oom_score_adj: Option<i32>,
    rlimits: Vec<(u32, u64, u64)>,
}

fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Spec(format!("{what} contains a NUL byte: {s:?}")))
}

fn rlimit_resource(name: &str) -> Result<u32> {
    Ok(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        other => return Err(Error::Spec(format!("unknown rlimit {other}"))),
    })
}

/// Finds the program the way execvp would, but in the container's PATH (from its env).
fn lookup(arg0: &str, env: &[String], cwd: &Path) -> Result<PathBuf> {
    if arg0.contains('/') {
        return Ok(cwd.join(arg0));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        if let Ok(md) = std::fs::metadata(&candidate) {
            use std::os::unix::fs::PermissionsExt;
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(Error::Spec(format!(
        "exec: {arg0:?}: executable file not found in $PATH"
    )))
}

fn security_enabled(path: &str, want: &str) -> bool {
    std::fs::read_to_string(path)
        .map(|s| s.trim() == want)
        .unwrap_or(false)
}

/// The largest uid or gid a container may ask for. `(uid_t)-1` means "leave unchanged" to
/// setresuid/setresgid, so taken as is it would silently keep the process root; runc refuses
/// everything above `i32::MAX` ("uids and gids must be in range 0-2147483647").
const MAX_ID: u32 = i32::MAX as u32;

fn check_id(what: &str, id: u32) -> Result<()> {
    if id > MAX_ID {
        return Err(Error::Spec(format!(
            "{what} {id} is out of range: uids and gids must be in range 0-{MAX_ID}"
        )));
    }
    Ok(())
}

/// What can be checked of a process without the container's filesystem.
struct Checked {
    args: Vec<String>,
    env: Vec<String>,
    cwd: PathBuf,
    rlimits: Vec<(u32, u64, u64)>,
    caps: Option<CapSets>,
    seccomp: Option<(seccomp::Program, u32)>,
}

fn check(spec: &Spec, process: &Process) -> Result<Checked> {
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(Error::Spec("process.args must not be empty".into()));
    }
    for a in &args {
        cstring(a, "argument")?;
    }
    let env = process.env().clone().unwrap_or_default();
    for e in &env {
        cstring(e, "environment")?;
    }
    let cwd = process.cwd().clone();
    if !cwd.is_absolute() {
        return Err(Error::Spec(format!(
            "process.cwd {} must be absolute",
            cwd.display()
        )));
    }
    let user = process.user();
    check_id("process.user.uid", user.uid())?;
    check_id("process.user.gid", user.gid())?;
    for g in user.additional_gids().iter().flatten() {
        check_id("process.user.additionalGids entry", *g)?;
    }
    let mut rlimits = Vec::new();
    for r in process.rlimits().clone().unwrap_or_default() {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        rlimits.push((rlimit_resource(&name)?, r.soft(), r.hard()));
    }
    let caps = process
        .capabilities()
        .as_ref()
        .map(CapSets::from_spec)
        .transpose()?;
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().clone()) {
        Some(profile) => {
            let program =
                seccomp::compile(&profile).map_err(|e| Error::Spec(format!("seccomp: {e}")))?;
            let flags =
                seccomp::flags(&profile).map_err(|e| Error::Spec(format!("seccomp: {e}")))?;
            Some((program, flags))
        }
        None => None,
    };
    Ok(Checked {
        args,
        env,
        cwd,
        rlimits,
        caps,
        seccomp,
    })
}

/// Checks everything about `process` (of the container `spec`) that does not need the
/// container's filesystem: args, cwd, uid and gids, rlimits, capabilities, seccomp. The runtime
/// calls it before creating anything, so a bad spec is refused as the caller's mistake
/// ([`Error::Spec`]) rather than as a failure of the setup process.
pub fn validate(spec: &Spec, process: &Process) -> Result<()> {
    check(spec, process).map(|_| ())
}

impl Prepared {
    /// Compiles the process description; call after pivot_root (the program is looked up in
    /// the container's filesystem). Warnings (unsupported labels) are returned for the log.
    pub fn new(spec: &Spec, process: &Process) -> Result<(Prepared, Vec<String>)> {
        let mut warnings = Vec::new();
        let Checked {
            args,
            env,
            cwd,
            rlimits,
            caps,
            seccomp,
        } = check(spec, process)?;
        let first = &args[0];
        let user = process.user();
        let apparmor = process.apparmor_profile().clone().filter(|p| !p.is_empty());
        if apparmor.is_some() && !security_enabled("/sys/module/apparmor/parameters/enabled", "Y") {
            warnings
                .push("AppArmor is not enabled on this host; the profile is not applied".into());
        }
        let selinux = process.selinux_label().clone().filter(|p| !p.is_empty());
        if selinux.is_some() && !Path::new("/sys/fs/selinux/enforce").exists() {
            warnings.push("SELinux is not enabled on this host; the label is not applied".into());
        }
        let program = lookup(first, &env, &cwd)?;
        Ok((
            Prepared {
                program: cstring(&program.to_string_lossy(), "program")?,
                argv: args
                    .iter()
                    .map(|a| cstring(a, "argument"))
                    .collect::<Result<_>>()?,
                env: env
                    .iter()
                    .map(|e| cstring(e, "environment"))
                    .collect::<Result<_>>()?,
                caps,
                seccomp,
                no_new_privs: process.no_new_privileges().unwrap_or(false),
                uid: user.uid(),
                gid: user.gid(),
                groups: user.additional_gids().clone().unwrap_or_default(),
                umask: user.umask(),
                cwd,
                apparmor,
                selinux,
                oom_score_adj: process.oom_score_adj(),
                rlimits,
            },
            warnings,
        ))
    }

    /// Applies everything and execs. Returns only on failure.
    pub fn exec(self) -> Error {
        match self.apply() {
            Ok(()) => {}
            Err(e) => return e,
        }
        let argv: Vec<*const libc::c_char> = self
            .argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp: Vec<*const libc::c_char> = self
            .env
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        if let Some((program, _)) = self.seccomp.as_ref().filter(|_| self.no_new_privs) {
            if let Err(e) = seccomp::install(program, self.seccomp.as_ref().map_or(0, |s| s.1)) {
                return Error::Setup(format!("installing seccomp: {e}"));
            }
        }
        // SAFETY: NUL-terminated arrays of valid C strings that outlive the call.
        unsafe { libc::execve(self.program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        Error::io(
            format!("exec {:?}", self.program),
            std::io::Error::last_os_error(),
        )
    }

    fn apply(&self) -> Result<()> {
        if let Some(score) = self.oom_score_adj {
            std::fs::write("/proc/self/oom_score_adj", score.to_string())
                .map_err(|e| Error::io("setting oom_score_adj", e))?;
        }
        for &(res, soft, hard) in &self.rlimits {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit with a valid struct.
            if unsafe { libc::setrlimit(res as _, &lim) } != 0 {
                return Err(Error::io(
                    format!("setting rlimit {res}"),
                    std::io::Error::last_os_error(),
                ));
            }
        }
        if let Some(label) = &self.apparmor {
            if security_enabled("/sys/module/apparmor/parameters/enabled", "Y") {
                let attr = if Path::new("/proc/self/attr/apparmor/exec").exists() {
                    "/proc/self/attr/apparmor/exec"
                } else {
                    "/proc/self/attr/exec"
                };
                std::fs::write(attr, format!("exec {label}"))
                    .map_err(|e| Error::io(format!("applying AppArmor profile {label}"), e))?;
            }
        }
        if let Some(label) = &self.selinux {
            if Path::new("/sys/fs/selinux/enforce").exists() {
                std::fs::write("/proc/self/attr/exec", label)
                    .map_err(|e| Error::io(format!("applying SELinux label {label}"), e))?;
            }
        }
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it while we have it.
        if let Some((program, flags)) = self.seccomp.as_ref().filter(|_| !self.no_new_privs) {
            seccomp::install(program, *flags)
                .map_err(|e| Error::Setup(format!("installing seccomp: {e}")))?;
        }
        if let Some(caps) = &self.caps {
            caps.apply_bounding()?;
        }
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
        let groups: Vec<libc::gid_t> = self.groups.clone();
        // SAFETY: setgroups with a valid slice.
        if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
            let e = std::io::Error::last_os_error();
            // setgroups is denied in a user namespace with setgroups=deny; fine when none asked.
            if !groups.is_empty() {
                return Err(Error::io("setting additional groups", e));
            }
        }
        nix::unistd::setresgid(self.gid.into(), self.gid.into(), self.gid.into())
            .map_err(|e| Error::sys(format!("setting gid {}", self.gid), e))?;
        nix::unistd::setresuid(self.uid.into(), self.uid.into(), self.uid.into())
            .map_err(|e| Error::sys(format!("setting uid {}", self.uid), e))?;
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
        if let Some(caps) = &self.caps {
            caps.apply_sets()?;
        }
        if self.no_new_privs {
            // SAFETY: as above.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(Error::io(
                    "setting no_new_privs",
                    std::io::Error::last_os_error(),
                ));
            }
        }
        if let Some(mask) = self.umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
        }
        nix::unistd::chdir(&self.cwd)
            .map_err(|e| Error::sys(format!("chdir to {}", self.cwd.display()), e))?;
        reset_signals();
        Ok(())
    }
}

/// The program starts with default dispositions and nothing blocked (Rust ignores SIGPIPE).
pub fn reset_signals() {
    // SAFETY: plain signal-state syscalls on this single-threaded process.
    unsafe {
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(json: serde_json::Value) -> Process {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn validate_refuses_what_the_kernel_would_misread() {
        let spec = Spec::default();
        let ok = serde_json::json!({"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"});
        validate(&spec, &process(ok.clone())).unwrap();
        let with = |path: &[&str], v: serde_json::Value| {
            let mut p = ok.clone();
            let mut cur = &mut p;
            for k in &path[..path.len() - 1] {
                cur = &mut cur[*k];
            }
            cur[path[path.len() - 1]] = v;
            match validate(&spec, &process(p)) {
                Ok(()) => String::new(),
                Err(e) => e.to_string(),
            }
        };
        // (uid_t)-1 is "unchanged" to setresuid: it must not run the program as root.
        let e = with(&["user", "uid"], serde_json::json!(u32::MAX));
        assert!(e.contains("4294967295") && e.contains("uid"), "{e}");
        let e = with(&["user", "gid"], serde_json::json!(2147483648u32));
        assert!(e.contains("gid"), "{e}");
        let e = with(
            &["user", "additionalGids"],
            serde_json::json!([1, u32::MAX]),
        );
        assert!(e.contains("additionalGids"), "{e}");
        assert_eq!(with(&["user", "uid"], serde_json::json!(i32::MAX)), "");
        let e = with(&["args"], serde_json::json!([]));
        assert!(e.contains("args"), "{e}");
        let e = with(&["cwd"], serde_json::json!("tmp"));
        assert!(e.contains("cwd"), "{e}");
        let e = with(&["args"], serde_json::json!(["a\u{0}b"]));
        assert!(e.contains("NUL"), "{e}");
    }
}
