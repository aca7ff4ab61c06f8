//! The handshake that opens every host↔agent connection, before ttrpc takes the stream over.
//!
//! Why it exists: the agent's channel is a virtio-serial port, not a socket. The port outlives
//! host connections, and bytes survive a hang-up. A guest write made while the host is away is
//! delivered to the *next* host client; a host write the guest had not read yet is read by the
//! next guest connection. ttrpc frames carry stream ids but no resynchronisation, so a new
//! connection could start mid-frame of an old reply and misparse everything after it.
//!
//! So each side discards the other's stale bytes first. The host sends `HOST_MAGIC` and a fresh
//! nonce; the agent skips everything before a `HOST_MAGIC`, and answers `AGENT_MAGIC` with the
//! same nonce; the host skips everything before the `AGENT_MAGIC` that carries *its* nonce (an
//! old reply carries an old one). After that both streams are aligned on ttrpc frame
//! boundaries: the host sends nothing before it saw the answer, the agent nothing before it
//! answered.
//!
//! The guest does not always see the hang-up (a quick reconnect can hide it), so the agent also
//! watches frame boundaries for a new greeting ([`FrameWatch`]). A stale greeting (a host that
//! connected and vanished before the agent read it) gets an answer with its old nonce, which the
//! new host skips; its own greeting then arrives where a frame would start and restarts the
//! handshake. A host that died halfway through writing a frame leaves the stream misaligned;
//! QEMU dies with its shim, so that host is never followed by another.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The name of the virtio-serial port (`-device virtserialport,name=…`) the agent serves on.
pub const PORT_NAME: &str = "agent";

/// The second virtio-serial port, guest → host only: process output in frames
/// ([`FrameHeader`]), moved into the port by the agent with splice(2), so a chunk is never
/// copied inside the guest (ttrpc would copy it three times, each copy slow under TCG). The
/// host opens it with the same handshake as the agent port; after the agent's answer the
/// stream is aligned on frame boundaries.
pub const OUTPUT_PORT_NAME: &str = "stream";

/// The virtio-9p mount tag of the VM's one share (microvm cannot hot-plug, so every container's
/// bundle is bind-mounted under it by the host), and where the agent mounts it in the guest.
pub const SHARE_TAG: &str = "share";
pub const GUEST_SHARE_DIR: &str = "/mnt/share";

/// Opens a connection, host → agent, followed by an 8-byte little-endian nonce.
pub const HOST_MAGIC: [u8; 8] = *b"SVMHELO1";
/// Accepts it, agent → host, followed by the host's nonce.
pub const AGENT_MAGIC: [u8; 8] = *b"SVMREDY1";

const MARKER_LEN: usize = 16;

/// A stream that first yields bytes already read past the handshake.
///
/// The handshake reads in chunks (stale data can be megabytes), so it may read a little past
/// the marker; those bytes belong to the protocol that follows and are served from here first.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The length of a ttrpc frame header: payload length (u32, big-endian), stream id (u32),
/// type (u8), flags (u8).
const TTRPC_HEADER_LEN: usize = 10;

/// The agent's inbound side of a connection, watching ttrpc frame boundaries for a new host.
///
/// Why: the guest cannot always tell that the host reconnected. virtio_console reports the
/// host's hang-up only as a flag, and when the next client connects before the agent read
/// again, the agent sees no EOF at all: its ttrpc connection would read the new host's greeting
/// as a frame header (a 1.4 GB frame) and wait forever. A greeting can only arrive where a frame
/// would start (a host sends nothing else before it), and no valid frame starts with
/// `HOST_MAGIC` (its length field would exceed ttrpc's 4 MiB limit). So at every frame boundary
/// this reader checks for it and, when it is there, ends the stream for ttrpc and leaves the
/// greeting (and everything after it) in `stash` for the next handshake.
pub struct FrameWatch<S> {
    inner: S,
    buf: Vec<u8>,
    pos: usize,
    /// Bytes of the current frame still to deliver; 0 at a frame boundary.
    remaining: usize,
    stopped: bool,
    stash: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl<S> FrameWatch<S> {
    pub fn new(inner: S, stash: std::sync::Arc<std::sync::Mutex<Vec<u8>>>) -> Self {
        FrameWatch {
            inner,
            buf: Vec::new(),
            pos: 0,
            remaining: 0,
            stopped: false,
            stash,
        }
    }

    fn stop(&mut self) {
        let rest = &self.buf[self.pos..];
        if let Ok(mut stash) = self.stash.lock() {
            stash.extend_from_slice(rest);
        }
        self.buf.clear();
        self.pos = 0;
        self.stopped = true;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameWatch<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.stopped {
                return Poll::Ready(Ok(()));
            }
            let avail = &this.buf[this.pos..];
            if this.remaining == 0 {
                if avail.len() >= HOST_MAGIC.len() && avail[..HOST_MAGIC.len()] == HOST_MAGIC {
                    this.stop();
                    continue;
                }
                if avail.len() >= TTRPC_HEADER_LEN {
                    let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
                    this.remaining = TTRPC_HEADER_LEN + len as usize;
                    continue;
                }
            } else if !avail.is_empty() {
                let n = this.remaining.min(avail.len()).min(out.remaining());
                out.put_slice(&avail[..n]);
                this.pos += n;
                this.remaining -= n;
                return Poll::Ready(Ok(()));
            }
            this.buf.drain(..this.pos);
            this.pos = 0;
            let mut chunk = [0u8; 32 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => this.stop(),
                Poll::Ready(Ok(())) => this.buf.extend_from_slice(rb.filled()),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameWatch<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Starts every frame on the output port; a host that lost the frame boundary finds out at once.
pub const FRAME_MAGIC: [u8; 4] = *b"SVMF";
/// The header: magic, channel (u32), payload length (u32), flags (u32), little-endian.
pub const FRAME_HEADER_LEN: usize = 16;
/// The largest payload a frame may carry: a guest pipe's worth (the agent's pipes are 1 MiB).
pub const FRAME_MAX: u32 = 4 << 20;
/// The channel's output has ended (no payload): the host closes its end once this arrives.
pub const FRAME_EOF: u32 = 1;

/// One frame on the output port: `len` payload bytes of `channel` follow the header.
///
/// Channels are numbered by the host (non-zero, unique while the VM runs) and named in the
/// request that creates the process, so frames can arrive before the reply does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub channel: u32,
    pub len: u32,
    pub eof: bool,
}

/// A header that cannot start a frame: the stream lost its alignment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("bad frame magic {0:02x?}")]
    Magic([u8; 4]),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLong(u32),
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[..4].copy_from_slice(&FRAME_MAGIC);
        h[4..8].copy_from_slice(&self.channel.to_le_bytes());
        h[8..12].copy_from_slice(&self.len.to_le_bytes());
        let flags = if self.eof { FRAME_EOF } else { 0 };
        h[12..16].copy_from_slice(&flags.to_le_bytes());
        h
    }

    pub fn decode(h: &[u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, FrameError> {
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        if h[..4] != FRAME_MAGIC {
            return Err(FrameError::Magic([h[0], h[1], h[2], h[3]]));
        }
        let len = word(8);
        if len > FRAME_MAX {
            return Err(FrameError::TooLong(len));
        }
        Ok(FrameHeader {
            channel: word(4),
            len,
            eof: word(12) & FRAME_EOF != 0,
        })
    }
}

/// Finds host greetings in the bytes the agent reads from the output port, which carries
/// nothing else host → guest. Incremental: a greeting may arrive split across reads, after
/// stale bytes of a host that went away.
#[derive(Default)]
pub struct GreetingScanner {
    buf: Vec<u8>,
}

impl GreetingScanner {
    /// The nonces of the greetings completed by `data`, oldest first.
    pub fn feed(&mut self, data: &[u8]) -> Vec<u64> {
        self.buf.extend_from_slice(data);
        let mut nonces = Vec::new();
        loop {
            match find(&self.buf, &HOST_MAGIC) {
                Some(i) if self.buf.len() >= i + MARKER_LEN => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&self.buf[i + 8..i + MARKER_LEN]);
                    nonces.push(u64::from_le_bytes(n));
                    self.buf.drain(..i + MARKER_LEN);
                }
                Some(i) => {
                    self.buf.drain(..i);
                    return nonces;
                }
                None => {
                    let keep = self.buf.len().min(HOST_MAGIC.len() - 1);
                    self.buf.drain(..self.buf.len() - keep);
                    return nonces;
                }
            }
        }
    }
}

/// The agent's answer to a greeting with `nonce`.
pub fn answer(nonce: u64) -> [u8; MARKER_LEN] {
    marker(&AGENT_MAGIC, nonce)
}

fn marker(magic: &[u8; 8], nonce: u64) -> [u8; MARKER_LEN] {
    let mut m = [0u8; MARKER_LEN];
    m[..8].copy_from_slice(magic);
    m[8..].copy_from_slice(&nonce.to_le_bytes());
    m
}

/// Reads until `magic` followed by a nonce (`want`, or any when `None`); returns the nonce and
/// the bytes read after the marker. Memory stays bounded whatever the amount of stale data.
async fn skip_to_marker<S: AsyncRead + Unpin>(
    stream: &mut S,
    magic: &[u8; 8],
    want: Option<u64>,
) -> io::Result<(u64, Vec<u8>)> {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 4096];
    loop {
        let mut from = 0;
        while let Some(i) = find(&buf[from..], magic).map(|i| i + from) {
            if buf.len() < i + MARKER_LEN {
                break;
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[i + 8..i + MARKER_LEN]);
            let nonce = u64::from_le_bytes(n);
            let wanted = match want {
                None => true,
                Some(w) => w == nonce,
            };
            if wanted {
                return Ok((nonce, buf[i + MARKER_LEN..].to_vec()));
            }
            from = i + 8;
        }
        // Keep only what could still begin a marker.
        let keep_from = match find(&buf[from..], magic) {
            Some(i) => from + i,
            None => buf.len().saturating_sub(MARKER_LEN - 1).max(from),
        };
        buf.drain(..keep_from);
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the channel during the handshake",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The host's half: greet with `nonce` (fresh per connection attempt) and skip to the agent's
/// answer. Bound it with a timeout and reconnect when it expires.
pub async fn host_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    nonce: u64,
) -> io::Result<Prefixed<S>> {
    stream.write_all(&marker(&HOST_MAGIC, nonce)).await?;
    stream.flush().await?;
    let (_, rest) = skip_to_marker(&mut stream, &AGENT_MAGIC, Some(nonce)).await?;
    Ok(Prefixed::new(rest, stream))
}

/// The agent's half: skip to a host greeting and answer it. Returns the nonce for the log.
pub async fn agent_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
) -> io::Result<(Prefixed<S>, u64)> {
    let (nonce, rest) = skip_to_marker(&mut stream, &HOST_MAGIC, None).await?;
    stream.write_all(&marker(&AGENT_MAGIC, nonce)).await?;
    stream.flush().await?;
    Ok((Prefixed::new(rest, stream), nonce))
}

/// A nonce that differs between connection attempts and processes, without a random crate.
pub fn fresh_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn handshake_skips_stale_bytes_both_ways() {
        rt().block_on(async {
            let (mut host, mut guest) = duplex(1 << 20);
            // Stale guest → host: a large old reply and an old answer with another nonce.
            let mut stale = vec![0xabu8; 300_000];
            stale.extend_from_slice(&marker(&AGENT_MAGIC, 1));
            stale.extend_from_slice(&AGENT_MAGIC[..5]);
            guest.write_all(&stale).await.unwrap();
            // Stale host → guest: half a frame of an old request.
            host.write_all(b"\x00\x00\x00\x10half").await.unwrap();

            let agent = tokio::spawn(async move {
                let (mut s, nonce) = agent_handshake(guest).await.unwrap();
                let mut got = [0u8; 5];
                s.read_exact(&mut got).await.unwrap();
                assert_eq!(&got, b"hello");
                s.write_all(b"world").await.unwrap();
                nonce
            });
            let mut s = host_handshake(&mut host, 42).await.unwrap();
            s.write_all(b"hello").await.unwrap();
            let mut got = [0u8; 5];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"world");
            assert_eq!(agent.await.unwrap(), 42);
        });
    }

    #[test]
    fn marker_split_across_reads_and_leftover_kept() {
        rt().block_on(async {
            let (mut a, mut b) = duplex(64);
            let writer = tokio::spawn(async move {
                let mut bytes = b"junk".to_vec();
                bytes.extend_from_slice(&marker(&HOST_MAGIC, 7));
                bytes.extend_from_slice(b"after");
                for byte in bytes {
                    a.write_all(&[byte]).await.unwrap();
                    tokio::task::yield_now().await;
                }
                a
            });
            let (nonce, rest) = skip_to_marker(&mut b, &HOST_MAGIC, None).await.unwrap();
            assert_eq!(nonce, 7);
            let mut p = Prefixed::new(rest, b);
            let mut got = [0u8; 5];
            p.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"after");
            drop(writer.await.unwrap());
        });
    }

    #[test]
    fn eof_during_handshake_is_an_error() {
        rt().block_on(async {
            let (a, b) = duplex(64);
            drop(a);
            let err = agent_handshake(b).await.err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        });
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend([0, 0, 0, 1, 1, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frame_watch_ends_the_stream_at_a_new_greeting() {
        rt().block_on(async {
            let (mut host, guest) = duplex(1 << 16);
            let stash = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut w = FrameWatch::new(guest, stash.clone());
            // Two frames, the second delivered byte by byte, then a new host's greeting.
            let (f1, f2) = (frame(b"first"), frame(b"second"));
            host.write_all(&f1).await.unwrap();
            let mut got = vec![0u8; f1.len()];
            w.read_exact(&mut got).await.unwrap();
            assert_eq!(got, f1);
            let writer = tokio::spawn(async move {
                for b in f2 {
                    host.write_all(&[b]).await.unwrap();
                }
                host.write_all(&marker(&HOST_MAGIC, 9)).await.unwrap();
                host.write_all(b"next").await.unwrap();
                host
            });
            let mut rest = Vec::new();
            w.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, frame(b"second"));
            let _host = writer.await.unwrap();
            let mut expect = marker(&HOST_MAGIC, 9).to_vec();
            expect.extend(b"next");
            assert_eq!(*stash.lock().unwrap(), expect);

            // The stash feeds the next handshake.
            let (mut host2, guest2) = duplex(64);
            let leftover = std::mem::take(&mut *stash.lock().unwrap());
            let agent = tokio::spawn(agent_handshake(Prefixed::new(leftover, guest2)));
            let mut answer = [0u8; MARKER_LEN];
            host2.read_exact(&mut answer).await.unwrap();
            assert_eq!(answer, marker(&AGENT_MAGIC, 9));
            let (mut s, _) = agent.await.unwrap().unwrap();
            let mut next = [0u8; 4];
            s.read_exact(&mut next).await.unwrap();
            assert_eq!(&next, b"next");
        });
    }

    #[test]
    fn frame_watch_passes_eof_and_keeps_partial_bytes() {
        rt().block_on(async {
            let (mut host, guest) = duplex(64);
            let stash = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut w = FrameWatch::new(guest, stash.clone());
            host.write_all(b"SVMH").await.unwrap();
            drop(host);
            let mut all = Vec::new();
            w.read_to_end(&mut all).await.unwrap();
            assert!(all.is_empty());
            assert_eq!(*stash.lock().unwrap(), b"SVMH");
        });
    }

    #[test]
    fn frame_headers_round_trip_and_reject_garbage() {
        let h = FrameHeader {
            channel: 7,
            len: 65536,
            eof: false,
        };
        assert_eq!(FrameHeader::decode(&h.encode()), Ok(h));
        let eof = FrameHeader {
            channel: 3,
            len: 0,
            eof: true,
        };
        assert_eq!(FrameHeader::decode(&eof.encode()), Ok(eof));
        let mut bad = h.encode();
        bad[0] = b'X';
        assert!(matches!(
            FrameHeader::decode(&bad),
            Err(FrameError::Magic(_))
        ));
        let long = FrameHeader {
            channel: 1,
            len: FRAME_MAX + 1,
            eof: false,
        };
        assert_eq!(
            FrameHeader::decode(&long.encode()),
            Err(FrameError::TooLong(FRAME_MAX + 1))
        );
    }

    #[test]
    fn greeting_scanner_finds_split_and_repeated_greetings() {
        let mut s = GreetingScanner::default();
        let mut bytes = b"stale junk SVMH".to_vec();
        bytes.extend_from_slice(&marker(&HOST_MAGIC, 5));
        bytes.extend_from_slice(&marker(&HOST_MAGIC, 6));
        let mut found = Vec::new();
        for b in &bytes {
            found.extend(s.feed(std::slice::from_ref(b)));
        }
        assert_eq!(found, vec![5, 6]);
        let mut two = marker(&HOST_MAGIC, 8).to_vec();
        two.extend_from_slice(&marker(&HOST_MAGIC, 9)[..10]);
        assert_eq!(s.feed(&two), vec![8]);
        assert_eq!(s.feed(&marker(&HOST_MAGIC, 9)[10..]), vec![9]);
        assert!(s.buf.is_empty());
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(fresh_nonce(), fresh_nonce());
    }
}
