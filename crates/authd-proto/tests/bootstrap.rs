//! Regenerates `src/generated/` from the top-level `proto/` and fails if the checked-in files differ
//! (tokio-rs/console's `console-api` pattern: no build script, no `protoc`).
//!
//! On a difference the fresh files are written in place, so that the next step is to review and
//! commit them.

use std::path::{Path, PathBuf};

/// The API's files; their imports (google/protobuf/timestamp.proto) come from protox's well-known
/// types.
const API_PROTOS: [&str; 4] = [
    "authd/v1/auth.proto",
    "authd/v1/common.proto",
    "authd/v1/error_reason.proto",
    "authd/v1/user.proto",
];

/// Served by reflection but not generated: tonic-types has the Rust types.
const REFLECTION_ONLY_PROTOS: [&str; 1] = ["google/rpc/error_details.proto"];

#[test]
fn generated_code_is_up_to_date() -> Result<(), Box<dyn std::error::Error>> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let proto_dir = crate_dir.join("../../proto");
    let generated = crate_dir.join("src/generated");

    let fresh = tempfile_dir()?;
    let api = protox::compile(API_PROTOS, [&proto_dir])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::AuthdCodec")
        .emit_rerun_if_changed(false)
        .out_dir(&fresh)
        .compile_fds(api)?;
    let all: Vec<&str> = API_PROTOS
        .iter()
        .chain(&REFLECTION_ONLY_PROTOS)
        .copied()
        .collect();
    let descriptor = protox::compile(all, [&proto_dir])?;
    std::fs::write(
        fresh.join("authd_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptor),
    )?;

    let mut stale = Vec::new();
    for name in ["authd.v1.rs", "authd_descriptor.bin"] {
        let new = std::fs::read(fresh.join(name))?;
        let old = std::fs::read(generated.join(name)).unwrap_or_default();
        if new != old {
            std::fs::write(generated.join(name), &new)?;
            stale.push(name);
        }
    }
    std::fs::remove_dir_all(&fresh)?;
    assert!(
        stale.is_empty(),
        "src/generated/{stale:?} did not match proto/ and were regenerated; review and commit them"
    );
    Ok(())
}

/// A fresh directory under the target directory's temp space.
fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("authd-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
