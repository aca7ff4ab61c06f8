//! Which OCI runtime to drive, and how: the TOML settings, overridden by runc options from the
//! Create request, resolved once per container and persisted in its bundle so `shim delete`
//! can still drive the same runtime after the daemon is gone.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shim_common::bundle::Bundle;
use shim_common::options::{self, Options};
use shim_common::{Error, Result};

const PERSISTED: &str = "oci-runtime.json";

/// The TOML keys this shim reads (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TomlSettings {
    /// The runtime binary: a name on PATH or an absolute path. Default `runc`.
    binary: Option<String>,
    /// The runtime's state root (`--root`). Default: a directory inside the bundle.
    root: Option<String>,
    /// Run the runtime in a private mount namespace without the cgroup2 mount of a hybrid
    /// host. Default: on for crun on a hybrid host (crun refuses that layout), else off.
    hide_unified_cgroup: Option<bool>,
    no_pivot_root: bool,
    no_new_keyring: bool,
    systemd_cgroup: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OciSettings {
    pub binary: String,
    pub root: PathBuf,
    pub hide_unified_cgroup: bool,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
    pub systemd_cgroup: bool,
}

/// True on a v1 host that also mounts cgroup2 at /sys/fs/cgroup/unified.
pub fn host_is_hybrid() -> bool {
    Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists()
        && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

impl OciSettings {
    pub fn resolve(bundle: &Bundle, table: &toml::Table, opts: &Options) -> Result<OciSettings> {
        let t: TomlSettings = options::section(table)?;
        let mut binary = t.binary.unwrap_or_default();
        let mut root = t.root.unwrap_or_default();
        let (mut no_pivot_root, mut no_new_keyring, mut systemd_cgroup) =
            (t.no_pivot_root, t.no_new_keyring, t.systemd_cgroup);
        if let Options::Runc(o) = opts {
            if !o.binary_name.is_empty() {
                binary = o.binary_name.clone();
            }
            if !o.root.is_empty() {
                root = o.root.clone();
            }
            no_pivot_root |= o.no_pivot_root;
            no_new_keyring |= o.no_new_keyring;
            systemd_cgroup |= o.systemd_cgroup;
        }
        if binary.is_empty() {
            binary = "runc".into();
        }
        if binary.contains('/') && !binary.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "runtime binary {binary:?} must be a name on PATH or an absolute path"
            )));
        }
        let root = if root.is_empty() {
            bundle.file("oci-root")
        } else {
            PathBuf::from(root)
        };
        let is_crun = Path::new(&binary)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("crun"));
        let hide_unified_cgroup = t.hide_unified_cgroup.unwrap_or(is_crun && host_is_hybrid());
        Ok(OciSettings {
            binary,
            root,
            hide_unified_cgroup,
            no_pivot_root,
            no_new_keyring,
            systemd_cgroup,
        })
    }

    pub fn persist(&self, bundle: &Bundle) -> Result<()> {
        let data = serde_json::to_vec(self)
            .map_err(|e| Error::Other(format!("encoding runtime settings: {e}")))?;
        bundle.write_file(PERSISTED, &data)
    }

    pub fn load(bundle: &Bundle) -> Option<OciSettings> {
        serde_json::from_slice(&bundle.read_file(PERSISTED)?).ok()
    }

    /// Removes the persisted settings once the runtime has deleted the container: `shim
    /// delete` then has no runtime state left to clean and does not run the runtime.
    pub fn forget(bundle: &Bundle) {
        bundle.remove_file(PERSISTED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_toml_and_runc_options() {
        let b = Bundle::new("/b");
        let s = OciSettings::resolve(&b, &toml::Table::new(), &Options::None).unwrap();
        assert_eq!(s.binary, "runc");
        assert_eq!(s.root, PathBuf::from("/b/oci-root"));
        assert!(!s.hide_unified_cgroup);
        let t: toml::Table = "binary = \"crun\"\nhide_unified_cgroup = false"
            .parse()
            .unwrap();
        let s = OciSettings::resolve(&b, &t, &Options::None).unwrap();
        assert_eq!(s.binary, "crun");
        assert!(!s.hide_unified_cgroup);
        let mut o = protobuf_runc();
        o.binary_name = "/usr/bin/crun".into();
        o.root = "/run/r".into();
        let s = OciSettings::resolve(&b, &t, &Options::Runc(o)).unwrap();
        assert_eq!(s.binary, "/usr/bin/crun");
        assert_eq!(s.root, PathBuf::from("/run/r"));
        let bad: toml::Table = "binary = \"x/y\"".parse().unwrap();
        assert!(OciSettings::resolve(&b, &bad, &Options::None).is_err());
        let bad: toml::Table = "binary = 3".parse().unwrap();
        assert!(OciSettings::resolve(&b, &bad, &Options::None).is_err());
    }

    fn protobuf_runc() -> shim_common::options::RuncOptions {
        Default::default()
    }
}
