//! The command line containerd gives a shim, parsed the way Go's `flag` package does.
//!
//! containerd (and operators copying its calls) write `-flag v`, `--flag v` and `-flag=v`
//! interchangeably; boolean flags take no value unless written `-flag=false`. The action
//! (`start`, `delete`, or none for the serving daemon) is the first positional argument.

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn the daemon (or find the group's), print its address, exit.
    Start,
    /// Clean up after a dead shim and print a `DeleteResponse`.
    Delete,
    /// Serve the Task API (what `start` re-executes).
    Serve,
    Version,
    Info,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub action: Action,
    pub namespace: String,
    pub id: String,
    pub address: String,
    pub publish_binary: String,
    pub bundle: String,
    pub debug: bool,
    pub socket: String,
}

const VALUE_FLAGS: &[&str] = &[
    "namespace",
    "id",
    "address",
    "publish-binary",
    "bundle",
    "socket",
    "debug-socket",
];
const BOOL_FLAGS: &[&str] = &["debug", "v", "version", "info"];

impl Args {
    /// Parses argv, then fills what the flags left empty from the environment containerd 1.7+
    /// also sets (`NAMESPACE`, `GRPC_ADDRESS`); the flags win.
    pub fn from_env<I: IntoIterator<Item = String>>(argv: I) -> Result<Args> {
        let mut args = Args::parse(argv)?;
        args.fill_from(|k| std::env::var(k).ok());
        Ok(args)
    }

    fn fill_from(&mut self, env: impl Fn(&str) -> Option<String>) {
        if self.namespace.is_empty() {
            self.namespace = env("NAMESPACE").unwrap_or_default();
        }
        if self.address.is_empty() {
            self.address = env("GRPC_ADDRESS").unwrap_or_default();
        }
    }

    pub fn parse<I: IntoIterator<Item = String>>(argv: I) -> Result<Args> {
        let mut args = Args {
            action: Action::Serve,
            namespace: String::new(),
            id: String::new(),
            address: String::new(),
            publish_binary: String::new(),
            bundle: String::new(),
            debug: false,
            socket: String::new(),
        };
        let (mut version, mut info) = (false, false);
        let mut it = argv.into_iter();
        let mut positional = Vec::new();
        while let Some(arg) = it.next() {
            if arg == "--" {
                positional.extend(it.by_ref());
                break;
            }
            let Some(flag) = arg
                .strip_prefix("--")
                .or_else(|| arg.strip_prefix('-'))
                .filter(|f| !f.is_empty())
            else {
                positional.push(arg);
                // Go's flag stops at the first non-flag argument.
                positional.extend(it.by_ref());
                break;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            if BOOL_FLAGS.contains(&name) {
                let value = match inline.as_deref() {
                    None => true,
                    Some(v) => parse_bool(v).ok_or_else(|| {
                        Error::InvalidArgument(format!("invalid boolean value {v:?} for -{name}"))
                    })?,
                };
                match name {
                    "debug" => args.debug = value,
                    "v" | "version" => version = value,
                    _ => info = value,
                }
            } else if VALUE_FLAGS.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => it.next().ok_or_else(|| {
                        Error::InvalidArgument(format!("flag needs an argument: -{name}"))
                    })?,
                };
                match name {
                    "namespace" => args.namespace = value,
                    "id" => args.id = value,
                    "address" => args.address = value,
                    "publish-binary" => args.publish_binary = value,
                    "bundle" => args.bundle = value,
                    "socket" => args.socket = value,
                    _ => {}
                }
            } else {
                return Err(Error::InvalidArgument(format!(
                    "flag provided but not defined: -{name}"
                )));
            }
        }
        args.action = if version {
            Action::Version
        } else if info {
            Action::Info
        } else {
            match positional.first().map(String::as_str) {
                None => Action::Serve,
                Some("start") => Action::Start,
                Some("delete") => Action::Delete,
                Some(other) => {
                    return Err(Error::InvalidArgument(format!("unknown action {other:?}")))
                }
            }
        };
        Ok(args)
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args> {
        Args::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn containerd_start_line() {
        let a = parse("-namespace ns -address /run/c.sock -publish-binary /usr/bin/containerd -id c1 -debug start").unwrap();
        assert_eq!(a.action, Action::Start);
        assert_eq!(a.namespace, "ns");
        assert_eq!(a.id, "c1");
        assert_eq!(a.address, "/run/c.sock");
        assert_eq!(a.publish_binary, "/usr/bin/containerd");
        assert!(a.debug);
    }

    #[test]
    fn all_flag_spellings() {
        let a = parse("--namespace=ns -id=x --bundle /b -debug=false delete").unwrap();
        assert_eq!(a.action, Action::Delete);
        assert_eq!(a.namespace, "ns");
        assert_eq!(a.id, "x");
        assert_eq!(a.bundle, "/b");
        assert!(!a.debug);
    }

    #[test]
    fn daemon_info_and_version() {
        assert_eq!(
            parse("-namespace n -id i -address a").unwrap().action,
            Action::Serve
        );
        assert_eq!(parse("-info").unwrap().action, Action::Info);
        assert_eq!(parse("-v").unwrap().action, Action::Version);
        assert_eq!(parse("--version").unwrap().action, Action::Version);
    }

    #[test]
    fn environment_fills_only_missing_flags() {
        let env = |k: &str| match k {
            "NAMESPACE" => Some("envns".to_string()),
            "GRPC_ADDRESS" => Some("/env.sock".to_string()),
            _ => None,
        };
        let mut a = parse("-id c1 start").unwrap();
        a.fill_from(env);
        assert_eq!(
            (a.namespace.as_str(), a.address.as_str()),
            ("envns", "/env.sock")
        );
        let mut a = parse("-namespace ns -address /a -id c1 start").unwrap();
        a.fill_from(env);
        assert_eq!((a.namespace.as_str(), a.address.as_str()), ("ns", "/a"));
    }

    #[test]
    fn bad_lines() {
        assert!(parse("-nope start").is_err());
        assert!(parse("-id").is_err());
        assert!(parse("frobnicate").is_err());
        assert!(parse("-debug=maybe").is_err());
    }
}
