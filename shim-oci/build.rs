//! Links the shim's binary with packed relative relocations (DT_RELR): a position-independent
//! executable otherwise carries one 24-byte entry per pointer to fix up at every exec (half a
//! third of a megabyte here, read by the loader each time containerd starts the shim); packed,
//! they take a few kilobytes. Needs a linker and C library from 2022 on (Debian 12 has both).

fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
