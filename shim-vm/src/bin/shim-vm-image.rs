//! Builds the VM shim's guest image (vmlinux + initramfs) into the cache directory and prints
//! their paths. See `shim_vm::image`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(shim_vm::image::cli_main(&args));
}
