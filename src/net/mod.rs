//! Everything between nodes: the peer RPC client and server, and the one
//! switch all peer traffic (gossip included) passes through, so that tests
//! and users can partition, degrade and heal a real cluster.

pub mod switch;

pub use switch::{Switch, Verdict};
