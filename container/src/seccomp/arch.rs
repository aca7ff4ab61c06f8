//! Architectures the compiler has syscall tables for, and how OCI names map onto them.

use oci_spec::runtime::Arch;

use super::syscall_tables;

/// `AUDIT_ARCH_*` values (linux/audit.h): what the kernel puts in `seccomp_data.arch`.
pub(super) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub(super) const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub(super) const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
pub(super) const AUDIT_ARCH_ARM: u32 = 0x4000_0028;

/// x32 syscalls run under `AUDIT_ARCH_X86_64` and are told apart by this bit in the number.
pub(super) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// One syscall ABI the filter can handle.
#[derive(Debug)]
pub(super) struct ArchDef {
    /// Name used in logs and errors (libseccomp's spelling).
    pub name: &'static str,
    /// `seccomp_data.arch` value of this ABI.
    pub audit_arch: u32,
    /// `(name, number)` pairs sorted by name.
    pub table: &'static [(&'static str, u32)],
    /// 32-bit ABIs have 32-bit syscall arguments, so (like libseccomp) argument conditions only
    /// compare the low word there.
    pub args_32bit: bool,
    /// Half-open range of `seccomp_data.nr` values owned by this ABI under `audit_arch`. x86_64
    /// and x32 share an audit arch and split the number space at [`X32_SYSCALL_BIT`].
    pub nr_range: (u64, u64),
}

const FULL_RANGE: (u64, u64) = (0, 1 << 32);

pub(super) static X86_64: ArchDef = ArchDef {
    name: "x86_64",
    audit_arch: AUDIT_ARCH_X86_64,
    table: syscall_tables::X86_64,
    args_32bit: false,
    nr_range: (0, X32_SYSCALL_BIT as u64),
};

pub(super) static X32: ArchDef = ArchDef {
    name: "x32",
    audit_arch: AUDIT_ARCH_X86_64,
    table: syscall_tables::X32,
    args_32bit: true,
    nr_range: (X32_SYSCALL_BIT as u64, 1 << 32),
};

pub(super) static X86: ArchDef = ArchDef {
    name: "x86",
    audit_arch: AUDIT_ARCH_I386,
    table: syscall_tables::X86,
    args_32bit: true,
    nr_range: FULL_RANGE,
};

pub(super) static AARCH64: ArchDef = ArchDef {
    name: "aarch64",
    audit_arch: AUDIT_ARCH_AARCH64,
    table: syscall_tables::AARCH64,
    args_32bit: false,
    nr_range: FULL_RANGE,
};

pub(super) static ARM: ArchDef = ArchDef {
    name: "arm",
    audit_arch: AUDIT_ARCH_ARM,
    table: syscall_tables::ARM,
    args_32bit: true,
    nr_range: FULL_RANGE,
};

impl ArchDef {
    /// Syscall number of `name` on this ABI, `None` when the ABI has no such syscall.
    pub(super) fn lookup(&self, name: &str) -> Option<u32> {
        self.table
            .binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .map(|i| self.table[i].1)
    }
}

/// The ABI this binary runs under: what `SCMP_ARCH_NATIVE` means, and the ABI a filter always
/// covers (libseccomp's `seccomp_init` adds it implicitly; `architectures` only adds more).
pub(super) fn native() -> Option<&'static ArchDef> {
    if cfg!(all(target_arch = "x86_64", target_pointer_width = "64")) {
        Some(&X86_64)
    } else if cfg!(all(target_arch = "x86_64", target_pointer_width = "32")) {
        Some(&X32)
    } else if cfg!(target_arch = "x86") {
        Some(&X86)
    } else if cfg!(target_arch = "aarch64") {
        Some(&AARCH64)
    } else if cfg!(target_arch = "arm") {
        Some(&ARM)
    } else {
        None
    }
}

/// Maps an OCI architecture to its ABI, `None` when we carry no table for it.
pub(super) fn from_oci(arch: Arch) -> Option<&'static ArchDef> {
    match arch {
        Arch::ScmpArchNative => native(),
        Arch::ScmpArchX86_64 => Some(&X86_64),
        Arch::ScmpArchX86 => Some(&X86),
        Arch::ScmpArchX32 => Some(&X32),
        Arch::ScmpArchAarch64 => Some(&AARCH64),
        Arch::ScmpArchArm => Some(&ARM),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_syscall_tables_are_sorted_and_unique() {
        for arch in [&X86_64, &X86, &X32, &AARCH64, &ARM] {
            for pair in arch.table.windows(2) {
                assert!(
                    pair[0].0 < pair[1].0,
                    "{}: {:?} !< {:?}",
                    arch.name,
                    pair[0],
                    pair[1]
                );
            }
            for &(name, nr) in arch.table {
                let nr = u64::from(nr);
                assert!(
                    arch.nr_range.0 <= nr && nr < arch.nr_range.1,
                    "{}: {name}={nr} outside the ABI's number range",
                    arch.name
                );
            }
        }
    }

    #[test]
    fn seccomp_syscall_tables_match_libc() {
        // Spot checks against the libc crate's own constants for the host ABI.
        let native = native().expect("test host has a syscall table");
        for (name, nr) in [
            ("read", libc::SYS_read),
            ("write", libc::SYS_write),
            ("mkdirat", libc::SYS_mkdirat),
            ("socket", libc::SYS_socket),
            ("personality", libc::SYS_personality),
            ("clone3", libc::SYS_clone3),
            ("getppid", libc::SYS_getppid),
            ("openat2", libc::SYS_openat2),
            ("futex_waitv", libc::SYS_futex_waitv),
        ] {
            assert_eq!(native.lookup(name), u32::try_from(nr).ok(), "{name}");
        }
        assert_eq!(X86.lookup("getpid"), Some(20));
        assert_eq!(X32.lookup("getpid"), Some(X32_SYSCALL_BIT + 39));
        // x32 has its own numbers for syscalls with pointer-size-dependent arguments.
        assert_eq!(X32.lookup("rt_sigaction"), Some(X32_SYSCALL_BIT + 512));
        assert_eq!(AARCH64.lookup("openat"), Some(56));
        assert_eq!(AARCH64.lookup("open"), None, "aarch64 has no open(2)");
        assert_eq!(ARM.lookup("cacheflush"), Some(0x0f_0002));
        assert_eq!(X86_64.lookup("fchmodat2"), Some(452));
        assert_eq!(X86_64.lookup("no_such_syscall"), None);
    }
}
