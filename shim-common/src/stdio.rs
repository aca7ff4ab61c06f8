//! Container stdio: the shim owns the pipes (or the pty master) of every process and pumps them
//! to containerd's fifos.
//!
//! Owning the pipes is what lets IO survive a containerd restart and what lets CloseIO deliver
//! EOF: the process never holds containerd's fifos. Fifos are opened `O_RDWR`, so the shim is
//! always both a reader and a writer of them: opening never blocks, a stdout write never gets
//! EPIPE while containerd is away, and a stdin read never sees a spurious EOF before containerd
//! opens its end (EOF on stdin is CloseIO's job alone). Pipe-to-fifo copies use splice(2), so
//! container output never passes through user space.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use nix::fcntl::OFlag;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{oneshot, Mutex};
use tokio::task::JoinHandle;

use crate::binary_log::{BinaryLogger, LogIdentity};
use crate::error::{Error, Result};

/// The stdio a process was created with, as containerd gave it (kept to answer State).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The process's ends, handed to the runtime: the runtime passes them to the process (as fds
/// 0/1/2) and drops its copies, so EOF follows the process's own exit.
pub struct ProcessIo {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The runtime allocates a pty and returns its master from create/exec.
    pub terminal: bool,
}

/// The shim's ends: the pumps and, for a terminal, the pty master.
pub struct IoSession {
    stdin: Option<Source>,
    stdout: Option<Sink>,
    stderr: Option<Sink>,
    stdin_close: Option<oneshot::Sender<()>>,
    pumps: Vec<JoinHandle<()>>,
    output_pumps: Vec<JoinHandle<()>>,
    console: Option<Arc<OwnedFd>>,
    /// A `binary://` logger, stopped when the session ends.
    _logger: Option<BinaryLogger>,
}

enum Destination {
    Null,
    Fifo(String),
    File(String),
}

fn destination(uri: &str) -> Result<Destination> {
    if uri.is_empty() {
        return Ok(Destination::Null);
    }
    if let Some(path) = uri.strip_prefix("fifo://") {
        return Ok(Destination::Fifo(path.to_string()));
    }
    if let Some(path) = uri.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "log uri {uri:?}: the path must be absolute"
            )));
        }
        return Ok(Destination::File(path.to_string()));
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        return Err(Error::Unimplemented(format!(
            "stdio scheme {scheme:?} is not supported"
        )));
    }
    Ok(Destination::Fifo(uri.to_string()))
}

type Source = AsyncFd<OwnedFd>;
/// Where a pump writes: a fifo, pipe or pty (waited on through the reactor), or a regular
/// file, which epoll refuses and which never blocks anyway.
enum Sink {
    Polled(AsyncFd<OwnedFd>),
    File(OwnedFd),
}

impl AsRawFd for Sink {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Sink::Polled(a) => a.as_raw_fd(),
            Sink::File(f) => f.as_raw_fd(),
        }
    }
}

impl Sink {
    fn new(fd: OwnedFd) -> Result<Sink> {
        let is_file = nix::sys::stat::fstat(fd.as_raw_fd())
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
            .unwrap_or(false);
        if is_file {
            Ok(Sink::File(fd))
        } else {
            async_fd(fd).map(Sink::Polled)
        }
    }

    /// Waits until the destination can take more (at once for a file).
    async fn writable(&self) {
        if let Sink::Polled(a) = self {
            if let Ok(mut g) = a.ready(Interest::WRITABLE).await {
                if !poll_now(a.as_raw_fd(), libc::POLLOUT) {
                    g.clear_ready();
                }
            }
        }
    }
}

fn nonblocking(fd: &OwnedFd) -> Result<()> {
    let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| Error::sys("F_GETFL", e))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(|e| Error::sys("F_SETFL", e))?;
    Ok(())
}

fn async_fd(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>> {
    nonblocking(&fd)?;
    // SAFETY: the AsyncFd owns `fd`, so it stays open and the same file until the AsyncFd drops.
    unsafe { AsyncFd::register(fd) }
        .map_err(|e| Error::io("registering stdio fd", std::io::Error::other(e.to_string())))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("creating a pipe", e))
}

fn dev_null(write: bool) -> Result<OwnedFd> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| Error::io("opening /dev/null", e))
}

fn open_fifo(path: &str) -> Result<OwnedFd> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| Error::path("opening fifo", path, e))
}

fn open_output(dest: &Destination) -> Result<Option<OwnedFd>> {
    match dest {
        Destination::Null => Ok(None),
        Destination::Fifo(p) => open_fifo(p).map(Some),
        Destination::File(p) => {
            let path = std::path::Path::new(p);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::path("creating", dir, e))?;
            }
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map(|f| Some(OwnedFd::from(f)))
                .map_err(|e| Error::path("opening log file", path, e))
        }
    }
}

impl IoSession {
    /// Opens containerd's side and creates the process's side. Pumps start at once for pipes;
    /// for a terminal they start in [`IoSession::attach_console`].
    pub async fn open(stdio: &Stdio, who: &LogIdentity) -> Result<(ProcessIo, IoSession)> {
        if stdio.stdout.starts_with("binary://") {
            let (logger, out_w, err_w) = BinaryLogger::start(&stdio.stdout, who).await?;
            let (mut io, mut session) = Self::open_paths(&Stdio {
                stdout: String::new(),
                stderr: String::new(),
                ..stdio.clone()
            })?;
            session._logger = Some(logger);
            if stdio.terminal {
                session.stdout = Some(Sink::new(out_w)?);
            } else {
                io.stdout = out_w;
                io.stderr = err_w;
            }
            return Ok((io, session));
        }
        Self::open_paths(stdio)
    }

    /// Fifos, files and null: everything that needs no helper process.
    fn open_paths(stdio: &Stdio) -> Result<(ProcessIo, IoSession)> {
        let out_dest = destination(&stdio.stdout)?;
        let err_dest = destination(&stdio.stderr)?;
        let stdin_src = if stdio.stdin.is_empty() {
            None
        } else {
            Some(async_fd(open_fifo(
                stdio.stdin.trim_start_matches("fifo://"),
            )?)?)
        };
        let stdout_dst = open_output(&out_dest)?.map(Sink::new).transpose()?;
        let stderr_dst = open_output(&err_dest)?.map(Sink::new).transpose()?;
        let mut session = IoSession {
            stdin: stdin_src,
            stdout: stdout_dst,
            stderr: stderr_dst,
            stdin_close: None,
            pumps: Vec::new(),
            output_pumps: Vec::new(),
            console: None,
            _logger: None,
        };
        if stdio.terminal {
            let io = ProcessIo {
                stdin: dev_null(false)?,
                stdout: dev_null(true)?,
                stderr: dev_null(true)?,
                terminal: true,
            };
            return Ok((io, session));
        }
        let stdin = match session.stdin.take() {
            None => dev_null(false)?,
            Some(src) => {
                let (r, w) = pipe()?;
                session.start_stdin(src, Sink::new(w)?);
                r
            }
        };
        let stdout = session.output_end(true)?;
        let stderr = session.output_end(false)?;
        let io = ProcessIo {
            stdin,
            stdout,
            stderr,
            terminal: false,
        };
        Ok((io, session))
    }

    fn output_end(&mut self, stdout: bool) -> Result<OwnedFd> {
        let dst = if stdout {
            self.stdout.take()
        } else {
            self.stderr.take()
        };
        match dst {
            None => dev_null(true),
            Some(dst) => {
                let (r, w) = pipe()?;
                let src = async_fd(r)?;
                let h = tokio::spawn(async move {
                    pump(src, dst, None).await;
                });
                self.output_pumps.push(h);
                Ok(w)
            }
        }
    }

    fn start_stdin(&mut self, src: Source, dst: Sink) {
        let (tx, rx) = oneshot::channel();
        self.stdin_close = Some(tx);
        self.pumps.push(tokio::spawn(async move {
            pump(src, dst, Some(rx)).await;
        }));
    }

    /// Starts pumping between containerd's fifos and the pty master the runtime returned.
    pub fn attach_console(&mut self, master: OwnedFd) -> Result<()> {
        let master = Arc::new(master);
        self.console = Some(master.clone());
        if let Some(src) = self.stdin.take() {
            let dup = master
                .try_clone()
                .map_err(|e| Error::io("duplicating pty master", e))?;
            self.start_stdin(src, Sink::new(dup)?);
        }
        let dup = master
            .try_clone()
            .map_err(|e| Error::io("duplicating pty master", e))?;
        let src = async_fd(dup)?;
        match self.stdout.take() {
            Some(dst) => self.output_pumps.push(tokio::spawn(async move {
                pump(src, dst, None).await;
            })),
            // Nobody reads the terminal: drain it so the process never blocks on output.
            None => self.output_pumps.push(tokio::spawn(async move {
                drain(src).await;
            })),
        }
        Ok(())
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        // Like the Go shim: resizing a process without a terminal is a no-op.
        let Some(master) = &self.console else {
            return Ok(());
        };
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(Error::io(
                "resizing the terminal",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Delivers EOF on stdin after forwarding what containerd already wrote.
    pub fn close_stdin(&mut self) {
        if let Some(tx) = self.stdin_close.take() {
            let _ = tx.send(());
        }
        self.stdin = None;
    }

    /// Waits until the output pumps saw EOF (bounded by the caller).
    pub async fn wait_output(&mut self) {
        for h in self.output_pumps.iter_mut() {
            let _ = h.await;
        }
        self.output_pumps.clear();
    }
}

impl Drop for IoSession {
    fn drop(&mut self) {
        for h in self.pumps.iter().chain(self.output_pumps.iter()) {
            h.abort();
        }
    }
}

/// A shared handle so the service can close stdin or resize while the process runs.
pub type SharedIo = Arc<Mutex<IoSession>>;

const CHUNK: usize = 1 << 20;

enum Step {
    Moved,
    Eof,
    WouldBlock,
    Unsupported,
    Failed(std::io::Error),
}

fn splice_once(src: RawFd, dst: RawFd) -> Step {
    // SAFETY: plain syscall on fds we own; null offsets mean "use the file position".
    let n = unsafe {
        libc::splice(
            src,
            std::ptr::null_mut(),
            dst,
            std::ptr::null_mut(),
            CHUNK,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    classify(n)
}

fn classify(n: isize) -> Step {
    match n {
        0 => Step::Eof,
        n if n > 0 => Step::Moved,
        _ => {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => Step::WouldBlock,
                Some(libc::EINVAL) => Step::Unsupported,
                // A pty master reads EIO once every slave fd is closed: that is its EOF.
                Some(libc::EIO) => Step::Eof,
                Some(libc::EINTR) => Step::Moved,
                _ => Step::Failed(e),
            }
        }
    }
}

/// True if `fd` is readable right now (or hung up), without waiting.
fn poll_now(fd: RawFd, events: libc::c_short) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents != 0
}

/// Copies `src` to `dst` until EOF, or until `finish` fires and `src` has nothing more to give.
async fn pump(src: Source, dst: Sink, finish: Option<oneshot::Receiver<()>>) {
    let mut finish = finish;
    let mut finishing = false;
    let mut use_splice = true;
    let mut buf = Vec::new();
    loop {
        let step = if use_splice {
            splice_once(src.as_raw_fd(), dst.as_raw_fd())
        } else {
            copy_once(&src, &dst, &mut buf)
        };
        match step {
            Step::Moved => continue,
            Step::Eof => return,
            Step::Unsupported if use_splice => {
                use_splice = false;
                buf.resize(64 * 1024, 0);
                continue;
            }
            Step::Unsupported => return,
            Step::Failed(e) => {
                log::debug!("stdio copy stopped: {e}");
                return;
            }
            Step::WouldBlock => {}
        }
        let src_ready = poll_now(src.as_raw_fd(), libc::POLLIN | libc::POLLHUP);
        if !src_ready && finishing {
            return;
        }
        if src_ready {
            // Data is waiting, so the destination is full: wait until it drains.
            dst.writable().await;
            continue;
        }
        let readable = async {
            if let Ok(mut g) = src.ready(Interest::READABLE).await {
                if !poll_now(src.as_raw_fd(), libc::POLLIN | libc::POLLHUP) {
                    g.clear_ready();
                }
            }
        };
        match finish.as_mut() {
            Some(f) => tokio::select! {
                _ = readable => {}
                _ = f => { finishing = true; finish = None; }
            },
            None => readable.await,
        }
    }
}

/// The read/write path for ends splice cannot take (a pty master).
fn copy_once(src: &Source, dst: &Sink, buf: &mut [u8]) -> Step {
    // SAFETY: reading into a buffer we own.
    let n = unsafe { libc::read(src.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = match classify(n) {
        Step::Moved => n as usize,
        other => return other,
    };
    let mut off = 0;
    while off < n {
        // SAFETY: writing from the initialised part of our buffer.
        let w = unsafe { libc::write(dst.as_raw_fd(), buf[off..n].as_ptr().cast(), n - off) };
        if w >= 0 {
            off += w as usize;
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => {
                let mut p = libc::pollfd {
                    fd: dst.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one pollfd. A short blocking wait keeps the chunk whole; the
                // destination is a fifo or pty that containerd drains.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
            _ => return Step::Failed(e),
        }
    }
    Step::Moved
}

async fn drain(src: Source) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: reading into a buffer we own.
        let n = unsafe { libc::read(src.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match classify(n) {
            Step::Moved => continue,
            Step::WouldBlock => {
                if let Ok(mut g) = src.ready(Interest::READABLE).await {
                    g.clear_ready();
                }
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn mkfifo(dir: &std::path::Path, name: &str) -> String {
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p.to_string_lossy().into_owned()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pipes_reach_fifos_and_close_stdin_gives_eof() {
        let dir = tempfile::tempdir().unwrap();
        let stdio = Stdio {
            stdin: mkfifo(dir.path(), "in"),
            stdout: mkfifo(dir.path(), "out"),
            stderr: String::new(),
            terminal: false,
        };
        let (io, mut session) = IoSession::open(&stdio, &LogIdentity::default())
            .await
            .unwrap();
        // containerd's side.
        let mut out_reader = std::fs::File::open(&stdio.stdout).unwrap();
        let mut in_writer = OpenOptions::new().write(true).open(&stdio.stdin).unwrap();
        in_writer.write_all(b"hello stdin").unwrap();
        // The process's side: read its stdin until EOF, then write it to stdout.
        let stdin_r = io.stdin;
        let stdout_w = io.stdout;
        let proc_task = std::thread::spawn(move || {
            let mut data = Vec::new();
            std::fs::File::from(stdin_r).read_to_end(&mut data).unwrap();
            std::fs::File::from(stdout_w).write_all(&data).unwrap();
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        session.close_stdin();
        tokio::task::spawn_blocking(move || proc_task.join().unwrap())
            .await
            .unwrap();
        session.wait_output().await;
        drop(session);
        let mut got = Vec::new();
        out_reader.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello stdin");
    }
}
