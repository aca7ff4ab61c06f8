//! The VM shim's TOML settings: `/etc/containerd/shim-vm.toml`, or the file or inline body the
//! Create request's runtime options name (`ctr run --runtime-config-path`, a CRI
//! RuntimeClass's `ConfigPath`). Every key is optional.
//!
//! ```toml
//! qemu = "qemu-system-x86_64"   # binary, by name or path
//! image = "/path/to/guest"      # a directory holding vmlinux and initramfs.cpio
//! kernel = "/path/vmlinux"      # or the two files one by one (they win over `image`)
//! initrd = "/path/initramfs.cpio"
//! memory_mib = 256
//! vcpus = 1
//! machine = "microvm,x-option-roms=off,pit=off,pic=off"   # QEMU -M; microvm only
//! accel = "auto"                # "kvm", "tcg" or "auto" (KVM only where it really works)
//! kernel_params = ["agent.debug"]
//! console_log = false           # keep the guest console in the bundle (slower boot)
//! boot_timeout_ms = 30000
//! template = true               # restore the image's pre-booted VM template when it matches
//! ```
//!
//! `template`: the image builder also saves a VM booted once with the default settings (see
//! [`crate::template`]). With `true` (the default) a VM whose settings match it is restored
//! from it (about a tenth of a cold boot, and far less host memory); any difference (memory,
//! vcpus, kernel, initramfs, parameters, console, QEMU, accelerator) means a cold boot, and the
//! log says why. `false` always boots cold.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shim_common::{Error, Result};

use crate::qemu::Accel;

/// The guest image files the builder writes into its cache directory.
pub const IMAGE_KERNEL: &str = "vmlinux";
pub const IMAGE_INITRD: &str = "initramfs.cpio";

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelSetting {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VmSettings {
    pub qemu: PathBuf,
    pub image: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub machine: Option<String>,
    pub accel: AccelSetting,
    pub kernel_params: Vec<String>,
    pub console_log: bool,
    pub boot_timeout_ms: u64,
    pub template: bool,
}

impl Default for VmSettings {
    fn default() -> Self {
        VmSettings {
            qemu: PathBuf::from("qemu-system-x86_64"),
            image: None,
            kernel: None,
            initrd: None,
            memory_mib: 256,
            vcpus: 1,
            machine: None,
            accel: AccelSetting::Auto,
            kernel_params: Vec::new(),
            console_log: false,
            boot_timeout_ms: 30_000,
            template: true,
        }
    }
}

impl VmSettings {
    pub fn from_table(table: &toml::Table) -> Result<VmSettings> {
        let s: VmSettings = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e| Error::InvalidArgument(format!("invalid VM settings: {e}")))?;
        if s.memory_mib < 64 {
            return Err(Error::InvalidArgument(format!(
                "memory_mib = {} is too small for the guest (at least 64)",
                s.memory_mib
            )));
        }
        if s.vcpus == 0 {
            return Err(Error::InvalidArgument("vcpus must be at least 1".into()));
        }
        if let Some(m) = &s.machine {
            if !m.starts_with("microvm") {
                return Err(Error::InvalidArgument(format!(
                    "machine {m:?}: the guest image drives virtio-mmio devices, so only microvm \
                     machines are supported"
                )));
            }
        }
        Ok(s)
    }

    pub fn boot_timeout(&self) -> Duration {
        Duration::from_millis(self.boot_timeout_ms.max(1000))
    }

    /// Forces an accelerator, or `None` for the automatic choice.
    pub fn forced_accel(&self) -> Option<Accel> {
        match self.accel {
            AccelSetting::Auto => None,
            AccelSetting::Kvm => Some(Accel::Kvm),
            AccelSetting::Tcg => Some(Accel::Tcg),
        }
    }

    /// The QEMU settings of one VM (before the accelerator is chosen), the same for a cold boot
    /// and for the image builder's template, so the two can be compared.
    pub fn vm_config(
        &self,
        kernel: PathBuf,
        initrd: PathBuf,
        run_dir: PathBuf,
        share: PathBuf,
    ) -> crate::qemu::VmConfig {
        let mut config = crate::qemu::VmConfig::new(kernel, initrd, run_dir.clone());
        config.qemu = self.qemu.clone();
        config.memory_mib = self.memory_mib;
        config.vcpus = self.vcpus;
        config.machine = self.machine.clone();
        config.extra_cmdline = self.kernel_params.clone();
        config.share = Some(share);
        if self.console_log {
            config.console_log = Some(run_dir.join("console.log"));
        }
        config
    }

    /// Where a VM template may be: the image directory (named, or beside this binary), else
    /// the directory of the initramfs named one by one.
    pub fn template_dir(&self) -> Option<PathBuf> {
        self.image
            .clone()
            .or_else(beside_binary)
            .or_else(|| self.initrd.as_deref()?.parent().map(Path::to_path_buf))
    }

    /// The kernel and initramfs to boot: the files named one by one, else those of `image`,
    /// else the image the builder left beside this binary (`<target>/guest` of a workspace
    /// build), which is where `containerd-shim-vm-v1 image` puts it by default.
    pub fn guest_files(&self) -> Result<(PathBuf, PathBuf)> {
        let from_dir = |d: &Path| (d.join(IMAGE_KERNEL), d.join(IMAGE_INITRD));
        let dir = match &self.image {
            Some(d) => Some(d.clone()),
            None => beside_binary(),
        };
        let defaults = dir.as_deref().map(from_dir);
        let kernel = self
            .kernel
            .clone()
            .or_else(|| defaults.as_ref().map(|d| d.0.clone()));
        let initrd = self
            .initrd
            .clone()
            .or_else(|| defaults.as_ref().map(|d| d.1.clone()));
        match (kernel, initrd) {
            (Some(k), Some(i)) if k.is_file() && i.is_file() => Ok((k, i)),
            (k, i) => Err(Error::FailedPrecondition(format!(
                "no guest image: kernel {} and initrd {} must both exist; build one with \
                 `containerd-shim-vm-v1 image` and point the `image` (or `kernel` and `initrd`) \
                 setting at it",
                show(&k),
                show(&i)
            ))),
        }
    }
}

fn show(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(not set)".into())
}

/// `<dir of this binary>/../guest`, when it holds an image.
fn beside_binary() -> Option<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    let dir = exe.parent()?.parent()?.join("guest");
    dir.join(IMAGE_KERNEL).exists().then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<VmSettings> {
        VmSettings::from_table(&text.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn defaults_and_overrides() {
        let s = parse("").unwrap();
        assert_eq!(s.memory_mib, 256);
        assert_eq!(s.forced_accel(), None);
        assert!(s.template);
        assert!(!parse("template = false").unwrap().template);
        let s = parse("memory_mib = 512\nvcpus = 2\naccel = \"tcg\"\nkernel_params = [\"a=b\"]")
            .unwrap();
        assert_eq!((s.memory_mib, s.vcpus), (512, 2));
        assert_eq!(s.forced_accel(), Some(Accel::Tcg));
        assert_eq!(s.kernel_params, ["a=b"]);
    }

    #[test]
    fn bad_settings_are_invalid_argument() {
        for bad in [
            "memory_mib = 8",
            "vcpus = 0",
            "accel = \"hvf\"",
            "machine = \"q35\"",
            "memory_mib = \"lots\"",
        ] {
            assert!(
                matches!(parse(bad), Err(Error::InvalidArgument(_))),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn guest_files_from_an_image_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = VmSettings {
            image: Some(dir.path().to_path_buf()),
            ..VmSettings::default()
        };
        assert!(matches!(s.guest_files(), Err(Error::FailedPrecondition(_))));
        std::fs::write(dir.path().join(IMAGE_KERNEL), b"k").unwrap();
        std::fs::write(dir.path().join(IMAGE_INITRD), b"i").unwrap();
        let (k, i) = s.guest_files().unwrap();
        assert_eq!(k, dir.path().join(IMAGE_KERNEL));
        assert_eq!(i, dir.path().join(IMAGE_INITRD));
        s.kernel = Some(dir.path().join("missing"));
        assert!(s.guest_files().is_err());
    }
}
