//! Process stdio inside the guest, as named streams the host reads and writes in chunks.
//!
//! Why chunks over ttrpc rather than a port per stream: microvm cannot hot-plug devices, and
//! one channel keeps the host side simple. Output the host wants fast comes instead through
//! the one output port, multiplexed in frames (`crate::output`); here it is only a pipe. Reads go straight to the pipe (or pty master): a
//! process that writes faster than the host reads blocks on its pipe, which is the back-pressure
//! we want, and the agent buffers nothing.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use container::launch::Stdio3;
use shim_common::{Error, Result};
use tokio::io::unix::AsyncFd;

/// The default and largest chunk a read returns: big enough for throughput, small enough to
/// keep one reply well under ttrpc's 4 MiB message limit.
pub const CHUNK_DEFAULT: usize = 256 * 1024;
pub const CHUNK_MAX: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stdin,
    Stdout,
    Stderr,
}

/// One end the agent holds: the write end of a stdin pipe, the read end of an output pipe, or
/// a pty master (shared by the process's stdin and stdout streams).
pub struct Stream {
    pub kind: Kind,
    fd: Arc<AsyncFd<OwnedFd>>,
    /// Serialises readers (and writers), and remembers that the end was reached.
    state: tokio::sync::Mutex<bool>,
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// Registers an fd with the runtime for async I/O (made non-blocking first).
pub fn async_fd(fd: OwnedFd) -> io::Result<Arc<AsyncFd<OwnedFd>>> {
    set_nonblocking(&fd)?;
    // SAFETY: the AsyncFd owns the descriptor for as long as it is registered.
    Ok(Arc::new(unsafe { AsyncFd::register(fd) }?))
}

impl Stream {
    pub fn new(kind: Kind, fd: Arc<AsyncFd<OwnedFd>>) -> Arc<Stream> {
        Arc::new(Stream {
            kind,
            fd,
            state: tokio::sync::Mutex::new(false),
        })
    }

    /// Up to `max` bytes, waiting only while there are none; `eof` once the writers are gone
    /// (a pty reports that as EIO).
    pub async fn read(&self, max: usize) -> io::Result<(Vec<u8>, bool)> {
        let mut eof = self.state.lock().await;
        if *eof {
            return Ok((Vec::new(), true));
        }
        let mut buf = vec![0u8; max.clamp(1, CHUNK_MAX)];
        loop {
            let mut guard = self.fd.readable().await?;
            match guard
                .try_io(|fd| nix::unistd::read(fd.as_raw_fd(), &mut buf).map_err(io::Error::from))
            {
                Ok(Ok(0)) => {
                    *eof = true;
                    return Ok((Vec::new(), true));
                }
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Ok((buf, false));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    *eof = true;
                    return Ok((Vec::new(), true));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write(&self, data: &[u8]) -> io::Result<usize> {
        let _serial = self.state.lock().await;
        let mut done = 0;
        while done < data.len() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| {
                nix::unistd::write(fd.get_ref(), &data[done..]).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => done += n,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(done)
    }
}

/// Every stream of the agent, by the name the host gave it.
#[derive(Default)]
pub struct Streams {
    map: Mutex<HashMap<String, Arc<Stream>>>,
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Stream>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &str, kind: &[Kind]) -> Result<Arc<Stream>> {
        let s = self
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no stream {id:?}")))?;
        if !kind.contains(&s.kind) {
            return Err(Error::InvalidArgument(format!(
                "stream {id:?} is {:?}",
                s.kind
            )));
        }
        Ok(s)
    }

    /// Fails if any of `ids` (non-empty ones) is taken or repeated.
    pub fn check_free(&self, ids: &[&str]) -> Result<()> {
        let map = self.lock();
        let mut seen = Vec::new();
        for id in ids.iter().filter(|i| !i.is_empty()) {
            if map.contains_key(*id) || seen.contains(id) {
                return Err(Error::AlreadyExists(format!(
                    "stream {id:?} already exists"
                )));
            }
            seen.push(id);
        }
        Ok(())
    }

    pub fn insert(&self, id: String, s: Arc<Stream>) {
        self.lock().insert(id, s);
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// A process's stdio being set up: what the process gets, and the streams to register once it
/// exists.
pub struct Pending {
    pub child: Stdio3,
    pub streams: Vec<(String, Arc<Stream>)>,
    /// Outputs that go to the output port: (channel, the pipe's read end).
    pub channels: Vec<(u32, Arc<AsyncFd<OwnedFd>>)>,
}

fn dev_null(write: bool) -> Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| Error::io("opening /dev/null", e))
}

/// Pipe capacity: one ReadStdout (or one frame on the output port) carries at most what the
/// pipe holds, and each is a trip over virtio-serial, so the default 64 KiB would cap
/// throughput under TCG.
const PIPE_SIZE: libc::c_int = 1024 * 1024;

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
    // SAFETY: fcntl on a pipe we own; a refusal (a lower pipe-max-size) only costs speed.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    Ok((r, w))
}

/// Pipes for the named streams, /dev/null for the others. With a terminal the process's stdio
/// is the pty the container opens, so it gets /dev/null here and [`terminal`] names the master.
pub fn prepare(ids: &protos::agent::StdioStreams, terminal: bool) -> Result<Pending> {
    let mut streams = Vec::new();
    if terminal {
        return Ok(Pending {
            child: Stdio3 {
                stdin: dev_null(false)?,
                stdout: dev_null(true)?,
                stderr: dev_null(true)?,
            },
            streams,
            channels: Vec::new(),
        });
    }
    let io = |e| Error::io("setting up stdio", e);
    let mut channels = Vec::new();
    let stdin = if ids.stdin.is_empty() {
        dev_null(false)?
    } else {
        let (r, w) = pipe()?;
        streams.push((
            ids.stdin.clone(),
            Stream::new(Kind::Stdin, async_fd(w).map_err(io)?),
        ));
        r
    };
    let mut output = |id: &str, channel: u32, kind| -> Result<OwnedFd> {
        if channel != 0 {
            let (r, w) = pipe()?;
            channels.push((channel, async_fd(r).map_err(io)?));
            return Ok(w);
        }
        if id.is_empty() {
            return dev_null(true);
        }
        let (r, w) = pipe()?;
        streams.push((id.to_string(), Stream::new(kind, async_fd(r).map_err(io)?)));
        Ok(w)
    };
    let stdout = output(&ids.stdout, ids.stdout_channel, Kind::Stdout)?;
    let stderr = output(&ids.stderr, ids.stderr_channel, Kind::Stderr)?;
    Ok(Pending {
        child: Stdio3 {
            stdin,
            stdout,
            stderr,
        },
        streams,
        channels,
    })
}

/// The streams of a terminal process: stdin and stdout both on the pty master.
pub fn terminal(
    ids: &protos::agent::StdioStreams,
    master: &Arc<AsyncFd<OwnedFd>>,
) -> Vec<(String, Arc<Stream>)> {
    let mut v = Vec::new();
    if !ids.stdin.is_empty() {
        v.push((ids.stdin.clone(), Stream::new(Kind::Stdin, master.clone())));
    }
    if !ids.stdout.is_empty() {
        v.push((
            ids.stdout.clone(),
            Stream::new(Kind::Stdout, master.clone()),
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn pipes_carry_data_and_eof() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut ids = protos::agent::StdioStreams::new();
            ids.stdin = "in".into();
            ids.stdout = "out".into();
            let p = prepare(&ids, false).unwrap();
            let streams = Streams::default();
            streams.check_free(&["in", "out"]).unwrap();
            for (id, s) in p.streams {
                streams.insert(id, s);
            }
            assert!(streams.check_free(&["out"]).is_err());
            assert!(streams.check_free(&["x", "x"]).is_err());
            assert!(streams.get("in", &[Kind::Stdout]).is_err());

            let input = streams.get("in", &[Kind::Stdin]).unwrap();
            assert_eq!(input.write(b"ping").await.unwrap(), 4);
            let mut got = [0u8; 4];
            std::fs::File::from(p.child.stdin)
                .read_exact(&mut got)
                .unwrap();
            assert_eq!(&got, b"ping");

            let out = streams.get("out", &[Kind::Stdout]).unwrap();
            let mut w = std::fs::File::from(p.child.stdout);
            w.write_all(b"pong").unwrap();
            drop(w);
            assert_eq!(out.read(100).await.unwrap(), (b"pong".to_vec(), false));
            assert_eq!(out.read(100).await.unwrap(), (Vec::new(), true));
            assert_eq!(out.read(100).await.unwrap(), (Vec::new(), true));
        });
    }
}
