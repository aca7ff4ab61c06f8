//! Running commands (mostly `ctr`) with a time bound, capturing stdout, stderr
//! and the exit code separately.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::util::{excerpt, shell_join};

/// Exit code `timeout(1)` reports when the time limit was hit.
pub const TIMEOUT_RC: i32 = 124;

/// What a finished command produced.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub cmdline: String,
    /// Exit code; 128+N when the command itself was killed by signal N.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl CmdOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// Whether the outer `timeout` fired (124, or 137 after its `-k`).
    pub fn timed_out(&self, limit: Duration) -> bool {
        self.code == TIMEOUT_RC || (self.code == 137 && self.elapsed >= limit)
    }

    /// A multi-line description: command, exit code, time, stdout and stderr.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nexit code: {}{} after {:.2?}\n--- stdout ({} bytes) ---\n{}\n--- stderr ({} bytes) ---\n{}\n---",
            self.cmdline,
            self.code,
            if self.code == TIMEOUT_RC { " (TIMED OUT)" } else { "" },
            self.elapsed,
            self.stdout.len(),
            excerpt(&self.stdout, 2000),
            self.stderr.len(),
            excerpt(&self.stderr, 4000),
        )
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Build the argv `timeout -k 5 SECS argv...`.
pub fn with_timeout(limit: Duration, argv: &[String]) -> Vec<String> {
    let mut v = vec![
        "timeout".to_string(),
        "-k".to_string(),
        "5".to_string(),
        format!("{}", limit.as_secs().max(1)),
    ];
    v.extend_from_slice(argv);
    v
}

/// How the child's stdin is set up.
pub enum Stdin {
    /// `/dev/null`.
    Null,
    /// A pipe the caller writes later with [`Running::send_stdin`].
    Piped,
}

/// A spawned command. Output is collected in background threads, so the
/// child never blocks on a full pipe. Dropping it kills the process group.
pub struct Running {
    cmdline: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdin_writer: Option<JoinHandle<std::io::Result<()>>>,
    out: Option<JoinHandle<Vec<u8>>>,
    err: Option<JoinHandle<Vec<u8>>>,
    started: Instant,
    done: bool,
}

fn reader(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

impl Running {
    /// Spawn `argv` (already wrapped in `timeout` by the caller) in its own
    /// process group, with extra environment `env`.
    pub fn spawn(argv: &[String], env: &[(&str, OsString)], stdin: Stdin) -> Running {
        let cmdline = shell_join(argv);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(match stdin {
                Stdin::Null => Stdio::null(),
                Stdin::Piped => Stdio::piped(),
            })
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn `{cmdline}`: {e}"));
        let out = reader(child.stdout.take().expect("stdout is piped"));
        let err = reader(child.stderr.take().expect("stderr is piped"));
        let stdin = child.stdin.take();
        Running {
            cmdline,
            child,
            stdin,
            stdin_writer: None,
            out: Some(out),
            err: Some(err),
            started: Instant::now(),
            done: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Write `data` to the child's stdin in a background thread, then close it.
    pub fn send_stdin(&mut self, data: Vec<u8>) {
        let mut stdin = self
            .stdin
            .take()
            .expect("send_stdin: stdin is piped and not yet sent");
        self.stdin_writer = Some(std::thread::spawn(move || {
            stdin.write_all(&data)?;
            stdin.flush()
        }));
    }

    /// Write `data` to the child's stdin without closing it.
    pub fn write_stdin_keep_open(&mut self, data: &[u8]) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .expect("write_stdin_keep_open: stdin is piped and open");
        stdin.write_all(data)?;
        stdin.flush()
    }

    /// Close stdin (EOF for the child).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// `Some(exit code)` once the child has exited.
    pub fn try_wait(&mut self) -> Option<i32> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(exit_code(st)),
            _ => None,
        }
    }

    /// Wait for the child (its own `timeout` wrapper bounds this) and collect
    /// everything it wrote.
    pub fn wait(mut self) -> CmdOutput {
        self.stdin.take();
        let status = self.child.wait().expect("waiting for a child process");
        self.done = true;
        let elapsed = self.started.elapsed();
        // The readers end when every holder of the pipes is gone; a leaked
        // grandchild could keep them open, so do not wait forever.
        let stdout = join_bounded(self.out.take(), Duration::from_secs(20));
        let stderr = join_bounded(self.err.take(), Duration::from_secs(20));
        if let Some(w) = self.stdin_writer.take() {
            let _ = w.join();
        }
        CmdOutput {
            cmdline: self.cmdline.clone(),
            code: exit_code(status),
            stdout,
            stderr,
            elapsed,
        }
    }

    /// Kill the whole process group now.
    pub fn kill(&mut self) {
        if !self.done {
            unsafe {
                libc::kill(-(self.child.id() as i32), libc::SIGKILL);
            }
            let _ = self.child.kill();
        }
    }
}

fn join_bounded(h: Option<JoinHandle<Vec<u8>>>, limit: Duration) -> Vec<u8> {
    let Some(h) = h else { return Vec::new() };
    let deadline = Instant::now() + limit;
    while !h.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if h.is_finished() {
        h.join().unwrap_or_default()
    } else {
        b"<output pipe still open: a descendant kept it>".to_vec()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            self.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run `argv` (wrapped in `timeout`) to completion with `/dev/null` stdin.
pub fn run(argv: &[String], limit: Duration, env: &[(&str, OsString)]) -> CmdOutput {
    Running::spawn(&with_timeout(limit, argv), env, Stdin::Null).wait()
}
