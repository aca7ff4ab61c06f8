//! What `start` reads from containerd and what it answers, across containerd versions.
//!
//! containerd 1.6-2.2 write the runtime options `Any` on stdin and accept the plain address on
//! stdout (1.7+ also JSON, 2.x also JSON version 3). containerd 2.3 writes a protobuf
//! `BootstrapParams` and tries a protobuf `BootstrapResult` first. A legacy `Any` can happen to
//! decode as `BootstrapParams`, so the new protocol is recognised only when the params name the
//! very instance id and namespace of our flags; otherwise we answer the legacy way, which every
//! version accepts.

use protobuf::well_known_types::any::Any;
use protobuf::Message;
use protos::bootstrap::{BootstrapParams, BootstrapResult};

use crate::cli::Args;

/// How `start` was addressed, decided from its stdin, flags and environment.
#[derive(Debug, Clone, PartialEq)]
pub enum Handshake {
    /// containerd 2.3+: answer with a protobuf `BootstrapResult`.
    Bootstrap(Box<BootstrapParams>),
    /// Older daemons: stdin held the runtime options (or nothing).
    Legacy {
        options: Option<Any>,
        /// `MAX_SHIM_VERSION` from the environment (1.7+), 0 when absent.
        max_version: u32,
    },
}

impl Handshake {
    pub fn detect(stdin: &[u8], args: &Args, max_shim_version: Option<&str>) -> Handshake {
        if !stdin.is_empty() {
            if let Ok(p) = BootstrapParams::parse_from_bytes(stdin) {
                if !p.instance_id.is_empty()
                    && p.instance_id == args.id
                    && p.namespace == args.namespace
                {
                    return Handshake::Bootstrap(Box::new(p));
                }
            }
        }
        let options = Any::parse_from_bytes(stdin)
            .ok()
            .filter(|a| !a.type_url.is_empty());
        let max_version = max_shim_version
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Handshake::Legacy {
            options,
            max_version,
        }
    }

    /// The ttrpc address containerd wants events on, when the handshake carries it.
    pub fn ttrpc_address(&self) -> Option<&str> {
        match self {
            Handshake::Bootstrap(p) if !p.containerd_ttrpc_address.is_empty() => {
                Some(&p.containerd_ttrpc_address)
            }
            _ => None,
        }
    }

    /// A directory containerd asks us to put the socket in (2.3+).
    pub fn socket_dir(&self) -> Option<&str> {
        match self {
            Handshake::Bootstrap(p) => p.socket_dir.as_deref().filter(|d| !d.is_empty()),
            _ => None,
        }
    }

    /// The bytes `start` prints. We serve task v2 and v3 on one socket, so we may claim v3
    /// wherever the caller said it understands it.
    pub fn reply(&self, address: &str) -> Vec<u8> {
        match self {
            Handshake::Bootstrap(_) => {
                let mut r = BootstrapResult::new();
                r.version = 3;
                r.address = address.to_string();
                r.protocol = "ttrpc".into();
                r.write_to_bytes().unwrap_or_default()
            }
            Handshake::Legacy { max_version, .. } if *max_version >= 3 => format!(
                "{{\"version\":3,\"address\":\"{}\",\"protocol\":\"ttrpc\"}}",
                address.replace('\\', "\\\\").replace('"', "\\\"")
            )
            .into_bytes(),
            Handshake::Legacy { .. } => address.as_bytes().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protos::bootstrap::Extension;

    fn args(id: &str, ns: &str) -> Args {
        Args::parse(
            ["-namespace", ns, "-id", id, "-address", "/a", "start"]
                .iter()
                .map(|s| s.to_string()),
        )
        .unwrap()
    }

    fn runc_options_any() -> Any {
        let mut o = protos::runc_options::Options::new();
        o.binary_name = "crun".into();
        let mut a = Any::new();
        a.type_url = "containerd.runc.v1.Options".into();
        a.value = o.write_to_bytes().unwrap();
        a
    }

    #[test]
    fn bootstrap_params_recognised_only_for_our_identity() {
        let mut p = BootstrapParams::new();
        p.instance_id = "c1".into();
        p.namespace = "k8s.io".into();
        p.containerd_ttrpc_address = "/run/containerd/containerd.sock.ttrpc".into();
        p.socket_dir = Some("/run/containerd/s".into());
        let mut ext = Extension::new();
        ext.value = protobuf::MessageField::some(runc_options_any());
        p.extensions.push(ext);
        let bytes = p.write_to_bytes().unwrap();

        let h = Handshake::detect(&bytes, &args("c1", "k8s.io"), Some("2"));
        assert!(matches!(h, Handshake::Bootstrap(_)));
        assert_eq!(
            h.ttrpc_address(),
            Some("/run/containerd/containerd.sock.ttrpc")
        );
        assert_eq!(h.socket_dir(), Some("/run/containerd/s"));
        let reply = BootstrapResult::parse_from_bytes(&h.reply("unix:///s")).unwrap();
        assert_eq!(
            (
                reply.version,
                reply.address.as_str(),
                reply.protocol.as_str()
            ),
            (3, "unix:///s", "ttrpc")
        );

        // Same bytes, another identity: treated as legacy, never as bootstrap.
        let h = Handshake::detect(&bytes, &args("c2", "k8s.io"), None);
        assert!(matches!(h, Handshake::Legacy { .. }));
        assert_eq!(h.reply("unix:///s"), b"unix:///s");
    }

    #[test]
    fn legacy_options_and_versions() {
        let any = runc_options_any().write_to_bytes().unwrap();
        let h = Handshake::detect(&any, &args("c1", "default"), Some("2"));
        match &h {
            Handshake::Legacy {
                options: Some(o),
                max_version: 2,
            } => assert_eq!(o.type_url, "containerd.runc.v1.Options"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(h.reply("unix:///s"), b"unix:///s");
        let h = Handshake::detect(&[], &args("c1", "default"), Some("3"));
        assert_eq!(
            String::from_utf8(h.reply("unix:///s")).unwrap(),
            r#"{"version":3,"address":"unix:///s","protocol":"ttrpc"}"#
        );
        assert!(matches!(
            Handshake::detect(&[], &args("c1", "default"), None),
            Handshake::Legacy {
                options: None,
                max_version: 0
            }
        ));
    }
}
