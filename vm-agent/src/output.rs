//! Process output to the host through the output port, in frames, without copying it.
//!
//! Why: through ttrpc every chunk of output is copied three times inside the guest (pipe →
//! agent buffer → protobuf → a 32 KiB virtio-console write), and under TCG a guest copy is
//! slow. Here a pump per output pipe moves what the pipe holds into a private relay pipe
//! (splice(2) between pipes moves page references), writes a 16-byte header
//! (`vm_channel::FrameHeader`) announcing that many bytes, and splices the relay into the
//! port: virtio_console's splice_write hands the pages to the virtqueue as they are, and QEMU
//! writes them straight from guest memory to its chardev socket. (Why the relay: [`Relay`].)
//!
//! Frames of all processes share the port, one at a time ([`OutputLink`]'s lock is held for a
//! whole frame), so each channel's frames stay in order and a frame is never interleaved.
//! A pipe's end (all writers gone) becomes an EOF frame; the host publishes an exit only after
//! the EOF of each of the process's outputs.
//!
//! Reconnects: the port keeps bytes across host connections (see `vm_channel`), so nothing is
//! written before a host greeted us, and each greeting is answered between two frames; the host
//! skips everything before its own answer, which leaves it aligned on a frame boundary.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Mutex};
use vm_channel::{FrameHeader, GreetingScanner, FRAME_MAX};

/// The largest frame the agent sends: a whole pipe (`stdio::PIPE_SIZE`), within `FRAME_MAX`.
const FRAME_BYTES: usize = 1 << 20;
const _: () = assert!(FRAME_BYTES as u64 <= FRAME_MAX as u64);

/// Where frames go: the port (or, outside a VM, the latest host connection) once a host has
/// greeted us, with the lock that makes frames atomic.
pub struct OutputLink {
    sink: Mutex<Option<Sink>>,
    /// Bumped whenever a sink is installed, for pumps waiting for one.
    generation: watch::Sender<u64>,
}

/// The descriptor frames are written to (non-blocking), and its epoll registration.
///
/// Why not one `AsyncFd` for good: tokio keeps a "closed" readiness forever once epoll reported
/// a hang-up, and a port's host hangs up and comes back; the port would then look writable
/// always and a full queue would spin. So the registration is made afresh when a hang-up was
/// seen, and the port's hang-up itself is waited out by polling (as the agent port does).
struct Sink {
    fd: Arc<OwnedFd>,
    /// A port waits for its next host; a socket's host is gone for good.
    port: bool,
    reg: Option<AsyncFd<OwnedFd>>,
    /// Empty between frames; made at the first frame.
    relay: Option<Relay>,
}

impl Sink {
    fn new(fd: Arc<OwnedFd>, port: bool) -> Sink {
        Sink {
            fd,
            port,
            reg: None,
            relay: None,
        }
    }

    /// Waits until a write may succeed (or, for a socket, fails once its host is gone).
    async fn wait_writable(&mut self) -> io::Result<()> {
        loop {
            let revents = poll_now(&self.fd, libc::POLLOUT);
            if revents & libc::POLLOUT != 0 {
                return Ok(());
            }
            if revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                if !self.port {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                self.reg = None;
                wait_for_host(&self.fd).await;
                continue;
            }
            let reg = match &mut self.reg {
                Some(r) => r,
                None => self.reg.insert(register(&self.fd)?),
            };
            let mut guard = reg.writable().await?;
            if guard.ready().is_write_closed() {
                // A hang-up this registration saw: start over with a fresh one.
                self.reg = None;
                continue;
            }
            if poll_now(&self.fd, libc::POLLOUT) & libc::POLLOUT == 0 {
                guard.clear_ready();
            }
        }
    }

    async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match nix::unistd::write(&*self.fd, data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(nix::errno::Errno::EAGAIN) => self.wait_writable().await?,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Moves up to `len` bytes of `pipe` into the relay (see [`Relay`]); how many it holds.
    fn fill_relay(&mut self, pipe: &AsyncFd<OwnedFd>, len: usize) -> io::Result<usize> {
        let relay = match &self.relay {
            Some(r) => r,
            None => self.relay.insert(Relay::new()?),
        };
        let n = splice(pipe.get_ref(), &relay.write, len);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Moves the `len` bytes the relay holds (all of it) to the sink.
    async fn drain_relay(&mut self, len: usize) -> io::Result<()> {
        let mut left = len;
        while left > 0 {
            let Some(relay) = &self.relay else {
                return Err(io::Error::other("no relay pipe"));
            };
            let n = splice(&relay.read, &self.fd, left);
            if n > 0 {
                left -= (n as usize).min(left);
                continue;
            }
            if n == 0 {
                // The relay holds the bytes, so the driver refused them. Keep the frame's
                // length: the host stays aligned, and the loss is logged.
                log::error!("output: splice moved nothing; {left} bytes replaced by zeros");
                self.relay = None;
                return self.write_all(&vec![0u8; left]).await;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => self.wait_writable().await?,
                Some(libc::EINTR) => {}
                _ => return Err(e),
            }
        }
        Ok(())
    }
}

/// A private pipe between a process's pipe and the port, holding exactly one frame's bytes.
///
/// Why: virtio_console's splice_write sizes its scatterlist by the pipe's occupancy but fills
/// it only with the buffers it consumes; when the splice takes less than the whole pipe (the
/// process appended meanwhile, or a frame ends inside the pipe) the virtqueue gets the unused
/// entries as zero-length descriptors, which QEMU rejects by breaking the whole device
/// ("zero sized buffers are not allowed"). A pipe-to-pipe splice moves page references, not
/// bytes, and the relay is then always spliced out whole.
struct Relay {
    read: OwnedFd,
    write: OwnedFd,
}

impl Relay {
    fn new() -> io::Result<Relay> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        // SAFETY: fcntl on a pipe we own; a refusal only makes frames smaller.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                FRAME_BYTES as libc::c_int,
            )
        };
        Ok(Relay { read, write })
    }
}

/// splice(2) of up to `len` bytes, non-blocking, no offsets: the raw result.
fn splice(from: &OwnedFd, to: &OwnedFd, len: usize) -> isize {
    // SAFETY: splice between two descriptors we own, no offsets.
    unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    }
}

/// A registration of a duplicate of `fd` (so that it can be dropped without closing `fd`).
fn register(fd: &OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the duplicate for as long as it is registered.
    unsafe { AsyncFd::register(fd.try_clone()?) }.map_err(|e| io::Error::other(e.to_string()))
}

/// poll(2) of one descriptor without waiting: its revents.
fn poll_now(fd: &OwnedFd, events: libc::c_short) -> libc::c_short {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n > 0 {
        p.revents
    } else {
        0
    }
}

/// Sleeps until a host has the port open again (the driver reports POLLHUP while none has).
async fn wait_for_host(fd: &OwnedFd) {
    let mut period = Duration::from_millis(1);
    while poll_now(fd, libc::POLLIN) & libc::POLLHUP != 0 {
        tokio::time::sleep(period).await;
        period = (period * 2).min(Duration::from_millis(50));
    }
}

impl OutputLink {
    pub fn new() -> Arc<OutputLink> {
        Arc::new(OutputLink {
            sink: Mutex::new(None),
            generation: watch::channel(0).0,
        })
    }

    /// Answers a greeting on `fd` at a frame boundary and sends frames there from now on.
    async fn greeted(&self, fd: Arc<OwnedFd>, port: bool, nonce: u64) {
        let mut slot = self.sink.lock().await;
        let mut sink = Sink::new(fd, port);
        match sink.write_all(&vm_channel::answer(nonce)).await {
            Ok(()) => {
                log::debug!("output: host connected (nonce {nonce:#x})");
                *slot = Some(sink);
                self.generation.send_modify(|g| *g += 1);
            }
            Err(e) => log::debug!("output: answering the host: {e}"),
        }
    }

    /// Forgets the sink on `fd` if it is the current one (its host went away).
    async fn gone(&self, fd: &Arc<OwnedFd>) {
        let mut slot = self.sink.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(&s.fd, fd)) {
            *slot = None;
        }
    }

    /// Sends one frame: up to `len` bytes spliced from `pipe` (which holds at least that many),
    /// or the channel's EOF when `pipe` is `None`. Waits for a host as long as there is none.
    async fn send(&self, channel: u32, pipe: Option<&AsyncFd<OwnedFd>>, len: usize) {
        let mut generation = self.generation.subscribe();
        loop {
            let mut slot = self.sink.lock().await;
            let Some(sink) = slot.as_mut() else {
                drop(slot);
                let _ = generation.changed().await;
                continue;
            };
            let len = match pipe {
                Some(p) => match sink.fill_relay(p, len) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        log::warn!("output: channel {channel}: reading the pipe: {e}");
                        return;
                    }
                },
                None => 0,
            };
            let header = FrameHeader {
                channel,
                len: len as u32,
                eof: pipe.is_none(),
            };
            let sent = async {
                sink.write_all(&header.encode()).await?;
                sink.drain_relay(len).await
            }
            .await;
            match sent {
                Ok(()) => return,
                Err(e) => {
                    // Only a socket fails like this (outside a VM): its host is gone, and so is
                    // the frame. The port itself never fails; it waits for the next host.
                    log::debug!("output: channel {channel}: {e}");
                    *slot = None;
                    if pipe.is_some() {
                        return;
                    }
                }
            }
        }
    }
}

/// What a pipe has to give: bytes now, or its end.
enum Ready {
    Bytes(usize),
    End,
}

fn bytes_in_pipe(fd: &OwnedFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

/// Waits until the pipe holds bytes (how many, up to a frame) or has ended. The bytes are left
/// in the pipe: they go to the port by splice, after the header that announces them.
async fn ready(pipe: &AsyncFd<OwnedFd>) -> io::Result<Ready> {
    loop {
        let mut guard = pipe.readable().await?;
        let n = bytes_in_pipe(pipe.get_ref())?;
        if n > 0 {
            return Ok(Ready::Bytes(n.min(FRAME_BYTES)));
        }
        // POLLHUP: the writers are all gone; nothing read, so no byte is lost by asking.
        if poll_now(pipe.get_ref(), libc::POLLIN) & libc::POLLHUP != 0 {
            // Bytes written just before the last writer closed are still counted here.
            return Ok(match bytes_in_pipe(pipe.get_ref())? {
                0 => Ready::End,
                n => Ready::Bytes(n.min(FRAME_BYTES)),
            });
        }
        guard.clear_ready();
    }
}

/// A running pump. Dropping it (the process was removed) makes the pump end its channel with
/// an EOF frame at the next frame boundary: aborting it mid-frame would misalign the port.
pub struct Pump {
    _stop: watch::Sender<bool>,
}

/// Pumps `pipe` (an output pipe's read end, non-blocking) into `channel` until its end.
pub fn spawn_pump(link: Arc<OutputLink>, channel: u32, pipe: Arc<AsyncFd<OwnedFd>>) -> Pump {
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let r = tokio::select! {
                r = ready(&pipe) => r,
                _ = stopped.wait_for(|s| *s) => Ok(Ready::End),
            };
            match r {
                Ok(Ready::Bytes(n)) => link.send(channel, Some(&pipe), n).await,
                Ok(Ready::End) => break,
                Err(e) => {
                    log::warn!("output: channel {channel}: {e}");
                    break;
                }
            }
        }
        link.send(channel, None, 0).await;
    });
    Pump { _stop: stop }
}

/// Serves the output port: answers each host greeting (the only bytes a host sends on it).
pub async fn serve_port(link: Arc<OutputLink>, port: OwnedFd) {
    let port = Arc::new(port);
    let mut scanner = GreetingScanner::default();
    let mut buf = [0u8; 512];
    loop {
        // A fresh registration per host: see `Sink` on why.
        wait_for_host(&port).await;
        let reader = match register(&port) {
            Ok(r) => r,
            Err(e) => {
                log::error!("output port: {e}");
                return;
            }
        };
        loop {
            let mut guard = match reader.readable().await {
                Ok(g) => g,
                Err(e) => {
                    log::error!("output port: {e}");
                    return;
                }
            };
            match nix::unistd::read(port.as_raw_fd(), &mut buf) {
                // No host any more (the driver says EOF until one connects).
                Ok(0) => break,
                Ok(n) => {
                    for nonce in scanner.feed(&buf[..n]) {
                        link.greeted(port.clone(), true, nonce).await;
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    if guard.ready().is_read_closed() {
                        // A hang-up and a new host since: register afresh.
                        break;
                    }
                    guard.clear_ready();
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    log::debug!("output port: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// Serves a unix socket in place of the port (tests outside a VM): each connection greets,
/// becomes the sink, and stops being one when its host hangs up.
pub async fn serve_unix(link: Arc<OutputLink>, listener: tokio::net::UnixListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::error!("output: accept: {e}");
                return;
            }
        };
        let link = link.clone();
        tokio::spawn(async move {
            let fd = match stream.into_std() {
                Ok(s) => Arc::new(OwnedFd::from(s)),
                Err(e) => {
                    log::debug!("output: {e}");
                    return;
                }
            };
            let reader = match register(&fd) {
                Ok(r) => r,
                Err(e) => {
                    log::debug!("output: {e}");
                    return;
                }
            };
            let mut scanner = GreetingScanner::default();
            let mut buf = [0u8; 512];
            loop {
                let Ok(mut guard) = reader.readable().await else {
                    break;
                };
                match guard
                    .try_io(|f| nix::unistd::read(f.as_raw_fd(), &mut buf).map_err(io::Error::from))
                {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        for nonce in scanner.feed(&buf[..n]) {
                            link.greeted(fd.clone(), false, nonce).await;
                        }
                    }
                    Err(_would_block) => {}
                }
            }
            link.gone(&fd).await;
        });
    }
}
