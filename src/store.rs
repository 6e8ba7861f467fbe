//! The local replica: every key this node holds, and how it changes.
//!
//! Entries live in one `scc::HashMap`, which locks a bucket at a time, so
//! readers and writers of different keys do not contend. The store is
//! synchronous on purpose: its critical sections are a few hundred
//! nanoseconds and never await, and the same code then runs unchanged under
//! a deterministic simulator.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::crdt::Entry;

/// A key as the store holds it: a boxed `str` saves a word per entry over
/// `String`.
pub type Key = Box<str>;

/// Counts of what the store holds, kept as atomics because `scc`'s `len()`
/// scans the whole map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Entries holding a value (expired values count until collected).
    pub values: u64,
    /// Entries holding a tombstone.
    pub tombstones: u64,
}

/// This node's replica of the keys it holds.
#[derive(Default)]
pub struct Store {
    entries: scc::HashMap<Key, Entry>,
    values: AtomicU64,
    tombstones: AtomicU64,
    /// Values with an expiry, by expiry instant, so that collection takes the
    /// due ones first and never scans the map. An element may be stale (the
    /// key was rewritten since); collection checks the entry before removing.
    expiries: Mutex<BTreeSet<(u64, Key)>>,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the entry at `key`, tombstones and expired values included.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.entries.read_sync(key, |_, e| e.clone())
    }

    /// Merges `incoming` into the entry at `key`; returns whether the stored
    /// state changed. This is the only way state enters the store.
    pub fn merge(&self, key: &str, incoming: Entry) -> bool {
        match self.entries.entry_sync(key.into()) {
            scc::hash_map::Entry::Occupied(mut slot) => {
                let before = Kind::of(slot.get());
                let changed = slot.get_mut().merge_from(incoming);
                if changed {
                    self.recount(Some(before), slot.get());
                    self.index_expiry(slot.key(), slot.get());
                }
                changed
            }
            scc::hash_map::Entry::Vacant(slot) => {
                self.recount(None, &incoming);
                self.index_expiry(slot.key(), &incoming);
                slot.insert_entry(incoming);
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
        match self.entries.entry_sync(key.into()) {
            scc::hash_map::Entry::Occupied(mut slot) => {
                let before = Kind::of(slot.get());
                let written = stamp(Some(slot.get()))?;
                if slot.get_mut().merge_from(written.clone()) {
                    self.recount(Some(before), slot.get());
                    self.index_expiry(slot.key(), slot.get());
                }
                Ok(written)
            }
            scc::hash_map::Entry::Vacant(slot) => {
                let written = stamp(None)?;
                self.recount(None, &written);
                self.index_expiry(slot.key(), &written);
                slot.insert_entry(written.clone());
                Ok(written)
            }
        }
    }

    /// Removes up to `budget` values whose expiry has passed at `now`;
    /// returns how many it removed. Bounded so that one tick of the
    /// collector never stalls the node, however many keys expire at once.
    pub fn collect_expired(&self, now: u64, budget: usize) -> usize {
        let mut removed = 0;
        for _ in 0..budget {
            let due = {
                let mut expiries = self.expiries.lock().unwrap_or_else(PoisonError::into_inner);
                match expiries.first() {
                    Some((at, _)) if *at <= now => expiries.pop_first(),
                    _ => None,
                }
            };
            let Some((at, key)) = due else { break };
            let gone = self
                .entries
                .remove_if_sync(&key, |e| e.expires_at == at && e.is_expired(now));
            if gone.is_some() {
                self.values.fetch_sub(1, Ordering::Relaxed);
                removed += 1;
            }
        }
        removed
    }

    /// What the store holds now.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            values: self.values.load(Ordering::Relaxed),
            tombstones: self.tombstones.load(Ordering::Relaxed),
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

    fn index_expiry(&self, key: &str, entry: &Entry) {
        if entry.expires_at != 0 && entry.is_value() {
            self.expiries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((entry.expires_at, key.into()));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Value,
    Tombstone,
}

impl Kind {
    fn of(entry: &Entry) -> Self {
        if entry.is_value() {
            Kind::Value
        } else {
            Kind::Tombstone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::Version;
    use proptest::prelude::*;
    use std::convert::Infallible;

    fn v(time: u64) -> Version {
        Version::new(time, 1)
    }

    #[test]
    fn merge_keeps_the_newer_entry_and_counts_kinds() {
        let store = Store::new();
        assert!(store.merge("k", Entry::value(v(2), "new", 0)));
        assert!(!store.merge("k", Entry::value(v(1), "old", 0)));
        assert_eq!(store.get("k").unwrap().live_value(0), Some("new"));
        assert!(store.merge("k", Entry::tombstone(v(3))));
        assert_eq!(
            store.stats(),
            StoreStats {
                values: 0,
                tombstones: 1
            }
        );
    }

    #[test]
    fn write_sees_the_stored_entry_under_the_lock() {
        let store = Store::new();
        store.merge("k", Entry::value(v(10), "a", 0));
        let written = store
            .write("k", |stored| {
                let floor = stored.map(|e| e.version.time).unwrap_or(0);
                Ok::<_, Infallible>(Entry::value(v(floor + 1), "b", 0))
            })
            .unwrap();
        assert_eq!(written.version, v(11));
        assert_eq!(store.get("k").unwrap(), written);
    }

    #[test]
    fn a_failed_stamp_changes_nothing() {
        let store = Store::new();
        store.merge("k", Entry::value(v(1), "a", 0));
        assert_eq!(store.write("k", |_| Err("no")), Err("no"));
        assert_eq!(store.get("k").unwrap().live_value(0), Some("a"));
    }

    #[test]
    fn expired_values_are_collected_within_the_budget() {
        let store = Store::new();
        for i in 0..10 {
            store.merge(&format!("k{i}"), Entry::value(v(1), "x", 100 + i));
        }
        store.merge("forever", Entry::value(v(1), "x", 0));
        assert_eq!(store.collect_expired(99, 100), 0);
        assert_eq!(store.collect_expired(104, 3), 3);
        assert_eq!(store.collect_expired(104, 100), 2);
        assert_eq!(store.stats().values, 6);
        assert!(store.get("k4").is_none() && store.get("k5").is_some());
    }

    #[test]
    fn a_rewritten_key_is_not_collected_at_its_old_expiry() {
        let store = Store::new();
        store.merge("k", Entry::value(v(1), "short", 100));
        store.merge("k", Entry::value(v(2), "long", 500));
        assert_eq!(store.collect_expired(200, 10), 0);
        assert_eq!(store.get("k").unwrap().live_value(200), Some("long"));
        assert_eq!(store.collect_expired(500, 10), 1);
    }

    #[test]
    fn concurrent_writes_to_one_key_get_distinct_increasing_versions() {
        let store = std::sync::Arc::new(Store::new());
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        store
                            .write("k", |stored| {
                                let t = stored.map_or(0, |e| e.version.time) + 1;
                                Ok::<_, Infallible>(Entry::value(v(t), "x", 0))
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.get("k").unwrap().version, v(2000));
    }

    proptest! {
        /// Any delivery order of the same entries leaves the same state.
        #[test]
        fn delivery_order_does_not_matter(
            writes in prop::collection::vec((0u8..4, 0u64..6, any::<bool>()), 1..30),
            seed in any::<u64>(),
        ) {
            let entries: Vec<(String, Entry)> = writes
                .iter()
                .map(|(k, t, del)| {
                    let e = if *del { Entry::tombstone(v(*t)) } else { Entry::value(v(*t), format!("{k}{t}"), 0) };
                    (format!("k{k}"), e)
                })
                .collect();
            let mut shuffled = entries.clone();
            // A deterministic shuffle from the seed; each entry delivered twice.
            shuffled.extend(entries.iter().cloned());
            let n = shuffled.len();
            for i in 0..n {
                let j = (seed.wrapping_mul(i as u64 + 7) % n as u64) as usize;
                shuffled.swap(i, j);
            }
            let (a, b) = (Store::new(), Store::new());
            entries.into_iter().for_each(|(k, e)| { a.merge(&k, e); });
            shuffled.into_iter().for_each(|(k, e)| { b.merge(&k, e); });
            for k in 0..4 {
                let key = format!("k{k}");
                prop_assert_eq!(a.get(&key), b.get(&key));
            }
            prop_assert_eq!(a.stats(), b.stats());
        }
    }
}
