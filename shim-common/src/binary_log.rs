//! `binary://` log URIs: a logging program that receives the process's stdout and stderr.
//!
//! containerd's contract: the query's pairs become argv, the environment holds only
//! `CONTAINER_ID` and `CONTAINER_NAMESPACE`, fd 3 is the stdout read end, fd 4 the stderr read
//! end, fd 5 a readiness pipe the logger closes once it is ready. The process writes straight
//! into the pipes; nothing is copied by the shim. When the process is deleted the logger gets
//! SIGTERM, and SIGKILL if it is still there 12 s later. Signals go through a pidfd, so a
//! recycled pid is never hit.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const KILL_GRACE: Duration = Duration::from_secs(12);

/// Who the logged process is, for the logger's environment.
#[derive(Debug, Clone, Default)]
pub struct LogIdentity {
    pub namespace: String,
    pub container_id: String,
}

pub struct BinaryLogger {
    pidfd: Option<OwnedFd>,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits `binary:///path?k=v&flag` into the program and its argv.
pub fn parse(uri: &str) -> Result<(String, Vec<String>)> {
    let rest = uri
        .strip_prefix("binary://")
        .ok_or_else(|| Error::InvalidArgument(format!("not a binary log uri: {uri:?}")))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = percent_decode(path);
    if !path.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "log uri {uri:?}: the binary path must be absolute"
        )));
    }
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(percent_decode(k));
        if !v.is_empty() {
            args.push(percent_decode(v));
        }
    }
    Ok((path, args))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("creating a pipe", e))
}

fn high(fd: &OwnedFd) -> Result<OwnedFd> {
    let dup = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
        .map_err(|e| Error::sys("duplicating fd", e))?;
    // SAFETY: fcntl just returned this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

impl BinaryLogger {
    /// Starts the logger and waits until it is ready. Returns it with the write ends the
    /// process gets as stdout and stderr.
    pub async fn start(uri: &str, who: &LogIdentity) -> Result<(BinaryLogger, OwnedFd, OwnedFd)> {
        let (program, args) = parse(uri)?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (ready_r, ready_w) = pipe()?;
        // Above 5, so the dup2s below never overwrite one another.
        let fds = [high(&out_r)?, high(&err_r)?, high(&ready_w)?];
        drop((out_r, err_r, ready_w));
        let raw = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .env_clear()
            .env("CONTAINER_ID", &who.container_id)
            .env("CONTAINER_NAMESPACE", &who.namespace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: dup2 is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting logger {program}"), e))?;
        drop(cmd);
        drop(fds);
        // SAFETY: plain syscall; the result is checked.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::c_int, 0) };
        // SAFETY: pidfd_open returned a new fd we own.
        let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd as i32) });
        let logger = BinaryLogger { pidfd };
        let mut ready = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r)
            .map_err(|e| Error::io("logger readiness pipe", e))?;
        let mut buf = Vec::new();
        match tokio::time::timeout(READY_TIMEOUT, ready.read_to_end(&mut buf)).await {
            Ok(Ok(_)) => Ok((logger, out_w, err_w)),
            Ok(Err(e)) => Err(Error::io("waiting for the logger", e)),
            Err(_) => Err(Error::Other(format!(
                "logger {program} did not become ready in {READY_TIMEOUT:?}"
            ))),
        }
    }

    fn signal(pidfd: &OwnedFd, sig: i32) -> bool {
        // SAFETY: plain syscall on a pidfd we own.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0
        }
    }
}

impl Drop for BinaryLogger {
    fn drop(&mut self) {
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        if !Self::signal(&pidfd, libc::SIGTERM) {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                tokio::time::sleep(KILL_GRACE).await;
                Self::signal(&pidfd, libc::SIGKILL);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_to_argv() {
        let (p, a) = parse("binary:///usr/bin/logger?id=abc&verbose&path=%2Fvar%2Flog").unwrap();
        assert_eq!(p, "/usr/bin/logger");
        assert_eq!(a, ["id", "abc", "verbose", "path", "/var/log"]);
        assert!(parse("binary://rel/path").is_err());
        assert_eq!(percent_decode("a%zzb%4"), "a%zzb%4");
    }
}
