//! The shims under test and how `ctr` selects each of them.

use std::path::{Path, PathBuf};

/// Binary name of our OCI shim as cargo builds it.
pub const OUR_SHIM_BINARY: &str = "containerd-shim-oci-v1";
/// The runtime name containerd maps to `containerd-shim-v2-oci` on PATH.
pub const OUR_RUNTIME_NAME: &str = "io.containerd.runtime.v2.oci";
/// The name `OUR_RUNTIME_NAME` resolves to; the harness links our binary under it.
pub const OUR_RUNTIME_NAME_BINARY: &str = "containerd-shim-v2-oci";
/// Binary name of our process shim (the shim is the runtime).
pub const OUR_PROCESS_SHIM_BINARY: &str = "containerd-shim-process-v1";
/// The runtime name containerd maps to `containerd-shim-v2-process` on PATH.
pub const OUR_PROCESS_RUNTIME_NAME: &str = "io.containerd.runtime.v2.process";
/// The name `OUR_PROCESS_RUNTIME_NAME` resolves to.
pub const OUR_PROCESS_RUNTIME_NAME_BINARY: &str = "containerd-shim-v2-process";
/// Binary name of our VM shim (containers inside QEMU micro-VMs).
pub const OUR_VM_SHIM_BINARY: &str = "containerd-shim-vm-v1";
/// The runtime name containerd maps to `containerd-shim-v2-vm` on PATH.
pub const OUR_VM_RUNTIME_NAME: &str = "io.containerd.runtime.v2.vm";
/// The name `OUR_VM_RUNTIME_NAME` resolves to.
pub const OUR_VM_RUNTIME_NAME_BINARY: &str = "containerd-shim-v2-vm";
/// containerd's reference Go shim.
pub const REFERENCE_RUNTIME: &str = "io.containerd.runc.v2";

/// Every shim/runtime combination a scenario runs against. Listed in one
/// place; the `scenarios!` macro generates one test per scenario and variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// containerd's Go shim `io.containerd.runc.v2` (proves the scenario
    /// encodes containerd's real behaviour).
    RuncV2Reference,
    /// Our shim by runtime name, no runtime options: its default OCI runtime (runc).
    OciRuncName,
    /// Our shim by absolute path, `--runtime-config-path` with `binary = "runc"`.
    OciRuncPath,
    /// Our shim by runtime name, `--runtime-config-path` with `binary = "crun"`.
    OciCrunName,
    /// Our shim by absolute path, `--runtime-config-path` with `binary = "crun"`.
    OciCrunPath,
    /// Our process shim (no runtime binary) by runtime name.
    ProcessName,
    /// Our process shim by absolute path.
    ProcessPath,
    /// Our VM shim by runtime name, no runtime options: it finds the guest image the build
    /// left beside it.
    VmName,
    /// Our VM shim by absolute path, `--runtime-config-path` naming the guest image.
    VmPath,
}

impl Variant {
    pub const ALL: [Variant; 9] = [
        Variant::RuncV2Reference,
        Variant::OciRuncName,
        Variant::OciRuncPath,
        Variant::OciCrunName,
        Variant::OciCrunPath,
        Variant::ProcessName,
        Variant::ProcessPath,
        Variant::VmName,
        Variant::VmPath,
    ];

    /// The name used in `E2E_RUNTIMES` and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Variant::RuncV2Reference => "runc-v2-reference",
            Variant::OciRuncName => "oci-runc-name",
            Variant::OciRuncPath => "oci-runc-path",
            Variant::OciCrunName => "oci-crun-name",
            Variant::OciCrunPath => "oci-crun-path",
            Variant::ProcessName => "process-name",
            Variant::ProcessPath => "process-path",
            Variant::VmName => "vm-name",
            Variant::VmPath => "vm-path",
        }
    }

    /// True for our shim, false for the reference.
    pub fn is_ours(self) -> bool {
        self != Variant::RuncV2Reference
    }

    /// True for the process shim, which runs containers without any runtime binary.
    pub fn is_process(self) -> bool {
        matches!(self, Variant::ProcessName | Variant::ProcessPath)
    }

    /// True for the VM shim: the container runs in a guest, its pids are the guest's.
    pub fn is_vm(self) -> bool {
        matches!(self, Variant::VmName | Variant::VmPath)
    }

    /// The OCI runtime binary named in the runtime config file, if any.
    pub fn oci_binary_option(self) -> Option<&'static str> {
        match self {
            Variant::RuncV2Reference
            | Variant::OciRuncName
            | Variant::ProcessName
            | Variant::ProcessPath
            | Variant::VmName
            | Variant::VmPath => None,
            Variant::OciRuncPath => Some("runc"),
            Variant::OciCrunName | Variant::OciCrunPath => Some("crun"),
        }
    }

    /// The OCI runtime binary that ends up running containers; none for the process shim.
    pub fn oci_runtime(self) -> Option<&'static str> {
        if self.is_process() || self.is_vm() {
            return None;
        }
        Some(self.oci_binary_option().unwrap_or("runc"))
    }

    fn by_path(self) -> bool {
        matches!(
            self,
            Variant::OciRuncPath | Variant::OciCrunPath | Variant::ProcessPath | Variant::VmPath
        )
    }

    /// Whether `E2E_RUNTIMES` (default: all) selects this variant.
    pub fn selected(self) -> bool {
        selected_variants().contains(&self)
    }
}

/// Parse `E2E_RUNTIMES` (comma separated variant names; unset or empty = all).
/// Panics on an unknown name so a typo does not silently skip everything.
pub fn selected_variants() -> Vec<Variant> {
    let raw = std::env::var("E2E_RUNTIMES").unwrap_or_default();
    if raw.trim().is_empty() || raw.trim() == "all" {
        return Variant::ALL.to_vec();
    }
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            Variant::ALL
                .into_iter()
                .find(|v| v.name() == s)
                .unwrap_or_else(|| {
                    panic!(
                        "E2E_RUNTIMES: unknown variant {s:?}; known: {}",
                        Variant::ALL.map(Variant::name).join(",")
                    )
                })
        })
        .collect()
}

/// Where our shim binary is: `$SHIM_BIN_DIR`, else the workspace's
/// `target/release`, else `target/debug` (honouring `CARGO_TARGET_DIR`).
/// Err lists the places looked at.
pub fn find_our_shim() -> Result<PathBuf, String> {
    find_shim(OUR_SHIM_BINARY, "shim-oci")
}

/// Where our VM shim binary is, looked for like [`find_our_shim`].
pub fn find_our_vm_shim() -> Result<PathBuf, String> {
    find_shim(OUR_VM_SHIM_BINARY, "shim-vm")
}

/// Where our process shim binary is, looked for like [`find_our_shim`].
pub fn find_our_process_shim() -> Result<PathBuf, String> {
    find_shim(OUR_PROCESS_SHIM_BINARY, "shim-process")
}

fn find_shim(binary: &str, package: &str) -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("SHIM_BIN_DIR") {
        // An explicit choice: do not fall back to something else.
        let p = PathBuf::from(dir).join(binary);
        return if crate::util::is_executable(&p) {
            Ok(p)
        } else {
            Err(format!(
                "SHIM_BIN_DIR is set but {} is not an executable file",
                p.display()
            ))
        };
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test crate lives inside the workspace")
        .to_path_buf();
    let mut target_dirs = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        target_dirs.push(if t.is_absolute() {
            t
        } else {
            workspace.join(t)
        });
    }
    target_dirs.push(workspace.join("target"));
    for t in target_dirs {
        for profile in ["release", "debug"] {
            candidates.push(t.join(profile).join(binary));
        }
    }
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    for (i, c) in candidates.iter().enumerate() {
        if crate::util::is_executable(c) {
            // A newer build of another profile usually means this one is stale.
            if let Some(newer) = candidates[i + 1..]
                .iter()
                .find(|o| crate::util::is_executable(o) && mtime(o) > mtime(c))
            {
                eprintln!(
                    "shim-e2e: warning: using {} although {} is newer (set SHIM_BIN_DIR to choose)",
                    c.display(),
                    newer.display()
                );
            }
            return Ok(c.clone());
        }
    }
    Err(format!(
        "our shim binary {binary} was not found; looked at: {}. Build it \
         (cargo build --release -p {package}) or set SHIM_BIN_DIR to the directory holding it. \
         To run only the reference shim, set E2E_RUNTIMES=runc-v2-reference.",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// How `ctr run` / `ctr c create` select the shim for one variant.
#[derive(Debug, Clone)]
pub struct RuntimeUnderTest {
    pub variant: Variant,
    /// The value of `--runtime`: a name or an absolute path.
    pub runtime: String,
    /// The value of `--runtime-config-path`, if any.
    pub config_path: Option<PathBuf>,
}

impl RuntimeUnderTest {
    /// `bin_dir` holds the links to our shim; `config_dir` holds the runtime
    /// config files (see [`write_runtime_configs`]).
    pub fn new(
        variant: Variant,
        our_shim: &Result<PathBuf, String>,
        our_process_shim: &Result<PathBuf, String>,
        our_vm_shim: &Result<PathBuf, String>,
        config_dir: &Path,
    ) -> Result<Self, String> {
        let runtime = if !variant.is_ours() {
            REFERENCE_RUNTIME.to_string()
        } else {
            let (shim, name) = if variant.is_process() {
                (our_process_shim, OUR_PROCESS_RUNTIME_NAME)
            } else if variant.is_vm() {
                (our_vm_shim, OUR_VM_RUNTIME_NAME)
            } else {
                (our_shim, OUR_RUNTIME_NAME)
            };
            let shim = shim.as_ref().map_err(|e| e.clone())?;
            if variant.by_path() {
                shim.display().to_string()
            } else {
                name.to_string()
            }
        };
        let config_path = if variant == Variant::VmPath {
            Some(config_dir.join("runtime-vm.toml"))
        } else {
            variant
                .oci_binary_option()
                .map(|b| config_dir.join(format!("runtime-{b}.toml")))
        };
        Ok(RuntimeUnderTest {
            variant,
            runtime,
            config_path,
        })
    }

    /// The `ctr run` / `ctr c create` arguments that select this shim.
    pub fn ctr_args(&self) -> Vec<String> {
        let mut v = vec!["--runtime".to_string(), self.runtime.clone()];
        if let Some(p) = &self.config_path {
            v.push("--runtime-config-path".to_string());
            v.push(p.display().to_string());
        }
        v
    }
}

/// Write the runtime config files our shim reads through
/// `--runtime-config-path`: one per OCI runtime (`binary = "..."`).
/// `E2E_CRUN_BINARY` / `E2E_RUNC_BINARY` override the binary named there.
pub fn write_runtime_configs(dir: &Path) -> std::io::Result<()> {
    for (name, env) in [("runc", "E2E_RUNC_BINARY"), ("crun", "E2E_CRUN_BINARY")] {
        let binary = std::env::var(env).unwrap_or_else(|_| name.to_string());
        let text = format!(
            "# OCI runtime for the shim under test\nbinary = {}\n",
            serde_json::Value::String(binary)
        );
        std::fs::write(dir.join(format!("runtime-{name}.toml")), text)?;
    }
    let image = guest_image_dir();
    let text = format!(
        "# the VM shim's guest image\nimage = {}\n",
        serde_json::Value::String(image.display().to_string())
    );
    std::fs::write(dir.join("runtime-vm.toml"), text)?;
    Ok(())
}

/// The guest image the VM variants boot: `E2E_VM_IMAGE`, else the workspace build's
/// `<target>/guest` (where `scripts/build-guest.sh` puts it).
pub fn guest_image_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("E2E_VM_IMAGE") {
        return PathBuf::from(d);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test crate lives inside the workspace")
        .to_path_buf();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if !t.is_empty() => {
            let t = PathBuf::from(t);
            if t.is_absolute() {
                t.join("guest")
            } else {
                workspace.join(t).join("guest")
            }
        }
        _ => workspace.join("target/guest"),
    }
}
