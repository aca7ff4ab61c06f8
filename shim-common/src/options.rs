//! Runtime options and TOML settings.
//!
//! containerd sends whatever options type the caller chose: `containerd.runc.v1.Options` for
//! the name `io.containerd.runc.v2`, `runtimeoptions.v1.Options` (a TOML file path or an inline
//! TOML body) for every other runtime under CRI or `ctr --runtime-config-path`, or nothing.
//! Unknown types are logged and ignored, never an error: refusing them broke other shims.

use std::path::{Path, PathBuf};

use protobuf::well_known_types::any::Any;
use protobuf::Message;

use crate::error::{Error, Result};

pub use protos::runc_options::{CheckpointOptions, Options as RuncOptions};
pub use protos::type_urls::RUNC_CHECKPOINT_OPTIONS;

pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
pub const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

#[derive(Debug, Clone, Default, PartialEq)]
pub enum Options {
    #[default]
    None,
    Runc(protos::runc_options::Options),
    /// `runtimeoptions.v1.Options`: a TOML file path and/or an inline TOML body.
    Config {
        path: String,
        body: String,
    },
    Unknown(String),
}

fn type_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

impl Options {
    pub fn decode(any: Option<&Any>) -> Result<Options> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
            return Ok(Options::None);
        };
        let bad = |e: protobuf::Error| {
            Error::InvalidArgument(format!("malformed options of type {}: {e}", any.type_url))
        };
        Ok(match type_name(&any.type_url) {
            RUNC_OPTIONS => Options::Runc(
                protos::runc_options::Options::parse_from_bytes(&any.value).map_err(bad)?,
            ),
            RUNTIME_OPTIONS => {
                let o =
                    protos::runtimeoptions::Options::parse_from_bytes(&any.value).map_err(bad)?;
                Options::Config {
                    path: o.config_path,
                    body: String::from_utf8_lossy(&o.config_body).into_owned(),
                }
            }
            other => {
                log::debug!("ignoring runtime options of unknown type {other}");
                Options::Unknown(other.to_string())
            }
        })
    }

    /// The settings in force: the TOML file named by the options, else their inline body, else
    /// `default_file` if it exists, else empty (every setting at its built-in default).
    pub fn settings(&self, default_file: &Path) -> Result<toml::Table> {
        let (text, origin) = match self {
            Options::Config { path, .. } if !path.is_empty() => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::InvalidArgument(format!("reading settings file {path}: {e}"))
                })?;
                (text, PathBuf::from(path))
            }
            Options::Config { body, .. } if !body.is_empty() => {
                (body.clone(), PathBuf::from("<config_body>"))
            }
            _ => match std::fs::read_to_string(default_file) {
                Ok(t) => (t, default_file.to_path_buf()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(toml::Table::new()),
                Err(e) => return Err(Error::path("reading settings", default_file, e)),
            },
        };
        text.parse::<toml::Table>().map_err(|e| {
            Error::InvalidArgument(format!("malformed TOML settings {}: {e}", origin.display()))
        })
    }
}

/// Reads a typed section of settings; unknown keys are ignored, wrong types are refused.
pub fn section<T: serde::de::DeserializeOwned + Default>(table: &toml::Table) -> Result<T> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e| Error::InvalidArgument(format!("invalid settings: {e}")))
}

pub fn default_settings_file(name: &str) -> PathBuf {
    PathBuf::from(format!("/etc/containerd/shim-{name}.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = url.into();
        a.value = value;
        a
    }

    #[test]
    fn decodes_known_and_ignores_unknown() {
        let mut runc = protos::runc_options::Options::new();
        runc.binary_name = "crun".into();
        let o = Options::decode(Some(&any(RUNC_OPTIONS, runc.write_to_bytes().unwrap()))).unwrap();
        assert!(matches!(o, Options::Runc(ref r) if r.binary_name == "crun"));
        let mut ro = protos::runtimeoptions::Options::new();
        ro.config_body = b"binary = \"crun\"".to_vec();
        let o = Options::decode(Some(&any(RUNTIME_OPTIONS, ro.write_to_bytes().unwrap()))).unwrap();
        let t = o.settings(Path::new("/nonexistent")).unwrap();
        assert_eq!(t["binary"].as_str(), Some("crun"));
        let o = Options::decode(Some(&any("example.com/Other", vec![1, 2, 3]))).unwrap();
        assert_eq!(o, Options::Unknown("Other".into()));
        assert_eq!(Options::decode(None).unwrap(), Options::None);
    }

    #[test]
    fn bad_bytes_and_bad_toml_are_invalid_argument() {
        let e = Options::decode(Some(&any(RUNC_OPTIONS, vec![0xff, 0xff]))).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
        let o = Options::Config {
            path: String::new(),
            body: "binary = ".into(),
        };
        assert!(matches!(
            o.settings(Path::new("/nonexistent")),
            Err(Error::InvalidArgument(_))
        ));
        assert!(Options::None
            .settings(Path::new("/nonexistent"))
            .unwrap()
            .is_empty());
    }
}
