//! The OCI bundle: the shim's input and its only workspace on disk.
//!
//! containerd creates `<state>/io.containerd.runtime.v2.task/<ns>/<id>` with `config.json`, an
//! empty `rootfs/`, the `log` fifo and a `work` link before it runs the shim. Everything the shim
//! persists goes here, so containerd's removal of the bundle removes all trace of the container.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Bundle {
    path: PathBuf,
}

impl Bundle {
    pub fn new(path: impl Into<PathBuf>) -> Bundle {
        Bundle { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }

    pub fn config(&self) -> PathBuf {
        self.path.join("config.json")
    }

    /// Reads and checks `config.json`; a missing or malformed spec is the caller's mistake.
    pub fn spec(&self) -> Result<Spec> {
        let path = self.config();
        let data = fs::read(&path).map_err(|e| {
            Error::InvalidArgument(format!("reading OCI spec {}: {e}", path.display()))
        })?;
        serde_json::from_slice(&data).map_err(|e| {
            Error::InvalidArgument(format!("malformed OCI spec {}: {e}", path.display()))
        })
    }

    /// The containerd state directory the bundle lives in (`<state>`), if the layout is the
    /// usual `<state>/io.containerd.runtime.v2.task/<ns>/<id>`.
    pub fn containerd_state_dir(&self) -> Option<PathBuf> {
        let ns_dir = self.path.parent()?;
        let task_dir = ns_dir.parent()?;
        if task_dir
            .file_name()?
            .to_str()?
            .starts_with("io.containerd.runtime")
        {
            task_dir.parent().map(Path::to_path_buf)
        } else {
            None
        }
    }

    /// Writes `name` atomically (write, then rename), so a crash never leaves half a file that a
    /// later `shim delete` would misread.
    pub fn write_file(&self, name: &str, data: &[u8]) -> Result<()> {
        let tmp = self.file(&format!(".{name}.tmp"));
        let dst = self.file(name);
        fs::write(&tmp, data).map_err(|e| Error::path("writing", &tmp, e))?;
        fs::rename(&tmp, &dst).map_err(|e| Error::path("renaming into", &dst, e))
    }

    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.file(name)).ok()
    }

    pub fn remove_file(&self, name: &str) {
        let _ = fs::remove_file(self.file(name));
    }
}

/// Annotations naming a container's group, in order of precedence (as the Go runc shim reads
/// them): an explicit group, else the CRI sandbox.
pub const GROUP_ANNOTATIONS: &[&str] = &[
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// The parts of the OCI runtime spec the shim framework itself needs; runtimes read the rest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub oci_version: String,
    pub process: Option<SpecProcess>,
    pub root: Option<SpecRoot>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    pub linux: Option<SpecLinux>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SpecProcess {
    #[serde(default)]
    pub terminal: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SpecRoot {
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecLinux {
    #[serde(default)]
    pub cgroups_path: Option<String>,
    #[serde(default)]
    pub namespaces: Vec<SpecNamespace>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SpecNamespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: Option<String>,
}

impl Spec {
    /// True when the container has a pid namespace of its own. Otherwise its processes outlive
    /// the init, and the shim must kill them when the init exits.
    pub fn has_private_pid_namespace(&self) -> bool {
        self.linux.as_ref().is_some_and(|l| {
            l.namespaces
                .iter()
                .any(|n| n.kind == "pid" && n.path.as_deref().unwrap_or("").is_empty())
        })
    }

    /// The pod a container belongs to: containers with the same group share one shim.
    pub fn group(&self) -> Option<&str> {
        GROUP_ANNOTATIONS
            .iter()
            .find_map(|k| self.annotations.get(*k))
            .map(String::as_str)
            .filter(|g| !g.is_empty())
    }

    pub fn cgroups_path(&self) -> Option<&str> {
        self.linux.as_ref()?.cgroups_path.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let b = Bundle::new(dir.path());
        assert!(matches!(b.spec(), Err(Error::InvalidArgument(_))));
        fs::write(b.config(), b"{not json").unwrap();
        assert!(matches!(b.spec(), Err(Error::InvalidArgument(_))));
        fs::write(
            b.config(),
            br#"{"ociVersion":"1.0.2","process":{"terminal":true,"args":["sh"]},
               "root":{"path":"rootfs"},"linux":{"cgroupsPath":"/ns/c",
               "namespaces":[{"type":"pid"},{"type":"network","path":"/proc/1/ns/net"}]}}"#,
        )
        .unwrap();
        let spec = b.spec().unwrap();
        assert!(spec.process.unwrap().terminal);
        assert_eq!(
            spec.linux.as_ref().unwrap().cgroups_path.as_deref(),
            Some("/ns/c")
        );
        let spec = b.spec().unwrap();
        assert!(spec.has_private_pid_namespace());
    }

    #[test]
    fn state_dir_from_layout() {
        let b = Bundle::new("/var/run/ctrd/io.containerd.runtime.v2.task/ns/c1");
        assert_eq!(
            b.containerd_state_dir(),
            Some(PathBuf::from("/var/run/ctrd"))
        );
        assert_eq!(Bundle::new("/tmp/b").containerd_state_dir(), None);
    }
}
