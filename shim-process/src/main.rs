//! `containerd-shim-process-v1`: a containerd shim that is its own runtime. It creates the
//! container's namespaces, filesystem and cgroup itself; no runc, no crun.

mod runtime;

/// Heap settings for a daemon that mostly idles: one arena (its async runtime has one thread;
/// the few helper threads need no arena of their own), and a fixed trim threshold, so freed
/// memory at the heap's top goes back to the kernel instead of growing with the largest
/// allocation seen (glibc's dynamic threshold).
fn tune_malloc() {
    // SAFETY: mallopt with plain integer arguments, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

fn main() {
    // The container's setup process is this binary again, in setup mode (see the container
    // crate): a fresh single-threaded process, never a fork of the daemon.
    if std::env::args().nth(1).as_deref() == Some(runtime::SETUP_ARG) {
        container::init::main();
    }
    tune_malloc();
    shim_common::run::<runtime::ProcessRuntime>(env!("CARGO_PKG_VERSION"))
}
