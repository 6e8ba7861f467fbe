//! Generates the gRPC code for the public contract without a system protoc:
//! `protox` parses the protos in Rust, and the descriptor set is kept so the
//! server can answer gRPC reflection. `cluster.proto` is the internal
//! node-to-node protocol, kept apart from the public contract.

use std::path::PathBuf;

const PROTOS: &[&str] = &["proto/kilovolt.proto", "proto/cluster.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection on the client port lists the public contract only: the
    // peer protocol is served on its own listener.
    let mut public = fds.clone();
    public.file.retain(|f| f.name() != "cluster.proto");
    std::fs::write(
        out_dir.join("kilovolt_descriptor.bin"),
        prost::Message::encode_to_vec(&public),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
