//! The seam through which the peer server hands on what a replica of
//! another region relayed to this node: the network knows no placement,
//! the coordinator does and implements it.

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::crdt::Entry;
use crate::store::Key;

/// Hands on the deltas a replica of another region relayed to this node
/// (`ApplyRequest.relay`): to the other replicas of each key in this node's
/// region.
pub trait Relay: Send + Sync {
    /// Queues `entries`, which `from` sent, for this region's other replicas
    /// of their keys (never back to `from`).
    fn relay(&self, from: &str, entries: Vec<(Key, Entry)>);

    /// Hands `entries`, which `from` sent awaiting `mates` (replicas of
    /// this region, `ApplyRequest.await_mates`), on as [`Relay::relay`]
    /// does and to each of `mates`, at once; the future waits up to
    /// `within` and yields this node's id, then the ids of the mates that
    /// took every entry. A mate that cannot take them is held as a hint
    /// here.
    fn relay_awaited(
        &self,
        from: &str,
        entries: Vec<(Key, Entry)>,
        mates: Vec<String>,
        within: Duration,
    ) -> BoxFuture<'static, Vec<String>>;
}
