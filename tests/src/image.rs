//! An offline busybox image, built from the host's static busybox as an OCI
//! image archive and imported with `ctr images import`.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::util::sha256_hex;

/// Image whose config has no `User` (runs as root).
pub const IMAGE: &str = "harness.local/busybox:latest";
/// The same filesystem with config `User = "harness"`.
pub const IMAGE_USER: &str = "harness.local/busybox:user";

/// The non-root user of the image.
pub const HARNESS_UID: u32 = 1000;
pub const HARNESS_GID: u32 = 1000;
/// A supplementary group `harness` belongs to.
pub const EXTRA_GID: u32 = 1001;
pub const EXTRA_GROUP: &str = "extra";

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The built image: the archive to import and an unpacked copy of its rootfs
/// (for `ctr run --config` with an absolute root path).
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub archive: PathBuf,
    pub rootfs: PathBuf,
}

fn io_err(ctx: &str, e: impl std::fmt::Display) -> String {
    format!("{ctx}: {e}")
}

/// Fill `root` with busybox, its applet links, /etc/passwd, /etc/group, /tmp.
pub fn populate_rootfs(root: &Path, busybox: &Path) -> Result<(), String> {
    for d in [
        "bin",
        "etc",
        "tmp",
        "root",
        "home/harness",
        "proc",
        "sys",
        "dev",
        "run",
    ] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| io_err(d, e))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox")).map_err(|e| io_err("copy busybox", e))?;
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .map_err(|e| io_err("chmod busybox", e))?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| io_err("busybox --list", e))?;
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();
    let mut n = 0;
    for applet in applets.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        symlink("busybox", root.join("bin").join(applet))
            .map_err(|e| io_err(&format!("link applet {applet}"), e))?;
        n += 1;
    }
    for needed in [
        "sh",
        "cat",
        "echo",
        "id",
        "sleep",
        "yes",
        "head",
        "seq",
        "sha256sum",
        "wc",
    ] {
        if !root.join("bin").join(needed).exists() {
            return Err(format!("busybox has no applet {needed} ({n} applets)"));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\nharness:x:{HARNESS_UID}:{HARNESS_GID}:harness:/home/harness:/bin/sh\n"
        ),
    )
    .map_err(|e| io_err("passwd", e))?;
    std::fs::write(
        root.join("etc/group"),
        format!("root:x:0:\nharness:x:{HARNESS_GID}:\n{EXTRA_GROUP}:x:{EXTRA_GID}:harness\n"),
    )
    .map_err(|e| io_err("group", e))?;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .map_err(|e| io_err("chmod /tmp", e))?;
    std::os::unix::fs::chown(
        root.join("home/harness"),
        Some(HARNESS_UID),
        Some(HARNESS_GID),
    )
    .map_err(|e| io_err("chown /home/harness", e))?;
    Ok(())
}

/// Write `data` as a blob; returns its descriptor fields (digest, size).
fn put_blob(blobs: &Path, data: &[u8]) -> Result<(String, usize), String> {
    let hex = sha256_hex(data);
    std::fs::write(blobs.join(&hex), data).map_err(|e| io_err("write blob", e))?;
    Ok((format!("sha256:{hex}"), data.len()))
}

fn tar(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("tar")
        .current_dir(dir)
        .args(args)
        .output()
        .map_err(|e| io_err("running tar", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "tar {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Build the image under `dir` (which must exist and be empty-ish).
pub fn build(dir: &Path, busybox: &Path) -> Result<BuiltImage, String> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| io_err("mkdir rootfs", e))?;
    populate_rootfs(&rootfs, busybox)?;

    let layer_tar = dir.join("layer.tar");
    tar(
        &rootfs,
        &[
            "--numeric-owner",
            "--sort=name",
            "-cf",
            layer_tar.to_str().expect("utf-8 path"),
            ".",
        ],
    )?;
    let layer = std::fs::read(&layer_tar).map_err(|e| io_err("read layer", e))?;
    let _ = std::fs::remove_file(&layer_tar);

    let oci = dir.join("oci");
    let blobs = oci.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| io_err("mkdir blobs", e))?;
    let (layer_digest, layer_size) = put_blob(&blobs, &layer)?;

    let mut manifests = Vec::new();
    for (reference, user) in [(IMAGE, ""), (IMAGE_USER, "harness")] {
        let config = json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": {
                "User": user,
                "Env": [PATH_ENV],
                "Cmd": ["sh"],
                "WorkingDir": "/",
            },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
            "history": [{ "created_by": "shim-e2e harness" }],
        });
        let config = serde_json::to_vec(&config).expect("serialize image config");
        let (config_digest, config_size) = put_blob(&blobs, &config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer_size,
            }],
        });
        let manifest = serde_json::to_vec(&manifest).expect("serialize manifest");
        let (manifest_digest, manifest_size) = put_blob(&blobs, &manifest)?;
        let tag = reference.rsplit(':').next().expect("reference has a tag");
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": { "architecture": oci_arch(), "os": "linux" },
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }));
    }
    let index = json!({ "schemaVersion": 2, "manifests": manifests });
    std::fs::write(
        oci.join("index.json"),
        serde_json::to_vec(&index).expect("serialize index"),
    )
    .map_err(|e| io_err("write index.json", e))?;
    std::fs::write(oci.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| io_err("write oci-layout", e))?;

    let archive = dir.join("busybox-oci.tar");
    tar(
        &oci,
        &[
            "--numeric-owner",
            "-cf",
            archive.to_str().expect("utf-8 path"),
            "oci-layout",
            "index.json",
            "blobs",
        ],
    )?;
    let _ = std::fs::remove_dir_all(&oci);
    Ok(BuiltImage { archive, rootfs })
}

/// The host's architecture in OCI terms.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}
