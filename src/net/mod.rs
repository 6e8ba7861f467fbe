//! Everything between nodes: the peer protocol's client (`peer`) and server
//! (`service`), its wire format (`wire`), each peer's smoothed latency
//! and the hedge delay derived from it (`latency`), and the one switch all peer
//! traffic, gossip included, passes through, so that tests and users can
//! partition, degrade and heal a real cluster.

pub mod latency;
pub mod peer;
pub mod service;
pub mod sync_wire;
pub mod wire;

#[cfg(test)]
mod hostile;

pub use peer::{PeerError, Peers};
pub use service::PeerService;
