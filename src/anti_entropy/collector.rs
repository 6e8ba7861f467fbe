//! Acknowledged collection of tombstones and expired values, as pure state:
//! which settled entries were found, which replicas have since confirmed
//! holding them, and when they may go. The shell calls it after each round;
//! the simulator drives the same state.
//!
//! The rule (docs/tombstones.md): an entry settled at `now` (a tombstone or
//! a map without fields older than the grace, or a value expired and stamped
//! that long ago) is taken as a candidate, and so are the removed fields of
//! a map removed that long ago; it is removed only once every other replica of its partition
//! has completed a session covering the partition that *started after* the
//! candidates were taken, and every other member, asked after that, has
//! said it holds nothing of the partition. Such a session left the peer
//! holding the entry (or it had collected it already), so removing it here
//! cannot let an older value on that peer come back; and a member that no
//! longer replicates the partition but still holds a copy to hand off (it
//! stopped being a replica when a node joined or left) would bring an older
//! value back just the same, so its partitions wait until it has handed
//! them off and dropped them. The callers collect nothing while their
//! node's wall clock is judged off (`Clock::check_wall_offset`): settling
//! by a clock far ahead takes entries away before a write stamped older
//! than them can no longer arrive.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::cluster::Topology;
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

    /// Records that `peer`, asked at `asked_at` whether it holds entries
    /// of `asked` (partitions it does not replicate), holds those of `held`
    /// only: for the others it holds no copy that could bring back what
    /// this node collects.
    pub fn confirm_absent(&mut self, peer: &str, asked: &[u32], held: &[u32], asked_at: Instant) {
        let absent = asked.iter().filter(|p| !held.contains(p));
        self.confirm(peer, &absent.copied().collect::<Vec<_>>(), asked_at);
    }

    /// The members to ask whether they hold entries of partitions with
    /// pending candidates that they do not replicate, and which partitions
    /// to ask each about. A node that stopped replicating a partition keeps
    /// its copy until it has handed it to every replica; collecting before
    /// it has would let that copy bring back what was collected.
    pub fn outsiders(&self, me: &str, topology: &Topology) -> BTreeMap<String, Vec<u32>> {
        let ring = topology.ring();
        let mut ask: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for &p in self.pending.keys() {
            for m in topology.members() {
                if m.id != me && !ring.is_replica(p, &m.id) {
                    ask.entry(m.id.clone()).or_default().push(p);
                }
            }
        }
        ask
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
    /// once every other member has confirmed them (see the module);
    /// otherwise, when none are pending, takes the entries (and maps'
    /// removed fields) settled at `now_hlc` with `grace` (NTP64) as new
    /// candidates at `now`. While a member is unreachable the partitions
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
                // Every other member: replicas by a session, the others by
                // saying they hold nothing of the partition.
                let acknowledged = topology
                    .members()
                    .filter(|m| m.id != me)
                    .all(|m| pending.confirmed.contains(&m.id));
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
}

/// The simulator's planted bug: collect without waiting for the replicas.
#[cfg(test)]
fn planted_skips_acknowledgement() -> bool {
    crate::planted::is(crate::planted::Bug::CollectUnacknowledged)
}

#[cfg(not(test))]
fn planted_skips_acknowledgement() -> bool {
    false
}
