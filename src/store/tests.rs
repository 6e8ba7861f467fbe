use super::*;
use crate::crdt::{ops, Actor, PnCounter, Version};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::convert::Infallible;

/// The partition count of most tests: small, so that keys share partitions.
const P: u32 = 8;

fn v(time: u64) -> Version {
    Version::new(time, 1)
}

/// Checks every partition's tree against one computed from its map, and
/// its entry count against the keys it lists.
fn assert_trees_consistent(store: &Store) {
    let all: Vec<u8> = (0..=255).collect();
    let mut total = StoreStats::default();
    let mut expiring = BTreeSet::new();
    for p in 0..store.partitions() {
        let reference = store.recompute_tree(p);
        assert_eq!(store.root(p), reference.root(), "root of partition {p}");
        assert_eq!(store.root(p), store.recompute_root(p));
        assert_eq!(store.branches(p), reference.branches(), "branches of {p}");
        for b in 0..16 {
            assert_eq!(store.leaves(p, b), reference.leaves(b), "leaves {p}/{b}");
        }
        let listed = store.versions_in_leaves(p, &all);
        assert_eq!(listed.len() as u64, store.partition_len(p), "len of {p}");
        let some: Vec<u8> = (0..=255).step_by(3).collect();
        let mut subset = store.versions_in_leaves(p, &some);
        let mut expected: Vec<_> = listed
            .iter()
            .filter(|(l, _, _)| l % 3 == 0)
            .cloned()
            .collect();
        subset.sort();
        expected.sort();
        assert_eq!(subset, expected, "leaves of {p} in steps of 3");
        for (leaf, key, version) in listed {
            assert_eq!(store.partition_of(&key), p);
            assert_eq!(leaf, leaf_of(key_hash(&key), store.partitions()));
            let entry = store.get(&key).unwrap();
            assert_eq!(Stamp::of(&key, &entry), version);
            if entry.is_live() {
                total.values += 1;
            } else {
                total.tombstones += 1;
            }
            total.bytes += held_bytes(&key, &entry);
            total.expired += u64::from(matches!(entry.payload, Payload::Expired));
            if matches!(entry.payload, Payload::Value(_)) && entry.expires_at != 0 {
                expiring.insert((entry.expires_at, key));
            }
        }
    }
    assert_eq!(store.stats(), total);
    assert_eq!(
        *store.expiries.lock().unwrap(),
        expiring,
        "the expiry index holds one entry per expiring value held"
    );
}

#[test]
fn merge_keeps_the_newer_entry_and_counts_kinds() {
    let store = Store::new(P);
    assert!(store.merge("k", Entry::value(v(2), "new", 0)));
    assert!(!store.merge("k", Entry::value(v(1), "old", 0)));
    assert_eq!(store.get("k").unwrap().live_value(0), Some("new"));
    assert!(store.merge("k", Entry::tombstone(v(3))));
    assert_eq!(
        store.stats(),
        StoreStats {
            values: 0,
            tombstones: 1,
            bytes: 1,
            expired: 0,
        }
    );
}

#[test]
fn write_sees_the_stored_entry_under_the_lock() {
    let store = Store::new(P);
    store.merge("k", Entry::value(v(10), "a", 0));
    let written = store
        .write("k", |stored| {
            let floor = stored.map(|e| e.version.time).unwrap_or(0);
            Ok::<_, Infallible>(Entry::value(v(floor + 1), "b", 0))
        })
        .unwrap();
    assert_eq!(written.version, v(11));
    assert_eq!(store.get("k").unwrap(), written);
    assert_trees_consistent(&store);
}

#[test]
fn a_failed_stamp_changes_nothing() {
    let store = Store::new(P);
    store.merge("k", Entry::value(v(1), "a", 0));
    let root = store.root(store.partition_of("k"));
    assert_eq!(store.write("k", |_| Err("no")), Err("no"));
    assert_eq!(store.get("k").unwrap().live_value(0), Some("a"));
    assert_eq!(store.root(store.partition_of("k")), root);
    // Nor does a failed stamp of a new key leave an empty slot behind.
    assert_eq!(store.write("new", |_| Err("no")), Err("no"));
    assert_eq!(store.get("new"), None);
    assert_trees_consistent(&store);
}

/// With peers an expired value waits for acknowledged collection, hours
/// in the default settings: only its bytes go at expiry.
#[test]
fn expired_values_drop_their_bytes_and_keep_their_digest() {
    let store = Store::new(P);
    store.merge("gone", Entry::value(v(1), "x".repeat(1000), 100));
    store.merge("later", Entry::value(v(2), "y", 300));
    store.merge("forever", Entry::value(v(3), "z", 0));
    let roots: Vec<u128> = (0..P).map(|p| store.root(p)).collect();
    let stats = store.stats();
    assert_eq!(store.drop_expired_bytes(99, 10), 0);
    assert_eq!(store.drop_expired_bytes(100, 10), 1);
    assert_eq!(store.get("gone").unwrap().payload, Payload::Expired);
    assert_eq!(store.get("later").unwrap().live_value(100), Some("y"));
    assert_eq!(roots, (0..P).map(|p| store.root(p)).collect::<Vec<_>>());
    let after = store.stats();
    assert_eq!(
        (after.values, after.tombstones),
        (stats.values, stats.tombstones)
    );
    assert_eq!(after.bytes, stats.bytes - 1000, "the bytes went");
    assert_eq!(
        (stats.expired, after.expired),
        (0, 1),
        "awaiting collection"
    );
    assert_eq!(store.expired_due(299), 0);
    assert_eq!(
        store.expired_due(300),
        1,
        "the other one is due, not yet dropped"
    );
    assert_eq!(store.drop_expired_bytes(u64::MAX, 10), 1);
    // Acknowledged collection still takes it whole, once settled.
    assert_eq!(store.settled(store.partition_of("gone"), 200, 50).len(), 1);
    assert_trees_consistent(&store);
}

#[test]
fn expired_values_are_collected_within_the_budget() {
    let store = Store::new(P);
    for i in 0..10 {
        store.merge(&format!("k{i}"), Entry::value(v(1), "x", 100 + i));
    }
    store.merge("forever", Entry::value(v(1), "x", 0));
    assert_eq!(store.collect_expired(99, 100), 0);
    assert_eq!(store.collect_expired(104, 3), 3);
    assert_eq!(store.collect_expired(104, 100), 2);
    assert_eq!(store.stats().values, 6);
    assert!(store.get("k4").is_none() && store.get("k5").is_some());
    assert_trees_consistent(&store);
}

#[test]
fn a_rewritten_key_is_not_collected_at_its_old_expiry() {
    let store = Store::new(P);
    store.merge("k", Entry::value(v(1), "short", 100));
    store.merge("k", Entry::value(v(2), "long", 500));
    assert_eq!(store.collect_expired(200, 10), 0);
    assert_eq!(store.get("k").unwrap().live_value(200), Some("long"));
    assert_eq!(store.collect_expired(500, 10), 1);
    assert_trees_consistent(&store);
}

/// Measured in a cluster: rewriting 1,000 keys with a TTL 300 times grew
/// each node by 30 MiB, every overwrite leaving its old expiry indexed.
#[test]
fn rewriting_a_key_with_a_ttl_keeps_one_index_entry() {
    let store = Store::new(P);
    for i in 1..=300 {
        store.merge("session", Entry::value(v(i), "s", 1_000 + i));
        let _ = store.write("other", |_| {
            Ok::<_, Infallible>(Entry::value(v(i), "o", 2_000 + i))
        });
    }
    assert_eq!(store.expiries.lock().unwrap().len(), 2);
    store.merge("session", Entry::tombstone(v(400)));
    store.merge("other", Entry::value(v(400), "kept", 0));
    assert_eq!(store.expiries.lock().unwrap().len(), 0);
    assert_trees_consistent(&store);
}

#[test]
fn concurrent_writes_to_one_key_get_distinct_increasing_versions() {
    let store = std::sync::Arc::new(Store::new(P));
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
    assert_trees_consistent(&store);
}

#[test]
fn keys_land_in_their_keyspace_partition_and_leaf() {
    let store = Store::new(1024);
    assert_eq!(store.partitions(), 1024);
    assert_eq!(store.partition_of("user:42"), 695);
    let entry = Entry::value(v(5), "x", 0);
    store.merge("user:42", entry.clone());
    let digest = entry_digest("user:42", &entry);
    let leaf = leaf_of(key_hash("user:42"), 1024);
    assert_eq!(store.root(695), digest);
    assert_eq!(store.partition_len(695), 1);
    assert_eq!(store.branches(695)[usize::from(leaf / 16)], digest);
    assert_eq!(store.leaves(695, leaf / 16)[usize::from(leaf % 16)], digest);
    assert_eq!(
        store.versions_in_leaves(695, &[leaf]),
        vec![(leaf, "user:42".into(), Stamp::register(v(5)))]
    );
    assert!(store
        .versions_in_leaves(695, &[leaf.wrapping_add(1)])
        .is_empty());
    // Other partitions are untouched.
    assert_eq!(store.root(694), 0);
    assert_eq!(store.partition_len(694), 0);
}

#[test]
fn an_empty_store_and_out_of_range_partitions_read_as_empty() {
    let store = Store::new(P);
    store.merge("k", Entry::value(v(1), "x", 0));
    for p in [P, P + 1, u32::MAX] {
        assert_eq!(store.root(p), 0);
        assert_eq!(store.recompute_root(p), 0);
        assert_eq!(store.branches(p), [0; 16]);
        assert_eq!(store.leaves(p, 0), [0; 16]);
        assert_eq!(store.partition_len(p), 0);
        assert!(store.versions_in_leaves(p, &[0, 1, 255]).is_empty());
        assert_eq!(store.drop_partition(p), 0);
    }
    assert_eq!(store.leaves(0, 16), [0; 16]);
    let empty = Store::new(P);
    assert!((0..P).all(|p| empty.root(p) == 0 && empty.recompute_root(p) == 0));
}

#[test]
#[should_panic(expected = "positive")]
fn zero_partitions_is_refused() {
    Store::new(0);
}

#[test]
fn entries_returns_the_keys_held() {
    let store = Store::new(P);
    store.merge("a", Entry::value(v(1), "x", 0));
    store.merge("b", Entry::tombstone(v(2)));
    let got = store.entries(&["a", "missing", "b"]);
    assert_eq!(
        got,
        vec![
            ("a".into(), Entry::value(v(1), "x", 0)),
            ("b".into(), Entry::tombstone(v(2)))
        ]
    );
}

#[test]
fn dropping_a_partition_removes_its_entries_only() {
    let store = Store::new(P);
    for i in 0..200 {
        let key = format!("k{i}");
        let entry = match i % 3 {
            0 => Entry::tombstone(v(1)),
            1 => Entry::value(v(1), "x", 0),
            _ => Entry::value(v(1), "x", 1000 + i),
        };
        store.merge(&key, entry);
    }
    let p = store.partition_of("k0");
    let held = store.partition_len(p);
    let before = store.stats();
    assert!(held > 0);
    assert_eq!(store.drop_partition(p) as u64, held);
    assert_eq!(store.partition_len(p), 0);
    assert_eq!(store.root(p), 0);
    assert!(store.get("k0").is_none());
    let after = store.stats();
    assert_eq!(
        before.values + before.tombstones - after.values - after.tombstones,
        held
    );
    assert_trees_consistent(&store);
    // The dropped keys' expiries left the index: collecting everything
    // removes exactly the TTL values of the other partitions.
    let ttl_elsewhere = (0..200)
        .filter(|i| i % 3 == 2 && store.partition_of(&format!("k{i}")) != p)
        .count();
    assert_eq!(store.collect_expired(u64::MAX, usize::MAX), ttl_elsewhere);
    assert_eq!(store.expiries.lock().unwrap().len(), 0);
    assert_trees_consistent(&store);
}

#[test]
fn two_threads_merging_into_shared_partitions_keep_trees_exact() {
    let store = std::sync::Arc::new(Store::new(4));
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    // 64 keys shared by both threads, so both threads change
                    // the same keys, leaves, branches and roots.
                    let key = format!("k{}", i % 64);
                    let version = Version::new(i / 7, t);
                    let entry = match i % 5 {
                        0 => Entry::tombstone(version),
                        1 => Entry::value(version, "x", 10 + i % 50),
                        _ => Entry::value(version, "x", 0),
                    };
                    store.merge(&key, entry);
                    if i % 100 == 0 {
                        store.collect_expired(i / 400 + 10, 8);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_trees_consistent(&store);
}

/// One step of the state-machine proptest.
#[derive(Clone, Debug)]
enum Op {
    /// Merge an entry at key `k{key}`.
    Merge { key: u8, entry: Entry },
    /// A stamped write over the stored version.
    Write { key: u8, tombstone: bool },
    /// Run the expiry collector at `now` with `budget`.
    Collect { now: u64, budget: usize },
    /// Drop the bytes of expired values at `now`, at most `budget`.
    DropBytes { now: u64, budget: usize },
    /// Drop partition `p` (possibly out of range).
    Drop { p: u32 },
}

fn entry() -> impl Strategy<Value = Entry> {
    // Small ranges so that equal and older versions occur often; maps and
    // counters of one generation, whose writes merge.
    (0u64..8, 0u64..3, 0u8..6, 0u64..20).prop_map(|(time, node, kind, expires_at)| {
        let version = Version::new(time, node);
        match kind {
            0 => Entry::tombstone(version),
            1 => Entry::value(version, format!("{time}.{node}"), 0),
            2 => Entry::value(version, format!("{time}.{node}"), expires_at + 1),
            3 => map_write(version, &format!("f{}", expires_at % 3)),
            4 => {
                let set = map_write(Version::new(time, node), "f0");
                let removal = Version::new(time + 1, node);
                ops::map_remove(Some(&set), 0, &["f0"], removal).unwrap()
            }
            _ => Entry::counter(
                version,
                PnCounter::increment(Version::default(), Actor::new(node, 1), time + 1, 5),
            ),
        }
    })
}

/// A map write of `field` at `version` over nothing.
fn map_write(version: Version, field: &str) -> Entry {
    ops::map_set(None, 0, &[(field, "v")], version, 1, usize::MAX).unwrap()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..16, entry()).prop_map(|(key, entry)| Op::Merge { key, entry }),
        2 => (0u8..16, any::<bool>()).prop_map(|(key, tombstone)| Op::Write { key, tombstone }),
        2 => (0u64..25, 0usize..5).prop_map(|(now, budget)| Op::Collect { now, budget }),
        2 => (0u64..25, 0usize..5).prop_map(|(now, budget)| Op::DropBytes { now, budget }),
        1 => (0u32..10).prop_map(|p| Op::Drop { p }),
    ]
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
        let (a, b) = (Store::new(P), Store::new(P));
        entries.into_iter().for_each(|(k, e)| { a.merge(&k, e); });
        shuffled.into_iter().for_each(|(k, e)| { b.merge(&k, e); });
        for k in 0..4 {
            let key = format!("k{k}");
            prop_assert_eq!(a.get(&key), b.get(&key));
        }
        prop_assert_eq!(a.stats(), b.stats());
    }

    /// Two stores fed the same entries in different orders, with
    /// duplicates, have equal trees in every partition.
    #[test]
    fn delivery_order_does_not_change_the_trees(
        entries in prop::collection::vec((0u8..24, entry()), 1..60),
        partitions in 1u32..6,
        seed in any::<u64>(),
    ) {
        let mut shuffled = entries.clone();
        shuffled.extend(entries.iter().step_by(2).cloned());
        let n = shuffled.len();
        for i in 0..n {
            let j = (seed.wrapping_mul(i as u64 + 7) % n as u64) as usize;
            shuffled.swap(i, j);
        }
        let (a, b) = (Store::new(partitions), Store::new(partitions));
        entries.into_iter().for_each(|(k, e)| { a.merge(&format!("k{k}"), e); });
        shuffled.into_iter().for_each(|(k, e)| { b.merge(&format!("k{k}"), e); });
        for p in 0..partitions {
            prop_assert_eq!(a.root(p), b.root(p), "partition {}", p);
            prop_assert_eq!(a.branches(p), b.branches(p));
            prop_assert_eq!(a.partition_len(p), b.partition_len(p));
            prop_assert_eq!(a.root(p), a.recompute_root(p));
        }
    }

    /// For any sequence of merges (values, tombstones, older and newer
    /// versions, TTL values), stamped writes, expiry collections and
    /// partition drops, every partition's incrementally kept tree equals
    /// the tree recomputed from its map, at every step.
    #[test]
    fn incremental_trees_equal_recomputed_ones(
        ops in prop::collection::vec(op(), 1..80),
        partitions in 1u32..6,
    ) {
        let store = Store::new(partitions);
        let mut clock = 100;
        for op in ops {
            match op {
                Op::Merge { key, entry } => { store.merge(&format!("k{key}"), entry); }
                Op::Write { key, tombstone } => {
                    clock += 1;
                    store.write(&format!("k{key}"), |stored| {
                        let t = stored.map_or(clock, |e| e.version.time.max(clock) + 1);
                        let version = Version::new(t, 9);
                        Ok::<_, Infallible>(if tombstone {
                            Entry::tombstone(version)
                        } else {
                            Entry::value(version, "w", 0)
                        })
                    }).unwrap();
                }
                Op::Collect { now, budget } => { store.collect_expired(now, budget); }
                Op::DropBytes { now, budget } => { store.drop_expired_bytes(now, budget); }
                Op::Drop { p } => { store.drop_partition(p); }
            }
            assert_trees_consistent(&store);
        }
    }
}

#[test]
fn maps_and_counters_merge_count_and_keep_trees_exact() {
    let store = Store::new(P);
    assert!(store.merge("m", map_write(v(1), "a")));
    assert!(store.merge("m", map_write(Version::new(1, 2), "b")));
    assert!(
        !store.merge("m", map_write(v(1), "a")),
        "a replay changes nothing"
    );
    let c = |seq| {
        Entry::counter(
            v(seq),
            PnCounter::increment(Version::default(), Actor::new(1, 1), seq, 2),
        )
    };
    assert!(store.merge("c", c(2)));
    assert!(store.merge("c", c(1)));
    assert!(!store.merge("c", c(2)));
    let held = store.stats();
    assert_eq!((held.values, held.tombstones), (2, 0));
    assert_trees_consistent(&store);
    let m = store.get("m").unwrap();
    assert_eq!(ops::read_map(Some(&m), 0, &[]).unwrap().unwrap().len(), 2);
    assert_eq!(ops::read_counter(store.get("c").as_ref(), 0), Ok(Some(4)));

    // A map whose fields are all removed counts, and is collected, like a
    // tombstone.
    let removal = ops::map_remove(Some(&m), 0, &["a", "b"], v(5)).unwrap();
    assert!(store.merge("m", removal));
    let held = store.stats();
    assert_eq!((held.values, held.tombstones), (1, 1));
    assert_trees_consistent(&store);
    let p = store.partition_of("m");
    let grace = 10u64 << 32;
    assert!(store.settled(p, 5, grace).iter().all(|(k, _)| &**k != "m"));
    let settled = store.settled_parts(p, v(5).time + grace, grace);
    assert!(settled.fields.is_empty(), "goes as a whole");
    let mine: Vec<(Key, Version)> = settled
        .entries
        .into_iter()
        .filter(|(k, _)| &**k == "m")
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(store.collect(p, &mine, v(5).time + grace).len(), 1);
    assert!(store.get("m").is_none());
    let held = store.stats();
    assert_eq!((held.values, held.tombstones), (1, 0));
    assert_trees_consistent(&store);
}

#[test]
fn settled_removed_fields_of_a_live_map_are_pruned_without_changing_its_digest() {
    let store = Store::new(P);
    store.merge("m", map_write(v(1), "keep"));
    store.merge("m", map_write(v(2), "gone"));
    let m = store.get("m").unwrap();
    store.merge("m", ops::map_remove(Some(&m), 0, &["gone"], v(3)).unwrap());
    let p = store.partition_of("m");
    let root = store.root(p);
    let settled = store.settled_parts(p, 103, 100);
    assert!(settled.entries.is_empty());
    assert_eq!(settled.fields, vec![("m".into(), vec![("gone".into(), 3)])]);
    // A write of the field since keeps it.
    let mut stale = settled.fields.clone();
    stale[0].1[0].1 = 2;
    assert_eq!(store.prune_fields(p, &stale), 0);
    assert_eq!(store.prune_fields(p, &settled.fields), 1);
    let Some(Entry {
        payload: Payload::Map(m),
        ..
    }) = store.get("m")
    else {
        panic!("still a map");
    };
    assert!(m.field("gone").is_none());
    assert_eq!(m.get("keep"), Some("v"));
    assert_eq!(store.root(p), root);
    assert_trees_consistent(&store);
}

/// Found by the simulator (seed 543506234): a value stamped an hour ahead
/// (over a version from a clock that had jumped) with a one-second TTL
/// expired by physical time at once, was collected, and a write stamped
/// at the true time then became the key's only version, although it is
/// older than the collected one. An entry is settled only once its version
/// too is older than the grace, so no write older than it can still come.
#[test]
fn an_expired_value_stamped_ahead_settles_only_once_its_version_is_old() {
    let second = 1u64 << 32;
    let grace = 2 * second;
    let now = 1_000 * second;
    let ahead = Entry::value(Version::new(now + 3600 * second, 1), "x", now + second);
    assert!(!is_settled(&ahead, now + 10 * second, grace));
    assert!(is_settled(&ahead, now + 3602 * second, grace));
    let true_time = Entry::value(Version::new(now, 1), "x", now + second);
    assert!(!is_settled(&true_time, now + 2 * second, grace));
    assert!(is_settled(&true_time, now + 3 * second, grace));
}

/// The three removal paths (expiry collection, acknowledged collection and
/// dropping a partition) share one piece of bookkeeping: each leaves the
/// trees, the counters, the partition lengths and the expiry index exact.
#[test]
fn every_removal_path_keeps_the_bookkeeping_exact() {
    let store = Store::new(P);
    for i in 0..60u64 {
        let key = format!("k{i}");
        let entry = match i % 3 {
            0 => Entry::tombstone(v(1)),
            1 => Entry::value(v(1), "x", 100 + i),
            _ => Entry::value(v(1), "x", 0),
        };
        store.merge(&key, entry);
    }
    // Expiry collection takes a few of the expiring strings.
    assert_eq!(store.collect_expired(110, 2), 2);
    assert_trees_consistent(&store);
    // Acknowledged collection takes every settled entry of one partition:
    // its tombstones and its expired strings, whose expiries leave the index.
    let grace = 10;
    let now = 1_000;
    let p = store.partition_of("k1");
    let settled = store.settled(p, now, grace);
    assert!(!settled.is_empty());
    assert_eq!(store.collect(p, &settled, now).len(), settled.len());
    assert_trees_consistent(&store);
    // Dropping another partition takes whatever it holds.
    let q = (0..P)
        .find(|&q| q != p && store.partition_len(q) > 0)
        .unwrap();
    let held = store.partition_len(q);
    assert_eq!(store.drop_partition(q) as u64, held);
    assert_trees_consistent(&store);
}

/// A journal that keeps every record, as the write-ahead log writes them.
#[derive(Default)]
struct Recording(Mutex<Vec<Vec<u8>>>);

impl Recording {
    fn push(&self, write: impl FnOnce(&mut Vec<u8>)) {
        let mut payload = Vec::new();
        write(&mut payload);
        self.0.lock().unwrap().push(payload);
    }
}

impl Journal for Recording {
    fn merged(&self, key: &str, entry: &Entry) {
        self.push(|b| crate::durability::record::merged(b, key, entry));
    }
    fn removed(&self, key: &str, version: Version) {
        self.push(|b| crate::durability::record::removed(b, key, version));
    }
    fn dropped(&self, partition: u32) {
        self.push(|b| crate::durability::record::dropped(b, partition));
    }
    fn check(&self) -> Result<(), JournalError> {
        Ok(())
    }
    fn durable(&self) -> JournalWait<'_> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn synced(&self) -> JournalWait<'_> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Every way the store changes is reported to its journal: replaying the
/// records into an empty store rebuilds the same entries, trees and
/// counters (merges, stamped writes, expiry collection and dropped bytes,
/// acknowledged collection, removals by version, dropped partitions).
#[test]
fn replaying_the_journal_rebuilds_the_store() {
    let store = Store::new(P);
    let journal = Arc::new(Recording::default());
    assert!(store.attach_journal(journal.clone()));
    for i in 0..40u64 {
        store.merge(&format!("k{i}"), Entry::value(v(i + 1), "x", 0));
    }
    store
        .write("k1", |_| Ok::<_, Infallible>(Entry::value(v(100), "w", 0)))
        .unwrap();
    store.merge("ttl", Entry::value(v(5), "t", 50));
    store.merge("ttl2", Entry::value(v(6), "t", 60));
    assert_eq!(store.collect_expired(55, 10), 1);
    assert_eq!(store.drop_expired_bytes(65, 10), 1);
    store.merge("dead", Entry::tombstone(v(7)));
    let p = store.partition_of("dead");
    assert_eq!(store.collect(p, &[("dead".into(), v(7))], 1000).len(), 1);
    assert!(store.remove_version("k2", v(3)));
    let dropped = store.partition_of("k3");
    assert!(store.drop_partition(dropped) > 0);
    store.merge("k3", Entry::value(v(200), "after the drop", 0));

    let replayed = Store::new(P);
    let records = journal.0.lock().unwrap().clone();
    crate::durability::files::replay_payloads(&replayed, records.iter().map(|r| r.as_slice()))
        .unwrap();
    assert_eq!(replayed.stats(), store.stats());
    for p in 0..P {
        assert_eq!(replayed.root(p), store.root(p), "partition {p}");
        assert_eq!(replayed.partition_len(p), store.partition_len(p));
    }
    assert_trees_consistent(&replayed);
}
