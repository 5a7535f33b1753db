//! Compiles `proto/` with protox (no `protoc` needed) and generates the tonic stubs.
//! The file descriptor set is written to OUT_DIR for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/auth/v1/common.proto",
        "proto/auth/v1/auth.proto",
        "proto/auth/v1/user.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // `compile_fds` does not write `file_descriptor_set_path`, so write the descriptor set ourselves.
    std::fs::write(
        out_dir.join("authd_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
