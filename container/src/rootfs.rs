//! The container's filesystem: the spec's mounts on the bundle's rootfs, devices, then
//! `pivot_root` into it, masked and read-only paths, and a read-only root.
//!
//! Runs in the container's new mount namespace, in its single-threaded setup process.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::error::{Error, Result};

/// Splits mount options into flags, flags to clear, propagation and data.
pub fn parse_options(options: &[String]) -> (MsFlags, MsFlags, MsFlags, String) {
    let mut set = MsFlags::empty();
    let mut clear = MsFlags::empty();
    let mut prop = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => set |= MsFlags::MS_RDONLY,
            "rw" => clear |= MsFlags::MS_RDONLY,
            "bind" => set |= MsFlags::MS_BIND,
            "rbind" => set |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => set |= MsFlags::MS_NOSUID,
            "suid" => clear |= MsFlags::MS_NOSUID,
            "nodev" => set |= MsFlags::MS_NODEV,
            "dev" => clear |= MsFlags::MS_NODEV,
            "noexec" => set |= MsFlags::MS_NOEXEC,
            "exec" => clear |= MsFlags::MS_NOEXEC,
            "noatime" => set |= MsFlags::MS_NOATIME,
            "atime" => clear |= MsFlags::MS_NOATIME,
            "nodiratime" => set |= MsFlags::MS_NODIRATIME,
            "relatime" => set |= MsFlags::MS_RELATIME,
            "strictatime" => set |= MsFlags::MS_STRICTATIME,
            "sync" => set |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => set |= MsFlags::MS_DIRSYNC,
            "mand" => set |= MsFlags::MS_MANDLOCK,
            "remount" => set |= MsFlags::MS_REMOUNT,
            "defaults" | "async" => {}
            "private" => prop |= MsFlags::MS_PRIVATE,
            "rprivate" => prop |= MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            "slave" => prop |= MsFlags::MS_SLAVE,
            "rslave" => prop |= MsFlags::MS_SLAVE | MsFlags::MS_REC,
            "shared" => prop |= MsFlags::MS_SHARED,
            "rshared" => prop |= MsFlags::MS_SHARED | MsFlags::MS_REC,
            "unbindable" => prop |= MsFlags::MS_UNBINDABLE,
            "runbindable" => prop |= MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            other => data.push(other.to_string()),
        }
    }
    (set & !clear, clear, prop, data.join(","))
}

/// `root` joined with a container path, refusing `..` so a spec cannot mount outside the
/// rootfs. Symlinks inside the rootfs are resolved within it.
pub fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf> {
    let mut out = root.to_path_buf();
    let mut hops = 0;
    let mut pending: Vec<String> = Path::new(path)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    while let Some(part) = pending.pop() {
        if part == ".." {
            if out != root {
                out.pop();
            }
            continue;
        }
        let next = out.join(&part);
        match fs::read_link(&next) {
            Ok(target) => {
                hops += 1;
                if hops > 40 {
                    return Err(Error::Spec(format!("too many symlinks in {path}")));
                }
                if target.is_absolute() {
                    out = root.to_path_buf();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(s) => pending.push(s.to_string_lossy().into_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Err(_) => out = next,
        }
    }
    Ok(out)
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let what = what.into();
    move |e| Error::sys(what, e)
}

/// Flags a bind remount must keep: the kernel refuses to clear locked ones in a user namespace.
fn locked_flags(path: &Path) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut m = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            m |= ms;
        }
    }
    m
}

fn remount_bind(path: &Path, flags: MsFlags) -> Result<()> {
    let flags = flags | locked_flags(path);
    mount(
        None::<&str>,
        path,
        None::<&str>,
        flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
        None::<&str>,
    )
    .map_err(sys(format!("remounting {}", path.display())))
}

fn ensure_mountpoint(dest: &Path, as_file: bool) -> Result<()> {
    if dest.exists() {
        return Ok(());
    }
    if as_file {
        if let Some(p) = dest.parent() {
            fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        fs::write(dest, b"").map_err(|e| Error::io(format!("creating {}", dest.display()), e))
    } else {
        fs::create_dir_all(dest).map_err(|e| Error::io(format!("creating {}", dest.display()), e))
    }
}

/// Mounts one spec entry below `root`.
fn mount_one(root: &Path, m: &Mount, bundle: &Path, cgroupns: bool) -> Result<()> {
    let opts = m.options().clone().unwrap_or_default();
    let (flags, _clear, prop, data) = parse_options(&opts);
    let kind = m.typ().clone().unwrap_or_default();
    let dest = resolve_in_root(root, &m.destination().to_string_lossy())?;
    let is_bind = flags.contains(MsFlags::MS_BIND) || kind == "bind";
    let source = m
        .source()
        .clone()
        .map(|s| {
            if is_bind && s.is_relative() {
                bundle.join(s)
            } else {
                s
            }
        })
        .unwrap_or_default();
    if kind == "cgroup" {
        return mount_cgroup(&dest, flags, cgroupns);
    }
    let source_is_file = is_bind && source.metadata().map(|md| !md.is_dir()).unwrap_or(false);
    ensure_mountpoint(&dest, source_is_file)?;
    let what = format!(
        "mounting {} ({}) on {}",
        source.display(),
        if kind.is_empty() { "bind" } else { &kind },
        m.destination().display()
    );
    let data_opt = (!data.is_empty()).then_some(data.as_str());
    if is_bind {
        mount(
            Some(&source),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND | (flags & MsFlags::MS_REC),
            None::<&str>,
        )
        .map_err(sys(what.clone()))?;
        let extra = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            remount_bind(&dest, extra)?;
        }
    } else {
        let src = if source.as_os_str().is_empty() {
            PathBuf::from(&kind)
        } else {
            source
        };
        let r = mount(Some(&src), &dest, Some(kind.as_str()), flags, data_opt);
        match r {
            // mqueue or sysfs in a user/net namespace the kernel will not give us: bind the
            // host's instead, as runc does for sysfs.
            Err(nix::errno::Errno::EPERM) if kind == "sysfs" => {
                mount(
                    Some("/sys"),
                    &dest,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(sys(what.clone()))?;
                remount_bind(&dest, flags)?;
            }
            r => r.map_err(sys(what.clone()))?,
        }
    }
    if !prop.is_empty() {
        mount(None::<&str>, &dest, None::<&str>, prop, None::<&str>).map_err(sys(what))?;
    }
    Ok(())
}

/// A `cgroup` mount: cgroup2 on a unified host; on a v1 host a tmpfs holding one mount per
/// hierarchy (in a cgroup namespace each shows the container's own cgroup as its root).
fn mount_cgroup(dest: &Path, flags: MsFlags, cgroupns: bool) -> Result<()> {
    ensure_mountpoint(dest, false)?;
    let ro = flags & MsFlags::MS_RDONLY;
    let base = flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    // Without a cgroup namespace a fresh cgroup mount would show the host's whole tree: bind
    // the container's own cgroup instead, as runc does, so it sees its own limits.
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let own_path = |matches: &dyn Fn(&str) -> bool| -> Option<String> {
        own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            matches(ctrls).then(|| path.trim_start_matches('/').to_string())
        })
    };
    let bind_own = |hierarchy: &Path, rel: &str, target: &Path| -> Result<()> {
        let src = hierarchy.join(rel);
        mount(
            Some(&src),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys(format!("binding cgroup {}", src.display())))?;
        remount_bind(target, base | ro)
    };
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        if !cgroupns {
            if let Some(rel) = own_path(&|c: &str| c.is_empty()) {
                return bind_own(Path::new("/sys/fs/cgroup"), &rel, dest);
            }
        }
        return mount(
            Some("cgroup2"),
            dest,
            Some("cgroup2"),
            base | ro,
            None::<&str>,
        )
        .map_err(sys(format!("mounting cgroup2 on {}", dest.display())));
    }
    mount(Some("tmpfs"), dest, Some("tmpfs"), base, Some("mode=755"))
        .map_err(sys(format!("mounting tmpfs on {}", dest.display())))?;
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        let (Some(fstype), _, Some(super_opts)) = (r.next(), r.next(), r.next()) else {
            continue;
        };
        let Some(mp) = left.split_whitespace().nth(4) else {
            continue;
        };
        let Some(name) = mp.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        if name.contains('/') {
            continue;
        }
        let target = dest.join(name);
        ensure_mountpoint(&target, false)?;
        if !cgroupns {
            let opts: Vec<&str> = super_opts.split(',').collect();
            let rel = match fstype {
                "cgroup" => {
                    own_path(&|c: &str| !c.is_empty() && c.split(',').all(|x| opts.contains(&x)))
                }
                "cgroup2" => own_path(&|c: &str| c.is_empty()),
                _ => None,
            };
            if let Some(rel) = rel {
                bind_own(Path::new(mp), &rel, &target)?;
                continue;
            }
        }
        let r = match fstype {
            "cgroup" => {
                let subsys: Vec<&str> = super_opts
                    .split(',')
                    .filter(|o| *o != "rw" && *o != "ro")
                    .collect();
                mount(
                    Some("cgroup"),
                    &target,
                    Some("cgroup"),
                    base | ro,
                    Some(subsys.join(",").as_str()),
                )
            }
            "cgroup2" => mount(
                Some("cgroup2"),
                &target,
                Some("cgroup2"),
                base | ro,
                None::<&str>,
            ),
            _ => continue,
        };
        r.map_err(sys(format!("mounting cgroup {name}")))?;
    }
    if ro.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            dest,
            None::<&str>,
            base | ro | MsFlags::MS_REMOUNT,
            Some("mode=755"),
        )
        .map_err(sys("remounting the cgroup tmpfs read-only"))?;
    }
    Ok(())
}

/// A device node to create in the container's /dev.
struct Node {
    path: String,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Node {
    fn from_spec(d: &LinuxDevice) -> Node {
        Node {
            path: d.path().to_string_lossy().into_owned(),
            kind: match d.typ() {
                LinuxDeviceType::B => SFlag::S_IFBLK,
                LinuxDeviceType::P => SFlag::S_IFIFO,
                _ => SFlag::S_IFCHR,
            },
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        }
    }

    /// The devices every container gets.
    fn defaults() -> Vec<Node> {
        [
            ("/dev/null", 1, 3),
            ("/dev/zero", 1, 5),
            ("/dev/full", 1, 7),
            ("/dev/random", 1, 8),
            ("/dev/urandom", 1, 9),
            ("/dev/tty", 5, 0),
        ]
        .into_iter()
        .map(|(path, major, minor)| Node {
            path: path.to_string(),
            kind: SFlag::S_IFCHR,
            major,
            minor,
            mode: 0o666,
            uid: 0,
            gid: 0,
        })
        .collect()
    }

    /// Creates the node, or bind-mounts the host's where mknod is not allowed (a user
    /// namespace).
    fn create(&self, root: &Path, bind: bool) -> Result<()> {
        let path = self.path.as_str();
        let dest = resolve_in_root(root, path)?;
        if let Some(p) = dest.parent() {
            fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        if bind {
            ensure_mountpoint(&dest, true)?;
            return mount(
                Some(path),
                &dest,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys(format!("binding device {path}")));
        }
        let _ = fs::remove_file(&dest);
        mknod(
            &dest,
            self.kind,
            Mode::from_bits_truncate(self.mode),
            makedev(self.major, self.minor),
        )
        .map_err(sys(format!("creating device {path}")))?;
        nix::unistd::chown(&dest, Some(self.uid.into()), Some(self.gid.into()))
            .map_err(sys(format!("chown of device {path}")))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(self.mode & 0o7777))
            .map_err(|e| Error::io(format!("chmod of device {path}"), e))
    }
}

/// Mounts, devices and links under `root`, before pivot_root.
pub fn prepare(spec: &Spec, bundle: &Path, root: &Path, in_userns: bool) -> Result<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    let propagation = match linux.rootfs_propagation().as_deref() {
        Some("shared") | Some("rshared") => MsFlags::MS_SHARED | MsFlags::MS_REC,
        Some("private") | Some("rprivate") => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        Some("unbindable") | Some("runbindable") => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    };
    mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
        .map_err(sys("setting the propagation of /"))?;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!("binding the rootfs {}", root.display())))?;
    let cgroupns = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Cgroup);
    let mut dev_is_tmpfs = false;
    for m in spec.mounts().clone().unwrap_or_default() {
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
        mount_one(root, &m, bundle, cgroupns)?;
    }
    if dev_is_tmpfs {
        for node in Node::defaults() {
            node.create(root, in_userns)?;
        }
    }
    for d in linux.devices().clone().unwrap_or_default() {
        Node::from_spec(&d).create(root, in_userns)?;
    }
    if dev_is_tmpfs {
        for (link, target) in [
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
        ] {
            let _ = symlink(target, root.join(link.trim_start_matches('/')));
        }
        if Path::new("/proc/kcore").exists() {
            let _ = symlink("/proc/kcore", root.join("dev/core"));
        }
        let ptmx = root.join("dev/ptmx");
        if root.join("dev/pts").is_dir() {
            let _ = fs::remove_file(&ptmx);
            symlink("pts/ptmx", &ptmx).map_err(|e| Error::io("linking /dev/ptmx", e))?;
        }
    }
    Ok(())
}

/// Makes `root` the root: pivot_root, or a move mount and chroot when pivoting is refused
/// (`no_pivot`, e.g. a ramdisk root).
pub fn enter(root: &Path, no_pivot: bool) -> Result<()> {
    nix::unistd::chdir(root).map_err(sys("entering the rootfs"))?;
    if no_pivot {
        mount(
            Some(root),
            "/",
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(sys("moving the rootfs to /"))?;
        nix::unistd::chroot(".").map_err(sys("chroot into the rootfs"))?;
    } else {
        nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root"))?;
        // The old root is stacked under the new one; make it private so unmounting it does
        // not propagate to the host, then drop it.
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys("making the old root private"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root"))?;
    }
    nix::unistd::chdir("/").map_err(sys("chdir /"))
}

/// After pivot: masked and read-only paths, a read-only root, and sysctls.
pub fn finish(spec: &Spec) -> Result<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    for p in linux.masked_paths().clone().unwrap_or_default() {
        let path = Path::new(&p);
        let r = if path.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else if path.exists() {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        } else {
            Ok(())
        };
        r.map_err(sys(format!("masking {p}")))?;
    }
    for p in linux.readonly_paths().clone().unwrap_or_default() {
        let path = Path::new(&p);
        if !path.exists() {
            continue;
        }
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys(format!("binding read-only path {p}")))?;
        remount_bind(path, MsFlags::MS_RDONLY | MsFlags::MS_REC)?;
    }
    for (key, value) in linux.sysctl().clone().unwrap_or_default() {
        if key.contains("..") {
            return Err(Error::Spec(format!("invalid sysctl {key}")));
        }
        let file = format!("/proc/sys/{}", key.replace('.', "/"));
        fs::write(&file, value.as_bytes()).map_err(|e| Error::io(format!("sysctl {key}"), e))?;
    }
    if spec
        .root()
        .as_ref()
        .is_some_and(|r| r.readonly().unwrap_or(false))
    {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_paths() {
        let o: Vec<String> = ["rbind", "ro", "nosuid", "size=65536k", "rprivate"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (set, _, prop, data) = parse_options(&o);
        assert!(set.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(prop, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(data, "size=65536k");

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a")).unwrap();
        symlink("/a", root.join("abs")).unwrap();
        symlink("../../..", root.join("a/up")).unwrap();
        assert_eq!(resolve_in_root(root, "/abs/x").unwrap(), root.join("a/x"));
        assert_eq!(
            resolve_in_root(root, "/a/up/etc").unwrap(),
            root.join("etc")
        );
        assert_eq!(
            resolve_in_root(root, "/../../etc").unwrap(),
            root.join("etc")
        );
    }
}
