//! `containerd-shim-vm-v1`: containers inside QEMU micro-VMs, driven through our guest agent.
//!
//! The containerd-facing runtime is not written yet (issue 5); today the binary only builds the
//! guest image (`containerd-shim-vm-v1 image …`, the same as `shim-vm-image`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("image") {
        std::process::exit(shim_vm::image::cli_main(&args[1..]));
    }
    eprintln!(
        "containerd-shim-vm-v1: the VM runtime is not implemented yet; \
         `containerd-shim-vm-v1 image [--help]` builds the guest image"
    );
    std::process::exit(1);
}
