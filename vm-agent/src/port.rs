//! The agent's transports, as ttrpc listeners: the virtio-serial port in the guest, a unix
//! socket for tests. Each yields one connection at a time, after the `vm_channel` handshake.
//!
//! A virtio-serial port is not a socket: it is one character device that stays open across
//! host connections. While no host is connected, `read` returns 0 and `poll` reports POLLHUP;
//! guest writes wait until a host is back. So the listener watches for a host, runs the
//! handshake (which discards stale bytes), hands the port to ttrpc as a connection, and when
//! ttrpc drops it starts over: after EOF (the host went away), or when a new host's greeting
//! shows up between frames (it reconnected before the agent noticed; see `FrameWatch`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use ttrpc::asynchronous::transport::Listener;
use vm_channel::{FrameWatch, Prefixed};

use crate::service::Agent;

/// One host connection on the port: a duplicate of the port's descriptor, non-blocking, and a
/// signal that fires when ttrpc is done with it.
pub struct PortConn {
    fd: AsyncFd<OwnedFd>,
    _done: oneshot::Sender<()>,
}

impl PortConn {
    fn new(fd: OwnedFd, done: oneshot::Sender<()>) -> io::Result<PortConn> {
        Ok(PortConn {
            // SAFETY: the AsyncFd owns the descriptor for as long as it is registered.
            fd: unsafe { AsyncFd::register(fd) }?,
            _done: done,
        })
    }
}

impl AsyncRead for PortConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let r = guard
                .try_io(|fd| nix::unistd::read(fd.as_raw_fd(), unfilled).map_err(io::Error::from));
            match r {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PortConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Whether a host has the port's chardev open: the driver reports POLLHUP while none has.
fn host_connected(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n >= 0 && p.revents & libc::POLLHUP == 0
}

/// Sleeps until a host connects. Polling, with a short period at first: after boot the host
/// is usually already there, and the first answer is what boot-to-ready measures.
async fn wait_for_host(fd: &OwnedFd) {
    let mut period = Duration::from_millis(1);
    while !host_connected(fd) {
        tokio::time::sleep(period).await;
        period = (period * 2).min(Duration::from_millis(20));
    }
}

type Conn = FrameWatch<Prefixed<Prefixed<PortConn>>>;

async fn accept_port(port: OwnedFd, tx: mpsc::Sender<io::Result<Conn>>) {
    // Bytes a connection read past its end: a new host's greeting (see FrameWatch).
    let stash = Arc::new(Mutex::new(Vec::new()));
    loop {
        wait_for_host(&port).await;
        let (done_tx, done_rx) = oneshot::channel();
        let conn = match port.try_clone().and_then(|fd| PortConn::new(fd, done_tx)) {
            Ok(c) => c,
            Err(e) => {
                log::error!("port: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let leftover = std::mem::take(&mut *stash.lock().unwrap_or_else(|p| p.into_inner()));
        match vm_channel::agent_handshake(Prefixed::new(leftover, conn)).await {
            Ok((conn, nonce)) => {
                log::debug!("host connected (nonce {nonce:#x})");
                if tx
                    .send(Ok(FrameWatch::new(conn, stash.clone())))
                    .await
                    .is_err()
                {
                    return;
                }
                // One connection at a time: the next handshake must not steal its bytes.
                let _ = done_rx.await;
                log::debug!("host disconnected");
            }
            Err(e) => log::debug!("handshake: {e}"),
        }
    }
}

fn listener_from<S>(rx: mpsc::Receiver<io::Result<S>>) -> Listener
where
    S: AsyncRead + AsyncWrite + Send + Sync + 'static,
{
    Listener::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

async fn serve(agent: Arc<Agent>, listener: Listener) -> Result<(), String> {
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(listener)
        .register_service(protos::agent_ttrpc::create_agent(agent.clone()));
    server.start().await.map_err(|e| e.to_string())?;
    let _ = crate::boot::SERVING.set(crate::boot::uptime());
    log::info!("serving");
    agent.shutdown_requested().await;
    // Let the Shutdown reply reach the host before the VM goes away.
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(())
}

/// Serves the virtio-serial port called `name` until Shutdown, then powers off; and the output
/// port, when the host gave us one.
pub async fn serve_guest(
    agent: Arc<Agent>,
    name: &str,
    link: Arc<crate::output::OutputLink>,
) -> Result<(), String> {
    let path = crate::boot::find_port(name, Duration::from_secs(10)).await?;
    // Both ports belong to one device, so the output port shows up at about the same time if
    // it exists at all; without it the host reads output through ReadStdout/ReadStderr. In
    // the background: it must not delay the first answer.
    tokio::spawn(async move {
        let name = vm_channel::OUTPUT_PORT_NAME;
        match crate::boot::find_port(name, Duration::from_secs(1)).await {
            Ok(out) => match open_port(&out) {
                Ok(fd) => {
                    log::info!("port {name} is {}", out.display());
                    crate::output::serve_port(link, fd).await;
                }
                Err(e) => log::warn!("{e}"),
            },
            Err(e) => log::info!("{e}: output through the agent port only"),
        }
    });
    let port = open_port(&path)?;
    log::info!("port {name} is {}", path.display());
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(accept_port(port, tx));
    serve(agent, listener_from(rx)).await?;
    crate::boot::power_off()
}

fn open_port(path: &Path) -> Result<OwnedFd, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| format!("opening {}: {e}", path.display()))
}

/// Serves a unix socket (tests outside a VM) until Shutdown, then returns; `PATH.output`
/// stands in for the output port.
pub async fn serve_unix(
    agent: Arc<Agent>,
    path: &Path,
    link: Arc<crate::output::OutputLink>,
) -> Result<(), String> {
    let mut out = path.as_os_str().to_owned();
    out.push(".output");
    let out = std::path::PathBuf::from(out);
    let _ = std::fs::remove_file(&out);
    let out_listener = tokio::net::UnixListener::bind(&out)
        .map_err(|e| format!("binding {}: {e}", out.display()))?;
    tokio::spawn(crate::output::serve_unix(link, out_listener));
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("binding {}: {e}", path.display()))?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    log::error!("accept: {e}");
                    return;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match vm_channel::agent_handshake(stream).await {
                    Ok((s, _)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Err(e) => log::debug!("handshake: {e}"),
                }
            });
        }
    });
    let result = serve(agent.clone(), listener_from(rx)).await;
    agent.remove_state();
    let _ = std::fs::remove_file(&out);
    result
}
