//! Which containerd the suite runs against: `E2E_CONTAINERD=1.6|1.7|2.1`.
//!
//! 1.6 (the default) is the system's `containerd`, `ctr` and
//! `containerd-shim-runc-v2` (Debian 12's packages). 1.7 and 2.1 are Debian
//! trixie's and forky's packages, fetched and unpacked once by
//! `scripts/fetch-containerd.sh` into `<workspace>/target/containerd-versions`
//! (a cheap no-op when already there). The daemon, `ctr` and the reference Go
//! shim all come from the selected version: its `usr/bin` goes on
//! containerd's PATH right after the harness's own bin dir, so
//! `io.containerd.runc.v2` resolves to that version's `containerd-shim-runc-v2`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::util::{is_executable, which};

/// A containerd release line the suite knows how to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerdVersion {
    /// The system's (Debian 12: 1.6.20).
    V1_6,
    /// Debian trixie's 1.7.
    V1_7,
    /// Debian forky's 2.1.
    V2_1,
}

impl ContainerdVersion {
    pub const ALL: [ContainerdVersion; 3] = [
        ContainerdVersion::V1_6,
        ContainerdVersion::V1_7,
        ContainerdVersion::V2_1,
    ];

    /// The value used in `E2E_CONTAINERD`.
    pub fn name(self) -> &'static str {
        match self {
            ContainerdVersion::V1_6 => "1.6",
            ContainerdVersion::V1_7 => "1.7",
            ContainerdVersion::V2_1 => "2.1",
        }
    }

    /// The Debian suite `scripts/fetch-containerd.sh` takes it from; `None`
    /// for the system's own binaries.
    pub fn suite(self) -> Option<&'static str> {
        match self {
            ContainerdVersion::V1_6 => None,
            ContainerdVersion::V1_7 => Some("trixie"),
            ContainerdVersion::V2_1 => Some("forky"),
        }
    }

    /// containerd 2.x (different CRI plugin ids, `bootstrap.json`, task v3
    /// reference shim, `ctr` without `--` for `c create`, ...).
    pub fn is_2x(self) -> bool {
        self == ContainerdVersion::V2_1
    }

    /// Whether `ctr containers create IMG ID -- CMD...` needs the `--`:
    /// ctr 1.6 otherwise parses the command's `-c` as its own `--config`.
    pub fn create_needs_dashdash(self) -> bool {
        self == ContainerdVersion::V1_6
    }

    /// `E2E_CONTAINERD` (unset or empty: 1.6). Panics on an unknown value so a
    /// typo does not silently test the wrong daemon.
    pub fn from_env() -> ContainerdVersion {
        let raw = std::env::var("E2E_CONTAINERD").unwrap_or_default();
        let raw = raw.trim();
        if raw.is_empty() {
            return ContainerdVersion::V1_6;
        }
        ContainerdVersion::ALL
            .into_iter()
            .find(|v| v.name() == raw)
            .unwrap_or_else(|| {
                panic!(
                    "E2E_CONTAINERD: unknown version {raw:?}; known: {}",
                    ContainerdVersion::ALL
                        .map(ContainerdVersion::name)
                        .join(", ")
                )
            })
    }
}

/// The binaries of the selected containerd.
#[derive(Debug, Clone)]
pub struct ContainerdBins {
    pub version: ContainerdVersion,
    /// The directory holding `containerd`, `ctr` and `containerd-shim-runc-v2`.
    pub bin_dir: PathBuf,
    /// True for the system's binaries (nothing to add to PATH).
    pub system: bool,
    /// `containerd --version`, for messages.
    pub version_string: String,
}

impl ContainerdBins {
    pub fn containerd(&self) -> PathBuf {
        self.bin_dir.join("containerd")
    }

    pub fn ctr(&self) -> PathBuf {
        self.bin_dir.join("ctr")
    }

    /// The reference Go shim `io.containerd.runc.v2` resolves to.
    pub fn reference_shim(&self) -> PathBuf {
        self.bin_dir.join("containerd-shim-runc-v2")
    }
}

/// Where fetched versions are cached: `<workspace>/target/containerd-versions`.
pub fn cache_dir() -> PathBuf {
    workspace().join("target").join("containerd-versions")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test crate lives inside the workspace")
        .to_path_buf()
}

/// The selected containerd (`E2E_CONTAINERD`), fetched on first use.
/// Panics with the reason when it cannot be provided.
pub fn selected() -> &'static ContainerdBins {
    static SELECTED: OnceLock<Result<ContainerdBins, String>> = OnceLock::new();
    let r = SELECTED.get_or_init(|| resolve(ContainerdVersion::from_env()));
    match r {
        Ok(b) => b,
        Err(e) => panic!("containerd for E2E_CONTAINERD: {e}"),
    }
}

fn resolve(version: ContainerdVersion) -> Result<ContainerdBins, String> {
    let (bin_dir, system) = match version.suite() {
        None => {
            crate::deps::ensure_deps();
            let containerd = which("containerd").ok_or("containerd is not installed")?;
            let dir = containerd
                .parent()
                .ok_or("containerd has no parent directory")?
                .to_path_buf();
            (dir, true)
        }
        Some(suite) => (fetch(suite)?.join("usr/bin"), false),
    };
    let bins = ContainerdBins {
        version,
        bin_dir,
        system,
        version_string: String::new(),
    };
    for p in [bins.containerd(), bins.ctr(), bins.reference_shim()] {
        if !is_executable(&p) {
            return Err(format!(
                "{} is missing (containerd {})",
                p.display(),
                version.name()
            ));
        }
    }
    let out = crate::cmd::run(
        &[bins.containerd().display().to_string(), "--version".into()],
        Duration::from_secs(20),
        &[] as &[(&str, std::ffi::OsString)],
    );
    let version_string = out.stdout_str().trim().to_string();
    if !out.ok() {
        return Err(format!("containerd --version failed\n{}", out.describe()));
    }
    // The version field of `containerd github.com/containerd/containerd[/v2] 1.7.24~ds1 ...`.
    let found = version_string.split_whitespace().nth(2).unwrap_or("");
    if !found.starts_with(&format!("{}.", version.name())) {
        eprintln!(
            "shim-e2e: warning: E2E_CONTAINERD={} but {} is {version_string:?}",
            version.name(),
            bins.containerd().display()
        );
    }
    Ok(ContainerdBins {
        version_string,
        ..bins
    })
}

/// Run `scripts/fetch-containerd.sh SUITE <cache>` under a lock on the cache
/// (other test binaries may ask at the same time); returns the unpacked root.
fn fetch(suite: &str) -> Result<PathBuf, String> {
    let dest = cache_dir();
    std::fs::create_dir_all(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let lock_path = dest.join(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    {
        use std::os::fd::AsRawFd;
        // Released when `lock` is closed at the end of this function.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "flock {}: {}",
                lock_path.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
    let script = workspace().join("scripts/fetch-containerd.sh");
    let out = crate::cmd::run(
        &[
            script.display().to_string(),
            suite.to_string(),
            dest.display().to_string(),
        ],
        Duration::from_secs(900),
        &[] as &[(&str, std::ffi::OsString)],
    );
    drop(lock);
    if !out.ok() {
        return Err(format!(
            "fetching containerd from Debian {suite} failed\n{}",
            out.describe()
        ));
    }
    let root = out
        .stdout_str()
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            format!(
                "{} printed no directory\n{}",
                script.display(),
                out.describe()
            )
        })?;
    Ok(root)
}
