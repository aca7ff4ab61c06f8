//! Mounting the Create request's rootfs on `<bundle>/rootfs`, and undoing it.
//!
//! containerd hands the snapshot over as mounts (one overlay, or a bind) rather than mounting
//! it itself, so the shim mounts it in the host mount namespace and must unmount it on delete,
//! on a failed create, and in `shim delete` after a crash.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Splits mount(8)-style options into flags, propagation flags and the data string.
fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear, prop) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), false),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, false),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), false),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty(), false),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), false),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, false),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), false),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, false),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), false),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, false),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), false),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), false),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), false),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), false),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), false),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty(), false),
            "private" => (MsFlags::MS_PRIVATE, MsFlags::empty(), true),
            "rprivate" => (
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                MsFlags::empty(),
                true,
            ),
            "slave" => (MsFlags::MS_SLAVE, MsFlags::empty(), true),
            "rslave" => (MsFlags::MS_SLAVE | MsFlags::MS_REC, MsFlags::empty(), true),
            "shared" => (MsFlags::MS_SHARED, MsFlags::empty(), true),
            "rshared" => (MsFlags::MS_SHARED | MsFlags::MS_REC, MsFlags::empty(), true),
            "defaults" => (MsFlags::empty(), MsFlags::empty(), false),
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        if prop {
            propagation |= set;
        } else {
            flags |= set;
            flags &= !clear;
        }
    }
    (flags, propagation, data.join(","))
}

impl Mount {
    pub fn mount_on(&self, target: &Path) -> Result<()> {
        let (flags, propagation, data) = parse_options(&self.options);
        let fail = |e| {
            Error::sys(
                format!(
                    "mounting {} ({}) on {}",
                    self.source,
                    self.kind,
                    target.display()
                ),
                e,
            )
        };
        let data = (!data.is_empty()).then_some(data.as_str());
        let is_bind = flags.contains(MsFlags::MS_BIND);
        let kind = (!is_bind && !self.kind.is_empty()).then_some(self.kind.as_str());
        mount(Some(self.source.as_str()), target, kind, flags, data).map_err(fail)?;
        let adjusted = (|| {
            // A bind mount ignores MS_RDONLY and friends until remounted.
            let extra = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
            if is_bind && !extra.is_empty() {
                mount(
                    None::<&str>,
                    target,
                    None::<&str>,
                    extra | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                    None::<&str>,
                )?;
            }
            if !propagation.is_empty() {
                mount(
                    None::<&str>,
                    target,
                    None::<&str>,
                    propagation,
                    None::<&str>,
                )?;
            }
            Ok(())
        })();
        // Half a mount (say, a bind left writable) is undone: the caller only unmounts the
        // layers that succeeded.
        adjusted.map_err(|e| {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            fail(e)
        })
    }
}

/// Mounts every layer in order; on failure unmounts what was mounted, so a failed Create leaves
/// the bundle as it found it.
pub fn mount_rootfs(mounts: &[Mount], target: &Path) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = m.mount_on(target) {
            for _ in 0..i {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts everything stacked on `target` (lazily, so a busy mount cannot wedge delete).
pub fn unmount_all(target: &Path) -> Result<()> {
    for _ in 0..64 {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(Error::sys(format!("unmounting {}", target.display()), e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "nosuid", "lowerdir=/a", "upperdir=/b", "rprivate"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, prop, data) = parse_options(&opts);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(prop, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(data, "lowerdir=/a,upperdir=/b");
        let (flags, _, _) = parse_options(&["ro".into(), "rw".into(), "rbind".into()]);
        assert_eq!(flags, MsFlags::MS_BIND | MsFlags::MS_REC);
    }
}
