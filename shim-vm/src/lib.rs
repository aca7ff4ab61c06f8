//! The VM shim's host side: the guest image builder, the QEMU command line, and the client of
//! the guest agent.
//!
//! A container runs inside a QEMU micro-VM whose PID 1 is our agent (`vm-agent`), driven over
//! ttrpc on a virtio-serial port. Everything the guest boots from is built here from Debian's
//! kernel package and our own code ([`image`]); how QEMU is started is in [`qemu`]; talking to
//! the agent is in [`agent`], process output from its output port in [`output`]. See `/work/shared/docs/vm-guest.md` for the measurements behind
//! each choice.

pub mod agent;
pub mod bzimage;
pub mod cpio;
pub mod deb;
pub mod guest_io;
pub mod guest_spec;
pub mod image;
pub mod kmod;
pub mod output;
pub mod qemu;
pub mod qmp;
pub mod runtime;
pub mod settings;
pub mod template;

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Input that is not what it should be: a package, a kernel image, a module.
    #[error("{0}")]
    Format(String),
    /// An external command (apt, cargo, qemu) failed; its own words.
    #[error("{0}")]
    Command(String),
    /// Something the host lacks (apt cannot fetch, no QEMU); callers may skip rather than fail.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("agent: {0}")]
    Agent(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
