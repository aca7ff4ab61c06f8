//! Host dependencies: containerd, ctr, runc, crun and a static busybox.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::util::which;

/// Binaries the suite needs, with the Debian package that provides each.
const REQUIRED: &[(&str, &str)] = &[
    ("containerd", "containerd"),
    ("containerd-shim-runc-v2", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("crun", "crun"),
    ("busybox", "busybox-static"),
    ("script", "bsdutils"),
    ("timeout", "coreutils"),
    ("tar", "tar"),
];

const APT_PACKAGES: &[&str] = &["containerd", "runc", "crun", "busybox-static"];

/// Make sure every host dependency is installed; installs the missing ones with
/// apt-get (the suite runs as root). Cheap and idempotent once all are present.
/// Panics with a clear message when they cannot be provided.
pub fn ensure_deps() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = DONE.get_or_init(ensure_deps_inner) {
        panic!("host dependencies unavailable: {e}");
    }
}

fn missing() -> Vec<String> {
    let mut out: Vec<String> = REQUIRED
        .iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(bin, pkg)| format!("{bin} (package {pkg})"))
        .collect();
    if let Some(bb) = which("busybox") {
        if !is_static_elf(&bb) {
            out.push(format!(
                "{} is dynamically linked; the image needs busybox-static",
                bb.display()
            ));
        }
    }
    out
}

fn ensure_deps_inner() -> Result<(), String> {
    let before = missing();
    if before.is_empty() {
        return Ok(());
    }
    eprintln!("shim-e2e: missing host dependencies: {before:?}; installing with apt-get");
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!(
            "missing {before:?} and not running as root; install: apt-get install -y {}",
            APT_PACKAGES.join(" ")
        ));
    }
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| format!("running apt-get {args:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "apt-get {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(&["update"])?;
    let mut install = vec!["install", "-y"];
    install.extend_from_slice(APT_PACKAGES);
    run(&install)?;
    let after = missing();
    if after.is_empty() {
        Ok(())
    } else {
        Err(format!("still missing after apt-get install: {after:?}"))
    }
}

/// Path of the (static) busybox binary copied into the test image.
pub fn busybox_path() -> PathBuf {
    which("busybox").expect("busybox is installed (ensure_deps ran)")
}

/// True for an ELF file without a PT_INTERP program header (statically linked).
pub fn is_static_elf(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        // Only 64-bit little-endian ELF is expected here.
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes"));
    let phoff = u64::from_le_bytes(data[32..40].try_into().expect("8 bytes")) as usize;
    let phentsize = u16_at(54);
    let phnum = u16_at(56);
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        if off + 4 > data.len() {
            return false;
        }
        if u32_at(off) == 3 {
            return false; // PT_INTERP: needs a dynamic loader
        }
    }
    true
}
