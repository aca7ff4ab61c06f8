//! The channel between the runtime and the container's setup process: a SOCK_SEQPACKET pair,
//! one JSON message per datagram, with an fd (the pty master) riding along where needed.
//!
//! Datagram boundaries make framing free; SCM_RIGHTS passes the console. The runtime's end is
//! async (it lives in the shim's event loop); the setup process's end is blocking (it is a
//! single-threaded process with nothing else to do).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const MAX_MESSAGE: usize = 256 * 1024;

/// Everything said over the channel, both ways.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Message {
    /// runtime → setup: what to build.
    Config(Box<crate::init::SetupConfig>),
    /// setup → runtime: a user namespace exists; write the id maps of this pid.
    NeedIdMaps { pid: u32 },
    /// runtime → setup: id maps written / no cgroup to join / hooks run: go on.
    Continue,
    /// setup → runtime: which cgroup is mine?
    NeedCgroup,
    /// runtime → setup: join this cgroup (the setup process moves itself, see `Placement`).
    JoinCgroup(crate::cgroups::Placement),
    /// setup → runtime: the container process exists; its pid in the runtime's pid namespace.
    Pid { pid: u32 },
    /// setup → runtime: namespaces and mounts are ready, before pivot_root (prestart and
    /// createRuntime hooks run now).
    NamespacesReady,
    /// setup → runtime: the pty master travels with this message.
    Console,
    /// setup → runtime: fully created, waiting for Start.
    Created,
    /// runtime → setup: run the program.
    Start,
    /// setup → runtime: something was not applied but is not fatal (e.g. no AppArmor).
    Warning { message: String },
    /// setup → runtime: setup failed; the process exits.
    Failed { message: String },
}

/// One end of the channel, blocking.
pub struct Channel {
    fd: OwnedFd,
}

pub fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::sys("creating the setup channel", e))?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

fn encode(msg: &Message) -> Result<Vec<u8>> {
    serde_json::to_vec(msg).map_err(|e| Error::Protocol(format!("encoding {msg:?}: {e}")))
}

fn decode(buf: &[u8]) -> Result<Message> {
    serde_json::from_slice(buf).map_err(|e| Error::Protocol(format!("bad message: {e}")))
}

/// Sends one datagram, with `fd` attached when given. Returns the raw errno on failure.
fn send_raw(sock: RawFd, data: &[u8], fd: Option<RawFd>) -> nix::Result<()> {
    let iov = [IoSlice::new(data)];
    let fds;
    let cmsgs: &[ControlMessage] = match fd {
        Some(f) => {
            fds = [f];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None).map(drop)
}

/// The length of the next datagram, without taking it (0 on EOF). Asking the kernel keeps the
/// runtime's long-lived daemon from allocating (and keeping in its heap) a buffer sized for the
/// largest message on every receive.
fn next_len(sock: RawFd) -> nix::Result<usize> {
    let mut byte = [0u8; 1];
    // SAFETY: recv into a valid one-byte buffer; MSG_TRUNC makes it return the datagram's real
    // length, MSG_PEEK leaves the datagram (and any fd riding with it) queued.
    let n = unsafe {
        libc::recv(
            sock,
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(n as usize)
}

/// Receives one datagram: `Ok(None)` on EOF (the peer closed, e.g. by exec'ing).
fn recv_raw(sock: RawFd) -> nix::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
    let len = next_len(sock)?;
    if len == 0 {
        return Ok(None);
    }
    let mut buf = vec![0u8; len.min(MAX_MESSAGE)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (n, fd) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fd = None;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for (i, f) in fds.into_iter().enumerate() {
                    // SAFETY: the kernel installed these fds for us.
                    let owned = unsafe { OwnedFd::from_raw_fd(f) };
                    if i == 0 {
                        fd = Some(owned);
                    }
                }
            }
        }
        (msg.bytes, fd)
    };
    if n == 0 {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some((buf, fd)))
}

impl Channel {
    pub fn send(&self, msg: &Message) -> Result<()> {
        self.send_fd(msg, None)
    }

    pub fn send_fd(&self, msg: &Message, fd: Option<RawFd>) -> Result<()> {
        send_raw(self.fd.as_raw_fd(), &encode(msg)?, fd)
            .map_err(|e| Error::sys("writing to the runtime", e))
    }

    /// The next message, or None when the runtime is gone.
    pub fn recv(&self) -> Result<Option<Message>> {
        loop {
            match recv_raw(self.fd.as_raw_fd()) {
                Ok(Some((buf, _))) => return decode(&buf).map(Some),
                Ok(None) => return Ok(None),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::sys("reading from the runtime", e)),
            }
        }
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// # Safety
    /// `fd` must be a channel end this process owns.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Channel {
        Channel {
            fd: OwnedFd::from_raw_fd(fd),
        }
    }

    pub fn into_async(self) -> Result<AsyncChannel> {
        let flags = nix::fcntl::fcntl(self.fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| Error::sys("F_GETFL", e))?;
        nix::fcntl::fcntl(
            self.fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK,
            ),
        )
        .map_err(|e| Error::sys("F_SETFL", e))?;
        // SAFETY: the AsyncFd owns the fd for as long as it is registered.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(self.fd) }
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
        Ok(AsyncChannel { fd })
    }
}

/// The runtime's end, driven by the event loop.
pub struct AsyncChannel {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl AsyncChannel {
    pub async fn send(&self, msg: &Message) -> Result<()> {
        let data = encode(msg)?;
        loop {
            let mut guard = self.fd.writable().await.map_err(Error::Io)?;
            match send_raw(self.fd.as_raw_fd(), &data, None) {
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::sys("writing to the container setup", e)),
                Ok(()) => return Ok(()),
            }
        }
    }

    /// The next message and the fd that came with it; None once the setup process closed its
    /// end (it exec'd the container's program, or died).
    pub async fn recv(&self) -> Result<Option<(Message, Option<OwnedFd>)>> {
        loop {
            let mut guard = self.fd.readable().await.map_err(Error::Io)?;
            match recv_raw(self.fd.as_raw_fd()) {
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::sys("reading from the container setup", e)),
                Ok(None) => return Ok(None),
                Ok(Some((buf, fd))) => return Ok(Some((decode(&buf)?, fd))),
            }
        }
    }
}
