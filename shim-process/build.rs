//! Links the shim as a fixed-address (non-PIE) executable, as Debian builds containerd's own Go
//! shim. A position-independent executable has its pointer tables (`.data.rel.ro`, 270 KiB
//! here: vtables, descriptor and dispatch tables) written by the loader at every start, which
//! makes them private dirty memory in every shim and in every setup process. Linked at a fixed
//! address they need no relocation, stay clean pages of the file, are shared by every shim on
//! the host and can be dropped when idle: an idle shim's anonymous memory goes from 680 to
//! 420 KiB. The cost is the executable image's own address randomisation (libraries, heap and
//! stacks stay randomised).

fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
