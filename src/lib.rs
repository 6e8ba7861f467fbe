//! Kilovolt-DB: an in-memory, clustered key-value store that stays available
//! through network partitions and converges by itself when they heal.
//!
//! The modules are layers, and a module uses only the layers below it. A
//! request flows down them: `api` (the gRPC edge) -> `coordinator` ->
//! `replication` -> `net` (the peer client) to the replicas, whose `server`
//! (the peer protocol's server side, above the subsystems it serves) merges
//! into `store` -> `crdt`; `clock` issues versions, `config` is plain data
//! every layer may read, and `node` wires it all together. The order is
//! listed once, in `tests/layers.rs`, which `cargo test` runs and which
//! fails on any `crate::` path that points up it; docs/architecture.md
//! copies it and says what each module does.

pub mod admission;
pub mod anti_entropy;
pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod crdt;
pub mod dots;
pub mod durability;
pub mod error;
pub mod keyspace;
pub mod merkle;
pub mod metrics;
pub mod net;
pub mod node;
#[cfg(test)]
mod planted;
pub mod replication;
pub mod ring;
pub mod scrape;
pub mod security;
pub mod server;
/// The deterministic simulator: behind the `sim` feature (and in test
/// builds), so that the server and users of the library do not carry it.
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod store;
pub mod switch;
pub mod sync_message;

/// The public contract (`proto/kilovolt.proto`), generated at build time.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("kilovolt");

    /// The encoded descriptors of the contract, served over gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/kilovolt_descriptor.bin"));

    /// The internal node-to-node protocol (`proto/cluster.proto`).
    pub mod cluster {
        tonic::include_proto!("kilovolt.cluster.v1");
    }
}
