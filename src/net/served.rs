//! What this node served to its peers, counted for `Admin.Stats`: which
//! replica answered a read is observable without timing anything.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the peer requests this node answered.
#[derive(Debug, Default)]
pub struct Served {
    reads: AtomicU64,
}

impl Served {
    /// Nothing served yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one peer read of keys answered (a coordinator's read, a write's
    /// read of the key before it, or a read repair's read).
    pub fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Peer reads of keys answered since the node started.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}
