//! A tiny classic-BPF assembler specialised for seccomp filters.
//!
//! Classic BPF only jumps forwards and a conditional jump's targets are 8-bit offsets (at most 255
//! instructions ahead), while the whole program may be up to 4096 instructions long. Rather than
//! laying the program out first and patching offsets afterwards (which needs iteration when a
//! patch inserts instructions), the [`Emitter`] builds the program *backwards*: every instruction
//! is emitted after all the instructions it can jump to, so each offset is known exactly when the
//! jump is written. When a target is out of 8-bit reach, a trampoline is emitted right behind the
//! jump: for a `RET` target simply a fresh copy of that `RET` (same size as a `JA`, one fewer
//! instruction executed), otherwise an unconditional `JA`, whose offset is 32-bit.

use std::collections::HashMap;
use std::fmt::Write as _;

use libc::sock_filter;

// Instruction classes and fields (linux/bpf_common.h). Defined here rather than taken from libc
// because they are kernel ABI and libc only exports some of them on some targets.
pub(super) const BPF_LD: u16 = 0x00;
pub(super) const BPF_ALU: u16 = 0x04;
pub(super) const BPF_JMP: u16 = 0x05;
pub(super) const BPF_RET: u16 = 0x06;
pub(super) const BPF_W: u16 = 0x00;
pub(super) const BPF_ABS: u16 = 0x20;
pub(super) const BPF_K: u16 = 0x00;
pub(super) const BPF_AND: u16 = 0x50;
pub(super) const BPF_JA: u16 = 0x00;
pub(super) const BPF_JEQ: u16 = 0x10;
pub(super) const BPF_JGT: u16 = 0x20;
pub(super) const BPF_JGE: u16 = 0x30;

/// Longest offset a conditional jump can encode.
const MAX_SHORT_JUMP: usize = u8::MAX as usize;

/// Where a jump goes: an already emitted instruction, or "return this value".
///
/// `Ret` is kept symbolic so that the emitter can share one `RET` instruction between all jumps
/// in reach and duplicate it only when needed; a filter has only a handful of distinct results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// Label of an emitted instruction (see [`Emitter`] for how labels are counted).
    Label(usize),
    /// A `RET` of this seccomp action value.
    Ret(u32),
}

/// Backwards program builder.
///
/// A label is an instruction's index counted from the *end* of the program (the last instruction
/// is label 0), which stays valid however many instructions are emitted in front of it later.
#[derive(Default)]
pub(super) struct Emitter {
    /// Instructions in reverse program order.
    rev: Vec<sock_filter>,
    /// Nearest emitted `RET` for each action value (the most recently emitted one is the nearest).
    rets: HashMap<u32, usize>,
}

impl Emitter {
    /// Number of instructions emitted so far.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.rev.len()
    }

    /// Offset from the instruction about to be emitted to `label`.
    fn distance(&self, label: usize) -> usize {
        self.rev.len() - label - 1
    }

    fn push(&mut self, code: u16, jt: u8, jf: u8, k: u32) -> usize {
        self.rev.push(sock_filter { code, jt, jf, k });
        self.rev.len() - 1
    }

    /// `RET #value`.
    pub(super) fn ret(&mut self, value: u32) -> Target {
        let label = self.push(BPF_RET | BPF_K, 0, 0, value);
        self.rets.insert(value, label);
        Target::Label(label)
    }

    /// `LD W [offset]`: loads a 32-bit word of `struct seccomp_data` into the accumulator.
    pub(super) fn load(&mut self, offset: u32) -> Target {
        Target::Label(self.push(BPF_LD | BPF_W | BPF_ABS, 0, 0, offset))
    }

    /// `AND #mask` on the accumulator.
    pub(super) fn and(&mut self, mask: u32) -> Target {
        Target::Label(self.push(BPF_ALU | BPF_AND | BPF_K, 0, 0, mask))
    }

    /// Label for `target` if a jump emitted next can reach it with an 8-bit offset.
    fn reachable(&self, target: Target) -> Option<usize> {
        let label = match target {
            Target::Label(label) => label,
            Target::Ret(value) => *self.rets.get(&value)?,
        };
        (self.distance(label) <= MAX_SHORT_JUMP).then_some(label)
    }

    /// Emits an instruction that continues at `target` (a copy of the `RET`, or a long `JA`).
    fn trampoline(&mut self, target: Target) -> Target {
        match target {
            Target::Ret(value) => self.ret(value),
            Target::Label(label) => {
                // Counted from the JA itself, which is about to become instruction `len`.
                let offset = self.distance(label);
                // A program is capped far below 2^32 instructions; saturate rather than panic.
                let k = u32::try_from(offset).unwrap_or(u32::MAX);
                Target::Label(self.push(BPF_JMP | BPF_JA, 0, 0, k))
            }
        }
    }

    /// Conditional jump `op #k`: to `jt` when true, `jf` when false.
    ///
    /// Returns where control should enter: when both branches go to the same place no
    /// instruction is needed at all.
    pub(super) fn jump(&mut self, op: u16, k: u32, jt: Target, jf: Target) -> Target {
        if jt == jf {
            return jt;
        }
        let (mut jt, mut jf) = (jt, jf);
        loop {
            // Each trampoline lengthens the other branch's jump by one, so re-check both.
            match (self.reachable(jt), self.reachable(jf)) {
                (Some(t), Some(f)) => {
                    // Both distances were checked to be <= 255.
                    let (t, f) = (self.distance(t) as u8, self.distance(f) as u8);
                    return Target::Label(self.push(BPF_JMP | op | BPF_K, t, f, k));
                }
                (None, _) => jt = self.trampoline(jt),
                (_, None) => jf = self.trampoline(jf),
            }
        }
    }

    /// Makes the next instruction emitted (i.e. the one placed just *before* the current start of
    /// the program) flow into `target`, adding a `RET` or `JA` when it is not already adjacent.
    pub(super) fn fall_into(&mut self, target: Target) {
        match target {
            Target::Label(label) if label + 1 == self.rev.len() => {}
            other => {
                self.trampoline(other);
            }
        }
    }

    /// The finished program, in execution order. `entry` must be where execution starts.
    pub(super) fn finish(mut self, entry: Target) -> Vec<sock_filter> {
        self.fall_into(entry);
        self.rev.reverse();
        self.rev
    }
}

/// Human-readable listing, one instruction per line, with absolute jump targets.
/// Used by `Program`'s `Debug` impl and by golden tests.
pub(super) fn disassemble(program: &[sock_filter]) -> String {
    let mut out = String::new();
    for (pc, ins) in program.iter().enumerate() {
        let target = |off: u32| pc + 1 + off as usize;
        let text = match ins.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => format!("ld [{}]", ins.k),
            c if c == BPF_ALU | BPF_AND | BPF_K => format!("and #{:#x}", ins.k),
            c if c == BPF_RET | BPF_K => format!("ret #{:#x}", ins.k),
            c if c == BPF_JMP | BPF_JA => format!("ja {}", target(ins.k)),
            c if c & 0x07 == BPF_JMP => {
                let name = match c & 0xf0 {
                    BPF_JEQ => "jeq",
                    BPF_JGT => "jgt",
                    BPF_JGE => "jge",
                    _ => "j?",
                };
                format!(
                    "{name} #{:#x} {} {}",
                    ins.k,
                    target(u32::from(ins.jt)),
                    target(u32::from(ins.jf))
                )
            }
            c => format!("?? code={c:#x} jt={} jf={} k={:#x}", ins.jt, ins.jf, ins.k),
        };
        let _ = writeln!(out, "{pc:4}: {text}");
    }
    out
}

/// A reference interpreter for the instruction subset the compiler emits, used by tests to check
/// a compiled program's decisions without a kernel. Panics on anything the kernel would reject
/// (unknown opcode, out-of-range load or jump, falling off the end).
#[cfg(test)]
pub(super) fn run(program: &[sock_filter], data: &[u8; 64]) -> u32 {
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    loop {
        let ins = program
            .get(pc)
            .unwrap_or_else(|| panic!("pc {pc} ran off the program"));
        pc += 1;
        match ins.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => {
                let off = ins.k as usize;
                assert!(
                    off & 3 == 0 && off + 4 <= data.len(),
                    "bad load offset {off}"
                );
                acc = u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]);
            }
            c if c == BPF_ALU | BPF_AND | BPF_K => acc &= ins.k,
            c if c == BPF_RET | BPF_K => return ins.k,
            c if c == BPF_JMP | BPF_JA => pc += ins.k as usize,
            c if c & 0x07 == BPF_JMP => {
                let taken = match c & 0xf0 {
                    BPF_JEQ => acc == ins.k,
                    BPF_JGT => acc > ins.k,
                    BPF_JGE => acc >= ins.k,
                    other => panic!("unexpected jump op {other:#x}"),
                };
                pc += usize::from(if taken { ins.jt } else { ins.jf });
            }
            c => panic!("unexpected opcode {c:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_emitter_inserts_trampolines_for_far_targets() {
        let mut em = Emitter::default();
        em.ret(7);
        let far_five = em.ret(5);
        // 300 unrelated instructions between the jump and both of its targets.
        for i in 0..300 {
            em.load(i % 16 * 4);
        }
        // jt: the shared RET 7 is out of reach -> a fresh copy; jf: a label out of reach -> JA.
        let entry = em.jump(BPF_JEQ, 1, Target::Ret(7), far_five);
        em.fall_into(entry);
        let entry = em.load(0);
        let prog = em.finish(entry);
        assert_eq!(prog.len(), 2 + 2 + 300 + 2);
        let text = disassemble(&prog);
        assert!(
            text.starts_with("   0: ld [0]\n   1: jeq #0x1 3 2\n   2: ja 304\n   3: ret #0x7\n"),
            "{text}"
        );
        let mut data = [0u8; 64];
        assert_eq!(run(&prog, &data), 5, "false branch through the JA");
        data[..4].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(run(&prog, &data), 7, "true branch to the duplicated RET");
    }

    #[test]
    fn seccomp_emitter_skips_jumps_with_equal_branches() {
        let mut em = Emitter::default();
        let r = em.ret(1);
        assert_eq!(em.jump(BPF_JEQ, 3, r, r), r);
        assert_eq!(em.len(), 1);
    }
}
