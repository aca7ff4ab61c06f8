//! Typed errors, and how each maps onto the ttrpc status code containerd keys its behaviour on.
//!
//! containerd turns the code back into an `errdefs` error: NotFound on Kill means "already
//! finished", NotFound on Delete is tolerated, Unimplemented triggers API downgrades. So every
//! error the shim returns must carry the code containerd expects, never a generic one.

use std::io;
use std::path::PathBuf;

use ttrpc::{Code, Status};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{context} {}: {source}", path.display())]
    Path {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    /// The runtime (an OCI CLI, the native runtime or the VM agent) refused; its own message.
    #[error("{0}")]
    Runtime(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn path(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Path {
            context,
            path: path.into(),
            source,
        }
    }

    pub fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            context: context.into(),
            source,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Path { source, .. } | Error::Io { source, .. }
                if source.kind() == io::ErrorKind::NotFound =>
            {
                Code::NOT_FOUND
            }
            _ => Code::UNKNOWN,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        let mut status = Status::new();
        status.set_code(e.code());
        status.set_message(e.to_string());
        ttrpc::Error::RpcStatus(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_errdefs() {
        assert_eq!(Error::NotFound("x".into()).code(), Code::NOT_FOUND);
        assert_eq!(
            Error::FailedPrecondition("x".into()).code(),
            Code::FAILED_PRECONDITION
        );
        let e = Error::path(
            "reading",
            "/x",
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert_eq!(e.code(), Code::UNKNOWN);
        match ttrpc::Error::from(Error::AlreadyExists("dup".into())) {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::ALREADY_EXISTS);
                assert_eq!(s.message(), "dup");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
