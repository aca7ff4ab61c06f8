//! The daemon's ttrpc socket: a 0600 socket file, never an abstract one.
//!
//! It lives in the bundle when the path fits in `sun_path`, so nothing of the shim is left
//! outside the bundle; otherwise in a 0700 directory under containerd's state directory, named by
//! a hash of containerd's address, the namespace and the id.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::bundle::Bundle;
use crate::error::{Error, Result};

/// containerd refuses unix paths longer than this when dialling.
pub const MAX_PATH: usize = 106;
pub const SOCKET_NAME: &str = "shim.sock";

/// Where a container's shim listens. `group` is set for a container that shares its shim with
/// others (a pod): that socket must outlive any one member's bundle, so it never lives in one.
/// `socket_dir` is the directory containerd 2.3+ may ask for.
pub fn socket_path(
    bundle: &Bundle,
    containerd_address: &str,
    namespace: &str,
    id: &str,
    group: Option<&str>,
    socket_dir: Option<&str>,
) -> PathBuf {
    let in_bundle = bundle.file(SOCKET_NAME);
    if group.is_none() && in_bundle.as_os_str().len() <= MAX_PATH {
        return in_bundle;
    }
    let key = group.unwrap_or(id);
    let hash = hex(&Sha256::digest(format!(
        "{containerd_address}/{namespace}/{key}"
    )));
    let dir = socket_dir
        .map(PathBuf::from)
        .or_else(|| bundle.containerd_state_dir().map(|s| s.join("s")))
        .unwrap_or_else(|| PathBuf::from("/run/containerd/s"));
    dir.join(&hash[..32])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn address(path: &Path) -> String {
    format!("unix://{}", path.display())
}

pub fn path_of(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// True when a daemon answers on `path`.
pub fn is_serving(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

/// The pid of the daemon serving `path` (from the connection's peer credentials).
pub fn server_pid(path: &Path) -> Option<u32> {
    let stream = UnixStream::connect(path).ok()?;
    let cred =
        nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    u32::try_from(cred.pid()).ok()
}

/// Binds `path` with mode 0600, replacing a stale socket. Call from a single-threaded process:
/// the umask is narrowed around bind so the file is never briefly world-accessible.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::path("creating socket directory", dir, e))?;
        }
    }
    if path.exists() {
        if is_serving(path) {
            return Err(Error::AlreadyExists(format!(
                "a shim already serves {}",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(|e| Error::path("binding", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::path("setting mode of", path, e))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn short_bundles_hold_their_socket() {
        let b = Bundle::new("/run/ctrd/io.containerd.runtime.v2.task/ns/c1");
        assert_eq!(
            socket_path(&b, "/run/ctrd.sock", "ns", "c1", None, None),
            PathBuf::from("/run/ctrd/io.containerd.runtime.v2.task/ns/c1/shim.sock")
        );
        let long = format!(
            "/run/ctrd/io.containerd.runtime.v2.task/ns/{}",
            "x".repeat(76)
        );
        let p = socket_path(
            &Bundle::new(&long),
            "/run/ctrd.sock",
            "ns",
            "c1",
            None,
            None,
        );
        assert!(p.starts_with("/run/ctrd/s/"));
        assert!(p.as_os_str().len() <= MAX_PATH);
        // Members of a group share one socket, outside every bundle.
        let b2 = Bundle::new("/run/ctrd/io.containerd.runtime.v2.task/ns/c2");
        let g1 = socket_path(&b, "/run/ctrd.sock", "ns", "c1", Some("pod"), None);
        let g2 = socket_path(&b2, "/run/ctrd.sock", "ns", "c2", Some("pod"), None);
        assert_eq!(g1, g2);
        assert!(g1.starts_with("/run/ctrd/s/"));
        let d = socket_path(&b, "/run/ctrd.sock", "ns", "c1", Some("pod"), Some("/x"));
        assert!(d.starts_with("/x/"));
    }

    #[test]
    fn bound_socket_is_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let _l = bind(&p).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(is_serving(&p));
        assert!(matches!(bind(&p), Err(Error::AlreadyExists(_))));
    }
}
