//! Micro-benchmarks of the local replica, [`kilovolt::store::Store`].
//!
//! Every benchmark runs over a store preloaded with [`KEYS`] keys of 16 bytes
//! (`key-000000000042`) holding 100-byte values, large enough that the map
//! does not sit in L1/L2 and lookups pay for real hashing and memory access.
//! Keys are picked with a xorshift generator over a precomputed, contiguous
//! key table, so the key choice costs a few nanoseconds and no allocation.
//!
//! Measured, all with `Throughput::Elements(1)` (one operation per
//! iteration, so criterion's `elem/s` is operations per second):
//!
//! - `store/get`: a read of a random existing key (the clone of the entry,
//!   value included, is part of the cost: it is what `Store::get` returns).
//! - `store/merge`: a merge of a newer version into a random existing key;
//!   versions come from a counter above the preloaded ones, so every merge
//!   really replaces the entry (asserted on every call). Building the
//!   incoming entry (one 100-byte allocation) is included, as it is on the
//!   replication path.
//! - `store/write_stamped`: the local write path, `Store::write` with the
//!   version issued by the node's hybrid logical clock under the key's lock.
//! - `store/get_2t`, `store/merge_2t`: two threads sharing one store, each
//!   doing half of the iterations; the time reported is the wall time of
//!   both, so the throughput is the combined one. In `merge_2t` each thread
//!   owns the keys of one parity, so that its own counter keeps every merge
//!   applying, while the two threads still share buckets and cache lines.
//! - `rwlock_hashmap/{get,merge}{,_2t}`: the same operations over a
//!   `RwLock<HashMap<Box<str>, Entry>>` (same hasher, same boxed keys), the
//!   obvious alternative to `scc`. Each runs right after its store
//!   counterpart, so that the ratio between the two is measured seconds
//!   apart in the same run: on a shared, noisy machine absolute figures
//!   drift between runs far more than such a ratio does.
//!
//! Reads share one loaded map; each mutating benchmark gets a freshly loaded
//! one, so that no benchmark depends on the order they run in or on filters.
//!
//! Run with `cargo bench --bench store`; results in `docs/performance.md`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Bencher, Criterion, Throughput};
use kilovolt::clock::{system_time, Clock};
use kilovolt::crdt::{Entry, Version};
use kilovolt::store::Store;

/// Keys preloaded into every store.
const KEYS: usize = 100_000;
/// Length of every key: `key-` and 12 digits.
const KEY_LEN: usize = 16;
/// Length of every value.
const VALUE_LEN: usize = 100;
/// Clock id of the preloaded and merged versions.
const NODE: u64 = 7;
/// Time of the preloaded versions; merges use greater times.
const LOADED_AT: u64 = 1;

/// The baseline the store is compared with.
type Baseline = RwLock<HashMap<Box<str>, Entry>>;

/// All keys, back to back, so that picking one is a slice and no pointer
/// chase.
struct Keys(String);

impl Keys {
    fn new() -> Self {
        let mut all = String::with_capacity(KEYS * KEY_LEN);
        for i in 0..KEYS {
            all.push_str(&format!("key-{i:012}"));
        }
        assert_eq!(all.len(), KEYS * KEY_LEN);
        Self(all)
    }

    fn get(&self, i: usize) -> &str {
        &self.0[i * KEY_LEN..(i + 1) * KEY_LEN]
    }
}

/// xorshift64: a cheap, deterministic stream of key indexes.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next_below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x % n as u64) as usize
    }
}

fn value() -> String {
    "v".repeat(VALUE_LEN)
}

fn loaded_store(keys: &Keys) -> Store {
    let store = Store::new(1024);
    let value = value();
    for i in 0..KEYS {
        store.merge(
            keys.get(i),
            Entry::value(Version::new(LOADED_AT, NODE), value.as_str(), 0),
        );
    }
    store
}

fn loaded_baseline(keys: &Keys) -> Baseline {
    let value = value();
    let map = (0..KEYS)
        .map(|i| {
            let entry = Entry::value(Version::new(LOADED_AT, NODE), value.as_str(), 0);
            (Box::from(keys.get(i)), entry)
        })
        .collect();
    RwLock::new(map)
}

/// The two operations compared between the store and the baseline.
trait Map: Sync {
    fn get(&self, key: &str) -> Option<Entry>;
    fn merge(&self, key: &str, incoming: Entry) -> bool;
}

impl Map for Store {
    fn get(&self, key: &str) -> Option<Entry> {
        Store::get(self, key)
    }

    fn merge(&self, key: &str, incoming: Entry) -> bool {
        Store::merge(self, key, incoming)
    }
}

/// `Store`'s semantics over the baseline map, counters and expiry index
/// aside.
impl Map for Baseline {
    fn get(&self, key: &str) -> Option<Entry> {
        self.read().unwrap().get(key).cloned()
    }

    fn merge(&self, key: &str, incoming: Entry) -> bool {
        let mut map = self.write().unwrap();
        match map.get_mut(key) {
            Some(stored) => stored.merge_from(incoming),
            None => {
                map.insert(key.into(), incoming);
                true
            }
        }
    }
}

/// Runs `op` for `iters` iterations split over two scoped threads and
/// returns the wall time until both are done (thread start included: a few
/// tens of microseconds against samples of about 100 ms). `op(thread, ops)`
/// does `ops` operations as thread `thread` (0 or 1).
fn two_threads(iters: u64, op: impl Fn(usize, u64) + Sync) -> Duration {
    let op = &op;
    let start = Instant::now();
    thread::scope(|s| {
        s.spawn(move || op(0, iters - iters / 2));
        s.spawn(move || op(1, iters / 2));
    });
    start.elapsed()
}

/// Runs one benchmark as `group/name`, with one operation per iteration.
///
/// Each benchmark opens its group anew so that the store and the baseline
/// can alternate: compared figures are then measured seconds apart, not a
/// minute apart, and share more of the machine's background noise.
fn bench(c: &mut Criterion, group: &str, name: &str, f: impl FnMut(&mut Bencher<'_>)) {
    let mut group = c.benchmark_group(group);
    group
        .throughput(Throughput::Elements(1))
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .bench_function(name, f);
    group.finish();
}

/// `get` of random keys from one thread.
fn get<M: Map>(c: &mut Criterion, group: &str, keys: &Keys, map: &M) {
    let mut rng = XorShift::new(1);
    bench(c, group, "get", |b| {
        b.iter(|| black_box(map.get(keys.get(rng.next_below(KEYS)))))
    });
}

/// `get` of random keys from two threads.
fn get_2t<M: Map>(c: &mut Criterion, group: &str, keys: &Keys, map: &M) {
    let mut seed = 2;
    bench(c, group, "get_2t", |b| {
        b.iter_custom(|iters| {
            seed += 2;
            two_threads(iters, |thread, ops| {
                let mut rng = XorShift::new(seed + thread as u64);
                for _ in 0..ops {
                    black_box(map.get(keys.get(rng.next_below(KEYS))));
                }
            })
        })
    });
}

/// `merge` of a newer version into random keys from one thread.
fn merge<M: Map>(c: &mut Criterion, group: &str, keys: &Keys, map: &M) {
    let value = value();
    let mut rng = XorShift::new(3);
    let mut time = LOADED_AT;
    bench(c, group, "merge", |b| {
        b.iter(|| {
            time += 1;
            let entry = Entry::value(Version::new(time, NODE), value.as_str(), 0);
            let applied = map.merge(keys.get(rng.next_below(KEYS)), entry);
            assert!(applied, "a merge did not apply");
            black_box(applied)
        })
    });
}

/// `merge` of a newer version into random keys from two threads. Each
/// thread merges into the keys of its parity with its own increasing times,
/// kept across calls, so that every merge applies.
fn merge_2t<M: Map>(c: &mut Criterion, group: &str, keys: &Keys, map: &M) {
    let value = value();
    let times = [LOADED_AT, LOADED_AT].map(AtomicU64::new);
    let mut seed = 4;
    bench(c, group, "merge_2t", |b| {
        b.iter_custom(|iters| {
            seed += 2;
            two_threads(iters, |thread, ops| {
                let mut rng = XorShift::new(seed + thread as u64);
                let mut time = times[thread].load(Ordering::Relaxed);
                for _ in 0..ops {
                    time += 1;
                    let key = keys.get(rng.next_below(KEYS / 2) * 2 + thread);
                    let entry = Entry::value(Version::new(time, NODE), value.as_str(), 0);
                    let applied = map.merge(key, entry);
                    assert!(applied, "a merge did not apply");
                    black_box(applied);
                }
                times[thread].store(time, Ordering::Relaxed);
            })
        })
    });
}

/// The local write path: a version from the node's clock, chosen under the
/// key's lock from the stored one.
fn write_stamped(c: &mut Criterion, keys: &Keys, store: &Store) {
    let clock = Clock::new("bench-node", system_time, Duration::from_millis(500));
    let value = value();
    let mut rng = XorShift::new(5);
    bench(c, STORE, "write_stamped", |b| {
        b.iter(|| {
            let key = keys.get(rng.next_below(KEYS));
            let written = store.write(key, |stored| {
                clock
                    .stamp_after(key, stored.map(|e| e.version))
                    .map(|v| Entry::value(v, value.as_str(), 0))
            });
            black_box(written.unwrap())
        })
    });
}

const STORE: &str = "store";
const BASELINE: &str = "rwlock_hashmap";

/// Every benchmark, store and baseline alternating; reads share one loaded
/// map, and each mutating benchmark gets a fresh one so that none depends
/// on the order they run in or on filters.
fn benches(c: &mut Criterion) {
    let keys = Keys::new();
    {
        let (store, baseline) = (loaded_store(&keys), loaded_baseline(&keys));
        get(c, STORE, &keys, &store);
        get(c, BASELINE, &keys, &baseline);
        get_2t(c, STORE, &keys, &store);
        get_2t(c, BASELINE, &keys, &baseline);
    }
    merge(c, STORE, &keys, &loaded_store(&keys));
    merge(c, BASELINE, &keys, &loaded_baseline(&keys));
    merge_2t(c, STORE, &keys, &loaded_store(&keys));
    merge_2t(c, BASELINE, &keys, &loaded_baseline(&keys));
    write_stamped(c, &keys, &loaded_store(&keys));
}

criterion_group!(store, benches);
criterion_main!(store);
