//! Kernel modules for the initramfs: find them in an unpacked kernel package, read their
//! dependencies, and order them so each loads after what it needs.
//!
//! Why not modprobe: the guest has no modprobe and no `modules.dep` (Debian's package ships
//! none; depmod runs at install), and the agent loads modules with `finit_module` itself. So the
//! builder reads each `.ko`'s `.modinfo` section (`depends=`), sorts topologically, and writes
//! the order next to the modules.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The modules a microvm guest needs: virtio-mmio transport, virtio-serial (the agent's
/// channel), 9p over virtio (the rootfs share) and overlay (a writable layer on it).
pub const MICROVM_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_console",
    "9pnet",
    "9pnet_virtio",
    "netfs",
    "fscache",
    "9p",
    "overlay",
];

/// Module names use `_` and `-` interchangeably; the kernel compares them as `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The `key=value` strings of a module's `.modinfo` section.
pub fn modinfo(ko: &[u8]) -> Result<Vec<(String, String)>> {
    let bad = || Error::Format("not a 64-bit little-endian ELF module".into());
    if ko.get(..4) != Some(b"\x7fELF") || ko.get(4) != Some(&2) || ko.get(5) != Some(&1) {
        return Err(bad());
    }
    let u16_at = |at: usize| ko.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |at: usize| {
        ko.get(at..at + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |at: usize| {
        ko.get(at..at + 8).map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        })
    };
    let shoff = u64_at(0x28).ok_or_else(bad)? as usize;
    let shentsize = u16_at(0x3a).ok_or_else(bad)? as usize;
    let shnum = u16_at(0x3c).ok_or_else(bad)? as usize;
    let shstrndx = u16_at(0x3e).ok_or_else(bad)? as usize;
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let at = shoff + i * shentsize;
        Some((
            u32_at(at)?,
            u64_at(at + 24)? as usize,
            u64_at(at + 32)? as usize,
        ))
    };
    let (_, stroff, strsize) = section(shstrndx).ok_or_else(bad)?;
    let strtab = ko.get(stroff..stroff + strsize).ok_or_else(bad)?;
    for i in 0..shnum {
        let Some((name_off, off, size)) = section(i) else {
            continue;
        };
        let name = strtab
            .get(name_off as usize..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name != b".modinfo" {
            continue;
        }
        let data = ko.get(off..off + size).ok_or_else(bad)?;
        return Ok(data
            .split(|&b| b == 0)
            .filter_map(|kv| {
                let kv = std::str::from_utf8(kv).ok()?;
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect());
    }
    Err(Error::Format("the module has no .modinfo section".into()))
}

/// The plain `.ko` bytes of a module file, decompressing `.ko.xz` (finit_module in the guest
/// takes only uncompressed modules from us; Debian trixie compresses them).
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let data = fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".ko") {
        Ok(data)
    } else if name.ends_with(".ko.xz") {
        let mut out = Vec::new();
        lzma_rust2::XzReader::new(&data[..], true)
            .read_to_end(&mut out)
            .map_err(|e| Error::Format(format!("decompressing {}: {e}", path.display())))?;
        Ok(out)
    } else {
        Err(Error::Format(format!(
            "{}: only .ko and .ko.xz modules are supported",
            path.display()
        )))
    }
}

/// One module ready for the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub path: PathBuf,
    pub depends: Vec<String>,
}

/// The modules of one unpacked kernel: `lib/modules/<release>`.
pub struct ModuleTree {
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

fn module_stem(file_name: &str) -> Option<&str> {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))
}

impl ModuleTree {
    /// Indexes `root` (a `lib/modules/<release>` directory) by module name.
    pub fn open(root: &Path) -> Result<ModuleTree> {
        let mut files = BTreeMap::new();
        let mut stack = vec![root.join("kernel")];
        while let Some(dir) = stack.pop() {
            let entries = fs::read_dir(&dir)
                .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    stack.push(path);
                } else if let Some(stem) = entry.file_name().to_str().and_then(module_stem) {
                    files.insert(normalize(stem), path);
                }
            }
        }
        let builtin = fs::read_to_string(root.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next().and_then(module_stem).map(normalize))
            .collect();
        Ok(ModuleTree { files, builtin })
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// `wanted` and everything they depend on, dependencies first. Built-in modules are left
    /// out (they are already in the kernel); a missing one is an error naming who needed it.
    pub fn resolve(&self, wanted: &[&str]) -> Result<Vec<Module>> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for name in wanted {
            self.visit(
                &normalize(name),
                "the image",
                &mut Vec::new(),
                &mut done,
                &mut order,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        needed_by: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<Module>,
    ) -> Result<()> {
        if done.contains(name) || self.is_builtin(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(Error::Format(format!(
                "module dependency cycle: {} -> {name}",
                path.join(" -> ")
            )));
        }
        let file = self.files.get(name).ok_or_else(|| {
            Error::Format(format!(
                "module {name} (needed by {needed_by}) is not in the kernel package"
            ))
        })?;
        let info = modinfo(&read_module(file)?)?;
        let depends: Vec<String> = info
            .iter()
            .filter(|(k, _)| k == "depends")
            .flat_map(|(_, v)| v.split(','))
            .filter(|d| !d.is_empty())
            .map(normalize)
            .collect();
        path.push(name.to_string());
        for dep in &depends {
            self.visit(dep, name, path, done, order)?;
        }
        path.pop();
        done.insert(name.to_string());
        order.push(Module {
            name: name.to_string(),
            path: file.clone(),
            depends,
        });
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF relocatable with a section-name table and a `.modinfo` section.
    pub(crate) fn fake_ko(info: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for kv in info {
            modinfo.extend_from_slice(kv.as_bytes());
            modinfo.push(0);
        }
        let shstrtab = b"\0.modinfo\0.shstrtab\0".to_vec();
        let mut e = vec![0u8; 0x40];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        let modinfo_off = e.len();
        e.extend(&modinfo);
        let strtab_off = e.len();
        e.extend(&shstrtab);
        let shoff = e.len();
        e[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        e[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        e[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        e[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut s = vec![0u8; 64];
            s[..4].copy_from_slice(&name.to_le_bytes());
            s[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            s[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            e.extend(s);
        };
        sh(0, 0, 0);
        sh(1, modinfo_off, modinfo.len());
        sh(10, strtab_off, shstrtab.len());
        e
    }

    fn tree(dir: &Path, mods: &[(&str, &str)]) -> ModuleTree {
        for (rel, deps) in mods {
            let path = dir.join("kernel").join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            let depends = format!("depends={deps}");
            fs::write(&path, fake_ko(&["license=GPL", &depends])).unwrap();
        }
        fs::write(dir.join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        ModuleTree::open(dir).unwrap()
    }

    #[test]
    fn reads_modinfo() {
        let info = modinfo(&fake_ko(&["name=virtio", "depends=virtio_ring"])).unwrap();
        assert_eq!(
            info,
            [
                ("name".to_string(), "virtio".to_string()),
                ("depends".to_string(), "virtio_ring".to_string())
            ]
        );
        assert!(modinfo(b"not an elf").is_err());
    }

    #[test]
    fn orders_dependencies_first() {
        let dir = tempfile::tempdir().unwrap();
        let t = tree(
            dir.path(),
            &[
                ("fs/9p/9p.ko", "9pnet,fscache,netfs"),
                ("fs/fscache/fscache.ko", "netfs"),
                ("fs/netfs/netfs.ko", ""),
                ("net/9p/9pnet.ko", ""),
                ("net/9p/9pnet_virtio.ko", "virtio,9pnet,virtio_ring,ext4"),
                ("drivers/virtio/virtio.ko", "virtio_ring"),
                ("drivers/virtio/virtio_ring.ko", ""),
            ],
        );
        let names: Vec<_> = t
            .resolve(&["9p", "9pnet-virtio"])
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(
            names,
            [
                "9pnet",
                "netfs",
                "fscache",
                "9p",
                "virtio_ring",
                "virtio",
                "9pnet_virtio"
            ]
        );
    }

    #[test]
    fn reports_missing_and_cycles() {
        let dir = tempfile::tempdir().unwrap();
        let t = tree(
            dir.path(),
            &[("a.ko", "b"), ("b.ko", "a"), ("c.ko", "nope")],
        );
        let err = t.resolve(&["a"]).unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");
        let err = t.resolve(&["c"]).unwrap_err().to_string();
        assert!(err.contains("nope (needed by c)"), "{err}");
    }
}
