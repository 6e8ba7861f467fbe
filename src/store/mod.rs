//! The local replica: every key this node holds, and how it changes.
//!
//! # Partitions
//!
//! The keyspace is cut into the cluster's fixed partitions
//! ([`crate::keyspace::partition_of`]), and the store keeps one
//! `scc::HashMap` per partition, each with its own [`MerkleTree`] and entry
//! count. The partition is the unit of placement, handoff and anti-entropy,
//! so the store's work per partition must cost O(that partition's size):
//! listing the keys of a few Merkle leaves, recomputing a tree to check it,
//! or dropping a partition this node no longer holds would each scan every
//! key of the node with a single map. `scc` locks one bucket at a time, so
//! readers and writers of different keys do not contend either way.
//!
//! # Merkle trees kept current
//!
//! Every change of an entry (merge, stamped write, expiry collection, drop)
//! XORs the old entry's digest out of its partition's tree and the new one
//! in ([`MerkleTree::toggle`]), inside the same `entry_sync`/`remove_if_sync`
//! /`retain_sync` call that changes the entry, that is under the key's
//! bucket lock. Two writers of one key therefore toggle in the order they
//! change the entry, writers of different keys toggle concurrently (XOR
//! commutes), and once writers stop, every tree equals the XOR of the
//! digests of what its map holds. [`Store::recompute_root`] checks that.
//!
//! The store is synchronous on purpose: its critical sections are a few
//! hundred nanoseconds and never await, and the same code then runs
//! unchanged under a deterministic simulator.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::crdt::{Entry, Payload, Version};
use crate::keyspace::{
    digest_of, entry_digest, key_hash, leaf_of, partition_of_hash, recomputed_entry_digest, Stamp,
    BRANCHES, LEAVES, LEAVES_PER_BRANCH,
};
use crate::merkle::MerkleTree;

#[cfg(test)]
mod tests;

/// A key as the store holds it: a boxed `str` saves a word per entry over
/// `String`.
pub type Key = Box<str>;

/// Counts of what the store holds, kept as atomics because `scc`'s `len()`
/// scans the whole map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Entries holding a string, a map with fields or a counter (expired
    /// strings count until collected).
    pub values: u64,
    /// Entries holding a tombstone, or a map whose fields were all removed
    /// (it reads as absent and is collected like a tombstone).
    pub tombstones: u64,
    /// Bytes of keys and values held: each key, and a string's bytes, a
    /// map's live fields ([`crate::crdt::OrMap::bytes`]) or 16 for a
    /// counter. Not the memory the map and its overheads take.
    pub bytes: u64,
    /// Expired strings whose bytes were dropped, held until every replica
    /// holds them (counted in `values` too).
    pub expired: u64,
}

/// A map's settled removed fields, each with its settle time
/// ([`crate::crdt::OrMap::settled_fields`]).
pub type RemovedFields = Vec<(Box<str>, u64)>;

/// What a partition holds that is settled: collectable once every replica
/// is known to hold it. Taken by [`Store::settled_parts`], handed back to
/// [`Store::collect`] and [`Store::prune_fields`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Entries that go whole: tombstones, maps without fields and expired
    /// strings, with their versions when found.
    pub entries: Vec<(Key, Version)>,
    /// Maps that still have fields, each with its settled removed fields.
    pub fields: Vec<(Key, RemovedFields)>,
}

impl Settled {
    /// Whether nothing is settled.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.fields.is_empty()
    }
}

/// Why the store's journal cannot take changes: the cause, as it should
/// reach the client whose write is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JournalError(pub Arc<str>);

/// A future a journal returns; boxed so that the trait stays object safe.
pub type JournalWait<'a> = Pin<Box<dyn Future<Output = Result<(), JournalError>> + Send + 'a>>;

/// Where the store reports every change it makes, so that a durable log
/// (the `durability` module) can replay them after a restart. Each call is
/// made under the bucket lock of the key it concerns, before the change is
/// visible, so that per key the journal sees changes in the order the store
/// makes them. The store itself never waits on disk.
pub trait Journal: Send + Sync {
    /// `entry` is being merged into the entry at `key` (merges are joins,
    /// so replaying one that changed nothing is harmless).
    fn merged(&self, key: &str, entry: &Entry);
    /// The entry at `key` with `version` was removed (collected or expired).
    fn removed(&self, key: &str, version: Version);
    /// Every entry of partition `partition` is being dropped (handoff).
    fn dropped(&self, partition: u32);
    /// Whether the journal can still take changes; the cause when not.
    fn check(&self) -> Result<(), JournalError>;
    /// Resolves once every change reported so far is as durable as the
    /// node's durability mode promises before an acknowledgement.
    fn durable(&self) -> JournalWait<'_>;
    /// Resolves once every change reported so far is fsynced, whatever the
    /// mode: for acknowledgements that tombstone collection counts on.
    fn synced(&self) -> JournalWait<'_>;
}

/// One partition's share of the store.
#[derive(Default)]
struct Partition {
    /// Each entry is boxed: a slot of the map then takes 24 bytes (the boxed
    /// key and a pointer) instead of 64, and scc keeps its slot arrays about
    /// half full, so the box's own 48 bytes cost far less than the slot
    /// space they free (docs/performance.md, memory).
    entries: scc::HashMap<Key, Box<Entry>>,
    /// The XOR summary of `entries`, updated under the same bucket lock as
    /// every change of an entry.
    tree: MerkleTree,
    /// Entries in the map, tombstones included (`scc`'s `len()` scans).
    len: AtomicU64,
}

/// This node's replica of the keys it holds, partitioned as the cluster
/// partitions keys, with a Merkle tree per partition for anti-entropy.
pub struct Store {
    /// Allocated on a partition's first write: a partition costs about
    /// 4.5 KiB before it holds anything (its tree and an empty map), which
    /// is nothing at 1024 partitions but 300 MiB at the 65536 the
    /// configuration allows, and a node holds only its share of them.
    partitions: Box<[OnceLock<Box<Partition>>]>,
    values: AtomicU64,
    tombstones: AtomicU64,
    /// Bytes of keys and values held ([`held_bytes`]).
    bytes: AtomicU64,
    /// Expired strings whose bytes were dropped, awaiting collection.
    expired: AtomicU64,
    /// Values with an expiry, by expiry instant, so that collection takes the
    /// due ones first and never scans the map: exactly one element per
    /// string held with an expiry (a rewrite, delete, collection or drop
    /// takes the old one out under the key's lock, so refreshing a TTL does
    /// not grow it). One index for all partitions: collection wants the earliest expiry of
    /// the whole store, not of each partition.
    expiries: Mutex<BTreeSet<(u64, Key)>>,
    /// Where every change is reported once the node logs to disk; attached
    /// after recovery, so that replaying the log does not log it again.
    journal: OnceLock<Arc<dyn Journal>>,
}

/// A locked slot of a partition's map that holds an entry.
type OccupiedSlot<'a> = scc::hash_map::OccupiedEntry<'a, Key, Box<Entry>>;

/// Where a key lives in the store: its partition and its Merkle leaf there.
#[derive(Clone, Copy)]
struct Place<'a> {
    partition: &'a Partition,
    leaf: u8,
}

impl<'a> Place<'a> {
    /// `key` in `partition`, of a store cut into `partitions`.
    fn within(partition: &'a Partition, key: &str, partitions: u32) -> Self {
        Self {
            partition,
            leaf: leaf_of(key_hash(key), partitions),
        }
    }
}

impl Store {
    /// An empty store over `partitions` partitions, the cluster's fixed
    /// partition count (`--partitions`): the store must cut the keyspace
    /// exactly as placement does, so that a partition's tree here and on
    /// another replica summarize the same keys.
    ///
    /// # Panics
    ///
    /// When `partitions` is 0.
    pub fn new(partitions: u32) -> Self {
        assert!(partitions > 0, "the number of partitions must be positive");
        Self {
            partitions: (0..partitions).map(|_| OnceLock::new()).collect(),
            values: AtomicU64::new(0),
            tombstones: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            expiries: Mutex::new(BTreeSet::new()),
            journal: OnceLock::new(),
        }
    }

    /// Reports every change from now on to `journal`. Once only: returns
    /// false (and keeps the first) when a journal is attached already.
    pub fn attach_journal(&self, journal: Arc<dyn Journal>) -> bool {
        self.journal.set(journal).is_ok()
    }

    /// Whether the store's journal can take changes (always, without one):
    /// a node whose log failed refuses writes rather than acknowledge what
    /// it cannot log.
    pub fn check_journal(&self) -> Result<(), JournalError> {
        self.journal.get().map_or(Ok(()), |j| j.check())
    }

    /// Resolves once every change made so far is as durable as the node's
    /// mode promises (at once without a journal); an error names why not.
    /// Every acknowledgement of a merge waits on this.
    pub async fn durable(&self) -> Result<(), JournalError> {
        match self.journal.get() {
            Some(j) => j.durable().await,
            None => Ok(()),
        }
    }

    /// Resolves once every change made so far is fsynced, whatever the
    /// mode (at once without a journal). An anti-entropy session that
    /// completes lets its peers collect tombstones it delivered: a replica
    /// that lost one in a crash right after would bring the older value
    /// back, so sessions wait for this even in `periodic` mode.
    pub async fn synced(&self) -> Result<(), JournalError> {
        match self.journal.get() {
            Some(j) => j.synced().await,
            None => Ok(()),
        }
    }

    /// Calls `visit` with every entry held, partition by partition, one
    /// bucket locked at a time (writers proceed; not a point-in-time
    /// snapshot): what a snapshot of the store writes.
    pub fn for_each(&self, mut visit: impl FnMut(&str, &Entry)) {
        for part in self.partitions.iter().filter_map(|p| p.get()) {
            part.entries.iter_sync(|key, entry| {
                visit(key, entry);
                true
            });
        }
    }

    /// Removes the entry at `key` when it has `version`; returns whether it
    /// did. Replaying a logged removal: merges are joins, but a removal is
    /// not, so it takes out only the very entry that was removed.
    pub fn remove_version(&self, key: &str, version: Version) -> bool {
        let Some(part) = self.partition(self.partition_of(key)) else {
            return false;
        };
        let place = Place::within(part, key, self.partitions());
        part.entries
            .remove_if_sync(key, |e| {
                let due = e.version == version;
                if due {
                    // Still under the bucket lock: the removal follows.
                    self.log(|j| j.removed(key, version));
                    self.removed(&place, key, e);
                }
                due
            })
            .is_some()
    }

    /// Reports a change to the journal, when one is attached.
    fn log(&self, report: impl FnOnce(&dyn Journal)) {
        if let Some(j) = self.journal.get() {
            report(&**j);
        }
    }

    /// The number of partitions the store is cut into.
    pub fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// The partition of `key` in this store
    /// ([`crate::keyspace::partition_of`] with [`Store::partitions`]).
    pub fn partition_of(&self, key: &str) -> u32 {
        partition_of_hash(key_hash(key), self.partitions())
    }

    /// A copy of the entry at `key`, tombstones and expired values included.
    pub fn get(&self, key: &str) -> Option<Entry> {
        let (p, _) = self.locate(key);
        self.partition(p)?
            .entries
            .read_sync(key, |_, e| Entry::clone(e))
    }

    /// `look` applied to the entry at `key` (tombstones and expired values
    /// included), without copying it; `None` when the key is not held.
    pub fn peek<R>(&self, key: &str, look: impl FnOnce(&Entry) -> R) -> Option<R> {
        let (p, _) = self.locate(key);
        self.partition(p)?.entries.read_sync(key, |_, e| look(e))
    }

    /// Copies of the entries held at `keys`, skipping keys not held: what
    /// anti-entropy sends once it knows which keys a peer lacks.
    pub fn entries(&self, keys: &[&str]) -> Vec<(Key, Entry)> {
        keys.iter()
            .filter_map(|&k| self.get(k).map(|e| (Key::from(k), e)))
            .collect()
    }

    /// Merges `incoming` into the entry at `key`; returns whether the stored
    /// state changed. This is the only way state enters the store.
    pub fn merge(&self, key: &str, incoming: Entry) -> bool {
        let place = self.place(key);
        // Logged under the key's lock (each path below takes it first).
        // A key already held is found by reference, without allocating the
        // owned key that inserting needs; a key that is new (or removed in
        // between) takes the insert path, which locks the bucket again.
        if let Some(mut slot) = place.partition.entries.get_sync(key) {
            return self.merge_into(&place, &mut slot, incoming);
        }
        match place.partition.entries.entry_sync(key.into()) {
            scc::hash_map::Entry::Occupied(mut slot) => {
                self.merge_into(&place, &mut slot, incoming)
            }
            scc::hash_map::Entry::Vacant(slot) => {
                self.log(|j| j.merged(key, &incoming));
                self.changed(&place, slot.key(), None, &incoming);
                slot.insert_entry(Box::new(incoming));
                true
            }
        }
    }

    /// Writes a new entry at `key` that `stamp` builds from the stored one,
    /// under the key's lock, so that its version is chosen knowing the
    /// stored version and no other write to the key interleaves. Returns the
    /// entry written.
    pub fn write<E>(
        &self,
        key: &str,
        stamp: impl FnOnce(Option<&Entry>) -> Result<Entry, E>,
    ) -> Result<Entry, E> {
        let place = self.place(key);
        // As in `merge`: no owned key for a key already held.
        if let Some(mut slot) = place.partition.entries.get_sync(key) {
            return self.write_into(&place, &mut slot, stamp);
        }
        match place.partition.entries.entry_sync(key.into()) {
            scc::hash_map::Entry::Occupied(mut slot) => self.write_into(&place, &mut slot, stamp),
            scc::hash_map::Entry::Vacant(slot) => {
                let written = stamp(None)?;
                self.log(|j| j.merged(key, &written));
                self.changed(&place, slot.key(), None, &written);
                slot.insert_entry(Box::new(written.clone()));
                Ok(written)
            }
        }
    }

    /// `merge` into a slot that holds an entry, under its bucket lock.
    fn merge_into(&self, place: &Place<'_>, slot: &mut OccupiedSlot<'_>, incoming: Entry) -> bool {
        let before = Before::of(slot.key(), slot.get());
        self.log(|j| j.merged(slot.key(), &incoming));
        let changed = slot.get_mut().merge_from(incoming);
        if changed {
            self.changed(place, slot.key(), Some(before), slot.get());
        }
        changed
    }

    /// `write` into a slot that holds an entry, under its bucket lock.
    fn write_into<E>(
        &self,
        place: &Place<'_>,
        slot: &mut OccupiedSlot<'_>,
        stamp: impl FnOnce(Option<&Entry>) -> Result<Entry, E>,
    ) -> Result<Entry, E> {
        let before = Before::of(slot.key(), slot.get());
        let written = stamp(Some(slot.get()))?;
        self.log(|j| j.merged(slot.key(), &written));
        if slot.get_mut().merge_from(written.clone()) {
            self.changed(place, slot.key(), Some(before), slot.get());
        }
        Ok(written)
    }

    /// Removes up to `budget` values whose expiry has passed at `now`;
    /// returns how many it removed. Bounded so that one tick of the
    /// collector never stalls the node, however many keys expire at once.
    pub fn collect_expired(&self, now: u64, budget: usize) -> usize {
        let mut removed = 0;
        for _ in 0..budget {
            let Some((at, key)) = self.next_due(now) else {
                break;
            };
            let (p, leaf) = self.locate(&key);
            let Some(partition) = self.partition(p) else {
                continue;
            };
            let place = Place { partition, leaf };
            let gone = place.partition.entries.remove_if_sync(&key, |e| {
                let due = e.expires_at == at && e.is_expired(now);
                if due {
                    // Still under the bucket lock: the removal follows.
                    self.log(|j| j.removed(&key, e.version));
                    self.removed(&place, &key, e);
                }
                due
            });
            if gone.is_some() {
                removed += 1;
            }
        }
        removed
    }

    /// Drops the bytes of up to `budget` strings whose expiry has passed at
    /// `now` ([`Entry::drop_expired_bytes`]); returns how many. For a node
    /// with peers, which must keep an expired string until every replica
    /// holds it (acknowledged collection) but need not keep its bytes. The
    /// Merkle digest does not change: it covers the version, not the bytes.
    pub fn drop_expired_bytes(&self, now: u64, budget: usize) -> usize {
        let mut dropped = 0;
        for _ in 0..budget {
            let Some((at, key)) = self.next_due(now) else {
                break;
            };
            let place = self.place(&key);
            if let Some(mut slot) = place.partition.entries.get_sync(&*key) {
                let before = Before::of(&key, slot.get());
                let entry = slot.get_mut();
                if entry.expires_at == at && entry.drop_expired_bytes(now) {
                    self.log(|j| j.merged(&key, slot.get()));
                    self.changed(&place, &key, Some(before), slot.get());
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// Takes the earliest element of the expiry index when it is due at
    /// `now`.
    fn next_due(&self, now: u64) -> Option<(u64, Key)> {
        let mut expiries = self.expiries.lock().unwrap_or_else(PoisonError::into_inner);
        match expiries.first() {
            Some((at, _)) if *at <= now => expiries.pop_first(),
            _ => None,
        }
    }

    /// What the store holds now.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            values: self.values.load(Ordering::Relaxed),
            tombstones: self.tombstones.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
        }
    }

    /// Values whose expiry has passed at `now` and that the expiry
    /// collector has not reached yet (it takes them in order of expiry).
    pub fn expired_due(&self, now: u64) -> u64 {
        self.expiries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .range(..(now.saturating_add(1), Key::from("")))
            .count() as u64
    }

    /// The number of entries partition `p` holds, tombstones and expired
    /// values included; 0 for a partition out of range.
    pub fn partition_len(&self, p: u32) -> u64 {
        self.partition(p)
            .map_or(0, |part| part.len.load(Ordering::Relaxed))
    }

    /// The Merkle root of partition `p`: the XOR of the digests of all its
    /// entries, 0 when it is empty or out of range. Replicas of a partition
    /// with equal roots hold the same versions of the same keys.
    pub fn root(&self, p: u32) -> u128 {
        self.partition(p).map_or(0, |part| part.tree.root())
    }

    /// The 16 Merkle branches of partition `p` (zeros when out of range):
    /// the second level anti-entropy compares when roots differ.
    pub fn branches(&self, p: u32) -> [u128; BRANCHES] {
        self.partition(p)
            .map_or([0; BRANCHES], |part| part.tree.branches())
    }

    /// The 16 Merkle leaves under `branch` of partition `p` (zeros when
    /// either is out of range): the third level anti-entropy compares, for
    /// the branches that differ.
    pub fn leaves(&self, p: u32, branch: u8) -> [u128; LEAVES_PER_BRANCH] {
        self.partition(p)
            .map_or([0; LEAVES_PER_BRANCH], |part| part.tree.leaves(branch))
    }

    /// Every key of partition `p` whose Merkle leaf is in `leaves`, as
    /// `(leaf, key, stamp)` (tombstones included), in no particular order:
    /// the last level anti-entropy compares, for the leaves that differ. The
    /// leaf comes with each key so that one call serves many leaves (it is
    /// computed during the scan anyway). Scans partition `p` only; empty
    /// when `p` is out of range or holds nothing.
    pub fn versions_in_leaves(&self, p: u32, leaves: &[u8]) -> Vec<(u8, Key, Stamp)> {
        let Some(part) = self.partition(p).filter(|_| !leaves.is_empty()) else {
            return Vec::new();
        };
        let mut wanted = [false; LEAVES];
        leaves.iter().for_each(|&l| wanted[l as usize] = true);
        let partitions = self.partitions();
        let mut found = Vec::new();
        part.entries.iter_sync(|key, entry| {
            let leaf = leaf_of(key_hash(key), partitions);
            if wanted[leaf as usize] {
                found.push((leaf, key.clone(), Stamp::of(key, entry)));
            }
            true
        });
        found
    }

    /// The Merkle tree of partition `p` computed from scratch from its map
    /// (an empty tree when out of range), the content digests of maps and
    /// counters included. O(partition size).
    pub fn recompute_tree(&self, p: u32) -> MerkleTree {
        let Some(part) = self.partition(p) else {
            return MerkleTree::new();
        };
        let partitions = self.partitions();
        let mut leaves = [0u128; LEAVES];
        part.entries.iter_sync(|key, entry| {
            leaves[leaf_of(key_hash(key), partitions) as usize] ^=
                recomputed_entry_digest(key, entry);
            true
        });
        MerkleTree::from_entries(leaves.iter().enumerate().map(|(l, &d)| (l as u8, d)))
    }

    /// The root of partition `p` computed from scratch, for the periodic
    /// check that the incrementally kept tree ([`Store::root`]) still
    /// matches the map: any path that changed an entry without toggling its
    /// digest would show here. Only meaningful while no write to `p` runs
    /// concurrently (the scan is not a snapshot); compare twice before
    /// concluding.
    pub fn recompute_root(&self, p: u32) -> u128 {
        self.recompute_tree(p).root()
    }

    /// The entries of partition `p` that are settled at `now`: tombstones
    /// and maps without fields whose version is older than `grace`, and
    /// strings expired (and stamped) more than `grace` ago (both NTP64). Candidates for
    /// collection once every replica is known to hold them. Scans partition
    /// `p` only.
    pub fn settled(&self, p: u32, now: u64, grace: u64) -> Vec<(Key, Version)> {
        self.settled_parts(p, now, grace).entries
    }

    /// [`Store::settled`], and in the same scan the maps of partition `p`
    /// that still have fields but hold removed fields settled at `now`
    /// (removed, with every write they removed, more than `grace` ago).
    pub fn settled_parts(&self, p: u32, now: u64, grace: u64) -> Settled {
        let Some(part) = self.partition(p) else {
            return Settled::default();
        };
        let horizon = now.saturating_sub(grace);
        let mut found = Settled::default();
        part.entries.iter_sync(|key, entry| {
            if is_settled(entry, now, grace) {
                found.entries.push((key.clone(), entry.version));
            } else if let Payload::Map(m) = &entry.payload {
                let fields = m.settled_fields(horizon);
                if !fields.is_empty() {
                    found.fields.push((key.clone(), fields));
                }
            }
            true
        });
        found
    }

    /// Drops, from the maps of partition `p`, each listed removed field that
    /// is still removed since the same instant (a write or removal of it
    /// since keeps it); returns how many. The maps' digests do not change:
    /// they cover live fields only.
    pub fn prune_fields(&self, p: u32, items: &[(Key, RemovedFields)]) -> usize {
        let Some(part) = self.partition(p) else {
            return 0;
        };
        let mut pruned = 0;
        for (key, fields) in items {
            part.entries.update_sync(&**key, |_, e| {
                if let Payload::Map(m) = &mut e.payload {
                    pruned += m.prune_fields(fields);
                }
            });
        }
        pruned
    }

    /// Removes each `(key, version)` of partition `p` whose entry still has
    /// that version and is a tombstone, a map without fields or an expired
    /// value at `now` (a newer write since the candidates were taken keeps
    /// its key); returns how many it removed. Counters, tree and expiry
    /// index follow.
    pub fn collect(&self, p: u32, items: &[(Key, Version)], now: u64) -> Vec<(Key, Version)> {
        let Some(part) = self.partition(p) else {
            return Vec::new();
        };
        let partitions = self.partitions();
        let mut removed = Vec::new();
        for (key, version) in items {
            let place = Place::within(part, key, partitions);
            let gone = part.entries.remove_if_sync(&**key, |e| {
                let due = e.version == *version && (!e.is_live() || e.is_expired(now));
                if due {
                    // Still under the bucket lock: the removal follows.
                    self.log(|j| j.removed(key, e.version));
                    self.removed(&place, key, e);
                }
                due
            });
            if let Some((key, entry)) = gone {
                removed.push((key, entry.version));
            }
        }
        removed
    }

    /// Whether merging `entry` at `key` would take back something this store
    /// collected: a settled entry (see [`is_settled`], at `now` with
    /// `grace`) for a key it does not hold. Replicas collect once every
    /// replica holds such an entry, so one that lacks the key collected it,
    /// and taking it back would only make the replicas trade it forever. No
    /// write, delta or hint is ever that old (the grace outlives them all).
    pub fn collected(&self, key: &str, entry: &Entry, now: u64, grace: u64) -> bool {
        is_settled(entry, now, grace) && !self.contains(key)
    }

    /// Whether the store holds an entry for `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.partition(self.partition_of(key))
            .is_some_and(|part| part.entries.contains_sync(key))
    }

    /// Removes every entry of partition `p`; returns how many it removed.
    /// For handoff: once a partition's new replicas hold it, this node drops
    /// its copy. Counters, the Merkle tree (toggled entry by entry, so it
    /// stays exact even if writes race with the drop) and the expiry index
    /// follow. Costs O(partition size); 0 when `p` is out of range. Writes
    /// that land during the drop may survive it.
    pub fn drop_partition(&self, p: u32) -> usize {
        let Some(part) = self.partition(p) else {
            return 0;
        };
        let partitions = self.partitions();
        let mut removed = 0;
        // Logged before the first entry goes: a write that lands during the
        // drop and survives it is logged after this record, and survives
        // its replay too.
        self.log(|j| j.dropped(p));
        part.entries.retain_sync(|key, entry| {
            // Under the bucket lock, like every other change of an entry;
            // taking the expiry lock inside follows the order `merge` uses.
            let place = Place::within(part, key, partitions);
            self.removed(&place, key, entry);
            removed += 1;
            false
        });
        removed
    }

    /// Partition `p` when it has ever been written to.
    fn partition(&self, p: u32) -> Option<&Partition> {
        self.partitions.get(p as usize)?.get().map(|b| &**b)
    }

    /// The partition and leaf of `key`, from one hash of it.
    fn locate(&self, key: &str) -> (u32, u8) {
        let hash = key_hash(key);
        let partitions = self.partitions();
        (
            partition_of_hash(hash, partitions),
            leaf_of(hash, partitions),
        )
    }

    /// Where `key` is written to, allocating its partition on first use.
    fn place(&self, key: &str) -> Place<'_> {
        let (p, leaf) = self.locate(key);
        Place {
            partition: self.partitions[p as usize].get_or_init(Default::default),
            leaf,
        }
    }

    /// Accounts for the entry at `key` having become `after` (from `before`,
    /// or from nothing): Merkle tree, counters, expiry index. Called under
    /// the key's bucket lock, by every path that inserts or changes an entry.
    fn changed(&self, place: &Place<'_>, key: &str, before: Option<Before>, after: &Entry) {
        let new = entry_digest(key, after);
        let old = before.map_or(0, |b| b.digest(key));
        place.partition.tree.toggle(place.leaf, old ^ new);
        if before.is_none() {
            place.partition.len.fetch_add(1, Ordering::Relaxed);
        }
        self.recount(before.map(|b| b.kind), after);
        let (old_bytes, was_expired) = before.map_or((0, false), |b| (b.bytes, b.expired));
        let new_bytes = held_bytes(key, after);
        if new_bytes != old_bytes {
            // Wrapping: the sum stays exact whichever way the size moved.
            self.bytes
                .fetch_add(new_bytes.wrapping_sub(old_bytes), Ordering::Relaxed);
        }
        let is_expired = matches!(after.payload, Payload::Expired);
        if is_expired != was_expired {
            if is_expired {
                self.expired.fetch_add(1, Ordering::Relaxed);
            } else {
                self.expired.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let expiry = expiry_of(after);
        if let Some(old) = before
            .and_then(|b| b.expiry)
            .filter(|&old| Some(old) != expiry)
        {
            self.unindex_expiry(old, key);
        }
        if let Some(at) = expiry.filter(|&at| before.and_then(|b| b.expiry) != Some(at)) {
            self.expiries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((at, key.into()));
        }
    }

    /// Accounts for `entry` at `key` being removed: Merkle tree, counters
    /// (bytes and expired values among them), expiry index (where expiry
    /// collection took it out already, a no-op). Called under the key's
    /// bucket lock, just before the removal, by every path that removes an
    /// entry (as [`Store::changed`] is by every path that inserts or changes
    /// one).
    fn removed(&self, place: &Place<'_>, key: &str, entry: &Entry) {
        place
            .partition
            .tree
            .toggle(place.leaf, entry_digest(key, entry));
        place.partition.len.fetch_sub(1, Ordering::Relaxed);
        self.counter(Kind::of(entry))
            .fetch_sub(1, Ordering::Relaxed);
        self.bytes
            .fetch_sub(held_bytes(key, entry), Ordering::Relaxed);
        if matches!(entry.payload, Payload::Expired) {
            self.expired.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(at) = expiry_of(entry) {
            self.unindex_expiry(at, key);
        }
    }

    /// Moves the counters from the kind an entry had to the kind it has.
    fn recount(&self, before: Option<Kind>, after: &Entry) {
        let after = Kind::of(after);
        if before == Some(after) {
            return;
        }
        if let Some(before) = before {
            self.counter(before).fetch_sub(1, Ordering::Relaxed);
        }
        self.counter(after).fetch_add(1, Ordering::Relaxed);
    }

    fn counter(&self, kind: Kind) -> &AtomicU64 {
        match kind {
            Kind::Value => &self.values,
            Kind::Tombstone => &self.tombstones,
        }
    }

    /// Takes `(at, key)` out of the expiry index: the value that expired at
    /// `at` was replaced or removed.
    fn unindex_expiry(&self, at: u64, key: &str) {
        self.expiries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(at, Key::from(key)));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Value,
    Tombstone,
}

impl Kind {
    /// Live (a string, a map with fields, a counter) or not (a tombstone,
    /// a map whose fields were all removed).
    fn of(entry: &Entry) -> Self {
        if entry.is_live() {
            Kind::Value
        } else {
            Kind::Tombstone
        }
    }
}

/// The bytes `entry` at `key` counts in [`StoreStats::bytes`]: O(1).
fn held_bytes(key: &str, entry: &Entry) -> u64 {
    let value = match &entry.payload {
        Payload::Value(v) => v.len(),
        Payload::Map(m) => m.bytes(),
        Payload::Counter(_) => 16,
        Payload::Tombstone | Payload::Expired => 0,
    };
    (key.len() + value) as u64
}

/// What the digest and the counters need of an entry about to be replaced,
/// copied instead of cloning the entry (and its value): its version and
/// kind, or for a map or counter its digest, taken before the change (the
/// content digest is kept in the value, so that is O(1) too).
#[derive(Clone, Copy)]
struct Before {
    version: Version,
    kind: Kind,
    is_value: bool,
    structured: Option<u128>,
    expiry: Option<u64>,
    bytes: u64,
    expired: bool,
}

impl Before {
    fn of(key: &str, entry: &Entry) -> Self {
        Self {
            version: entry.version,
            kind: Kind::of(entry),
            is_value: entry.is_value(),
            structured: entry.content_digest().map(|_| entry_digest(key, entry)),
            expiry: expiry_of(entry),
            bytes: held_bytes(key, entry),
            expired: matches!(entry.payload, Payload::Expired),
        }
    }

    /// The entry's Merkle digest.
    fn digest(&self, key: &str) -> u128 {
        self.structured
            .unwrap_or_else(|| digest_of(key, self.version, self.is_value))
    }
}

/// The instant the expiry index files `entry` under: a string's expiry,
/// `None` for a string that never expires, one whose bytes were dropped
/// already, and every other kind.
fn expiry_of(entry: &Entry) -> Option<u64> {
    (matches!(entry.payload, Payload::Value(_)) && entry.expires_at != 0)
        .then_some(entry.expires_at)
}

/// Whether `entry` is settled at `now` with `grace` (NTP64): a tombstone or
/// a map without fields whose version is older than `grace`, or a string
/// expired more than `grace` ago whose version is older than `grace` too
/// (an expiry counts from physical time, but a version raised over a
/// far-future one by the `stored + 1` rule can lie far ahead of it, and
/// collecting the entry would let every write stamped below that version
/// through). Such an entry is collectable once every replica holds it, and
/// is never worth handing to a replica that lacks its key: that replica
/// collected it.
pub fn is_settled(entry: &Entry, now: u64, grace: u64) -> bool {
    let old = entry.version.time.saturating_add(grace) <= now;
    if entry.is_value() {
        old && entry.expires_at != 0 && entry.expires_at.saturating_add(grace) <= now
    } else {
        old && !entry.is_live()
    }
}
