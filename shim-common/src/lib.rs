//! The containerd runtime-v2 shim framework.
//!
//! Everything containerd-facing lives here once: the command line (`start`, `delete`, the
//! daemon), the ttrpc Task service and its state machine, stdio, events, exit reaping, rootfs
//! mounts, cgroup metrics and settings. A shim binary is a [`Runtime`] implementation plus
//! `shim_common::run::<MyRuntime>(VERSION)`.

pub mod binary_log;
pub mod bootstrap;
pub mod bundle;
pub mod cgroups;
pub mod cli;
pub mod error;
pub mod events;
pub mod id;
pub mod idle;
pub mod logger;
pub mod mount;
pub mod options;
pub mod reaper;
pub mod runtime;
pub mod service;
pub mod shim;
pub mod socket;
pub mod stdio;

pub use error::{Error, Result};
pub use runtime::{ContainerInfo, Runtime, RuntimeContext, Spawned, Target};
pub use shim::run;
