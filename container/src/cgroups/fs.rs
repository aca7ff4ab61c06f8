//! cgroupfs file helpers. Files are never created: on cgroupfs a missing file means a missing
//! controller or kernel feature, and hiding that behind O_CREAT would turn it into EACCES.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::Duration;

use super::{CgroupError, Result};

pub(crate) fn mkdir_all(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|source| CgroupError::Io {
            op: "mkdir",
            path: dir.to_path_buf(),
            source,
        })
}

/// One write(2) per call: cgroupfs parses each write separately, so a value must never be
/// split or batched with another.
pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    let res = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    res.map_err(|source| CgroupError::Write {
        path,
        value: value.to_string(),
        source,
    })
}

/// Contents with surrounding whitespace removed, as every cgroup value ends in a newline.
pub(crate) fn read(dir: &Path, file: &str) -> Result<String> {
    let path = dir.join(file);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| CgroupError::Io {
            op: "read",
            path,
            source,
        })
}

pub(crate) fn read_pids(dir: &Path) -> Result<Vec<u32>> {
    let text = read(dir, "cgroup.procs")?;
    let mut pids = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let pid = line.parse().map_err(|_| CgroupError::Io {
            op: "parse",
            path: dir.join("cgroup.procs"),
            source: io::Error::new(io::ErrorKind::InvalidData, format!("bad pid {line:?}")),
        })?;
        pids.push(pid);
    }
    Ok(pids)
}

/// Depth-first because a cgroup with child cgroups cannot be removed; each rmdir is retried
/// for about a second since exiting tasks keep a cgroup busy for a moment after they die.
pub(crate) fn remove_cgroup_dir(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Io {
                op: "read dir",
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_dir(&entry.path())?;
        }
    }
    let mut delay = Duration::from_millis(10);
    let mut attempt = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempt < 8 && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(200));
                attempt += 1;
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    op: "rmdir",
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}
