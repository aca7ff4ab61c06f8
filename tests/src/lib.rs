//! End-to-end harness for containerd runtime-v2 shims.
//!
//! Every test talks to a REAL private containerd (one per test binary, shared
//! by its tests, each test in its own namespace) through `ctr`, and runs once
//! per shim variant (see [`Variant`]): containerd's reference Go shim and our
//! OCI shim selected by name or by path, with runc or crun, our process shim and our VM
//! shim (containers in QEMU micro-VMs; see `Ctx`'s container view for what a
//! scenario checks inside the guest instead of on the host).
//!
//! The exception is [`direct`]: it plays containerd itself against one shim
//! binary over raw ttrpc; the shim crates' protocol tests
//! (`shim-*/tests/protocol.rs`) are built on it.
//!
//! Convention: a container command whose output a scenario checks ends with
//! a short `sleep` before it exits. ctr 1.6 cancels its IO (closing its fifo
//! readers) as soon as it sees the exit and loses output it has not read yet;
//! under CPU load this hit the reference shim too (small outputs and the last
//! 4-64 KiB of big ones). Output produced right before the exit is checked
//! where ctr is not in the path (`log_uri_file_complete_at_exit`).
//!
//! Environment:
//! * `E2E_RUNTIMES=runc-v2-reference,oci-runc-name,...` selects variants
//!   (default: all); the others pass trivially, printing `SKIP`.
//! * `SHIM_BIN_DIR` is where our `containerd-shim-oci-v1` is; default: the
//!   workspace's `target/release`, then `target/debug`.
//! * `E2E_CRUN_BINARY` / `E2E_RUNC_BINARY` change the `binary` written to the
//!   runtime config files passed with `--runtime-config-path`.
//! * `E2E_CONTAINERD=1.6|1.7|2.1` selects the containerd, ctr and reference
//!   Go shim (default 1.6, the system's); see [`version`].

pub mod bench;
pub mod cmd;
pub mod ctx;
pub mod daemon;
pub mod deps;
pub mod direct;
pub mod events;
pub mod image;
pub mod procfs;
pub mod runtime;
pub mod util;
pub mod version;

pub use cmd::{CmdOutput, Running, Stdin};
pub use ctx::{heavy, run_scenario, ContainerProcess, Ctx, HeavyGuard, TaskInfo, CTR_TIMEOUT};
pub use daemon::PrivateContainerd;
pub use deps::ensure_deps;
pub use image::{IMAGE, IMAGE_USER};
pub use runtime::{RuntimeUnderTest, Variant};
pub use version::ContainerdVersion;
