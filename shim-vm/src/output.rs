//! The host end of the output port: frames from the agent (`vm_channel::FrameHeader`), each
//! channel's payload written to its process's pipe.
//!
//! Why a port of its own rather than ReadStdout: see the agent's `output` module. Here one task
//! reads the port's chardev socket and hands each payload to the channel's writer task through
//! a small bounded queue, so a reader that is slow on one pipe stalls the others only once its
//! queue is full, and the guest (whose pipe then fills) is throttled instead of this process
//! buffering without bound. A channel ends with its EOF frame, or when the port does (QEMU
//! exited): either way its writer closes the pipe, which is the end the framework passes on.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use vm_channel::{FrameHeader, FRAME_HEADER_LEN};

use crate::guest_io::write_all;
use crate::Result;

/// Payloads queued per channel before the port reader waits for that channel's pipe.
const QUEUE_FRAMES: usize = 4;

type Channels = Arc<Mutex<HashMap<u32, mpsc::Sender<Vec<u8>>>>>;

fn lock(c: &Channels) -> std::sync::MutexGuard<'_, HashMap<u32, mpsc::Sender<Vec<u8>>>> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connected output port.
pub struct OutputLink {
    channels: Channels,
    next: AtomicU32,
    reader: JoinHandle<()>,
}

/// A channel opened for one output: its number for the agent, and the task that writes its
/// payloads to the pipe (done once the output ended). Dropping it closes the channel.
pub struct OutputChannel {
    pub channel: u32,
    channels: Channels,
    writer: Option<JoinHandle<()>>,
}

impl OutputChannel {
    /// Waits until the channel's output ended and reached the pipe.
    pub async fn done(&mut self) {
        if let Some(w) = self.writer.as_mut() {
            let _ = w.await;
            self.writer = None;
        }
    }
}

impl Drop for OutputChannel {
    fn drop(&mut self) {
        lock(&self.channels).remove(&self.channel);
        if let Some(w) = self.writer.take() {
            w.abort();
        }
    }
}

impl OutputLink {
    /// Connects to the port behind QEMU's socket at `path` and runs the handshake (the port may
    /// hold bytes of an earlier host), retrying until `deadline`.
    pub async fn connect(path: &Path, deadline: Instant) -> Result<Arc<OutputLink>> {
        let stream = crate::agent::connect_port(path, deadline, "output port").await?;
        Ok(OutputLink::start(stream))
    }

    /// Serves frames read from `stream` (aligned on a frame boundary).
    pub fn start<S: AsyncRead + Unpin + Send + 'static>(stream: S) -> Arc<OutputLink> {
        let channels: Channels = Arc::default();
        let reader = tokio::spawn(read_frames(stream, channels.clone()));
        Arc::new(OutputLink {
            channels,
            next: AtomicU32::new(1),
            reader,
        })
    }

    /// Opens a channel whose payloads go to `pipe` (the framework's end, non-blocking).
    pub fn open(&self, pipe: Arc<AsyncFd<OwnedFd>>) -> OutputChannel {
        let mut channel = self.next.fetch_add(1, Ordering::Relaxed);
        if channel == 0 {
            channel = self.next.fetch_add(1, Ordering::Relaxed);
        }
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        lock(&self.channels).insert(channel, tx);
        OutputChannel {
            channel,
            channels: self.channels.clone(),
            writer: Some(tokio::spawn(write_channel(channel, rx, pipe))),
        }
    }
}

impl Drop for OutputLink {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The port reader: frames until the port ends or loses its alignment; then every channel
/// ends (its writer sees its queue close).
async fn read_frames<S: AsyncRead + Unpin>(mut stream: S, channels: Channels) {
    let r: io::Result<std::convert::Infallible> = async {
        loop {
            let mut h = [0u8; FRAME_HEADER_LEN];
            stream.read_exact(&mut h).await?;
            let header = FrameHeader::decode(&h)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let mut payload = vec![0u8; header.len as usize];
            stream.read_exact(&mut payload).await?;
            let tx = if header.eof {
                lock(&channels).remove(&header.channel)
            } else {
                lock(&channels).get(&header.channel).cloned()
            };
            // A channel nobody holds any more (its process was deleted): dropped.
            if let Some(tx) = tx {
                if !payload.is_empty() {
                    let _ = tx.send(payload).await;
                }
            }
        }
    }
    .await;
    let e = match r {
        Ok(never) => match never {},
        Err(e) => e,
    };
    if e.kind() == io::ErrorKind::UnexpectedEof {
        log::debug!("output port closed");
    } else {
        log::warn!("output port: {e}");
    }
    lock(&channels).clear();
}

/// One channel's writer: its payloads, in order, to the pipe. After a write error (nobody
/// reads the pipe any more) it keeps draining, so the port reader is never stuck on it.
async fn write_channel(channel: u32, mut rx: mpsc::Receiver<Vec<u8>>, pipe: Arc<AsyncFd<OwnedFd>>) {
    let mut broken = false;
    while let Some(data) = rx.recv().await {
        if broken {
            continue;
        }
        if let Err(e) = write_all(&pipe, &data).await {
            log::debug!("output channel {channel}: {e}");
            broken = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncWriteExt;

    fn pipe() -> (Arc<AsyncFd<OwnedFd>>, std::fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        let flags = nix::fcntl::fcntl(w.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(w.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
        // SAFETY: the AsyncFd owns the descriptor.
        let w = unsafe { AsyncFd::register(w) }.unwrap();
        (Arc::new(w), std::fs::File::from(r))
    }

    fn frame(channel: u32, data: &[u8], eof: bool) -> Vec<u8> {
        let mut f = FrameHeader {
            channel,
            len: data.len() as u32,
            eof,
        }
        .encode()
        .to_vec();
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn frames_reach_their_pipes_in_order_and_end_with_eof() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut port, host) = tokio::io::duplex(1 << 16);
            let link = OutputLink::start(host);
            let (out_w, out_r) = pipe();
            let (err_w, err_r) = pipe();
            let mut out = link.open(out_w);
            let mut err = link.open(err_w);
            assert_ne!(out.channel, err.channel);
            let readers = [out_r, err_r].map(|mut f| {
                std::thread::spawn(move || {
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut f, &mut v).unwrap();
                    v
                })
            });
            let mut bytes = Vec::new();
            bytes.extend(frame(out.channel, b"one ", false));
            bytes.extend(frame(err.channel, b"ERR", false));
            bytes.extend(frame(999, b"nobody", false));
            bytes.extend(frame(out.channel, b"two", false));
            bytes.extend(frame(out.channel, b"", true));
            bytes.extend(frame(err.channel, b"", true));
            port.write_all(&bytes).await.unwrap();
            out.done().await;
            err.done().await;
            drop((out, err));
            let [o, e] = readers.map(|r| r.join().unwrap());
            assert_eq!(o, b"one two");
            assert_eq!(e, b"ERR");
        });
    }

    #[test]
    fn a_closed_port_ends_every_channel() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut port, host) = tokio::io::duplex(1 << 16);
            let link = OutputLink::start(host);
            let (w, _r) = pipe();
            let mut ch = link.open(w);
            port.write_all(&frame(ch.channel, b"partial", false)[..10])
                .await
                .unwrap();
            drop(port);
            ch.done().await;
        });
    }
}
