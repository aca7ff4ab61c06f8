//! Receiving a terminal's pty master from the runtime over `--console-socket`.
//!
//! runc and crun allocate the pty inside the container and send the master back as an
//! SCM_RIGHTS message on a unix socket we listen on. The socket lives in the bundle; the
//! runtime runs with the bundle as its working directory and is given the relative name, so
//! long bundle paths never hit the 108-byte `sun_path` limit.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use shim_common::{Error, Result};
use tokio::io::Interest;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

pub struct ConsoleSocket {
    /// What to pass to the runtime (relative to the bundle).
    pub name: String,
    path: PathBuf,
    task: JoinHandle<Result<OwnedFd>>,
}

fn bind(dir: &Path, name: &str) -> Result<StdListener> {
    let full = dir.join(name);
    let _ = std::fs::remove_file(&full);
    if full.as_os_str().len() < 100 {
        return StdListener::bind(&full)
            .map_err(|e| Error::path("binding console socket", &full, e));
    }
    // Too long for sun_path: reach the directory through an fd of it.
    let d = std::fs::File::open(dir).map_err(|e| Error::path("opening", dir, e))?;
    let via = format!("/proc/self/fd/{}/{name}", d.as_raw_fd());
    StdListener::bind(&via).map_err(|e| Error::path("binding console socket", &full, e))
}

impl ConsoleSocket {
    pub fn listen(dir: &Path, tag: &str) -> Result<ConsoleSocket> {
        let name = format!("console-{tag}.sock");
        let std = bind(dir, &name)?;
        std.set_nonblocking(true)
            .map_err(|e| Error::io("console socket", e))?;
        let listener = UnixListener::from_std(std).map_err(|e| Error::io("console socket", e))?;
        let task = tokio::spawn(async move { receive(listener).await });
        Ok(ConsoleSocket {
            name,
            path: dir.join(format!("console-{tag}.sock")),
            task,
        })
    }

    /// The master, once the runtime call that was given the socket has returned successfully.
    pub async fn master(mut self) -> Result<OwnedFd> {
        let r = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        let _ = std::fs::remove_file(&self.path);
        match r {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => Err(Error::Other(format!("receiving the console: {e}"))),
            Err(_) => Err(Error::Runtime(
                "the runtime never sent the terminal's master".into(),
            )),
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn receive(listener: UnixListener) -> Result<OwnedFd> {
    let (stream, _) = listener
        .accept()
        .await
        .map_err(|e| Error::io("accepting on the console socket", e))?;
    loop {
        stream
            .ready(Interest::READABLE)
            .await
            .map_err(|e| Error::io("console socket", e))?;
        let r = stream.try_io(Interest::READABLE, || {
            let mut buf = [0u8; 4096];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    if let Some(&fd) = fds.first() {
                        for &extra in &fds[1..] {
                            // SAFETY: received fds are ours to close.
                            drop(unsafe { OwnedFd::from_raw_fd(extra) });
                        }
                        // SAFETY: the kernel just installed this fd for us.
                        return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
                    }
                }
            }
            Ok(None)
        });
        match r {
            Ok(Some(fd)) => return Ok(fd),
            Ok(None) => {
                return Err(Error::Runtime(
                    "the console socket message carried no fd".into(),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(Error::io("receiving the console", e)),
        }
    }
}
