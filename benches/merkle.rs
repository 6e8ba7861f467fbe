//! What keeping the Merkle trees costs on the write path.
//!
//! Every merge that changes an entry computes the digests of the old and
//! the new entry and XORs their difference into a leaf, a branch and a root.
//! Measured, one operation per iteration:
//!
//! - `merkle/entry_digest`: one digest of a 16-byte key (xxh3-128 of key,
//!   version and kind);
//! - `merkle/toggle`: one update of a tree (6 atomic XORs);
//! - `merkle/merge_with_tree`: `Store::merge` of a newer version into one of
//!   100,000 keys: partition lookup, bucket lock, merge, tree and counters;
//! - `merkle/merge_without_tree`: the same merge into a bare
//!   `scc::HashMap<Box<str>, Entry>`, which keeps no tree and no counters:
//!   the baseline, measured right after, in the same run.
//!
//! Run with `cargo bench --bench merkle`; results in `docs/performance.md`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kilovolt::crdt::{Entry, Version};
use kilovolt::keyspace::entry_digest;
use kilovolt::merkle::MerkleTree;
use kilovolt::store::Store;

const KEYS: usize = 100_000;
const PARTITIONS: u32 = 1024;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("key-{i:012}")).collect()
}

/// A cheap deterministic index generator (xorshift).
struct Picker(u64);

impl Picker {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % KEYS as u64) as usize
    }
}

fn value() -> Box<str> {
    "v".repeat(100).into_boxed_str()
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("merkle");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);

    let entry = Entry::value(Version::new(7, 7), value(), 0);
    group.bench_function("entry_digest", |b| {
        let mut pick = Picker(1);
        b.iter(|| black_box(entry_digest(&keys[pick.next()], &entry)))
    });
    let tree = MerkleTree::new();
    group.bench_function("toggle", |b| {
        let mut n = 0u128;
        b.iter(|| {
            n = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
            tree.toggle((n >> 64) as u8, black_box(n));
        })
    });

    let store = Store::new(PARTITIONS);
    let bare: scc::HashMap<Box<str>, Entry> = scc::HashMap::new();
    for k in &keys {
        store.merge(k, Entry::value(Version::new(1, 7), value(), 0));
        let _ = bare.insert_sync(
            k.as_str().into(),
            Entry::value(Version::new(1, 7), value(), 0),
        );
    }
    // Versions keep increasing across criterion's calls of each routine,
    // so that every merge really applies.
    let time = std::cell::Cell::new(1u64);
    let next_time = || {
        time.set(time.get() + 1);
        time.get()
    };
    group.bench_function("merge_with_tree", |b| {
        let mut pick = Picker(2);
        b.iter(|| {
            let incoming = Entry::value(Version::new(next_time(), 7), value(), 0);
            assert!(store.merge(&keys[pick.next()], incoming));
        })
    });
    group.bench_function("merge_without_tree", |b| {
        let mut pick = Picker(2);
        b.iter(|| {
            let incoming = Entry::value(Version::new(next_time(), 7), value(), 0);
            let changed = bare
                .update_sync(keys[pick.next()].as_str(), |_, e| e.merge_from(incoming))
                .unwrap_or(false);
            assert!(changed);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
