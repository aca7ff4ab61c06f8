//! Tests: compile-time golden checks, semantics checked with the reference interpreter in
//! `bpf.rs`, and real-kernel checks run in a re-executed copy of this test binary.

use super::arch::{self, ArchDef, AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};
use super::*;
use serde_json::json;

fn profile(value: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(value).expect("valid LinuxSeccomp JSON")
}

/// What the program returns for syscall `nr` with `args` under audit arch `arch`.
fn decide(program: &Program, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, arg) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
    }
    bpf::run(program.instructions(), &data)
}

fn nr(arch: &ArchDef, name: &str) -> u32 {
    arch.lookup(name)
        .unwrap_or_else(|| panic!("{name} not on {}", arch.name))
}

const ALLOW: u32 = SECCOMP_RET_ALLOW;
const EPERM: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
const KILL_THREAD: u32 = SECCOMP_RET_KILL_THREAD;

/// Static checks the kernel's verifier would make: every jump lands inside the program and the
/// last instruction returns.
fn assert_well_formed(program: &Program) {
    let insns = program.instructions();
    assert!(!insns.is_empty() && insns.len() <= BPF_MAXINSNS);
    for (pc, ins) in insns.iter().enumerate() {
        if ins.code & 0x07 == bpf::BPF_JMP {
            let reach = if ins.code == bpf::BPF_JMP | bpf::BPF_JA {
                ins.k as usize
            } else {
                usize::from(ins.jt.max(ins.jf))
            };
            assert!(pc + 1 + reach < insns.len(), "jump out of program at {pc}");
        }
    }
    let last = insns[insns.len() - 1];
    assert_eq!(
        last.code,
        bpf::BPF_RET | bpf::BPF_K,
        "program must end in ret"
    );
}

// ---------------------------------------------------------------------------------------------
// Golden programs

/// Compares the disassembly with `expected`, ignoring indentation.
fn assert_listing(program: &Program, expected: &str) {
    let got = bpf::disassemble(program.instructions());
    let got: Vec<&str> = got.lines().map(str::trim).collect();
    let want: Vec<&str> = expected.lines().map(str::trim).collect();
    assert_eq!(got, want, "{program:?}");
}

#[test]
#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
fn seccomp_golden_deny_mkdir() {
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["mkdir", "mkdirat", "no_such_syscall"], "action": "SCMP_ACT_ERRNO" }]
    })))
    .unwrap();
    // mkdir=83, mkdirat=258. The x32 half of AUDIT_ARCH_X86_64 is not covered (bad arch);
    // below it, "allow except two syscalls" is a jeq list.
    let expected = "\
   0: ld [4]
   1: jeq #0xc000003e 2 4
   2: ld [0]
   3: jge #0x40000000 4 5
   4: ret #0x0
   5: jeq #0x53 8 6
   6: jeq #0x102 8 7
   7: ret #0x7fff0000
   8: ret #0x50001
";
    assert_listing(&p, expected);
}

#[test]
#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
fn seccomp_golden_argument_chain() {
    // personality allowed only for a few personas, everything else EPERM (Docker-style).
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "syscalls": [
            { "names": ["read"], "action": "SCMP_ACT_ALLOW" },
            { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 0, "value": 8, "op": "SCMP_CMP_EQ" }] },
        ]
    })))
    .unwrap();
    // read=0 allowed; personality=135 through a 64-bit equality (high word, then low word);
    // above 135 (the highest syscall named) ENOSYS; x32 half: bad arch.
    let expected = "\
   0: ld [4]
   1: jeq #0xc000003e 2 4
   2: ld [0]
   3: jge #0x40000000 4 5
   4: ret #0x0
   5: jge #0x88 6 7
   6: ret #0x50026
   7: jge #0x87 9 8
   8: jeq #0x0 14 13
   9: ld [20]
  10: jeq #0x0 11 13
  11: ld [16]
  12: jeq #0x8 14 13
  13: ret #0x50001
  14: ret #0x7fff0000
";
    assert_listing(&p, expected);
}

// ---------------------------------------------------------------------------------------------
// Semantics, through the interpreter

#[test]
fn seccomp_unknown_names_are_skipped_and_default_applies() {
    let native = arch::native().unwrap();
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["definitely_not_a_syscall"], "action": "SCMP_ACT_KILL_PROCESS" }]
    })))
    .unwrap();
    assert_eq!(
        decide(&p, native.audit_arch, nr(native, "read"), [0; 6]),
        ALLOW
    );
}

#[test]
fn seccomp_actions_and_errno_values() {
    let native = arch::native().unwrap();
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            { "names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13 },
            { "names": ["unlinkat"], "action": "SCMP_ACT_ERRNO" },
            { "names": ["ptrace"], "action": "SCMP_ACT_TRACE", "errnoRet": 7 },
            { "names": ["reboot"], "action": "SCMP_ACT_KILL" },
            { "names": ["kexec_load"], "action": "SCMP_ACT_KILL_THREAD" },
            { "names": ["swapon"], "action": "SCMP_ACT_KILL_PROCESS" },
            { "names": ["acct"], "action": "SCMP_ACT_TRAP" },
            { "names": ["bpf"], "action": "SCMP_ACT_LOG" },
        ]
    })))
    .unwrap();
    let a = native.audit_arch;
    let check = |name: &str, want: u32| {
        assert_eq!(decide(&p, a, nr(native, name), [0; 6]), want, "{name}");
    };
    check("mkdirat", SECCOMP_RET_ERRNO | 13);
    check("unlinkat", EPERM);
    check("ptrace", SECCOMP_RET_TRACE | 7);
    check("reboot", SECCOMP_RET_KILL_THREAD);
    check("kexec_load", SECCOMP_RET_KILL_THREAD);
    check("swapon", SECCOMP_RET_KILL_PROCESS);
    check("acct", SECCOMP_RET_TRAP);
    check("bpf", SECCOMP_RET_LOG);
    check("getpid", ALLOW);
}

#[test]
fn seccomp_errors_are_reported() {
    let err = |v: serde_json::Value| compile(&profile(v)).unwrap_err().to_string();
    let e = err(json!({ "defaultAction": "SCMP_ACT_NOTIFY" }));
    assert!(
        e.contains("defaultAction") && e.contains("SCMP_ACT_NOTIFY"),
        "{e}"
    );
    let e = err(json!({ "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["read"], "action": "SCMP_ACT_NOTIFY" }] }));
    assert!(
        e.contains("syscalls[0]") && e.contains("not supported"),
        "{e}"
    );
    let e = err(json!({ "defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1 }));
    assert!(e.contains("errnoRet is only valid"), "{e}");
    let e = err(json!({ "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["read"], "action": "SCMP_ACT_KILL", "errnoRet": 1 }] }));
    assert!(
        e.contains("syscalls[0]") && e.contains("SCMP_ACT_KILL"),
        "{e}"
    );
    let e = err(json!({ "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 65536 }] }));
    assert!(e.contains("65536") && e.contains("out of range"), "{e}");
    let e = err(json!({ "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["read"], "action": "SCMP_ACT_ERRNO",
                       "args": [{ "index": 6, "value": 0, "op": "SCMP_CMP_EQ" }] }] }));
    assert!(e.contains("argument index 6"), "{e}");
    let e = err(json!({ "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": [], "action": "SCMP_ACT_ERRNO" }] }));
    assert!(e.contains("names must contain"), "{e}");

    // Unknown action / operator / architecture names are rejected when the profile is parsed.
    for bad in [
        json!({ "defaultAction": "SCMP_ACT_MAYBE" }),
        json!({ "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"] }),
        json!({ "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{ "names": ["read"],
            "action": "SCMP_ACT_ERRNO", "args": [{ "index": 0, "value": 0, "op": "SCMP_CMP_ABOUT" }] }] }),
    ] {
        assert!(serde_json::from_value::<LinuxSeccomp>(bad).is_err());
    }
}

#[test]
fn seccomp_flags() {
    let f = |v: serde_json::Value| flags(&profile(v));
    assert_eq!(f(json!({ "defaultAction": "SCMP_ACT_ALLOW" })).unwrap(), 0);
    assert_eq!(
        f(json!({ "defaultAction": "SCMP_ACT_ALLOW", "flags": [
            "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC"
        ] }))
        .unwrap(),
        SECCOMP_FILTER_FLAG_LOG | SECCOMP_FILTER_FLAG_SPEC_ALLOW | SECCOMP_FILTER_FLAG_TSYNC
    );
    let e = f(json!({ "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"] }))
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"),
        "{e}"
    );
}

/// Reference semantics of one condition, straight from the definitions.
fn reference(op: CmpOp, value: u64, value_two: u64, arg: u64, args_32bit: bool) -> bool {
    let (arg, value, value_two) = if args_32bit {
        (
            arg & 0xffff_ffff,
            value & 0xffff_ffff,
            value_two & 0xffff_ffff,
        )
    } else {
        (arg, value, value_two)
    };
    match op {
        CmpOp::Ne => arg != value,
        CmpOp::Lt => arg < value,
        CmpOp::Le => arg <= value,
        CmpOp::Eq => arg == value,
        CmpOp::Ge => arg >= value,
        CmpOp::Gt => arg > value,
        CmpOp::MaskedEq => arg & value == value_two & value,
    }
}

#[test]
fn seccomp_argument_comparisons_match_reference() {
    const OPS: [(CmpOp, &str); 7] = [
        (CmpOp::Ne, "SCMP_CMP_NE"),
        (CmpOp::Lt, "SCMP_CMP_LT"),
        (CmpOp::Le, "SCMP_CMP_LE"),
        (CmpOp::Eq, "SCMP_CMP_EQ"),
        (CmpOp::Ge, "SCMP_CMP_GE"),
        (CmpOp::Gt, "SCMP_CMP_GT"),
        (CmpOp::MaskedEq, "SCMP_CMP_MASKED_EQ"),
    ];
    // Values that differ in the high word, the low word, both, and at the boundaries.
    let interesting: Vec<u64> = vec![
        0,
        1,
        2,
        0x7fff_ffff,
        0xffff_fffe,
        0xffff_ffff,
        0x1_0000_0000,
        0x1_0000_0001,
        0x1_ffff_ffff,
        0x2_0000_0000,
        0x1234_5678_9abc_def0,
        0xffff_ffff_0000_0000,
        0xffff_ffff_ffff_fffe,
        u64::MAX,
    ];
    let masks = [
        0xffu64,
        0xffff_0000_0000_00ff,
        0xffff_ffff_0000_0000,
        u64::MAX,
        0,
    ];
    for (arch_def, audit) in [
        (&arch::X86_64, AUDIT_ARCH_X86_64),
        (&arch::X86, AUDIT_ARCH_I386),
    ] {
        for &(op, op_name) in &OPS {
            for (vi, &value) in interesting.iter().enumerate() {
                let (value, value_two) = if op == CmpOp::MaskedEq {
                    (masks[vi % masks.len()], value)
                } else {
                    (value, 0)
                };
                // Condition on arg 3, so loads from the right offsets are exercised too.
                let p = compile(&profile(json!({
                    "defaultAction": "SCMP_ACT_ALLOW",
                    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                    "syscalls": [{ "names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 99,
                        "args": [{ "index": 3, "value": value, "valueTwo": value_two, "op": op_name }] }]
                })))
                .unwrap();
                assert_well_formed(&p);
                let getppid = nr(arch_def, "getppid");
                for &arg in &interesting {
                    let mut args = [0xdead_beef_dead_beef; 6];
                    args[3] = arg;
                    let want = reference(op, value, value_two, arg, arch_def.args_32bit);
                    let got = decide(&p, audit, getppid, args);
                    let want = if want { SECCOMP_RET_ERRNO | 99 } else { ALLOW };
                    assert_eq!(
                        got, want,
                        "{}: {op_name} value={value:#x} value2={value_two:#x} arg={arg:#x}\n{p:?}",
                        arch_def.name
                    );
                }
            }
        }
    }
}

#[test]
fn seccomp_conditions_in_one_rule_are_anded_and_rules_first_match() {
    let a = &arch::X86_64;
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            { "names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
              "args": [{ "index": 0, "value": 2, "op": "SCMP_CMP_EQ" },
                       { "index": 1, "value": 1, "op": "SCMP_CMP_EQ" }] },
            { "names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2,
              "args": [{ "index": 0, "value": 2, "op": "SCMP_CMP_EQ" }] },
            { "names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 3 },
            // Unreachable: the unconditional rule above always matches first.
            { "names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 4,
              "args": [{ "index": 0, "value": 10, "op": "SCMP_CMP_EQ" }] },
        ]
    })))
    .unwrap();
    let socket = nr(a, "socket");
    let d = |a0, a1| decide(&p, AUDIT_ARCH_X86_64, socket, [a0, a1, 0, 0, 0, 0]);
    assert_eq!(d(2, 1), SECCOMP_RET_ERRNO | 1, "both conditions");
    assert_eq!(
        d(2, 2),
        SECCOMP_RET_ERRNO | 2,
        "only the first: falls to rule 2"
    );
    assert_eq!(
        d(10, 1),
        SECCOMP_RET_ERRNO | 3,
        "neither: unconditional rule 3"
    );
}

#[test]
fn seccomp_runc_compat_rule_handling() {
    let a = &arch::X86_64;
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            // Same action as the default: dropped (runc), so it cannot shadow the allow below.
            { "names": ["socket"], "action": "SCMP_ACT_ERRNO",
              "args": [{ "index": 0, "value": 2, "op": "SCMP_CMP_EQ" }] },
            { "names": ["socket"], "action": "SCMP_ACT_ALLOW" },
            // Two conditions on arg 0: split into two rules, i.e. ORed (runc).
            { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 0, "value": 0, "op": "SCMP_CMP_EQ" },
                       { "index": 0, "value": 8, "op": "SCMP_CMP_EQ" }] },
        ]
    })))
    .unwrap();
    let d = |name, a0| decide(&p, AUDIT_ARCH_X86_64, nr(a, name), [a0, 0, 0, 0, 0, 0]);
    assert_eq!(d("socket", 2), ALLOW);
    assert_eq!(d("personality", 0), ALLOW);
    assert_eq!(d("personality", 8), ALLOW);
    assert_eq!(d("personality", 3), EPERM);
}

#[test]
fn seccomp_enosys_above_highest_profile_syscall() {
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            { "names": ["read", "write"], "action": "SCMP_ACT_ALLOW" },
            // Same as default: dropped, but still raises the ENOSYS threshold to openat2 (437).
            { "names": ["openat2"], "action": "SCMP_ACT_ERRNO" },
        ]
    })))
    .unwrap();
    let d = |n| decide(&p, AUDIT_ARCH_X86_64, n, [0; 6]);
    assert_eq!(d(0), ALLOW);
    assert_eq!(d(1), ALLOW);
    assert_eq!(d(2), EPERM);
    assert_eq!(d(437), EPERM);
    assert_eq!(d(438), ENOSYS);
    assert_eq!(d(X32_SYSCALL_BIT - 1), ENOSYS);
    assert_eq!(d(X32_SYSCALL_BIT), KILL_THREAD, "x32 not covered");

    // No stub with a permissive default, nor when the default already is ENOSYS.
    for default in [json!("SCMP_ACT_ALLOW"), json!("SCMP_ACT_LOG")] {
        let p = compile(&profile(json!({ "defaultAction": default,
            "syscalls": [{ "names": ["read"], "action": "SCMP_ACT_KILL" }] })))
        .unwrap();
        assert_ne!(decide(&p, AUDIT_ARCH_X86_64, 1000, [0; 6]), ENOSYS);
    }
}

#[test]
fn seccomp_architecture_dispatch() {
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_MIPS"],
        "syscalls": [{ "names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5 }]
    })))
    .unwrap();
    let e5 = SECCOMP_RET_ERRNO | 5;
    assert_eq!(decide(&p, AUDIT_ARCH_X86_64, 39, [0; 6]), e5);
    assert_eq!(decide(&p, AUDIT_ARCH_X86_64, 38, [0; 6]), ALLOW);
    assert_eq!(decide(&p, AUDIT_ARCH_I386, 20, [0; 6]), e5);
    assert_eq!(
        decide(&p, AUDIT_ARCH_I386, 39, [0; 6]),
        ALLOW,
        "39 is mkdir on i386"
    );
    assert_eq!(
        decide(&p, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39, [0; 6]),
        e5
    );
    assert_eq!(
        decide(&p, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 38, [0; 6]),
        ALLOW
    );
    // MIPS is listed but has no table; aarch64 is not listed: both are a bad arch.
    assert_eq!(decide(&p, 0x0000_0008, 20, [0; 6]), KILL_THREAD);
    assert_eq!(
        decide(&p, arch::AUDIT_ARCH_AARCH64, 172, [0; 6]),
        KILL_THREAD
    );

    // Only x86_64 (the native ABI is always covered, even when not listed).
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86"],
        "syscalls": [{ "names": ["getpid"], "action": "SCMP_ACT_ERRNO" }]
    })))
    .unwrap();
    if arch::native().is_some_and(|n| std::ptr::eq(n, &arch::X86_64)) {
        assert_eq!(decide(&p, AUDIT_ARCH_X86_64, 39, [0; 6]), EPERM);
        assert_eq!(
            decide(&p, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39, [0; 6]),
            KILL_THREAD
        );
    }
    assert_eq!(decide(&p, AUDIT_ARCH_I386, 20, [0; 6]), EPERM);
}

#[test]
fn seccomp_every_name_of_every_table_resolves() {
    // Allow-list every syscall of every ABI; each must come out as ALLOW on its own ABI.
    let arches = [
        &arch::X86_64,
        &arch::X86,
        &arch::X32,
        &arch::AARCH64,
        &arch::ARM,
    ];
    for a in arches {
        let names: Vec<&str> = a.table.iter().map(|(n, _)| *n).collect();
        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": [ match a.name {
                "x86_64" => "SCMP_ARCH_X86_64", "x86" => "SCMP_ARCH_X86", "x32" => "SCMP_ARCH_X32",
                "aarch64" => "SCMP_ARCH_AARCH64", _ => "SCMP_ARCH_ARM" } ],
            "syscalls": [{ "names": names, "action": "SCMP_ACT_ALLOW" }]
        })))
        .unwrap();
        assert_well_formed(&p);
        for &(name, n) in a.table {
            assert_eq!(
                decide(&p, a.audit_arch, n, [0; 6]),
                ALLOW,
                "{}: {name}",
                a.name
            );
        }
    }
}

/// A containerd/Docker-style default profile: default EPERM, a long allow-list for x86_64, x86
/// and x32, argument rules for personality, clone and socket, clone3 answered with ENOSYS.
fn default_style_profile() -> LinuxSeccomp {
    // Syscalls a default container profile does *not* allow unconditionally.
    const DENIED: &[&str] = &[
        "acct",
        "add_key",
        "bpf",
        "clock_adjtime",
        "clock_settime",
        "clone",
        "clone3",
        "create_module",
        "delete_module",
        "finit_module",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "get_kernel_syms",
        "get_mempolicy",
        "init_module",
        "ioperm",
        "iopl",
        "kcmp",
        "kexec_file_load",
        "kexec_load",
        "keyctl",
        "lookup_dcookie",
        "mbind",
        "mount",
        "mount_setattr",
        "move_mount",
        "move_pages",
        "name_to_handle_at",
        "nfsservctl",
        "open_by_handle_at",
        "open_tree",
        "perf_event_open",
        "personality",
        "pivot_root",
        "process_vm_readv",
        "process_vm_writev",
        "ptrace",
        "query_module",
        "quotactl",
        "quotactl_fd",
        "reboot",
        "request_key",
        "set_mempolicy",
        "setdomainname",
        "sethostname",
        "setns",
        "settimeofday",
        "socket",
        "stime",
        "swapoff",
        "swapon",
        "sysfs",
        "_sysctl",
        "umount",
        "umount2",
        "unshare",
        "uselib",
        "userfaultfd",
        "ustat",
        "vm86",
        "vm86old",
        "vhangup",
        "syslog",
        "afs_syscall",
        "tuxcall",
        "security",
        "getpmsg",
        "putpmsg",
        "create_module",
        "lsm_set_self_attr",
    ];
    let mut names: Vec<&str> = arch::X86_64
        .table
        .iter()
        .chain(arch::X86.table)
        .map(|(n, _)| *n)
        .filter(|n| !DENIED.contains(n))
        .collect();
    names.sort_unstable();
    names.dedup();
    let personas = [0u64, 8, 0x20000, 0x20008, 0xffff_ffff];
    let mut syscalls = vec![json!({ "names": names, "action": "SCMP_ACT_ALLOW" })];
    for persona in personas {
        syscalls.push(
            json!({ "names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": persona, "op": "SCMP_CMP_EQ" }] }),
        );
    }
    syscalls.push(json!({ "names": ["clone"], "action": "SCMP_ACT_ALLOW",
        "args": [{ "index": 0, "value": 0x7e02_0000u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }] }));
    syscalls.push(json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 }));
    syscalls.push(json!({ "names": ["socket"], "action": "SCMP_ACT_ALLOW",
        "args": [{ "index": 0, "value": 40, "op": "SCMP_CMP_NE" }] }));
    profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    }))
}

#[test]
fn seccomp_default_style_profile_is_compact_and_correct() {
    let p = compile(&default_style_profile()).unwrap();
    assert_well_formed(&p);
    eprintln!(
        "default-style profile (x86_64 + x86 + x32): {} instructions",
        p.len()
    );
    assert!(p.len() < 1000, "{} instructions", p.len());
    for (a, audit) in [
        (&arch::X86_64, AUDIT_ARCH_X86_64),
        (&arch::X86, AUDIT_ARCH_I386),
        (&arch::X32, AUDIT_ARCH_X86_64),
    ] {
        let d = |name: &str, a0: u64| decide(&p, audit, nr(a, name), [a0, 0, 0, 0, 0, 0]);
        assert_eq!(d("read", 0), ALLOW, "{}", a.name);
        assert_eq!(d("execve", 0), ALLOW, "{}", a.name);
        assert_eq!(d("mount", 0), EPERM, "{}", a.name);
        assert_eq!(d("ptrace", 0), EPERM, "{}", a.name);
        assert_eq!(d("personality", 8), ALLOW, "{}", a.name);
        assert_eq!(d("personality", 1), EPERM, "{}", a.name);
        // CLONE_NEWUSER (0x10000000) is inside the namespace mask.
        assert_eq!(d("clone", 0x0001_0011), ALLOW, "{}", a.name);
        assert_eq!(d("clone", 0x1000_0011), EPERM, "{}", a.name);
        assert_eq!(d("clone3", 0), ENOSYS, "{}", a.name);
        assert_eq!(d("socket", 2), ALLOW, "{}", a.name);
        assert_eq!(d("socket", 40), EPERM, "{}", a.name);
    }
}

#[test]
fn seccomp_big_profile_every_x86_64_syscall_stays_under_limit() {
    let names: Vec<&str> = arch::X86_64.table.iter().map(|(n, _)| *n).collect();
    assert!(names.len() > 350);
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": names, "action": "SCMP_ACT_ALLOW" }]
    })))
    .unwrap();
    assert_well_formed(&p);
    eprintln!("every x86_64 syscall allowed: {} instructions", p.len());
    assert!(p.len() < BPF_MAXINSNS);
    for &(name, n) in arch::X86_64.table {
        assert_eq!(decide(&p, AUDIT_ARCH_X86_64, n, [0; 6]), ALLOW, "{name}");
    }
}

#[test]
fn seccomp_worst_case_alternating_profile_stays_under_limit() {
    // Every other syscall (by number) gets its own errno, on three ABIs: nothing merges into
    // ranges, there are ~50 distinct results, and the program spans far more than one 8-bit
    // jump, so shared RETs must be duplicated or reached through trampolines.
    let mut by_nr: Vec<(&str, u32)> = arch::X86.table.to_vec();
    by_nr.sort_by_key(|&(_, n)| n);
    let mut syscalls = Vec::new();
    let mut denied = std::collections::HashMap::new();
    for (i, (name, _)) in by_nr.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let errno = (i % 50) as u32 + 1;
        denied.insert(*name, SECCOMP_RET_ERRNO | errno);
        syscalls.push(json!({ "names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": errno }));
    }
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    })))
    .unwrap();
    assert_well_formed(&p);
    eprintln!(
        "{} alternating single-syscall rules on 3 ABIs: {} instructions",
        denied.len(),
        p.len()
    );
    assert!(p.len() < BPF_MAXINSNS);
    for (a, audit) in [
        (&arch::X86_64, AUDIT_ARCH_X86_64),
        (&arch::X86, AUDIT_ARCH_I386),
        (&arch::X32, AUDIT_ARCH_X86_64),
    ] {
        for &(name, n) in a.table {
            let want = denied.get(name).copied().unwrap_or(ALLOW);
            assert_eq!(decide(&p, audit, n, [0; 6]), want, "{}: {name}", a.name);
        }
    }
}

#[test]
fn seccomp_400_rules_with_arguments_need_long_jumps() {
    // 400 rules, each with a 64-bit argument condition and a distinct errno, spread over the
    // x86_64 table (several rules per syscall). The program is far longer than the 255-
    // instruction reach of a conditional jump, so trampolines are required, and every decision
    // must still be right.
    let table = arch::X86_64.table;
    let mut syscalls = Vec::new();
    let mut expected: Vec<(u32, u64, u32)> = Vec::new(); // (nr, arg0, result)
    for i in 0..400usize {
        let (name, n) = table[(i * 7) % table.len()];
        let value = (i as u64) << 32 | (i as u64 * 3);
        let errno = 1000 + i as u32;
        syscalls.push(
            json!({ "names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": errno,
            "args": [{ "index": 0, "value": value, "op": "SCMP_CMP_EQ" }] }),
        );
        if !expected.iter().any(|&(m, v, _)| m == n && v == value) {
            expected.push((n, value, SECCOMP_RET_ERRNO | errno));
        }
    }
    let p = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": syscalls,
    })))
    .unwrap();
    assert_well_formed(&p);
    eprintln!("400 argument rules: {} instructions", p.len());
    assert!(p.len() > 1000 && p.len() < BPF_MAXINSNS);
    let has_long_jump = p
        .instructions()
        .iter()
        .any(|i| i.code == bpf::BPF_JMP | bpf::BPF_JA);
    assert!(
        has_long_jump,
        "expected JA trampolines in a program this long"
    );
    for &(n, value, want) in &expected {
        let d = |a0| decide(&p, AUDIT_ARCH_X86_64, n, [a0, 0, 0, 0, 0, 0]);
        assert_eq!(d(value), want, "nr {n} arg {value:#x}");
        // Differing only in the high word, or only in the low word: no rule of *this* value.
        for other in [value ^ (1 << 40), value ^ 1] {
            let want_other = expected
                .iter()
                .find(|&&(m, v, _)| m == n && v == other)
                .map_or(ALLOW, |&(_, _, r)| r);
            assert_eq!(d(other), want_other, "nr {n} arg {other:#x}");
        }
    }
}

#[test]
fn seccomp_too_long_program_is_an_error() {
    // 1500 rules of ~5 instructions each cannot fit in 4096 instructions.
    let syscalls: Vec<_> = (0..1500u64)
        .map(|i| {
            json!({ "names": ["getppid"], "action": "SCMP_ACT_ERRNO",
            "args": [{ "index": 0, "value": i << 32 | i, "op": "SCMP_CMP_EQ" }] })
        })
        .collect();
    let e = compile(&profile(
        json!({ "defaultAction": "SCMP_ACT_ALLOW", "syscalls": syscalls }),
    ))
    .unwrap_err();
    assert!(matches!(e, SeccompError::ProgramTooLong { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Real kernel. The parent test re-runs this test binary with SECCOMP_CHILD=<case>, selecting
// only `kernel_child_entry`. That child compiles the case's profile, then forks a grandchild that
// does what a container runtime does before execve: set no_new_privs, install, and from then on
// only make raw syscalls (nothing allocates after fork, so forking the multi-threaded test
// harness is safe). The grandchild's exit code says which check failed; being killed by the
// filter shows up as 128 + signal. The fork also keeps SECCOMP_RET_KILL_THREAD from killing
// just one thread of the multi-threaded child (which would hang it).

const CHILD_ENV: &str = "SECCOMP_CHILD";
const CHILD_DIR_ENV: &str = "SECCOMP_CHILD_DIR";
const RESULT_PREFIX: &str = "SECCOMP_CHILD_RESULT ";
/// Grandchild exit code for "not applicable here".
const SKIPPED: i32 = 90;

#[derive(Clone, Copy, Debug)]
enum Case {
    DenyMkdir,
    Args,
    BigAllowList,
    X86Listed,
    X86NotListed,
    X32Listed,
    X32NotListed,
    NoNoNewPrivs,
}

impl Case {
    const ALL: [Case; 8] = [
        Case::DenyMkdir,
        Case::Args,
        Case::BigAllowList,
        Case::X86Listed,
        Case::X86NotListed,
        Case::X32Listed,
        Case::X32NotListed,
        Case::NoNoNewPrivs,
    ];

    fn name(self) -> String {
        format!("{self:?}")
    }

    fn profile(self) -> LinuxSeccomp {
        let getpid_denied = |arches: serde_json::Value, errno: u32| {
            profile(
                json!({ "defaultAction": "SCMP_ACT_ALLOW", "architectures": arches,
                "syscalls": [{ "names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno }] }),
            )
        };
        match self {
            Case::DenyMkdir | Case::NoNoNewPrivs => profile(json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                          "SECCOMP_FILTER_FLAG_TSYNC"],
                "syscalls": [{ "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO" }]
            })),
            Case::Args => profile(json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    { "names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES,
                      "args": [{ "index": 0, "value": libc::AF_INET, "op": "SCMP_CMP_EQ" }] },
                    { "names": ["personality"], "action": "SCMP_ACT_ERRNO",
                      "args": [{ "index": 0, "value": 0xffff_ffffu64, "op": "SCMP_CMP_EQ" }] },
                    { "names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 71,
                      "args": [{ "index": 0, "value": 0x1_0000_0000u64, "op": "SCMP_CMP_GT" }] },
                    { "names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 72,
                      "args": [{ "index": 1, "value": 0xff00_0000_0000_00ffu64,
                                 "valueTwo": 0x1200_0000_0000_0034u64, "op": "SCMP_CMP_MASKED_EQ" }] },
                ]
            })),
            Case::BigAllowList => {
                let native = arch::native().expect("native table");
                let names: Vec<&str> = native
                    .table
                    .iter()
                    .filter(|(n, nr)| *nr < 424 && *n != "mkdir" && *n != "mkdirat")
                    .map(|(n, _)| *n)
                    .collect();
                profile(json!({ "defaultAction": "SCMP_ACT_ERRNO",
                    "syscalls": [{ "names": names, "action": "SCMP_ACT_ALLOW" }] }))
            }
            Case::X86Listed => getpid_denied(json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]), 77),
            Case::X86NotListed | Case::X32NotListed => {
                getpid_denied(json!(["SCMP_ARCH_X86_64"]), 77)
            }
            Case::X32Listed => getpid_denied(json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]), 78),
        }
    }
}

/// `errno` after a failed libc call.
fn errno() -> i32 {
    // SAFETY: reads the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Raw syscall returning `-errno` on failure, so results compare without touching errno.
fn raw(nr: libc::c_long, args: [u64; 6]) -> i64 {
    // SAFETY: the callers pass syscalls whose arguments are plain integers or valid pointers.
    let ret = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
    if ret == -1 {
        -i64::from(errno())
    } else {
        ret
    }
}

/// i386 syscall through `int 0x80` from this 64-bit process; the kernel reports it to seccomp
/// as AUDIT_ARCH_I386.
#[cfg(target_arch = "x86_64")]
fn int80(nr: i32) -> i32 {
    let ret: i32;
    // SAFETY: a 32-bit syscall without arguments; int 0x80 clobbers r8-r11 in 64-bit mode.
    unsafe {
        std::arch::asm!("int 0x80", inlateout("eax") nr => ret,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _, options(nostack));
    }
    ret
}

#[cfg(not(target_arch = "x86_64"))]
fn int80(_nr: i32) -> i32 {
    -libc::ENOSYS
}

/// The grandchild: set up, install, check. Only async-signal-safe work: no allocation.
fn grandchild(case: Case, program: &Program, flags: u32, dir: &std::ffi::CStr) -> i32 {
    // SAFETY (for this function's libc calls): plain syscalls on valid, NUL-terminated paths and
    // valid out-pointers.
    unsafe {
        if let Case::NoNoNewPrivs = case {
            if libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 0 {
                return SKIPPED;
            }
            // Drop every capability (CAP_SYS_ADMIN included), keep no_new_privs unset.
            #[repr(C)]
            struct Header {
                version: u32,
                pid: i32,
            }
            #[repr(C)]
            struct Data {
                effective: u32,
                permitted: u32,
                inheritable: u32,
            }
            let header = Header {
                version: 0x2008_0522,
                pid: 0,
            };
            let data = [
                Data {
                    effective: 0,
                    permitted: 0,
                    inheritable: 0,
                },
                Data {
                    effective: 0,
                    permitted: 0,
                    inheritable: 0,
                },
            ];
            if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) != 0 {
                return 80;
            }
            return match install(program, flags) {
                Err(SeccompError::Install(e)) if e.raw_os_error() == Some(libc::EACCES) => 0,
                Err(_) => 2,
                Ok(()) => 1,
            };
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return 81;
        }
        if let Err(e) = install(program, flags) {
            return match e {
                SeccompError::Install(e) => 100 + e.raw_os_error().unwrap_or(0).min(50),
                _ => 99,
            };
        }
        let ppid = raw(libc::SYS_getppid, [0; 6]);
        match case {
            Case::DenyMkdir => {
                if libc::mkdir(dir.as_ptr(), 0o755) != -1 || errno() != libc::EPERM {
                    return 1;
                }
                let at = raw(
                    libc::SYS_mkdirat,
                    [libc::AT_FDCWD as u64, dir.as_ptr() as u64, 0o755, 0, 0, 0],
                );
                if at != -i64::from(libc::EPERM) {
                    return 2;
                }
                if raw(libc::SYS_getpid, [0; 6]) != i64::from(libc::getpid()) || ppid <= 0 {
                    return 3;
                }
                let fd = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"x".as_ptr().cast(), 1) != 1 || libc::close(fd) != 0 {
                    return 4;
                }
                0
            }
            Case::Args => {
                if libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) != -1
                    || errno() != libc::EACCES
                {
                    return 1;
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if fd < 0 || libc::close(fd) != 0 {
                    return 2;
                }
                if libc::personality(0xffff_ffff) != -1 || errno() != libc::EPERM {
                    return 3;
                }
                if libc::personality(0) == -1 {
                    return 4;
                }
                let g = |a0: u64, a1: u64| raw(libc::SYS_getppid, [a0, a1, 0, 0, 0, 0]);
                if ppid <= 0 || g(0x1_0000_0000, 0) != ppid || g(0xffff_ffff, 0) != ppid {
                    return 5;
                }
                if g(0x1_0000_0001, 0) != -71 || g(0x2_0000_0000, 0) != -71 {
                    return 6;
                }
                if g(0, 0x1234_5678_9abc_de34) != -72 || g(0, 0x1300_0000_0000_0034) != ppid {
                    return 7;
                }
                0
            }
            Case::BigAllowList => {
                if raw(libc::SYS_getpid, [0; 6]) <= 0 {
                    return 1;
                }
                if libc::mkdir(dir.as_ptr(), 0o755) != -1 || errno() != libc::EPERM {
                    return 2;
                }
                // faccessat2 (439) is above the profile's highest syscall (rseq, 334): ENOSYS
                // from the filter although the kernel has it.
                let fa = raw(
                    libc::SYS_faccessat2,
                    [libc::AT_FDCWD as u64, c"/".as_ptr() as u64, 0, 0, 0, 0],
                );
                if fa != -i64::from(libc::ENOSYS) {
                    return 3;
                }
                let fd = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"x".as_ptr().cast(), 1) != 1 || libc::close(fd) != 0 {
                    return 4;
                }
                0
            }
            Case::X86Listed => {
                if raw(libc::SYS_getpid, [0; 6]) != -77 {
                    return 1;
                }
                // i386 getpid is 20.
                if int80(20) != -77 {
                    return 2;
                }
                0
            }
            Case::X86NotListed => {
                int80(20);
                // Still alive: the filter did not kill us.
                1
            }
            Case::X32Listed => {
                if raw(libc::SYS_getpid, [0; 6]) != -78 {
                    return 1;
                }
                if raw(libc::c_long::from(arch::X32_SYSCALL_BIT) | 39, [0; 6]) != -78 {
                    return 2;
                }
                0
            }
            Case::X32NotListed => {
                raw(libc::c_long::from(arch::X32_SYSCALL_BIT) | 39, [0; 6]);
                1
            }
            // Handled before the install above.
            Case::NoNoNewPrivs => 98,
        }
    }
}

/// Entry point of the re-executed child; a no-op in normal test runs.
#[test]
fn kernel_child_entry() {
    let Ok(name) = std::env::var(CHILD_ENV) else {
        return;
    };
    let case = Case::ALL
        .into_iter()
        .find(|c| c.name() == name)
        .unwrap_or_else(|| panic!("unknown case {name}"));
    let profile = case.profile();
    let program = compile(&profile).expect("compile");
    let flags = flags(&profile).expect("flags");
    let dir = std::env::var(CHILD_DIR_ENV).expect("scratch dir");
    let target = std::ffi::CString::new(format!("{dir}/made-by-child")).expect("path");
    // SAFETY: the grandchild only runs `grandchild`, which does not allocate, then _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = grandchild(case, &program, flags, &target);
        // SAFETY: ends the grandchild without running the harness's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waits for our own child.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    };
    println!("{RESULT_PREFIX}{code}");
}

/// Runs `case` in a fresh copy of this test binary; returns the grandchild's exit code.
fn run_kernel_case(case: Case, dir: &std::path::Path) -> i32 {
    let exe = std::env::current_exe().expect("current test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "seccomp::tests::kernel_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, case.name())
        .env(CHILD_DIR_ENV, dir)
        .output()
        .expect("spawn test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once(RESULT_PREFIX))
        .and_then(|(_, c)| c.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{case:?}: no result from child\nstdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

#[test]
fn seccomp_kernel_denies_mkdir_with_eperm() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run_kernel_case(Case::DenyMkdir, dir.path()), 0);
    assert!(!dir.path().join("made-by-child").exists());
}

#[test]
fn seccomp_kernel_argument_conditions() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run_kernel_case(Case::Args, dir.path()), 0);
}

#[test]
fn seccomp_kernel_big_allow_list_with_enosys_stub() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run_kernel_case(Case::BigAllowList, dir.path()), 0);
    assert!(!dir.path().join("made-by-child").exists());
}

#[test]
fn seccomp_kernel_needs_no_new_privs_or_cap_sys_admin() {
    let dir = tempfile::tempdir().unwrap();
    match run_kernel_case(Case::NoNoNewPrivs, dir.path()) {
        SKIPPED => eprintln!("skipped: no_new_privs already set for this process"),
        code => assert_eq!(code, 0),
    }
}

#[test]
#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
fn seccomp_kernel_architecture_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let sigsys = 128 + libc::SIGSYS;
    // x32 syscalls reach seccomp (as AUDIT_ARCH_X86_64 with bit 30 set) whether or not the
    // kernel supports x32, because the filter runs before the syscall is dispatched.
    assert_eq!(run_kernel_case(Case::X32Listed, dir.path()), 0);
    assert_eq!(run_kernel_case(Case::X32NotListed, dir.path()), sigsys);
    // int 0x80 needs IA32 emulation; without it the process gets SIGSEGV before seccomp.
    match run_kernel_case(Case::X86Listed, dir.path()) {
        0 => assert_eq!(run_kernel_case(Case::X86NotListed, dir.path()), sigsys),
        code if code == 128 + libc::SIGSEGV => {
            eprintln!("skipped the i386 part: no IA32 emulation in this kernel")
        }
        code => panic!("X86Listed: grandchild code {code}"),
    }
}
