//! Acknowledged collection of tombstones and expired values, as pure state:
//! which settled entries were found, which replicas have since confirmed
//! holding them, and when they may go. The shell calls it after each round;
//! the simulator drives the same state.
//!
//! The rule (docs/tombstones.md): an entry settled at `now` (a tombstone or
//! a map without fields older than the grace, or a value expired that long)
//! is taken as a candidate, and so are the removed fields of a map removed
//! that long ago; it is removed only once every other replica of its partition
//! has completed a session covering the partition that *started after* the
//! candidates were taken. Such a session left the peer holding the entry
//! (or it had collected it already), so removing it here cannot let an
//! older value on that peer come back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::coordinator::Topology;
use crate::crdt::Version;
use crate::store::{Key, Settled, Store};

/// Settled entries of one partition awaiting every replica's confirmation.
struct Candidates {
    taken: Instant,
    items: Settled,
    confirmed: BTreeSet<String>,
}

/// What one collection removed.
#[derive(Debug, Default)]
pub struct Collected {
    /// Tombstones and expired values removed, with their versions.
    pub entries: Vec<(Key, Version)>,
    /// Removed map fields whose metadata was pruned.
    pub fields: usize,
}

impl Collected {
    /// Entries and fields removed.
    pub fn total(&self) -> usize {
        self.entries.len() + self.fields
    }
}

/// The candidates of every partition this node holds.
#[derive(Default)]
pub struct Collector {
    pending: BTreeMap<u32, Candidates>,
}

impl Collector {
    /// No candidates yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `peer` completed a session over `partitions` that
    /// started at `started`: it then held every entry this node held at
    /// that moment.
    pub fn confirm(&mut self, peer: &str, partitions: &[u32], started: Instant) {
        for p in partitions {
            if let Some(c) = self.pending.get_mut(p) {
                if c.taken < started {
                    c.confirmed.insert(peer.to_string());
                }
            }
        }
    }

    /// For each partition `me` holds: removes the candidates found earlier
    /// once every other replica of the partition has confirmed them;
    /// otherwise, when none are pending, takes the entries (and maps'
    /// removed fields) settled at `now_hlc` with `grace` (NTP64) as new
    /// candidates at `now`. While a replica is unreachable its partitions
    /// simply wait. Returns what was removed.
    pub fn collect(
        &mut self,
        me: &str,
        topology: &Topology,
        store: &Store,
        now_hlc: u64,
        grace: u64,
        now: Instant,
    ) -> Collected {
        let ring = topology.ring();
        self.pending.retain(|p, _| ring.is_replica(*p, me));
        let mut collected = Collected::default();
        for p in ring.partitions_held_by(me) {
            if let Some(pending) = self.pending.get(&p) {
                let acknowledged = ring
                    .replicas(p)
                    .iter()
                    .filter(|r| ***r != *me)
                    .all(|r| pending.confirmed.contains(&**r));
                if acknowledged || planted_skips_acknowledgement() {
                    collected
                        .entries
                        .extend(store.collect(p, &pending.items.entries, now_hlc));
                    collected.fields += store.prune_fields(p, &pending.items.fields);
                    self.pending.remove(&p);
                }
                continue;
            }
            if store.partition_len(p) == 0 {
                continue;
            }
            let items = store.settled_parts(p, now_hlc, grace);
            if !items.is_empty() {
                self.pending.insert(
                    p,
                    Candidates {
                        taken: now,
                        items,
                        confirmed: BTreeSet::new(),
                    },
                );
            }
        }
        collected
    }

    /// Partitions with candidates awaiting confirmation.
    pub fn pending_partitions(&self) -> usize {
        self.pending.len()
    }
}

/// The simulator's planted bug: collect without waiting for the replicas.
#[cfg(test)]
fn planted_skips_acknowledgement() -> bool {
    crate::sim::planted::is(crate::sim::planted::Bug::CollectUnacknowledged)
}

#[cfg(not(test))]
fn planted_skips_acknowledgement() -> bool {
    false
}
