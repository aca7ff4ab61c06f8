//! `containerd-shim-oci-v1`: a containerd runtime-v2 shim that drives an OCI runtime CLI
//! (runc by default, crun or any runc-compatible binary by setting).

mod cli;
mod console;
mod runtime;
mod settings;

fn main() {
    shim_common::run::<runtime::OciRuntime>(env!("CARGO_PKG_VERSION"))
}
