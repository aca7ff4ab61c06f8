//! Calling an OCI runtime CLI (runc, crun, ...) and turning its failures into typed errors.
//!
//! Each call gets its own JSON log file in the bundle, so concurrent calls never mix their
//! errors, and the runtime's own last error message is what reaches containerd.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use shim_common::reaper::{Capture, CommandOutput, Reaper};
use shim_common::{Error, Result};

use crate::settings::OciSettings;

static CALLS: AtomicU64 = AtomicU64::new(0);

/// The process's stdio for a runtime call that starts a container process.
pub struct CallIo {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

pub struct OciCli<'a> {
    pub settings: &'a OciSettings,
    /// Where call logs and relative paths live: the container's bundle.
    pub dir: &'a Path,
}

impl OciCli<'_> {
    fn command(&self, log: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.settings.binary);
        cmd.arg("--root")
            .arg(&self.settings.root)
            .arg("--log")
            .arg(log)
            .args(["--log-format", "json"]);
        if self.settings.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(args).current_dir(self.dir);
        if self.settings.hide_unified_cgroup {
            hide_unified_cgroup(&mut cmd);
        }
        cmd
    }

    /// Runs one call to completion (through the daemon's reaper, or directly when there is
    /// none, as in `shim delete`); `io` becomes the call's stdio, else /dev/null.
    pub async fn run(
        &self,
        reaper: Option<&Arc<Reaper>>,
        args: &[&str],
        io: Option<CallIo>,
        capture: bool,
    ) -> Result<Vec<u8>> {
        let log = self.dir.join(format!(
            "oci-call-{}-{}.json",
            std::process::id(),
            CALLS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = self.command(&log, args);
        match io {
            Some(io) => {
                cmd.stdin(Stdio::from(io.stdin))
                    .stdout(Stdio::from(io.stdout))
                    .stderr(Stdio::from(io.stderr));
            }
            None => {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
            }
        }
        let out = match reaper {
            Some(r) => {
                let what = if capture {
                    Capture::Stdout
                } else {
                    Capture::Nothing
                };
                r.run(&mut cmd, what).await
            }
            None => run_plain(&mut cmd, capture),
        };
        // The call has ended: drop our copies of the process's stdio now (they moved into
        // `cmd`), so the process's output reaches EOF when the process exits.
        drop(cmd);
        let result = match out {
            Ok(out) if out.status == 0 => Ok(out.output),
            Ok(out) => Err(failure(&self.settings.binary, args, out.status, &log)),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&log);
        result
    }
}

fn run_plain(cmd: &mut Command, capture: bool) -> Result<CommandOutput> {
    if capture {
        cmd.stdout(Stdio::piped());
    }
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("running {:?}", cmd.get_program()), e))?;
    let status = out.status.code().map(|c| c as u32).unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&out.status).unwrap_or(0) as u32
    });
    Ok(CommandOutput {
        status,
        output: out.stdout,
    })
}

/// The runtime's own last error, from its JSON log, typed by what containerd expects.
fn failure(binary: &str, args: &[&str], status: u32, log: &Path) -> Error {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let msg = last_error(&text).unwrap_or_else(|| format!("exit status {status}"));
    let op = args.first().copied().unwrap_or("");
    let lower = msg.to_lowercase();
    // "executable file not found" from create or exec is the program, not the container.
    let starts_program = matches!(op, "create" | "exec");
    if lower.contains("does not exist") || lower.contains("not found") && !starts_program {
        return Error::NotFound(format!("{binary} {op}: {msg}"));
    }
    if lower.contains("not running") || lower.contains("is stopped") {
        return Error::FailedPrecondition(format!("{binary} {op}: {msg}"));
    }
    Error::Runtime(format!("{binary} {op} failed: {msg}"))
}

pub fn last_error(log: &str) -> Option<String> {
    log.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let level = v.get("level")?.as_str()?;
        if level != "error" && level != "fatal" {
            return None;
        }
        Some(v.get("msg")?.as_str()?.trim().to_string())
    })
}

/// crun refuses a hybrid cgroup host (v1 controllers plus a cgroup2 mount). Run it in a
/// private mount namespace in which the cgroup2 mount is lazily detached: it then sees plain
/// v1, and the host's mounts are untouched.
fn hide_unified_cgroup(cmd: &mut Command) {
    let root = CString::new("/").expect("static path");
    let unified = CString::new("/sys/fs/cgroup/unified").expect("static path");
    // SAFETY: only raw syscalls (async-signal-safe) on strings allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            libc::umount2(unified.as_ptr(), libc::MNT_DETACH);
            Ok(())
        });
    }
}

pub fn pid_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pid"))
}

pub fn read_pid(path: &Path) -> Result<u32> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::path("reading pid file", path, e))?;
    s.trim()
        .parse()
        .map_err(|_| Error::Runtime(format!("bad pid file {}: {s:?}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_errors_are_read_from_the_json_log() {
        let log = r#"{"level":"info","msg":"starting"}
{"level":"error","msg":"container \"x\" does not exist","time":"t"}
{"level":"warning","msg":"later"}"#;
        assert_eq!(last_error(log).unwrap(), "container \"x\" does not exist");
        assert_eq!(last_error("garbage"), None);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.json");
        std::fs::write(&p, log).unwrap();
        assert!(matches!(
            failure("runc", &["kill"], 1, &p),
            Error::NotFound(_)
        ));
        std::fs::write(&p, r#"{"level":"error","msg":"exec: \"nope\": not found"}"#).unwrap();
        assert!(matches!(
            failure("runc", &["create"], 1, &p),
            Error::Runtime(_)
        ));
        assert!(matches!(
            failure("runc", &["exec"], 1, &p),
            Error::Runtime(_)
        ));
    }
}
