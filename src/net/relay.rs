//! The seam through which the peer server hands on what a replica of
//! another region relayed to this node: the network knows no placement,
//! the coordinator does and implements it.

use crate::crdt::Entry;
use crate::store::Key;

/// Hands on the deltas a replica of another region relayed to this node
/// (`ApplyRequest.relay`): to the other replicas of each key in this node's
/// region.
pub trait Relay: Send + Sync {
    /// Queues `entries`, which `from` sent, for this region's other replicas
    /// of their keys (never back to `from`).
    fn relay(&self, from: &str, entries: Vec<(Key, Entry)>);
}
