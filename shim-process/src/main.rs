//! `containerd-shim-process-v1`: a containerd shim that is its own runtime. It creates the
//! container's namespaces, filesystem and cgroup itself; no runc, no crun.

mod runtime;

fn main() {
    // The container's setup process is this binary again, in setup mode (see the container
    // crate): a fresh single-threaded process, never a fork of the daemon.
    if std::env::args().nth(1).as_deref() == Some(runtime::SETUP_ARG) {
        container::init::main();
    }
    shim_common::run::<runtime::ProcessRuntime>(env!("CARGO_PKG_VERSION"))
}
