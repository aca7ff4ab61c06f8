//! The host's OCI spec, made to hold inside the guest.
//!
//! The guest sees the host only through the VM's one 9p share, so everything the spec names on
//! the host is moved under it: the rootfs and every bind mount's source are bind-mounted by the
//! host under `<share>/<id>/` and the spec points at their guest paths. What belongs to the host
//! and cannot be carried over is dropped, with a warning: the host's hooks (prestart,
//! createRuntime, poststart, poststop name host programs; createContainer and startContainer
//! run inside the container and stay), and namespace paths the guest does not have (a CRI
//! network namespace file); those are joined to the VM's first container instead, which is how
//! a pod's containers share the sandbox's namespaces, or else made anew. The container's cgroup
//! is the guest's own (`/<namespace>/<id>`): host cgroup paths mean nothing there.

use std::path::{Path, PathBuf};

use serde_json::Value;
use shim_common::{Error, Result};

/// One host path the guest needs, and where under the container's share directory it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub host: PathBuf,
    /// Relative to `<share>/<id>`.
    pub at: String,
}

#[derive(Debug)]
pub struct GuestSpec {
    pub json: Vec<u8>,
    /// The rootfs first, then the bind mounts' sources.
    pub binds: Vec<Bind>,
    pub warnings: Vec<String>,
}

/// The hooks that run on the host, by the spec's names.
const HOST_HOOKS: [&str; 4] = ["prestart", "createRuntime", "poststart", "poststop"];

fn is_bind(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("bind")
        || m.get("options").and_then(Value::as_array).is_some_and(|o| {
            o.iter()
                .any(|x| matches!(x.as_str(), Some("bind" | "rbind")))
        })
}

/// Whether `path` is a namespace of a guest process (`/proc/<pid>/ns/<type>`): the pids the
/// shim reports are the guest's, so such a path, built by a caller from a pid we returned,
/// names a namespace inside the VM.
fn is_guest_ns_path(path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').split('/');
    parts.next() == Some("proc")
        && parts
            .next()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && parts.next() == Some("ns")
        && parts.next().is_some()
        && parts.next().is_none()
}

/// Adapts `spec` (the bundle's `config.json`) for container `id`; `rootfs` is the host rootfs
/// directory and `guest_dir` the container's directory in the guest (`/mnt/share/<id>`).
/// `first_pid` is the guest pid of the VM's first container, whose namespaces replace those the
/// guest cannot reach.
pub fn adapt(
    spec: &[u8],
    rootfs: &Path,
    guest_dir: &str,
    namespace: &str,
    id: &str,
    first_pid: Option<u32>,
) -> Result<GuestSpec> {
    let mut v: Value = serde_json::from_slice(spec)
        .map_err(|e| Error::InvalidArgument(format!("config.json: {e}")))?;
    if !v.is_object() {
        return Err(Error::InvalidArgument(
            "config.json is not a JSON object".into(),
        ));
    }
    let mut warnings = Vec::new();
    let mut binds = vec![Bind {
        host: rootfs.to_path_buf(),
        at: "rootfs".into(),
    }];
    v["root"]["path"] = Value::String(format!("{guest_dir}/rootfs"));

    if let Some(mounts) = v.get_mut("mounts").and_then(Value::as_array_mut) {
        for (i, m) in mounts.iter_mut().enumerate() {
            if !is_bind(m) {
                continue;
            }
            let Some(source) = m.get("source").and_then(Value::as_str) else {
                continue;
            };
            let at = format!("m{i}");
            binds.push(Bind {
                host: PathBuf::from(source),
                at: at.clone(),
            });
            m["source"] = Value::String(format!("{guest_dir}/{at}"));
        }
    }

    if let Some(hooks) = v.get_mut("hooks").and_then(Value::as_object_mut) {
        for name in HOST_HOOKS {
            let n = hooks
                .remove(name)
                .and_then(|h| h.as_array().map(Vec::len))
                .unwrap_or(0);
            if n > 0 {
                warnings.push(format!(
                    "{n} {name} hook(s) not run: they name host programs, and the container is \
                     in a VM"
                ));
            }
        }
    }

    if let Some(linux) = v.get_mut("linux").and_then(Value::as_object_mut) {
        linux.insert(
            "cgroupsPath".into(),
            Value::String(format!("/{namespace}/{id}")),
        );
        if let Some(nss) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            for ns in nss.iter_mut() {
                let kind = ns
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let Some(path) = ns.get("path").and_then(Value::as_str).map(str::to_string) else {
                    continue;
                };
                if path.is_empty() || is_guest_ns_path(&path) {
                    continue;
                }
                let guest_name = match kind.as_str() {
                    "network" => "net",
                    "mount" => "mnt",
                    other => other,
                };
                match (first_pid, ns.as_object_mut()) {
                    (Some(pid), Some(o)) => {
                        o.insert(
                            "path".into(),
                            Value::String(format!("/proc/{pid}/ns/{guest_name}")),
                        );
                    }
                    (None, Some(o)) => {
                        o.remove("path");
                        warnings.push(format!(
                            "{kind} namespace {path} is the host's: the container gets a new one"
                        ));
                    }
                    _ => {}
                }
            }
        }
    }

    let json = serde_json::to_vec(&v).map_err(|e| Error::Other(format!("spec: {e}")))?;
    Ok(GuestSpec {
        json,
        binds,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Vec<u8> {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/"},
            "root": {"path": "/run/x/bundle/rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
                {"destination": "/etc/hosts", "type": "none", "source": "/var/pod/hosts", "options": ["bind"]}
            ],
            "hooks": {"prestart": [{"path": "/bin/x"}], "createContainer": [{"path": "/in"}]},
            "linux": {
                "cgroupsPath": "kubepods-besteffort.slice:cri:abc",
                "namespaces": [
                    {"type": "pid"},
                    {"type": "network", "path": "/var/run/netns/cni-1"},
                    {"type": "ipc", "path": "/proc/42/ns/ipc"}
                ]
            }
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn host_paths_move_under_the_share() {
        let g = adapt(
            &spec(),
            Path::new("/b/rootfs"),
            "/mnt/share/c1",
            "ns",
            "c1",
            None,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&g.json).unwrap();
        assert_eq!(v["root"]["path"], "/mnt/share/c1/rootfs");
        assert_eq!(v["mounts"][0]["source"], "proc");
        assert_eq!(v["mounts"][1]["source"], "/mnt/share/c1/m1");
        assert_eq!(v["mounts"][2]["source"], "/mnt/share/c1/m2");
        assert_eq!(
            g.binds,
            vec![
                Bind {
                    host: "/b/rootfs".into(),
                    at: "rootfs".into()
                },
                Bind {
                    host: "/srv/data".into(),
                    at: "m1".into()
                },
                Bind {
                    host: "/var/pod/hosts".into(),
                    at: "m2".into()
                },
            ]
        );
        assert!(v["hooks"].get("prestart").is_none());
        assert_eq!(v["hooks"]["createContainer"][0]["path"], "/in");
        assert_eq!(v["linux"]["cgroupsPath"], "/ns/c1");
        let nss = &v["linux"]["namespaces"];
        assert!(nss[1].get("path").is_none(), "host netns dropped: {nss}");
        assert_eq!(nss[2]["path"], "/proc/42/ns/ipc");
        assert_eq!(g.warnings.len(), 2, "{:?}", g.warnings);
    }

    #[test]
    fn unreachable_namespaces_join_the_first_container() {
        let g = adapt(&spec(), Path::new("/b/rootfs"), "/g", "ns", "c2", Some(7)).unwrap();
        let v: Value = serde_json::from_slice(&g.json).unwrap();
        assert_eq!(v["linux"]["namespaces"][1]["path"], "/proc/7/ns/net");
    }

    #[test]
    fn guest_namespace_paths() {
        assert!(is_guest_ns_path("/proc/42/ns/net"));
        assert!(!is_guest_ns_path("/proc/self/ns/net"));
        assert!(!is_guest_ns_path("/var/run/netns/x"));
        assert!(!is_guest_ns_path("/proc/42/ns/net/x"));
    }

    #[test]
    fn malformed_spec_is_invalid_argument() {
        for bad in [&b"{"[..], b"[]", b"3"] {
            assert!(matches!(
                adapt(bad, Path::new("/r"), "/g", "n", "c", None),
                Err(Error::InvalidArgument(_))
            ));
        }
    }
}
