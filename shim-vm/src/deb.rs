//! Unpacking a Debian package without dpkg: a `.deb` is an `ar` archive whose `data.tar.*`
//! member holds the files. We read the archive ourselves and stream the tar through a pure-Rust
//! xz decoder, extracting only the paths the caller wants (a kernel package is 400 MB unpacked,
//! of which the guest needs the image and a few modules).

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

const AR_MAGIC: &[u8; 8] = b"!<arch>\n";
const AR_HEADER_LEN: usize = 60;

/// One member of an `ar` archive: its name and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArMember {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// Lists the members of an `ar` archive (the System V/GNU variant dpkg writes).
pub fn ar_members<R: Read + Seek>(r: &mut R) -> Result<Vec<ArMember>> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|e| Error::io("reading the ar magic", e))?;
    if &magic != AR_MAGIC {
        return Err(Error::Format("not an ar archive (.deb)".into()));
    }
    let mut members = Vec::new();
    let mut pos = 8u64;
    loop {
        let mut header = [0u8; AR_HEADER_LEN];
        match read_full(r, &mut header) {
            Ok(0) => break,
            Ok(n) if n == AR_HEADER_LEN => {}
            Ok(_) => return Err(Error::Format("truncated ar member header".into())),
            Err(e) => return Err(Error::io("reading an ar member header", e)),
        }
        if &header[58..60] != b"`\n" {
            return Err(Error::Format("bad ar member header".into()));
        }
        let name = String::from_utf8_lossy(&header[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: u64 = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Error::Format(format!("bad size in ar member {name:?}")))?;
        let offset = pos + AR_HEADER_LEN as u64;
        members.push(ArMember { name, offset, size });
        // Members are padded to an even offset.
        pos = offset + size + (size & 1);
        r.seek(SeekFrom::Start(pos))
            .map_err(|e| Error::io("seeking in the ar archive", e))?;
    }
    Ok(members)
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A package path (`./lib/modules/…`) as a relative path with only normal components, or
/// `None` for anything that could escape the destination.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Opens the `data.tar*` member of a `.deb` as a decompressed byte stream.
fn data_tar(deb: &Path) -> Result<Box<dyn Read>> {
    let mut file =
        File::open(deb).map_err(|e| Error::io(format!("opening {}", deb.display()), e))?;
    let members = ar_members(&mut file)?;
    let data = members
        .into_iter()
        .find(|m| m.name.starts_with("data.tar"))
        .ok_or_else(|| Error::Format(format!("{} has no data.tar member", deb.display())))?;
    file.seek(SeekFrom::Start(data.offset))
        .map_err(|e| Error::io("seeking to data.tar", e))?;
    let raw = BufReader::with_capacity(1 << 20, file.take(data.size));
    match data.name.as_str() {
        "data.tar" => Ok(Box::new(raw)),
        "data.tar.xz" => Ok(Box::new(lzma_rust2::XzReader::new(raw, true))),
        other => Err(Error::Format(format!(
            "{}: {other} is not supported (only xz or uncompressed payloads)",
            deb.display()
        ))),
    }
}

/// Extracts the regular files of a `.deb` whose package path (without the
/// leading `./`) satisfies `want` into `dest`. Returns the relative paths written.
pub fn extract(deb: &Path, dest: &Path, want: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut archive = tar::Archive::new(data_tar(deb)?);
    let entries = archive
        .entries()
        .map_err(|e| Error::io("reading data.tar", e))?;
    let mut written = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::io("reading a data.tar entry", e))?;
        let path = entry
            .path()
            .map_err(|e| Error::io("reading a data.tar path", e))?
            .into_owned();
        let Some(rel) = safe_relative(&path) else {
            continue;
        };
        if !want(&rel) {
            continue;
        }
        // Regular files only. Symlinks are left out on purpose: none is needed, and a later
        // entry could be written through one to outside `dest`.
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let target = dest.join(&rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        let mut out = File::create(&target)
            .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
        io::copy(&mut entry, &mut out)
            .map_err(|e| Error::io(format!("writing {}", target.display()), e))?;
        written.push(rel);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn ar_header(name: &str, size: usize) -> Vec<u8> {
        let h = format!(
            "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            name, 0, 0, 0, 100644, size
        );
        assert_eq!(h.len(), AR_HEADER_LEN);
        h.into_bytes()
    }

    /// A minimal .deb: debian-binary, an odd-sized control member, an uncompressed data.tar.
    fn fake_deb(data_tar: &[u8]) -> Vec<u8> {
        let mut out = AR_MAGIC.to_vec();
        for (name, body) in [
            ("debian-binary", &b"2.0\n"[..]),
            ("control.tar", &b"odd"[..]),
            ("data.tar", data_tar),
        ] {
            out.extend(ar_header(name, body.len()));
            out.extend_from_slice(body);
            if body.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    fn tar_with(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append_data(&mut h, path, *body).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn lists_members_with_padding() {
        let deb = fake_deb(b"x");
        let members = ar_members(&mut Cursor::new(&deb)).unwrap();
        let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["debian-binary", "control.tar", "data.tar"]);
        let data = &members[2];
        assert_eq!(&deb[data.offset as usize..][..data.size as usize], b"x");
    }

    #[test]
    fn rejects_non_ar() {
        let err = ar_members(&mut Cursor::new(b"PK\x03\x04 not a deb".to_vec())).unwrap_err();
        assert!(err.to_string().contains("not an ar archive"), "{err}");
    }

    #[test]
    fn extracts_only_wanted_paths() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_with(&[
            ("./boot/vmlinuz-1", b"kernel"),
            ("./lib/modules/1/kernel/a.ko", b"module"),
            ("./usr/share/doc/x", b"doc"),
        ]);
        let deb = dir.path().join("k.deb");
        File::create(&deb)
            .unwrap()
            .write_all(&fake_deb(&tar))
            .unwrap();
        let out = dir.path().join("out");
        let written = extract(&deb, &out, |p| !p.starts_with("usr")).unwrap();
        assert_eq!(written.len(), 2);
        assert_eq!(fs::read(out.join("boot/vmlinuz-1")).unwrap(), b"kernel");
        assert_eq!(
            fs::read(out.join("lib/modules/1/kernel/a.ko")).unwrap(),
            b"module"
        );
        assert!(!out.join("usr").exists());
    }

    #[test]
    fn refuses_escaping_paths() {
        assert_eq!(safe_relative(Path::new("../etc/passwd")), None);
        assert_eq!(safe_relative(Path::new("/etc/passwd")), None);
        assert_eq!(
            safe_relative(Path::new("./boot/x")),
            Some(PathBuf::from("boot/x"))
        );
    }
}
