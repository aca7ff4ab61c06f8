//! Seccomp: compiling an OCI seccomp profile (`linux.seccomp`) to a classic-BPF filter ourselves
//! (no libseccomp, no C) and installing it.
//!
//! [`compile`] runs in the runtime, where allocating and logging are fine; [`install`] runs in the
//! forked child right before `execve` and only makes the `seccomp(2)` call.
//!
//! # Behaviour (OCI runtime spec, matching runc + libseccomp where the spec is silent)
//!
//! * **Architectures.** The filter always covers the native ABI (libseccomp's `seccomp_init`
//!   adds it implicitly and runc only *adds* the listed ones), plus every ABI in
//!   `architectures` that we carry a syscall table for: x86_64, x86 (i386), x32, aarch64 and arm.
//!   A listed architecture without a table is skipped with a warning: its syscalls then get the
//!   bad-architecture action below, which is what they would get had it not been listed.
//! * **Bad architecture.** A syscall made through an ABI the filter does not cover (e.g. an
//!   `int 0x80` i386 syscall when only x86_64 is listed, or an x32 syscall when x32 is not)
//!   gets `SECCOMP_RET_KILL_THREAD`. This is libseccomp's default `SCMP_FLTATR_ACT_BADARCH`
//!   (`SCMP_ACT_KILL`), which runc never changes. It is deliberately *not* the profile's default
//!   action: syscall numbers differ per ABI, so rules written for one ABI say nothing about
//!   another, and with a deny-list profile (default `SCMP_ACT_ALLOW`) falling back to the
//!   default would let a process bypass every rule by switching ABI.
//! * **Actions.** `SCMP_ACT_KILL`/`KILL_THREAD`, `KILL_PROCESS`, `TRAP`, `ERRNO` (errno from
//!   `errnoRet`/`defaultErrnoRet`, default `EPERM`), `TRACE` (`errnoRet` as the tracer's value,
//!   default `EPERM` like runc), `LOG`, `ALLOW`. `SCMP_ACT_NOTIFY` is rejected: we have no
//!   seccomp agent to hand a listener fd to. As the spec requires, an `errnoRet` on an action
//!   that takes none is an error, and so is one that does not fit the 16-bit `SECCOMP_RET_DATA`.
//!   Unknown action, operator, architecture or flag *names* never reach us: `oci-spec` rejects
//!   them when the config is parsed.
//! * **Unknown syscall names** are skipped per ABI (logged at debug level), like runc does for
//!   names libseccomp cannot resolve: profiles list syscalls of every architecture and of newer
//!   kernels.
//! * **Rule order.** A rule whose action equals the default action is dropped, as runc does
//!   (libseccomp refuses such rules); its names still count for the `-ENOSYS` stub below. The
//!   remaining rules for a syscall are tried **in profile order and the first whose conditions
//!   all match decides**; a rule without `args` matches unconditionally, so rules after it for
//!   the same syscall are unreachable. libseccomp instead merges rules into a per-syscall tree
//!   in which a later unconditional rule replaces earlier conditional ones and overlapping
//!   conditional rules with different actions resolve by its internal ordering; the results
//!   only differ for profiles that give one syscall overlapping rules with *different*
//!   non-default actions, which typical profiles (e.g. Docker's and containerd's defaults) do
//!   not do.
//! * **Arguments.** Conditions in one rule are ANDed. Comparisons are unsigned on the full 64-bit
//!   value for 64-bit ABIs (high word, then low word) and on the low 32 bits only for 32-bit
//!   ABIs (x86, x32, arm), as libseccomp does. `SCMP_CMP_MASKED_EQ` is
//!   `(arg & value) == valueTwo`, with `valueTwo` masked as well (libseccomp does the same).
//!   Like runc, a rule naming the same argument index more than once is split into one rule per
//!   condition (i.e. they are ORed) — runc's compatibility behaviour for old profiles.
//! * **`-ENOSYS` for unknown syscalls.** Like runc's patched filter, when the default action is
//!   not permissive (`ALLOW`, `LOG`, `TRACE`) a syscall numbered above the highest syscall the
//!   profile names (for that ABI) returns `ENOSYS` instead of the default action. Such a syscall
//!   is newer than the profile, and `ENOSYS` is what makes libcs fall back to older syscalls
//!   (e.g. `clone3` -> `clone`), where `EPERM` would make them fail. (runc only does this for
//!   ABIs listed in `architectures`; we also do it for the implicit native one.)
//!
//! # Program layout
//!
//! ```text
//!   ld  arch                         ; seccomp_data.arch
//!   jeq AUDIT_ARCH_<native> -> block0   (one jeq per covered audit arch, native first)
//!   jeq AUDIT_ARCH_<other>  -> block1
//!   ret KILL_THREAD                  ; bad architecture
//! block: ld nr
//!   binary search over syscall-number ranges (jge), with short jeq lists at the bottom
//!   leaves: ret <action> | per-syscall argument chain ending in ret
//! ```
//!
//! Per audit arch, the syscall number space is cut into ranges with one outcome each (the
//! default action, `ENOSYS` above the profile's highest syscall, the bad-arch action for the x32
//! half of `AUDIT_ARCH_X86_64` when x32 is not covered, an action, or an argument chain), merging
//! adjacent ranges with the same outcome. An allow-list profile allows mostly contiguous
//! syscall numbers, so ~350 allowed syscalls collapse into far fewer ranges, and the binary
//! search costs about log2(ranges) comparisons per syscall. Where a subtree is "one outcome,
//! except at most four single syscalls and ranges at its top end", a short list (`jge` for the
//! top ranges, then `jeq` per single syscall) replaces the subtree, which keeps deny-list
//! profiles small: "allow everything but mkdir and mkdirat" is 9 instructions in all. Jumps are
//! resolved by the backwards emitter in `bpf.rs`, which inserts trampolines for targets beyond
//! the 8-bit conditional-jump range.

mod arch;
mod bpf;
mod syscall_tables;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use arch::ArchDef;
use bpf::{Emitter, Target, BPF_JEQ, BPF_JGE, BPF_JGT};

// Filter return values (linux/seccomp.h).
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_KILL_THREAD: u32 = 0x0000_0000;
const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_TRACE: u32 = 0x7ff0_0000;
const SECCOMP_RET_LOG: u32 = 0x7ffc_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_DATA: u32 = 0x0000_ffff;

// seccomp(2) operation and filter flags (linux/seccomp.h).
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_MODE_FILTER: libc::c_ulong = 2;
const SECCOMP_FILTER_FLAG_TSYNC: u32 = 1 << 0;
const SECCOMP_FILTER_FLAG_LOG: u32 = 1 << 1;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u32 = 1 << 2;

/// Kernel limit on a classic-BPF program's length (linux/bpf_common.h).
const BPF_MAXINSNS: usize = 4096;

// Offsets into `struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer;
// __u64 args[6]; }`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARGS: u32 = 16;

/// Result for syscalls of ABIs the filter does not cover; see the module docs.
const BAD_ARCH_ACTION: u32 = SECCOMP_RET_KILL_THREAD;

/// Largest number of exceptions handled by a linear list instead of a binary-search subtree.
/// Four keeps the worst-case path short while saving the `jge`s a tree would spend separating
/// single syscalls.
const LINEAR_MAX: usize = 4;

/// Default errno of `SCMP_ACT_ERRNO`/`SCMP_ACT_TRACE` without `errnoRet` (runc uses `EPERM`).
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;

/// A compiled seccomp filter, ready for [`install`].
#[derive(Clone)]
pub struct Program {
    insns: Vec<libc::sock_filter>,
}

impl Program {
    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether the program has no instructions (never true for a compiled program).
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// The instructions, e.g. to hand to `seccomp(2)` by other means.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.insns
    }
}

impl fmt::Debug for Program {
    /// Prints a disassembly, which is what one wants when a filter misbehaves.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Program ({} instructions)", self.insns.len())?;
        f.write_str(&bpf::disassemble(&self.insns))
    }
}

/// Why a profile cannot be compiled or a filter cannot be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// `SCMP_ACT_NOTIFY` needs a seccomp agent to receive the listener fd; we have none.
    #[error("seccomp: {context}: SCMP_ACT_NOTIFY is not supported (no seccomp notify agent)")]
    NotifyUnsupported {
        /// Where in the profile: `defaultAction` or `syscalls[N]`.
        context: String,
    },
    /// `errnoRet`/`defaultErrnoRet` given for an action that returns no errno.
    #[error("seccomp: {context}: errnoRet is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {action}")]
    ErrnoRetNotSupported {
        /// Where in the profile.
        context: String,
        /// The action it was given with.
        action: String,
    },
    /// The errno does not fit the 16-bit data field of the filter's return value.
    #[error("seccomp: {context}: errnoRet {value} is out of range (at most {max})")]
    ErrnoRetOutOfRange {
        /// Where in the profile.
        context: String,
        /// The value given.
        value: u32,
        /// Largest accepted value.
        max: u32,
    },
    /// A syscall rule with an empty `names` list (the spec requires at least one).
    #[error("seccomp: syscalls[{rule}]: names must contain at least one syscall name")]
    EmptyNames {
        /// Index of the rule in `syscalls`.
        rule: usize,
    },
    /// A condition on an argument index beyond the six syscall arguments.
    #[error("seccomp: syscalls[{rule}]: argument index {index} is out of range (0-5)")]
    ArgIndexOutOfRange {
        /// Index of the rule in `syscalls`.
        rule: usize,
        /// The index given.
        index: usize,
    },
    /// A filter flag this runtime cannot honour.
    #[error("seccomp: flag {flag} is not supported: {reason}")]
    UnsupportedFlag {
        /// The flag's OCI name.
        flag: String,
        /// Why.
        reason: &'static str,
    },
    /// This build's own architecture has no syscall table, so no filter can be built.
    #[error("seccomp: the native architecture ({0}) is not supported")]
    UnsupportedNativeArch(&'static str),
    /// The profile compiles to more instructions than the kernel accepts.
    #[error("seccomp: the compiled filter has {len} instructions, more than the kernel's limit of {max}")]
    ProgramTooLong {
        /// Instructions generated.
        len: usize,
        /// The kernel limit.
        max: usize,
    },
    /// `seccomp(2)` failed; `EACCES` means neither `no_new_privs` nor `CAP_SYS_ADMIN`.
    #[error("seccomp: installing the filter failed: {0}")]
    Install(#[source] std::io::Error),
    /// With `SECCOMP_FILTER_FLAG_TSYNC`, another thread could not be synchronised.
    #[error("seccomp: SECCOMP_FILTER_FLAG_TSYNC failed: thread {0} could not be synchronised")]
    TsyncFailed(libc::c_long),
}

/// Compiles `profile` into a BPF program for [`install`]. See the module docs for semantics.
pub fn compile(profile: &LinuxSeccomp) -> Result<Program, SeccompError> {
    let default = action_value(
        profile.default_action(),
        profile.default_errno_ret(),
        "defaultAction",
    )?;
    let (rules, all_names) = normalize_rules(profile, default)?;
    let arches = covered_arches(profile)?;
    let enosys = enosys_stub_wanted(profile.default_action(), default);

    let mut chains = Vec::new();
    let mut groups: Vec<(u32, Vec<&ArchDef>)> = Vec::new();
    for arch in arches {
        match groups
            .iter_mut()
            .find(|(audit, _)| *audit == arch.audit_arch)
        {
            Some((_, members)) => members.push(arch),
            None => groups.push((arch.audit_arch, vec![arch])),
        }
    }
    let groups: Vec<(u32, Vec<Segment>)> = groups
        .into_iter()
        .map(|(audit, mut members)| {
            members.sort_by_key(|a| a.nr_range.0);
            let mut segments = Segments::default();
            let mut cursor = 0u64;
            for arch in members {
                segments.push(cursor, arch.nr_range.0, SegTarget::Ret(BAD_ARCH_ACTION));
                let enosys_max = if enosys {
                    all_names.iter().filter_map(|n| arch.lookup(n)).max()
                } else {
                    None
                };
                arch_segments(
                    arch,
                    &rules,
                    default,
                    enosys_max,
                    &mut chains,
                    &mut segments,
                );
                cursor = arch.nr_range.1;
            }
            segments.push(cursor, 1 << 32, SegTarget::Ret(BAD_ARCH_ACTION));
            (audit, segments.0)
        })
        .collect();

    let insns = assemble(&groups, &chains, default);
    if insns.len() > BPF_MAXINSNS {
        return Err(SeccompError::ProgramTooLong {
            len: insns.len(),
            max: BPF_MAXINSNS,
        });
    }
    Ok(Program { insns })
}

/// The `seccomp(2)` filter flags the profile asks for (`SECCOMP_FILTER_FLAG_*`), for [`install`].
pub fn flags(profile: &LinuxSeccomp) -> Result<u32, SeccompError> {
    let mut bits = 0;
    for flag in profile.flags().iter().flatten() {
        bits |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            // The kernel only accepts it together with SECCOMP_FILTER_FLAG_NEW_LISTENER.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(SeccompError::UnsupportedFlag {
                    flag: flag.to_string(),
                    reason: "it only applies to SCMP_ACT_NOTIFY listeners, which are not supported",
                })
            }
        };
    }
    Ok(bits)
}

/// Installs the filter on the calling thread (all threads with `SECCOMP_FILTER_FLAG_TSYNC`).
///
/// Requires `no_new_privs` (`prctl(PR_SET_NO_NEW_PRIVS)`) or `CAP_SYS_ADMIN`; otherwise the
/// kernel refuses with `EACCES`, returned as [`SeccompError::Install`]. Does not allocate and
/// makes no call but `seccomp(2)` (or `prctl(2)` on kernels before 3.17), so it is safe between
/// `fork` and `execve`. `flags` is usually [`flags`]`(profile)`.
pub fn install(program: &Program, flags: u32) -> Result<(), SeccompError> {
    let len = program.insns.len();
    if len == 0 || len > BPF_MAXINSNS {
        return Err(SeccompError::ProgramTooLong {
            len,
            max: BPF_MAXINSNS,
        });
    }
    let fprog = libc::sock_fprog {
        // Checked against BPF_MAXINSNS above.
        len: len as libc::c_ushort,
        // The kernel only reads the filter.
        filter: program.insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points to `len` valid instructions that outlive the call; the kernel
    // copies the program.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            libc::c_ulong::from(flags),
            &fprog as *const libc::sock_fprog,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    if ret > 0 {
        // TSYNC reports the thread it could not synchronise as a positive return value.
        return Err(SeccompError::TsyncFailed(ret));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOSYS) && flags == 0 {
        // Pre-3.17 kernels have no seccomp(2); prctl installs the same filter without flags.
        // SAFETY: as above.
        let ret = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if ret == 0 {
            return Ok(());
        }
        return Err(SeccompError::Install(std::io::Error::last_os_error()));
    }
    Err(SeccompError::Install(err))
}

/// Filter return value of an OCI action.
fn action_value(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    context: &str,
) -> Result<u32, SeccompError> {
    use LinuxSeccompAction as A;
    let with_data = |base: u32| -> Result<u32, SeccompError> {
        let errno = errno_ret.unwrap_or(DEFAULT_ERRNO);
        if errno > SECCOMP_RET_DATA {
            return Err(SeccompError::ErrnoRetOutOfRange {
                context: context.to_string(),
                value: errno,
                max: SECCOMP_RET_DATA,
            });
        }
        Ok(base | errno)
    };
    let plain = |value: u32| -> Result<u32, SeccompError> {
        match errno_ret {
            None => Ok(value),
            Some(_) => Err(SeccompError::ErrnoRetNotSupported {
                context: context.to_string(),
                action: action.to_string(),
            }),
        }
    };
    match action {
        A::ScmpActKill | A::ScmpActKillThread => plain(SECCOMP_RET_KILL_THREAD),
        A::ScmpActKillProcess => plain(SECCOMP_RET_KILL_PROCESS),
        A::ScmpActTrap => plain(SECCOMP_RET_TRAP),
        A::ScmpActErrno => with_data(SECCOMP_RET_ERRNO),
        A::ScmpActTrace => with_data(SECCOMP_RET_TRACE),
        A::ScmpActLog => plain(SECCOMP_RET_LOG),
        A::ScmpActAllow => plain(SECCOMP_RET_ALLOW),
        A::ScmpActNotify => Err(SeccompError::NotifyUnsupported {
            context: context.to_string(),
        }),
    }
}

/// runc's rule for prepending its `-ENOSYS` stub: only when the default action is not
/// permissive (a tracer is expected to handle new syscalls itself), and pointless when the
/// default already is `ERRNO(ENOSYS)`.
fn enosys_stub_wanted(default_action: LinuxSeccompAction, default: u32) -> bool {
    let permissive = matches!(
        default_action,
        LinuxSeccompAction::ScmpActAllow
            | LinuxSeccompAction::ScmpActLog
            | LinuxSeccompAction::ScmpActTrace
    );
    !permissive && default != enosys_action()
}

fn enosys_action() -> u32 {
    SECCOMP_RET_ERRNO | libc::ENOSYS as u32
}

/// Unsigned comparison of a syscall argument, in libseccomp's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    MaskedEq,
}

/// One argument condition: `args[arg] <op> value`, or `(args[arg] & mask) == value` for
/// [`CmpOp::MaskedEq`] (with `value` already masked).
#[derive(Clone, Copy, Debug)]
struct Cond {
    arg: u32,
    op: CmpOp,
    value: u64,
    mask: u64,
}

/// A profile rule after validation: syscall names, the filter return value, ANDed conditions.
struct Rule<'p> {
    names: &'p [String],
    action: u32,
    conds: Vec<Cond>,
}

/// Validates `syscalls`, returning the effective rules in order and every syscall name the
/// profile mentions (for the `-ENOSYS` stub, which also counts rules dropped here).
fn normalize_rules(
    profile: &LinuxSeccomp,
    default: u32,
) -> Result<(Vec<Rule<'_>>, Vec<&str>), SeccompError> {
    let mut rules = Vec::new();
    let mut all_names = Vec::new();
    for (i, syscall) in profile.syscalls().iter().flatten().enumerate() {
        let names = syscall.names().as_slice();
        if names.is_empty() {
            return Err(SeccompError::EmptyNames { rule: i });
        }
        let action = action_value(
            syscall.action(),
            syscall.errno_ret(),
            &format!("syscalls[{i}]"),
        )?;
        let mut conds = Vec::new();
        for arg in syscall.args().iter().flatten() {
            let index = arg.index();
            if index > 5 {
                return Err(SeccompError::ArgIndexOutOfRange { rule: i, index });
            }
            let (op, mask) = match arg.op() {
                LinuxSeccompOperator::ScmpCmpNe => (CmpOp::Ne, u64::MAX),
                LinuxSeccompOperator::ScmpCmpLt => (CmpOp::Lt, u64::MAX),
                LinuxSeccompOperator::ScmpCmpLe => (CmpOp::Le, u64::MAX),
                LinuxSeccompOperator::ScmpCmpEq => (CmpOp::Eq, u64::MAX),
                LinuxSeccompOperator::ScmpCmpGe => (CmpOp::Ge, u64::MAX),
                LinuxSeccompOperator::ScmpCmpGt => (CmpOp::Gt, u64::MAX),
                LinuxSeccompOperator::ScmpCmpMaskedEq => (CmpOp::MaskedEq, arg.value()),
            };
            let value = match op {
                CmpOp::MaskedEq => arg.value_two().unwrap_or(0) & mask,
                _ => arg.value(),
            };
            conds.push(Cond {
                // index <= 5 was checked above.
                arg: index as u32,
                op,
                value,
                mask,
            });
        }
        all_names.extend(names.iter().map(String::as_str));
        if action == default {
            // runc skips these (libseccomp rejects a rule whose action is the default).
            continue;
        }
        let repeats_an_arg = conds
            .iter()
            .enumerate()
            .any(|(j, c)| conds[..j].iter().any(|d| d.arg == c.arg));
        if repeats_an_arg {
            // runc: conditions on the same argument become separate rules (ORed).
            for cond in conds {
                rules.push(Rule {
                    names,
                    action,
                    conds: vec![cond],
                });
            }
        } else {
            rules.push(Rule {
                names,
                action,
                conds,
            });
        }
    }
    Ok((rules, all_names))
}

/// ABIs the filter covers: the native one first (it is the most common, and its `jeq` comes
/// first), then the listed ones we have tables for.
fn covered_arches(profile: &LinuxSeccomp) -> Result<Vec<&'static ArchDef>, SeccompError> {
    let native =
        arch::native().ok_or(SeccompError::UnsupportedNativeArch(std::env::consts::ARCH))?;
    let mut arches = vec![native];
    for &oci in profile.architectures().iter().flatten() {
        match arch::from_oci(oci) {
            Some(a) => {
                if !arches.iter().any(|b| std::ptr::eq(*b, a)) {
                    arches.push(a);
                }
            }
            None => log::warn!(
                "seccomp: no syscall table for architecture {oci}; its syscalls will be killed"
            ),
        }
    }
    Ok(arches)
}

/// What a range of syscall numbers leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SegTarget {
    /// Return this value.
    Ret(u32),
    /// Evaluate argument chain `chains[i]`.
    Chain(usize),
}

/// Syscall numbers `start..end` (end exclusive; up to 2^32) and their outcome.
#[derive(Clone, Copy, Debug)]
struct Segment {
    start: u64,
    end: u64,
    target: SegTarget,
}

/// Rules applying to one syscall number of one ABI, in order: (conditions, action).
struct Chain<'r> {
    rules: Vec<(&'r [Cond], u32)>,
    args_32bit: bool,
}

/// Sorted, contiguous segments, merged as they are appended.
#[derive(Default)]
struct Segments(Vec<Segment>);

impl Segments {
    fn push(&mut self, start: u64, end: u64, target: SegTarget) {
        if start >= end {
            return;
        }
        if let Some(last) = self.0.last_mut() {
            if last.end == start && last.target == target && matches!(target, SegTarget::Ret(_)) {
                last.end = end;
                return;
            }
        }
        self.0.push(Segment { start, end, target });
    }

    /// A range without rules: the default action, or `ENOSYS` above `enosys_max`.
    fn push_gap(&mut self, start: u64, end: u64, default: u32, enosys_max: Option<u32>) {
        match enosys_max {
            Some(max) => {
                let split = (u64::from(max) + 1).clamp(start, end);
                self.push(start, split, SegTarget::Ret(default));
                self.push(split, end, SegTarget::Ret(enosys_action()));
            }
            None => self.push(start, end, SegTarget::Ret(default)),
        }
    }
}

/// Appends the segments of one ABI's number range.
fn arch_segments<'r>(
    arch: &ArchDef,
    rules: &'r [Rule<'_>],
    default: u32,
    enosys_max: Option<u32>,
    chains: &mut Vec<Chain<'r>>,
    out: &mut Segments,
) {
    let mut per_nr: BTreeMap<u32, Vec<(&'r [Cond], u32)>> = BTreeMap::new();
    for rule in rules {
        for name in rule.names {
            let Some(nr) = arch.lookup(name) else {
                log::debug!(
                    "seccomp: syscall {name:?} does not exist on {}, skipped",
                    arch.name
                );
                continue;
            };
            let entry = per_nr.entry(nr).or_default();
            // First match wins: nothing after an unconditional rule can be reached.
            if entry.last().is_some_and(|(conds, _)| conds.is_empty()) {
                continue;
            }
            entry.push((rule.conds.as_slice(), rule.action));
        }
    }
    let (lo, hi) = arch.nr_range;
    let mut cursor = lo;
    for (nr, nr_rules) in per_nr {
        let nr = u64::from(nr);
        out.push_gap(cursor, nr, default, enosys_max);
        let target = match nr_rules.first() {
            Some(([], action)) => SegTarget::Ret(*action),
            _ => {
                chains.push(Chain {
                    rules: nr_rules,
                    args_32bit: arch.args_32bit,
                });
                SegTarget::Chain(chains.len() - 1)
            }
        };
        out.push(nr, nr + 1, target);
        cursor = nr + 1;
    }
    out.push_gap(cursor, hi, default, enosys_max);
}

/// Generates the whole program; see the layout in the module docs.
fn assemble(
    groups: &[(u32, Vec<Segment>)],
    chains: &[Chain<'_>],
    default: u32,
) -> Vec<libc::sock_filter> {
    let mut em = Emitter::default();
    // Emitted backwards: the per-arch blocks (last one first), then the arch dispatch.
    let mut entries: Vec<(u32, Target)> = Vec::with_capacity(groups.len());
    for (audit, segments) in groups.iter().rev() {
        let tree = gen_tree(&mut em, segments, chains, default);
        let entry = match tree {
            Target::Ret(_) => tree,
            Target::Label(_) => {
                em.fall_into(tree);
                em.load(OFFSET_NR)
            }
        };
        entries.push((*audit, entry));
    }
    // `entries` is in reverse group order, which is the order the jeqs are emitted in.
    let mut next = Target::Ret(BAD_ARCH_ACTION);
    for (audit, entry) in entries {
        next = em.jump(BPF_JEQ, audit, entry, next);
    }
    em.fall_into(next);
    let start = em.load(OFFSET_ARCH);
    em.finish(start)
}

/// Code deciding among `segments` (contiguous, with the syscall number in the accumulator).
fn gen_tree(em: &mut Emitter, segments: &[Segment], chains: &[Chain<'_>], default: u32) -> Target {
    match segments {
        [] => Target::Ret(default),
        [only] => gen_leaf(em, only.target, chains, default),
        _ => {
            if let Some(plan) = linear_plan(segments) {
                // Leaf code first, so the jge/jeq list itself stays contiguous.
                let singles: Vec<Target> = plan
                    .singles
                    .iter()
                    .map(|s| gen_leaf(em, s.target, chains, default))
                    .collect();
                let tail: Vec<Target> = plan
                    .tail
                    .iter()
                    .map(|s| gen_leaf(em, s.target, chains, default))
                    .collect();
                let mut next = Target::Ret(plan.background);
                for (seg, target) in plan.singles.iter().zip(singles).rev() {
                    next = em.jump(BPF_JEQ, seg.start as u32, target, next);
                }
                // Highest range tested first, so each jge only has to separate one range.
                for (seg, target) in plan.tail.iter().zip(tail) {
                    next = em.jump(BPF_JGE, seg.start as u32, target, next);
                }
                return next;
            }
            let mid = segments.len() / 2;
            // Right half first: it ends up after the left half, which the jge falls through to.
            let right = gen_tree(em, &segments[mid..], chains, default);
            let left = gen_tree(em, &segments[..mid], chains, default);
            // Segment starts past the first are in 1..2^32, so they fit the 32-bit operand.
            em.jump(BPF_JGE, segments[mid].start as u32, right, left)
        }
    }
}

/// A subtree flattened into a list: `jge` for each `tail` range (highest first), then `jeq` for
/// each single-number exception, else `background`.
struct LinearPlan {
    background: u32,
    singles: Vec<Segment>,
    tail: Vec<Segment>,
}

/// Whether `segments` are "one returned value, except at most [`LINEAR_MAX`] single syscalls and
/// a run of ranges at the top" (the typical shape below a few syscalls, and of the `ENOSYS` and
/// bad-arch ranges above the highest syscall).
fn linear_plan(segments: &[Segment]) -> Option<LinearPlan> {
    let background = match segments.iter().find(|s| s.end - s.start > 1) {
        Some(wide) => wide.target,
        None => {
            // All single numbers: pick the most frequent returned value.
            let mut best = None;
            let mut best_count = 0;
            for s in segments {
                let count = segments.iter().filter(|t| t.target == s.target).count();
                if matches!(s.target, SegTarget::Ret(_)) && count > best_count {
                    best = Some(s.target);
                    best_count = count;
                }
            }
            best?
        }
    };
    let SegTarget::Ret(background_value) = background else {
        return None;
    };
    let last_background = segments.iter().rposition(|s| s.target == background)?;
    let (body, tail) = segments.split_at(last_background + 1);
    let singles: Vec<Segment> = body
        .iter()
        .filter(|s| s.target != background)
        .copied()
        .collect();
    let fits =
        singles.len() + tail.len() <= LINEAR_MAX && singles.iter().all(|s| s.end - s.start == 1);
    fits.then(|| LinearPlan {
        background: background_value,
        singles,
        tail: tail.to_vec(),
    })
}

fn gen_leaf(em: &mut Emitter, target: SegTarget, chains: &[Chain<'_>], default: u32) -> Target {
    match target {
        SegTarget::Ret(value) => Target::Ret(value),
        SegTarget::Chain(i) => match chains.get(i) {
            Some(chain) => gen_chain(em, chain, default),
            // Indices come from `arch_segments`; never out of range.
            None => Target::Ret(default),
        },
    }
}

/// Rules of one syscall, tried in order; no match means the default action.
fn gen_chain(em: &mut Emitter, chain: &Chain<'_>, default: u32) -> Target {
    let mut next = Target::Ret(default);
    for (conds, action) in chain.rules.iter().rev() {
        let mut pass = Target::Ret(*action);
        for cond in conds.iter().rev() {
            pass = gen_cond(em, cond, chain.args_32bit, pass, next);
        }
        next = pass;
    }
    next
}

/// Offsets of the low and high 32-bit words of `seccomp_data.args[arg]` (host byte order).
fn arg_offsets(arg: u32) -> (u32, u32) {
    let base = OFFSET_ARGS + 8 * arg;
    if cfg!(target_endian = "little") {
        (base, base + 4)
    } else {
        (base + 4, base)
    }
}

/// Code that loads a word and continues with `then` (nothing if `then` does not look at it).
fn load_then(em: &mut Emitter, offset: u32, then: Target) -> Target {
    match then {
        Target::Ret(_) => then,
        Target::Label(_) => {
            em.fall_into(then);
            em.load(offset)
        }
    }
}

/// Code that masks the accumulator and continues with `then`.
fn and_then(em: &mut Emitter, mask: u32, then: Target) -> Target {
    match then {
        Target::Ret(_) => then,
        Target::Label(_) if mask == u32::MAX => then,
        Target::Label(_) => {
            em.fall_into(then);
            em.and(mask)
        }
    }
}

/// Code for one condition, continuing at `pass` or `fail`.
fn gen_cond(em: &mut Emitter, cond: &Cond, args_32bit: bool, pass: Target, fail: Target) -> Target {
    let (lo_off, hi_off) = arg_offsets(cond.arg);
    let (v_hi, v_lo) = ((cond.value >> 32) as u32, cond.value as u32);
    let (m_hi, m_lo) = ((cond.mask >> 32) as u32, cond.mask as u32);

    // Test of the low word alone, which is the whole test for 32-bit ABIs.
    let low = |em: &mut Emitter, pass: Target, fail: Target| -> Target {
        let test = match cond.op {
            CmpOp::Eq => em.jump(BPF_JEQ, v_lo, pass, fail),
            CmpOp::Ne => em.jump(BPF_JEQ, v_lo, fail, pass),
            CmpOp::Gt => em.jump(BPF_JGT, v_lo, pass, fail),
            CmpOp::Ge => em.jump(BPF_JGE, v_lo, pass, fail),
            CmpOp::Lt => em.jump(BPF_JGE, v_lo, fail, pass),
            CmpOp::Le => em.jump(BPF_JGT, v_lo, fail, pass),
            CmpOp::MaskedEq if m_lo == 0 => return pass,
            CmpOp::MaskedEq => {
                let test = em.jump(BPF_JEQ, v_lo, pass, fail);
                and_then(em, m_lo, test)
            }
        };
        load_then(em, lo_off, test)
    };
    if args_32bit {
        return low(em, pass, fail);
    }

    // 64-bit: decide on the high word, looking at the low word only when the high words tie.
    match cond.op {
        CmpOp::Eq => {
            let lo = low(em, pass, fail);
            let test = em.jump(BPF_JEQ, v_hi, lo, fail);
            load_then(em, hi_off, test)
        }
        CmpOp::Ne => {
            let lo = low(em, pass, fail);
            let test = em.jump(BPF_JEQ, v_hi, lo, pass);
            load_then(em, hi_off, test)
        }
        // arg > v  <=>  hi > v_hi || (hi == v_hi && lo > v_lo); likewise for >=.
        // arg < v is !(arg >= v) and arg <= v is !(arg > v): same code, branches swapped.
        CmpOp::Gt | CmpOp::Ge | CmpOp::Lt | CmpOp::Le => {
            let (yes, no) = match cond.op {
                CmpOp::Gt | CmpOp::Ge => (pass, fail),
                _ => (fail, pass),
            };
            let lo = low(em, pass, fail);
            let tie = em.jump(BPF_JEQ, v_hi, lo, no);
            let test = em.jump(BPF_JGT, v_hi, yes, tie);
            load_then(em, hi_off, test)
        }
        CmpOp::MaskedEq => {
            let lo = low(em, pass, fail);
            if m_hi == 0 {
                // (arg & mask) has a zero high word, and so has the masked value.
                return lo;
            }
            let test = em.jump(BPF_JEQ, v_hi, lo, fail);
            let masked = and_then(em, m_hi, test);
            load_then(em, hi_off, masked)
        }
    }
}
