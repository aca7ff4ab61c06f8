//! `containerd-shim-vm-v1`: containers inside QEMU micro-VMs, driven through our guest agent.
//! `containerd-shim-vm-v1 image …` builds the guest image (the same as `shim-vm-image`).

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("image") {
        let rest: Vec<String> = args.collect();
        std::process::exit(shim_vm::image::cli_main(&rest));
    }
    shim_common::run::<shim_vm::runtime::VmRuntime>(env!("CARGO_PKG_VERSION"))
}
