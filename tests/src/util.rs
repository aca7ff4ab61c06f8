//! Small helpers shared by the harness modules.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Lower-case hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lower-case hex encoding.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `n` random bytes from the kernel, hex encoded (2n characters).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    hex(&buf)
}

/// Quote `s` for a POSIX shell (single quotes).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Join an argv into one shell command line.
pub fn shell_join<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| shell_quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Poll `f` every `interval` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    timeout: Duration,
    interval: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// A printable, escaped excerpt of possibly binary data, for failure messages.
pub fn excerpt(data: &[u8], max: usize) -> String {
    let shown = &data[..data.len().min(max)];
    let mut s = String::new();
    for &b in shown {
        match b {
            b'\n' => s.push_str("\\n\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    if data.len() > max {
        let _ = write!(s, "... ({} bytes in all)", data.len());
    }
    s
}

/// Find `name` in `$PATH` (plus the standard sbin directories).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p));
    found
}

/// Whether `p` is a regular file with an execute bit set.
pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Deterministic pseudo-random bytes (xorshift64*), for stdin payloads.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The output of busybox `seq FIRST LAST`, cut to `len` bytes (`| head -c len`).
/// Counts in ASCII directly: this runs unoptimised in test builds.
pub fn seq_output(first: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut digits: Vec<u8> = first.to_string().into_bytes();
    while out.len() < len {
        out.extend_from_slice(&digits);
        out.push(b'\n');
        // Increment the decimal string.
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    out.truncate(len);
    out
}

/// Describe the first difference between two byte strings.
pub fn first_difference(expected: &[u8], actual: &[u8]) -> String {
    let common = expected
        .iter()
        .zip(actual)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(actual.len()));
    if common == expected.len() && common == actual.len() {
        return "identical".to_string();
    }
    let from = common.saturating_sub(32);
    format!(
        "lengths expected {} actual {}; first difference at byte {}: expected ...{} | actual ...{}",
        expected.len(),
        actual.len(),
        common,
        excerpt(&expected[from..expected.len().min(common + 32)], 96),
        excerpt(
            &actual[from.min(actual.len())..actual.len().min(common + 32)],
            96
        ),
    )
}

/// Text a `script`-wrapped `ctr ... -t` printed: `\r` removed, a leading NUL
/// (or its echo `^@`) dropped, and ctr's own error about resizing a process
/// that already ended removed (ctr resizes the pty after start without
/// waiting; when the process is quick, that races with its exit).
pub fn tty_text(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw).replace('\r', "");
    let s = s.trim_start_matches('\0');
    let s = s.strip_prefix("^@").unwrap_or(s);
    s.split_inclusive('\n')
        .filter(|l| {
            !(l.contains("resize pty")
                && ["stopped", "not found", "finished", "exited"]
                    .iter()
                    .any(|w| l.contains(w)))
        })
        .collect()
}

/// Removes the listed files when dropped (best effort), e.g. sockets a
/// killed or leaky shim leaves in the host-wide `/run/containerd/s`.
#[derive(Debug, Default)]
pub struct RemoveOnDrop(pub Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in self.0.drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }
}
