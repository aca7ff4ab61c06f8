//! The uncompressed kernel ELF out of a bzImage, for a PVH boot.
//!
//! Why: QEMU can boot an ELF `vmlinux` directly through its PVH note, skipping the bzImage's
//! self-decompression, which costs about 3 s under TCG (vm-guest.md §4.3). Debian ships only the
//! bzImage, so the builder unpacks it once: the boot protocol header says where the compressed
//! payload is (`setup_sects` at 0x1f1, `payload_offset`/`payload_length` at 0x248/0x24c,
//! relative to the end of the real-mode setup code), and the payload is a compressed ELF.

use std::io::Read;

use crate::{Error, Result};

const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC_AT: usize = 0x202;
const PROTOCOL_VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// ELF note type of the Xen PVH entry point, which QEMU needs to boot the ELF directly.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The payload's compression, told by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Xz,
    Gzip,
    Zstd,
    Lz4,
    Lzma,
    Bzip2,
    Lzo,
    None,
    Unknown,
}

fn compression(payload: &[u8]) -> Compression {
    match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Compression::Xz,
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        [0x02, 0x21, 0x4c, 0x18, ..] => Compression::Lz4,
        [0x5d, 0x00, 0x00, ..] => Compression::Lzma,
        [b'B', b'Z', b'h', ..] => Compression::Bzip2,
        [0x89, b'L', b'Z', b'O', ..] => Compression::Lzo,
        [0x7f, b'E', b'L', b'F', ..] => Compression::None,
        _ => Compression::Unknown,
    }
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| Error::Format(format!("bzImage too short for a field at {at:#x}")))
}

/// The compressed payload of a bzImage and its compression.
pub fn payload(bz: &[u8]) -> Result<(&[u8], Compression)> {
    if bz.get(HEADER_MAGIC_AT..HEADER_MAGIC_AT + 4) != Some(b"HdrS") {
        return Err(Error::Format("not a bzImage (no HdrS header)".into()));
    }
    let version = bz
        .get(PROTOCOL_VERSION..PROTOCOL_VERSION + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .unwrap_or(0);
    if version < 0x208 {
        return Err(Error::Format(format!(
            "boot protocol {version:#x} predates payload fields (2.08)"
        )));
    }
    let setup_sects = match bz[SETUP_SECTS] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(bz, PAYLOAD_OFFSET)? as usize;
    let len = u32_at(bz, PAYLOAD_LENGTH)? as usize;
    let data = bz
        .get(start..start + len)
        .ok_or_else(|| Error::Format("bzImage payload lies outside the file".into()))?;
    Ok((data, compression(data)))
}

/// Decompresses the bzImage's payload into the kernel ELF and checks it can be PVH-booted.
pub fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>> {
    let (data, kind) = payload(bz)?;
    let elf = match kind {
        Compression::Xz => {
            // The build appends the uncompressed size after the xz stream; one stream only.
            let mut out = Vec::with_capacity(data.len() * 8);
            lzma_rust2::XzReader::new(data, false)
                .read_to_end(&mut out)
                .map_err(|e| Error::Format(format!("decompressing the kernel (xz): {e}")))?;
            out
        }
        Compression::None => data.to_vec(),
        other => {
            return Err(Error::Format(format!(
                "the kernel payload is {other:?}-compressed; only xz is supported here: \
                 configure an uncompressed vmlinux instead"
            )))
        }
    };
    check_elf(&elf)?;
    Ok(elf)
}

/// The ELF magic, 64-bit x86, and a PVH entry note (without it QEMU refuses `-kernel vmlinux`).
pub fn check_elf(elf: &[u8]) -> Result<()> {
    if elf.get(..4) != Some(ELF_MAGIC) {
        return Err(Error::Format("the kernel payload is not an ELF".into()));
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(Error::Format(
            "the kernel ELF is not 64-bit little-endian".into(),
        ));
    }
    if !has_pvh_note(elf) {
        return Err(Error::Format(
            "the kernel ELF has no PVH entry note (CONFIG_PVH); QEMU cannot boot it directly"
                .into(),
        ));
    }
    Ok(())
}

fn u16le(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32le(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64le(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// Walks the PT_NOTE program headers for a "Xen" note of type PHYS32_ENTRY.
fn has_pvh_note(elf: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (u64le(elf, 0x20), u16le(elf, 0x36), u16le(elf, 0x38))
    else {
        return false;
    };
    for i in 0..phnum as usize {
        let ph = phoff as usize + i * phentsize as usize;
        if u32le(elf, ph) != Some(PT_NOTE) {
            continue;
        }
        let (Some(off), Some(size)) = (u64le(elf, ph + 8), u64le(elf, ph + 32)) else {
            continue;
        };
        let (off, end) = (off as usize, (off + size) as usize);
        let mut at = off;
        while at + 12 <= end {
            let (Some(namesz), Some(descsz), Some(kind)) =
                (u32le(elf, at), u32le(elf, at + 4), u32le(elf, at + 8))
            else {
                break;
            };
            let name = elf.get(at + 12..at + 12 + namesz as usize);
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == Some(b"Xen\0") {
                return true;
            }
            let align = |n: u32| (n as usize).div_ceil(4) * 4;
            at += 12 + align(namesz) + align(descsz);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_NOTE holding a Xen PHYS32_ENTRY note.
    pub(crate) fn tiny_pvh_elf() -> Vec<u8> {
        let mut e = vec![0u8; 0x40 + 0x38];
        e[..4].copy_from_slice(ELF_MAGIC);
        e[4] = 2;
        e[5] = 1;
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let note_off = e.len() as u64;
        let mut note = Vec::new();
        note.extend(4u32.to_le_bytes());
        note.extend(4u32.to_le_bytes());
        note.extend(XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        note.extend(b"Xen\0");
        note.extend(0x100_0000u32.to_le_bytes());
        let ph = 0x40;
        e[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes());
        e[ph + 8..ph + 16].copy_from_slice(&note_off.to_le_bytes());
        e[ph + 32..ph + 40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        e.extend(note);
        e
    }

    fn tiny_bzimage(payload: &[u8], setup_sects: u8) -> Vec<u8> {
        let sects = if setup_sects == 0 {
            4
        } else {
            setup_sects as usize
        };
        let mut bz = vec![0u8; (sects + 1) * 512];
        bz[SETUP_SECTS] = setup_sects;
        bz[HEADER_MAGIC_AT..HEADER_MAGIC_AT + 4].copy_from_slice(b"HdrS");
        bz[PROTOCOL_VERSION..PROTOCOL_VERSION + 2].copy_from_slice(&0x20fu16.to_le_bytes());
        bz[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&16u32.to_le_bytes());
        bz[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4]
            .copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend([0u8; 16]);
        bz.extend_from_slice(payload);
        bz.extend(b"trailer");
        bz
    }

    #[test]
    fn finds_payload_and_accepts_plain_elf() {
        let elf = tiny_pvh_elf();
        for sects in [0u8, 27] {
            let bz = tiny_bzimage(&elf, sects);
            let (p, kind) = payload(&bz).unwrap();
            assert_eq!(kind, Compression::None);
            assert_eq!(p, &elf[..]);
            assert_eq!(extract_vmlinux(&bz).unwrap(), elf);
        }
    }

    /// The kernel's own way: `xz --check=crc32 --x86 --lzma2`, then its size appended.
    #[test]
    fn decompresses_an_xz_payload_with_the_x86_filter() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut elf = tiny_pvh_elf();
        // Something for the branch filter to rewrite: calls (E8) and jumps (E9).
        for i in 0..4096u32 {
            elf.extend([0xe8, (i & 0xff) as u8, 0x10, 0, 0, 0x90, 0xe9, 1, 2, 0, 0]);
        }
        let child = Command::new("xz")
            .args([
                "--format=xz",
                "--check=crc32",
                "--x86",
                "--lzma2=dict=1MiB",
                "-c",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            println!("SKIP xz payload test: no xz command");
            return;
        };
        child.stdin.take().unwrap().write_all(&elf).unwrap();
        let mut xz = child.wait_with_output().unwrap().stdout;
        xz.extend((elf.len() as u32).to_le_bytes());
        let bz = tiny_bzimage(&xz, 4);
        assert_eq!(payload(&bz).unwrap().1, Compression::Xz);
        assert_eq!(extract_vmlinux(&bz).unwrap(), elf);
    }

    #[test]
    fn rejects_what_it_cannot_boot() {
        assert!(payload(&[0u8; 1024]).is_err());
        let bz = tiny_bzimage(&[0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3], 4);
        let err = extract_vmlinux(&bz).unwrap_err().to_string();
        assert!(err.contains("Zstd"), "{err}");
        let mut elf = tiny_pvh_elf();
        let len = elf.len();
        elf[len - 8..len - 4].copy_from_slice(b"Xyz\0");
        assert!(check_elf(&elf).unwrap_err().to_string().contains("PVH"));
    }
}
