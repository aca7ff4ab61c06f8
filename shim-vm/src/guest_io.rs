//! A guest process's stdio on the host: the framework's pipes (or a host pty for a terminal)
//! joined to the agent's named streams, or, for output, to channels of the output port.
//!
//! The framework hands every runtime the process's ends of its stdio ([`ProcessIo`]) and pumps
//! the other ends to containerd. A host process would inherit them; a guest process cannot, so
//! here they are pumped to and from the agent: stdin chunks go out with WriteStdin (and its EOF
//! as CloseStdin). Output comes back through the output port ([`crate::output`]) when the VM
//! has one, each pipe its own channel; otherwise (and for a terminal, whose speed is a
//! person's) with ReadStdout/ReadStderr. An end that is `/dev/null` is not pumped at all: the
//! guest process gets its own `/dev/null`.
//!
//! A terminal is a host pty whose master goes back to the framework like any runtime's
//! console; the slave, in raw mode so the host adds no line discipline of its own, is pumped to
//! the guest pty's streams. Resizes go to the guest through the runtime's `resize`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use protos::agent::{CloseStdinRequest, ReadStreamRequest, StdioStreams, WriteStdinRequest};
use protos::ttrpc;
use shim_common::stdio::ProcessIo;
use shim_common::{Error, Result};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::agent::Agent;
use crate::output::{OutputChannel, OutputLink};

/// The largest chunk one ReadStdout may return (the agent's own limit).
const READ_CHUNK: u32 = 1 << 20;

/// What a host end is.
enum End {
    /// `/dev/null`: nothing to pump.
    Null,
    Fd(Arc<AsyncFd<OwnedFd>>),
}

fn is_dev_null(fd: &OwnedFd) -> bool {
    match nix::sys::stat::fstat(fd.as_raw_fd()) {
        Ok(st) => {
            st.st_mode & libc::S_IFMT == libc::S_IFCHR
                && st.st_rdev == nix::sys::stat::makedev(1, 3)
        }
        Err(_) => false,
    }
}

fn register(fd: OwnedFd) -> Result<Arc<AsyncFd<OwnedFd>>> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| Error::sys("F_GETFL", e))?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(|e| Error::sys("F_SETFL", e))?;
    // SAFETY: the AsyncFd owns the descriptor for as long as it is registered.
    let a = unsafe { AsyncFd::register(fd) }
        .map_err(|e| Error::io("registering a stdio fd", io::Error::other(e.to_string())))?;
    Ok(Arc::new(a))
}

fn end(fd: OwnedFd) -> Result<End> {
    if is_dev_null(&fd) {
        return Ok(End::Null);
    }
    register(fd).map(End::Fd)
}

async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|f| nix::unistd::read(f.as_raw_fd(), buf).map_err(io::Error::from)) {
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// Writes all of `data` to a non-blocking pipe, waiting whenever it is full.
pub(crate) async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|f| nix::unistd::write(f.get_ref(), data).map_err(io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// A process's stdio before the agent has created it: the stream names to send, and what to
/// pump once it exists.
pub struct PreparedIo {
    pub streams: StdioStreams,
    pub terminal: bool,
    stdin: End,
    stdout: End,
    stderr: End,
    /// Outputs on the output port, opened before the process exists: its output can arrive
    /// before the reply that created it.
    channels: Vec<OutputChannel>,
    /// The host pty master, for the framework.
    pub console: Option<OwnedFd>,
}

impl PreparedIo {
    /// Names the streams `<prefix>.in/.out/.err` (unique in the VM) for the ends that are not
    /// `/dev/null`; with `output`, stdout and stderr get channels of it instead.
    pub fn new(io: ProcessIo, prefix: &str, output: Option<&OutputLink>) -> Result<PreparedIo> {
        let mut streams = StdioStreams::new();
        if io.terminal {
            let pty = nix::pty::openpty(None, None).map_err(|e| Error::sys("openpty", e))?;
            make_raw(&pty.slave)?;
            let slave = register(pty.slave)?;
            streams.stdin = format!("{prefix}.in");
            streams.stdout = format!("{prefix}.out");
            return Ok(PreparedIo {
                streams,
                terminal: true,
                stdin: End::Fd(slave.clone()),
                stdout: End::Fd(slave),
                stderr: End::Null,
                channels: Vec::new(),
                console: Some(pty.master),
            });
        }
        let (stdin, mut stdout, mut stderr) = (end(io.stdin)?, end(io.stdout)?, end(io.stderr)?);
        let name = |e: &End, suffix: &str| match e {
            End::Null => String::new(),
            End::Fd(_) => format!("{prefix}.{suffix}"),
        };
        streams.stdin = name(&stdin, "in");
        let mut channels = Vec::new();
        if let Some(link) = output {
            for (e, channel) in [
                (&mut stdout, &mut streams.stdout_channel),
                (&mut stderr, &mut streams.stderr_channel),
            ] {
                if let End::Fd(fd) = std::mem::replace(e, End::Null) {
                    let c = link.open(fd);
                    *channel = c.channel;
                    channels.push(c);
                }
            }
        }
        streams.stdout = name(&stdout, "out");
        streams.stderr = name(&stderr, "err");
        Ok(PreparedIo {
            streams,
            terminal: false,
            stdin,
            stdout,
            stderr,
            channels,
            console: None,
        })
    }

    /// Starts the pumps; the returned handle waits for the output to be complete.
    pub fn start(self, agent: &Agent) -> Pumps {
        let mut outputs = Vec::new();
        let mut input = None;
        if let End::Fd(fd) = self.stdin {
            input = Some(tokio::spawn(pump_stdin(
                agent.clone(),
                fd,
                self.streams.stdin.clone(),
                self.terminal,
            )));
        }
        for (e, id, stderr) in [
            (self.stdout, self.streams.stdout.clone(), false),
            (self.stderr, self.streams.stderr.clone(), true),
        ] {
            if let End::Fd(fd) = e {
                outputs.push(tokio::spawn(pump_output(agent.clone(), id, fd, stderr)));
            }
        }
        Pumps {
            input,
            outputs,
            channels: self.channels,
            terminal: self.terminal,
        }
    }
}

/// The running pumps of one process.
pub struct Pumps {
    input: Option<JoinHandle<()>>,
    outputs: Vec<JoinHandle<()>>,
    channels: Vec<OutputChannel>,
    terminal: bool,
}

impl Pumps {
    /// Waits until every output stream reached its end (the process and whatever inherited
    /// its stdio are gone). Bounded by the caller.
    pub async fn outputs_done(&mut self) {
        for h in self.outputs.iter_mut() {
            let _ = h.await;
        }
        self.outputs.clear();
        for c in self.channels.iter_mut() {
            c.done().await;
        }
        // The host pty's slave is shared with the input pump: closing it is what ends the
        // framework's reads of the master.
        if self.terminal {
            if let Some(h) = self.input.take() {
                h.abort();
            }
        }
    }
}

impl Drop for Pumps {
    fn drop(&mut self) {
        for h in self.input.iter().chain(self.outputs.iter()) {
            h.abort();
        }
    }
}

fn make_raw(fd: &OwnedFd) -> Result<()> {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let mut t = tcgetattr(fd).map_err(|e| Error::sys("tcgetattr", e))?;
    cfmakeraw(&mut t);
    tcsetattr(fd, SetArg::TCSANOW, &t).map_err(|e| Error::sys("tcsetattr", e))
}

/// A context with no deadline: reads and waits last as long as the process.
pub fn unbounded() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

async fn pump_stdin(agent: Agent, fd: Arc<AsyncFd<OwnedFd>>, id: String, terminal: bool) {
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = match read_some(&fd, &mut buf).await {
            Ok(n) => n,
            Err(e) => {
                log::debug!("stdin {id}: {e}");
                0
            }
        };
        if n == 0 {
            break;
        }
        let mut req = WriteStdinRequest::new();
        req.stream_id = id.clone();
        req.data = buf[..n].to_vec();
        if let Err(e) = agent.client.write_stdin(unbounded(), &req).await {
            log::debug!("stdin {id}: {e}");
            return;
        }
    }
    // A pty has no end of input to pass on; a pipe's end is the process's EOF.
    if !terminal {
        let mut req = CloseStdinRequest::new();
        req.stream_id = id.clone();
        if let Err(e) = agent.client.close_stdin(unbounded(), &req).await {
            log::debug!("closing stdin {id}: {e}");
        }
    }
}

async fn pump_output(agent: Agent, id: String, fd: Arc<AsyncFd<OwnedFd>>, stderr: bool) {
    loop {
        let mut req = ReadStreamRequest::new();
        req.stream_id = id.clone();
        req.max_bytes = READ_CHUNK;
        let r = if stderr {
            agent.client.read_stderr(unbounded(), &req).await
        } else {
            agent.client.read_stdout(unbounded(), &req).await
        };
        let resp = match r {
            Ok(r) => r,
            Err(e) => {
                log::debug!("output {id}: {e}");
                return;
            }
        };
        if !resp.data.is_empty() {
            if let Err(e) = write_all(&fd, &resp.data).await {
                log::debug!("output {id}: {e}");
                return;
            }
        }
        if resp.eof {
            return;
        }
    }
}
