//! Everything between nodes on the client side: the peer protocol's client
//! (`peer`), its wire format (`wire`, `sync_wire`), and each peer's smoothed
//! latency and the hedge delay derived from it (`latency`). The server side
//! is the `server` module (above the subsystems it serves); the fault switch all
//! peer traffic, gossip included, passes through is the `switch` module.

pub mod latency;
pub mod peer;
pub mod sync_wire;
pub mod wire;

#[cfg(test)]
mod hostile;

pub use peer::{PeerError, Peers};
