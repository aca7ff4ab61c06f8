//! Native OCI container creation: what a runtime like runc does, as a library.
//!
//! The process shim runs containers with it directly, and the VM shim's guest agent runs it
//! inside the guest. The runtime side ([`launch`]) never forks a multi-threaded process: it
//! re-executes its own binary in setup mode ([`init::main`]), a fresh single-threaded process
//! in which namespaces, mounts and identity changes are safe, or, when the runtime asks for it
//! and has exactly one thread (the guest agent), forks itself, which is just as safe and
//! skips the re-exec. See ARCHITECTURE.md.

pub mod capabilities;
pub mod cgroups;
pub mod channel;
pub mod error;
pub mod fork;
pub mod hooks;
pub mod init;
pub mod launch;
pub mod process;
pub mod rootfs;
pub mod seccomp;

pub use error::{Error, Result};
