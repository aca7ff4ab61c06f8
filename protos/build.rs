//! Generates rust-protobuf messages and async ttrpc services from `proto/`.
//!
//! Every `proto/NAME.proto` becomes `$OUT_DIR/NAME.rs`, and a file that
//! declares a service also becomes `$OUT_DIR/NAME_ttrpc.rs`. `src/lib.rs`
//! includes each of them inside `pub mod NAME { ... }`.

use std::fs;
use std::path::{Path, PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

/// Proto files to compile, by stem. Imports between them use bare file names
/// and resolve against `proto/`; well-known types come from the `protobuf`
/// runtime (`protobuf::well_known_types`).
const PROTOS: &[&str] = &[
    "agent",
    "bootstrap",
    "events",
    "forward",
    "introspection",
    "metrics_v1",
    "metrics_v2",
    "mount",
    "runc_options",
    "runtimeoptions",
    "shim",
    "shim_v3",
    "task",
];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let proto_dir = manifest_dir.join("proto");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let inputs: Vec<PathBuf> = PROTOS
        .iter()
        .map(|stem| {
            let path = proto_dir.join(format!("{stem}.proto"));
            println!("cargo:rerun-if-changed={}", path.display());
            path
        })
        .collect();

    Codegen::new()
        .out_dir(&out_dir)
        .inputs(&inputs)
        .include(&proto_dir)
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(
            ProtobufCustomize::default()
                .generate_accessors(true)
                .gen_mod_rs(false),
        )
        .run()
        .expect("failed to generate code from proto/*.proto");

    for stem in PROTOS {
        strip_inner_attributes(&out_dir.join(format!("{stem}.rs")));
        let services = out_dir.join(format!("{stem}_ttrpc.rs"));
        if services.exists() {
            strip_inner_attributes(&services);
        }
    }
}

/// The generators write standalone module files that start with inner
/// attributes (`#![allow(...)]`) and inner doc comments (`//! ...`). Neither
/// is accepted by `include!` inside `mod NAME { ... }`, so drop them; the
/// equivalent `#[allow(...)]` sits on the module in `src/lib.rs`.
fn strip_inner_attributes(path: &Path) {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading generated {}: {e}", path.display()));
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            !(line.starts_with("#![") || line.starts_with("//!"))
        })
        .collect();
    let mut out = kept.join("\n");
    out.push('\n');
    fs::write(path, out).unwrap_or_else(|e| panic!("writing generated {}: {e}", path.display()));
}
