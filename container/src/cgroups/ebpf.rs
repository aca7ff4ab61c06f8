//! cgroup v2 device control. v2 has no devices controller: the kernel instead runs eBPF
//! programs of type BPF_PROG_TYPE_CGROUP_DEVICE attached to the cgroup on every device access.
//! The program is compiled here from the normalised rule state (the same state v1 uses) and
//! loaded with raw bpf(2) calls, so no eBPF library or toolchain is needed.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::devices::{DevKind, DeviceState, ACC_ALL};
use super::{CgroupError, Result};

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcodes (class | op | source) of the few instructions the filter needs.
const LDX_MEM_W: u8 = 0x61;
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_K: u8 = 0xb4;
const ALU32_MOV_X: u8 = 0xbc;
const JMP_JEQ_K: u8 = 0x15;
const JMP_JNE_K: u8 = 0x55;
const JMP_JNE_X: u8 = 0x5d;
const JMP_EXIT: u8 = 0x95;

// bpf_cgroup_dev_ctx.access_type low half: the device type.
const DEVCG_DEV_BLOCK: i32 = 1;
const DEVCG_DEV_CHAR: i32 = 2;

// Registers: r1 is the context on entry; r2..r5 hold the decoded request.
const R0: u8 = 0;
const R1: u8 = 1;
const R_TYPE: u8 = 2;
const R_ACCESS: u8 = 3;
const R_MAJOR: u8 = 4;
const R_MINOR: u8 = 5;

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        // The register nibbles are a C bitfield, whose order follows the byte order.
        #[cfg(target_endian = "little")]
        let regs = (src << 4) | (dst & 0x0f);
        #[cfg(target_endian = "big")]
        let regs = (dst << 4) | (src & 0x0f);
        Insn {
            code,
            regs,
            off,
            imm,
        }
    }
}

/// Compiles the state into: decode the request, then one block per exception that returns the
/// opposite of the default when it matches, then return the default. Exceptions all have the
/// same polarity after normalisation, so their order does not matter.
pub(crate) fn program(state: &DeviceState) -> Vec<Insn> {
    let mut p = vec![
        Insn::new(LDX_MEM_W, R_TYPE, R1, 0, 0),
        Insn::new(ALU32_AND_K, R_TYPE, 0, 0, 0xffff),
        Insn::new(LDX_MEM_W, R_ACCESS, R1, 0, 0),
        Insn::new(ALU32_RSH_K, R_ACCESS, 0, 0, 16),
        Insn::new(LDX_MEM_W, R_MAJOR, R1, 4, 0),
        Insn::new(LDX_MEM_W, R_MINOR, R1, 8, 0),
    ];
    let on_match = i32::from(!state.default_allow);
    'rules: for e in &state.exceptions {
        let mut block = Vec::new();
        let mut jumps = Vec::new();
        match e.kind {
            DevKind::Char => {
                jumps.push(block.len());
                block.push(Insn::new(JMP_JNE_K, R_TYPE, 0, 0, DEVCG_DEV_CHAR));
            }
            DevKind::Block => {
                jumps.push(block.len());
                block.push(Insn::new(JMP_JNE_K, R_TYPE, 0, 0, DEVCG_DEV_BLOCK));
            }
            DevKind::All => {}
        }
        if e.access & ACC_ALL != ACC_ALL {
            block.push(Insn::new(ALU32_MOV_X, R1, R_ACCESS, 0, 0));
            block.push(Insn::new(ALU32_AND_K, R1, 0, 0, i32::from(e.access)));
            jumps.push(block.len());
            if state.default_allow {
                // A deny exception blocks a request asking for any of its access bits
                // (the v1 controller's partial match).
                block.push(Insn::new(JMP_JEQ_K, R1, 0, 0, 0));
            } else {
                // An allow exception must cover every requested bit.
                block.push(Insn::new(JMP_JNE_X, R1, R_ACCESS, 0, 0));
            }
        }
        for (reg, num) in [(R_MAJOR, e.major), (R_MINOR, e.minor)] {
            if let Some(n) = num {
                // Immediates are sign-extended; no real device number is that large, so a
                // rule naming one can never match and is left out.
                let Ok(imm) = i32::try_from(n) else {
                    continue 'rules;
                };
                jumps.push(block.len());
                block.push(Insn::new(JMP_JNE_K, reg, 0, 0, imm));
            }
        }
        block.push(Insn::new(ALU32_MOV_K, R0, 0, 0, on_match));
        block.push(Insn::new(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for j in jumps {
            // Jumps are relative to the next instruction; skip to the end of the block.
            block[j].off = i16::try_from(len - j - 1).unwrap_or(i16::MAX);
        }
        p.extend(block);
    }
    p.push(Insn::new(
        ALU32_MOV_K,
        R0,
        0,
        0,
        i32::from(state.default_allow),
    ));
    p.push(Insn::new(JMP_EXIT, 0, 0, 0, 0));
    p
}

// bpf(2) commands and constants from <linux/bpf.h>.
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    let size = libc::c_uint::try_from(std::mem::size_of::<T>()).unwrap_or(0);
    // SAFETY: `attr` is a live, exclusively borrowed #[repr(C)] prefix of `union bpf_attr`
    // whose size is passed along; the kernel reads (and for queries writes) only within it.
    // Pointers stored inside it are kept alive by the callers for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_u32(fd: RawFd) -> u32 {
    u32::try_from(fd).unwrap_or(u32::MAX)
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let raw = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this new descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Loads the program; on failure the verifier log is fetched with a second attempt, since it
/// is the only explanation the kernel gives.
fn load(insns: &[Insn]) -> std::result::Result<OwnedFd, (io::Error, String)> {
    static LICENSE: &[u8] = b"Apache\0";
    let try_load = |log: Option<&mut Vec<u8>>| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: u32::try_from(insns.len()).unwrap_or(u32::MAX),
            insns: insns.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            ..Default::default()
        };
        attr.prog_name[..10].copy_from_slice(b"ctr_device");
        if let Some(buf) = log {
            attr.log_level = 1;
            attr.log_size = u32::try_from(buf.len()).unwrap_or(0);
            attr.log_buf = buf.as_mut_ptr() as u64;
        }
        let mut tries = 0;
        loop {
            match bpf(BPF_PROG_LOAD, &mut attr) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 5 => tries += 1,
                r => return r.and_then(owned),
            }
        }
    };
    match try_load(None) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let mut buf = vec![0u8; 64 * 1024];
            let _ = try_load(Some(&mut buf));
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            Err((e, String::from_utf8_lossy(&buf[..end]).trim().to_string()))
        }
    }
}

fn query(cgroup: &File) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: fd_u32(cgroup.as_raw_fd()),
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: u32::try_from(ids.len()).unwrap_or(0),
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    ids.truncate(usize::try_from(attr.prog_cnt).unwrap_or(0).min(64));
    Ok(ids)
}

fn attach(cgroup: &File, prog: &OwnedFd) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: fd_u32(cgroup.as_raw_fd()),
        attach_bpf_fd: fd_u32(prog.as_raw_fd()),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

fn detach_id(cgroup: &File, id: u32) -> io::Result<()> {
    let mut get = GetFdAttr {
        prog_id: id,
        ..Default::default()
    };
    let prog = match bpf(BPF_PROG_GET_FD_BY_ID, &mut get) {
        Ok(fd) => owned(fd)?,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut attr = AttachAttr {
        target_fd: fd_u32(cgroup.as_raw_fd()),
        attach_bpf_fd: fd_u32(prog.as_raw_fd()),
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    match bpf(BPF_PROG_DETACH, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Replaces the cgroup's device programs with one for `state`. The new program is attached
/// before the old ones are detached: attached programs must all allow an access, so the
/// container is never briefly unrestricted during an update.
pub(crate) fn apply(dir: &Path, state: &DeviceState) -> Result<()> {
    let err = |op, source, log: String| CgroupError::Bpf {
        op,
        path: dir.to_path_buf(),
        source,
        log: if log.is_empty() {
            String::new()
        } else {
            format!("\nverifier log:\n{log}")
        },
    };
    let prog = load(&program(state)).map_err(|(e, log)| err("load", e, log))?;
    let cgroup = File::open(dir).map_err(|source| CgroupError::Io {
        op: "open",
        path: dir.to_path_buf(),
        source,
    })?;
    let old = query(&cgroup).map_err(|e| err("query", e, String::new()))?;
    if let Err(e) = attach(&cgroup, &prog) {
        // A program attached without BPF_F_ALLOW_MULTI blocks adding ours; that exclusive one
        // has to go first.
        if old.is_empty() || e.raw_os_error() != Some(libc::EPERM) {
            return Err(err("attach", e, String::new()));
        }
        for &id in &old {
            detach_id(&cgroup, id).map_err(|e| err("detach", e, String::new()))?;
        }
        return attach(&cgroup, &prog).map_err(|e| err("attach", e, String::new()));
    }
    for &id in &old {
        detach_id(&cgroup, id).map_err(|e| err("detach", e, String::new()))?;
    }
    Ok(())
}

/// How many device programs are attached, for tests.
#[cfg(test)]
pub(crate) fn attached_count(dir: &Path) -> io::Result<usize> {
    let cgroup = File::open(dir)?;
    query(&cgroup).map(|ids| ids.len())
}

#[cfg(test)]
mod tests {
    use super::super::devices::Exception;
    use super::*;

    #[test]
    fn deny_by_default_program_shape() {
        let state = DeviceState {
            default_allow: false,
            exceptions: vec![
                Exception {
                    kind: DevKind::Char,
                    major: Some(1),
                    minor: Some(3),
                    access: ACC_ALL,
                },
                Exception {
                    kind: DevKind::Block,
                    major: Some(8),
                    minor: None,
                    access: super::super::devices::ACC_READ,
                },
            ],
        };
        let p = program(&state);
        // 6 prologue, block 1: type,major,minor,mov,exit = 5; block 2: type,mov,and,jne,major,
        // mov,exit = 7; epilogue 2.
        assert_eq!(p.len(), 6 + 5 + 7 + 2);
        let b1 = &p[6..11];
        assert_eq!(b1[0], Insn::new(JMP_JNE_K, R_TYPE, 0, 4, DEVCG_DEV_CHAR));
        assert_eq!(b1[1], Insn::new(JMP_JNE_K, R_MAJOR, 0, 3, 1));
        assert_eq!(b1[2], Insn::new(JMP_JNE_K, R_MINOR, 0, 2, 3));
        assert_eq!(b1[3], Insn::new(ALU32_MOV_K, R0, 0, 0, 1));
        let b2 = &p[11..18];
        assert_eq!(b2[0], Insn::new(JMP_JNE_K, R_TYPE, 0, 6, DEVCG_DEV_BLOCK));
        assert_eq!(b2[3], Insn::new(JMP_JNE_X, R1, R_ACCESS, 3, 0));
        assert_eq!(b2[4], Insn::new(JMP_JNE_K, R_MAJOR, 0, 2, 8));
        assert_eq!(p[18], Insn::new(ALU32_MOV_K, R0, 0, 0, 0));
        assert_eq!(p[19], Insn::new(JMP_EXIT, 0, 0, 0, 0));
    }

    #[test]
    fn insn_encoding_matches_kernel_layout() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let i = Insn::new(LDX_MEM_W, R_MAJOR, R1, 4, 0);
        // SAFETY: Insn is a plain 8-byte #[repr(C)] value.
        let bytes: [u8; 8] = unsafe { std::mem::transmute(i) };
        #[cfg(target_endian = "little")]
        assert_eq!(bytes, [0x61, 0x14, 4, 0, 0, 0, 0, 0]);
        let _ = bytes;
    }
}
