//! Errors of container creation. Each says what was being done, so a failed Create reaches
//! containerd with a message that names the step (the mount, the namespace, the user...).

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// The spec asks for something invalid or unsupported.
    #[error("invalid spec: {0}")]
    Spec(String),
    #[error("setup channel: {0}")]
    Protocol(String),
    /// The container's setup process reported a failure.
    #[error("{0}")]
    Setup(String),
    #[error("hook: {0}")]
    Hook(String),
}

impl Error {
    pub fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            context: context.into(),
            source,
        }
    }

    pub fn io(context: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io(std::io::Error::new(
            source.kind(),
            format!("{context}: {source}"),
        ))
    }
}
