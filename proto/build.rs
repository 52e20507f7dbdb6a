//! Generates the keybroker.v1 (guest) and keybroker.admin.v1 messages and gRPC stubs with the vendored
//! `protoc`, so building needs no system protobuf compiler.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .map_err(|e| format!("the vendored protoc is missing for this platform: {e}"))?;
    // Edition 2021: `set_var` is safe here, and a build script is single-threaded.
    std::env::set_var("PROTOC", protoc);

    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let file = root.join("keybroker/v1/keybroker.proto");
    let admin = root.join("keybroker/admin/v1/admin.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    println!("cargo:rerun-if-changed={}", admin.display());

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[file, admin], &[root])?;
    Ok(())
}
