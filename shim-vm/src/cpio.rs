//! A writer for the "newc" cpio format the kernel unpacks as an initramfs.
//!
//! Why our own: the archive is a handful of entries, and writing it directly lets us put device
//! nodes (`/dev/console`, which the kernel opens before running `/init`) in the archive without
//! root or mknod, with fixed owners and timestamps so the same inputs give the same bytes. It is
//! left uncompressed: under TCG a gzip'd initramfs booted slower (vm-guest.md §4.2).

use std::collections::BTreeSet;
use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Writes entries in order; parents of each path are emitted first when missing, because the
/// kernel's unpacker does not create them.
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    offset: u64,
    dirs: BTreeSet<String>,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            ino: 1,
            offset: 0,
            dirs: BTreeSet::new(),
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.offset % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.offset += b.len() as u64;
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio entry name {name:?}"),
            ));
        }
        let ino = if name == "TRAILER!!!" { 0 } else { self.ino };
        self.ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the same inputs give the same archive
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0, // check
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            at += i + 1;
            if !dir.is_empty() && !self.dirs.contains(dir) {
                self.dirs.insert(dir.to_string());
                self.entry(dir, S_IFDIR | 0o755, (0, 0), &[])?;
            }
        }
        Ok(())
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.parents(path)?;
        if self.dirs.insert(path.to_string()) {
            self.entry(path, S_IFDIR | (perm & 0o7777), (0, 0), &[])?;
        }
        Ok(())
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFREG | (perm & 0o7777), (0, 0), data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFCHR | (perm & 0o7777), (major, minor), &[])
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses our own output back: (name, mode, rdevmajor, rdevminor, data).
    fn parse(mut b: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 0usize;
        loop {
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, maj, min, namesize) = (
                field(1),
                field(6) as usize,
                field(9),
                field(10),
                field(11) as usize,
            );
            let name = String::from_utf8(b[110..110 + namesize - 1].to_vec()).unwrap();
            let data_at = (110 + namesize).div_ceil(4) * 4;
            let data = b[data_at..data_at + size].to_vec();
            let next = (data_at + size).div_ceil(4) * 4;
            off += next;
            assert_eq!(off % 4, 0);
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, maj, min, data));
        }
    }

    #[test]
    fn writes_newc_with_parents_devices_and_trailer() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("init", 0o755, b"#!agent").unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.file("lib/modules/a.ko", 0o644, b"abcde").unwrap();
        w.file("lib/modules/order", 0o644, b"a.ko\n").unwrap();
        w.dir("proc", 0o555).unwrap();
        w.symlink("sbin/init", "/init").unwrap();
        let bytes = w.finish().unwrap();
        let entries = parse(&bytes);
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "init",
                "dev",
                "dev/console",
                "lib",
                "lib/modules",
                "lib/modules/a.ko",
                "lib/modules/order",
                "proc",
                "sbin",
                "sbin/init"
            ]
        );
        assert_eq!(entries[0].1, S_IFREG | 0o755);
        assert_eq!(entries[0].4, b"#!agent");
        assert_eq!(
            (entries[2].1, entries[2].2, entries[2].3),
            (S_IFCHR | 0o600, 5, 1)
        );
        assert_eq!(entries[3].1, S_IFDIR | 0o755);
        assert_eq!(entries[5].4, b"abcde");
        assert_eq!(entries[9].4, b"/init");
    }

    #[test]
    fn refuses_absolute_names() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("/init", 0o755, b"").is_err());
    }
}
