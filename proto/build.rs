//! Compiles every .proto under proto/ with protox (pure Rust: no system protoc on dev or CI machines).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from("proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    if files.is_empty() {
        return Ok(());
    }
    let fds = protox::compile(&files, [&dir])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Small first buffers per call (see src/codec.rs): an agent's heartbeat stream lives for minutes.
        .codec_path("crate::codec::LeanCodec")
        // The leader keeps a beat's checker map as it came (an ordered map): moved, not rebuilt per beat.
        .btree_map(".huatuo.api.v1.HeartbeatRequest.checkers")
        .compile_fds(fds)?;
    Ok(())
}
