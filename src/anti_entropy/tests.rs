//! Sessions between two in-memory replicas: convergence in one session
//! (property test), malformed replies and requests, and the message-size
//! figures quoted in the module documentation.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64_with_seed};

use super::*;
use crate::crdt::{ops, Actor, PnCounter, Version};

/// The test double's key hash seed (the real store brings its own mapping).
const SEED: u64 = 0x7465_7374_2d61_6521;

/// A replica held in a `BTreeMap`, its trees kept current on every merge the
/// way the store keeps them: a merge XORs `old ^ new` digest into the leaf.
#[derive(Clone, Debug)]
struct MemStore {
    partitions: u32,
    entries: BTreeMap<Key, Entry>,
    trees: HashMap<u32, [u128; LEAVES]>,
}

impl MemStore {
    fn new(partitions: u32) -> Self {
        Self {
            partitions,
            entries: BTreeMap::new(),
            trees: HashMap::new(),
        }
    }

    /// Partition: key hash mod P; leaf: the next 8 bits of the hash.
    fn locate(&self, key: &str) -> (u32, u8) {
        let h = xxh3_64_with_seed(key.as_bytes(), SEED);
        let p = u64::from(self.partitions);
        ((h % p) as u32, ((h / p) % LEAVES as u64) as u8)
    }

    fn digest(key: &str, entry: &Entry) -> u128 {
        let mut bytes = Vec::with_capacity(key.len() + 25);
        bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(&entry.version.time.to_le_bytes());
        bytes.extend_from_slice(&entry.version.node.to_le_bytes());
        bytes.push(u8::from(entry.is_value()));
        if let (Some(content), Some(generation)) = (entry.content_digest(), entry.generation()) {
            bytes.push(entry.rank().1);
            bytes.extend_from_slice(&generation.time.to_le_bytes());
            bytes.extend_from_slice(&generation.node.to_le_bytes());
            bytes.extend_from_slice(&content.to_le_bytes());
        }
        xxh3_128(&bytes)
    }

    fn merge(&mut self, key: Key, entry: Entry) {
        let (p, leaf) = self.locate(&key);
        let new_digest;
        let old_digest = match self.entries.get_mut(&key) {
            Some(held) => {
                let old = Self::digest(&key, held);
                held.merge_from(entry);
                new_digest = Self::digest(&key, held);
                old
            }
            None => {
                new_digest = Self::digest(&key, &entry);
                self.entries.insert(key, entry);
                0
            }
        };
        self.trees.entry(p).or_insert([0; LEAVES])[leaf as usize] ^= old_digest ^ new_digest;
    }

    fn apply(&mut self, entries: Vec<(Key, Entry)>) {
        for (key, entry) in entries {
            self.merge(key, entry);
        }
    }

    fn tree(&self, partition: u32) -> [u128; LEAVES] {
        self.trees.get(&partition).copied().unwrap_or([0; LEAVES])
    }
}

impl LocalStore for MemStore {
    fn root(&self, partition: u32) -> u128 {
        self.tree(partition).iter().fold(0, |a, l| a ^ l)
    }

    fn branches(&self, partition: u32) -> [u128; BRANCHES] {
        let tree = self.tree(partition);
        std::array::from_fn(|b| {
            tree[b * LEAVES_PER_BRANCH..(b + 1) * LEAVES_PER_BRANCH]
                .iter()
                .fold(0, |a, l| a ^ l)
        })
    }

    fn leaves(&self, partition: u32, branch: u8) -> [u128; LEAVES_PER_BRANCH] {
        let tree = self.tree(partition);
        std::array::from_fn(|i| tree[branch as usize * LEAVES_PER_BRANCH + i])
    }

    fn versions_in_leaves(&self, partition: u32, leaves: &[u8]) -> Vec<(u8, Key, Stamp)> {
        self.entries
            .iter()
            .filter_map(|(key, entry)| {
                let (p, leaf) = self.locate(key);
                (p == partition && leaves.contains(&leaf))
                    .then(|| (leaf, key.clone(), Stamp::of(key, entry)))
            })
            .collect()
    }

    fn entries(&self, keys: &[&str]) -> Vec<(Key, Entry)> {
        keys.iter()
            .filter_map(|&k| self.entries.get_key_value(k))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }
}

/// One message of a session, for size checks.
#[derive(Debug)]
enum Message {
    Request(Request),
    Reply(Reply),
}

impl Message {
    fn wire_size(&self) -> usize {
        match self {
            Message::Request(r) => r.wire_size(),
            Message::Reply(r) => r.wire_size(),
        }
    }

    /// The items a message carries, in the unit it is cut by.
    fn items(&self) -> usize {
        match self {
            Message::Request(Request::Summary { groups, .. }) => groups.len(),
            Message::Request(Request::Branches { partitions, .. }) => partitions.len(),
            Message::Request(Request::Versions { leaves, .. }) => leaves.len(),
            Message::Request(Request::Repair {
                entries, wanted, ..
            }) => entries.len() + wanted.len(),
            Message::Reply(Reply::Roots { groups, .. }) => groups.len(),
            Message::Reply(Reply::Leaves { branches, .. }) => {
                let mut ps: Vec<u32> = branches.iter().map(|b| b.0).collect();
                ps.dedup();
                ps.len()
            }
            Message::Reply(Reply::Versions { leaves }) => {
                leaves.iter().map(|l| l.versions.len().max(1)).sum()
            }
            Message::Reply(Reply::Entries { entries, .. }) => entries.len(),
        }
    }
}

/// Runs one session, A initiating, B responding, merging on both sides as
/// the shell would. Returns its stats and every message, checking that each
/// stays within the limit unless it carries a single item.
fn session(
    a: &mut MemStore,
    b: &mut MemStore,
    shared: PartitionSet,
    limits: Limits,
    salt: u64,
) -> (SessionStats, Vec<Message>) {
    let mut initiator = Initiator::new(shared, limits, salt);
    let mut request = initiator.start(a);
    let mut transcript = Vec::new();
    loop {
        let answer = respond(b, request.clone(), limits).expect("a valid request");
        b.apply(answer.merge);
        transcript.push(Message::Request(request));
        transcript.push(Message::Reply(answer.reply.clone()));
        let step = initiator.on_reply(a, answer.reply).expect("a valid reply");
        a.apply(step.merge);
        match step.next {
            Next::Send(next) => request = next,
            Next::Done(stats) => {
                assert_eq!(&stats, initiator.stats());
                assert_eq!(
                    initiator.on_reply(a, Reply::Versions { leaves: vec![] }),
                    Err(SessionError::NotAwaiting)
                );
                for m in &transcript {
                    assert!(
                        m.wire_size() <= limits.max_message_bytes || m.items() == 1,
                        "{} bytes over the limit of {}: {m:?}",
                        m.wire_size(),
                        limits.max_message_bytes
                    );
                }
                let sent: usize = transcript.iter().step_by(2).map(Message::wire_size).sum();
                let received: usize = transcript
                    .iter()
                    .skip(1)
                    .step_by(2)
                    .map(Message::wire_size)
                    .sum();
                assert_eq!(
                    (stats.bytes_sent, stats.bytes_received),
                    (sent as u64, received as u64)
                );
                assert_eq!(stats.round_trips as usize * 2, transcript.len());
                return (stats, transcript);
            }
        }
    }
}

/// The entry a write of `key` at `(time, node)` left: a function of the
/// version, as in a cluster where versions are unique; some tombstones,
/// some expiring values, some maps and counters of one generation (which
/// two replicas holding different writes must exchange both ways).
fn write(key: &str, time: u64, node: u64) -> Entry {
    let version = Version::new(time, node);
    match (time + node) % 5 {
        0 => Entry::tombstone(version),
        1 => Entry::value(version, format!("{key}@{time}/{node}"), 0),
        2 => Entry::value(version, format!("{key}:{time}"), 1_000 + time),
        3 => {
            let field = format!("f{node}");
            ops::map_set(None, 0, &[(&field, key)], version, 1, usize::MAX)
                .expect("a map over nothing")
        }
        _ => Entry::counter(
            version,
            PnCounter::increment(Version::default(), Actor::new(node, 1), time, time as i64),
        ),
    }
}

/// Where a key is before the session.
#[derive(Clone, Copy, Debug)]
enum Place {
    OnlyA,
    OnlyB,
    Same,
    Both,
}

fn place() -> impl Strategy<Value = Place> {
    prop_oneof![
        Just(Place::OnlyA),
        Just(Place::OnlyB),
        Just(Place::Same),
        Just(Place::Both)
    ]
}

fn version() -> impl Strategy<Value = (u64, u64)> {
    (1u64..6, 1u64..3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn one_session_converges_both_ways(
        partitions in prop_oneof![Just(1u32), Just(3), Just(64)],
        keys in prop::collection::btree_map(0u32..400, (place(), version(), version()), 0..200),
        small in any::<bool>(),
        salt in any::<u64>(),
    ) {
        let mut a = MemStore::new(partitions);
        let mut b = MemStore::new(partitions);
        let mut expected: BTreeMap<Key, Entry> = BTreeMap::new();
        for (i, (place, (ta, na), (tb, nb))) in keys {
            let key = format!("key-{i}");
            let (on_a, on_b) = match place {
                Place::OnlyA => (Some((ta, na)), None),
                Place::OnlyB => (None, Some((ta, na))),
                Place::Same => (Some((ta, na)), Some((ta, na))),
                Place::Both => (Some((ta, na)), Some((tb, nb))),
            };
            for (replica, version) in [(&mut a, on_a), (&mut b, on_b)] {
                if let Some((t, n)) = version {
                    let e = write(&key, t, n);
                    replica.merge(key.as_str().into(), e.clone());
                    expected.entry(key.as_str().into()).or_insert_with(|| e.clone()).merge_from(e);
                }
            }
        }
        let in_sync = a.entries == b.entries;
        let limits = Limits { max_message_bytes: if small { 300 } else { Limits::default().max_message_bytes } };
        let shared = PartitionSet::new(0..partitions);

        let (stats, _) = session(&mut a, &mut b, shared.clone(), limits, salt);
        prop_assert_eq!(&a.entries, &expected);
        prop_assert_eq!(&b.entries, &expected);
        for p in 0..partitions {
            prop_assert_eq!(a.root(p), b.root(p));
        }
        prop_assert_eq!(stats.partitions_compared, partitions);
        prop_assert_eq!(stats.ambiguous_keys, 0);
        if !small {
            // Every level fits in one message: one round trip per level.
            prop_assert_eq!(stats.round_trips, if in_sync { 1 } else { 4 });
        }

        let (again, transcript) = session(&mut a, &mut b, shared, limits, salt ^ 1);
        prop_assert_eq!(again.round_trips, 1);
        prop_assert_eq!((again.partitions_differing, again.keys_sent, again.keys_received), (0, 0, 0));
        let idle = matches!(&transcript[1], Message::Reply(Reply::Roots { groups, .. }) if groups.is_empty());
        prop_assert!(idle);
    }
}

#[test]
fn counts_what_it_repairs_each_way() {
    let mut a = MemStore::new(8);
    let mut b = MemStore::new(8);
    for i in 0..100 {
        let key = format!("k{i}");
        a.merge(key.as_str().into(), write(&key, 1, 1));
        b.merge(key.as_str().into(), write(&key, 1, 1));
    }
    a.merge("newer-on-a".into(), write("newer-on-a", 1, 1));
    b.merge("newer-on-a".into(), write("newer-on-a", 0, 1));
    a.merge("k1".into(), write("k1", 9, 1));
    b.merge("k2".into(), write("k2", 9, 1));
    b.merge("only-b".into(), write("only-b", 3, 2));
    let (stats, _) = session(
        &mut a,
        &mut b,
        PartitionSet::new(0..8),
        Limits::default(),
        7,
    );
    assert_eq!(a.entries, b.entries);
    assert_eq!((stats.keys_sent, stats.keys_received), (2, 2));
    assert_eq!(stats.round_trips, 4);
    assert!(stats.partitions_differing <= 4 && stats.partitions_differing >= 1);
}

#[test]
fn leaves_partitions_it_was_not_asked_about_alone() {
    let mut a = MemStore::new(4);
    let mut b = MemStore::new(4);
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for k in &keys {
        a.merge(k.as_str().into(), write(k, 2, 1));
    }
    session(
        &mut a,
        &mut b,
        PartitionSet::new([1, 3]),
        Limits::default(),
        1,
    );
    for k in &keys {
        let (p, _) = a.locate(k);
        assert_eq!(
            b.entries.contains_key(k.as_str()),
            p == 1 || p == 3,
            "{k} in {p}"
        );
    }
}

#[test]
fn refills_an_empty_replica_in_bounded_messages() {
    let mut a = MemStore::new(16);
    let mut b = MemStore::new(16);
    for i in 0..5_000 {
        let key = format!("user:{i:08}");
        a.merge(key.as_str().into(), write(&key, 1 + i % 4, 1));
    }
    let limits = Limits {
        max_message_bytes: 16 * 1024,
    };
    let (stats, _) = session(&mut a, &mut b, PartitionSet::new(0..16), limits, 3);
    assert_eq!(a.entries, b.entries);
    assert_eq!(stats.keys_sent, 5_000);
    assert_eq!(stats.keys_received, 0);
}

#[test]
fn cut_version_lists_resume_where_they_stopped() {
    // About 16 keys a leaf, and room for about 11 versions a reply.
    let mut a = MemStore::new(1);
    let mut b = MemStore::new(1);
    for i in 0..4_000u64 {
        let key = format!("k{i}");
        match i % 4 {
            0 => a.merge(key.as_str().into(), write(&key, 1 + i % 3, 1)),
            1 => b.merge(key.as_str().into(), write(&key, 1 + i % 3, 1)),
            _ => {
                a.merge(key.as_str().into(), write(&key, 1 + i % 5, 1));
                b.merge(key.as_str().into(), write(&key, 1 + i % 7, 2));
            }
        }
    }
    let limits = Limits {
        max_message_bytes: 300,
    };
    let (stats, transcript) = session(&mut a, &mut b, PartitionSet::new([0]), limits, 4);
    assert_eq!(a.entries, b.entries);
    let cut = transcript.iter().any(|m| {
        matches!(m, Message::Reply(Reply::Versions { leaves }) if leaves.iter().any(|l| !l.complete))
    });
    let resumed = transcript.iter().any(|m| {
        matches!(
            m,
            Message::Request(Request::Versions { after: Some(_), .. })
        )
    });
    assert!(cut && resumed);
    assert_eq!(stats.leaves_differing, 256);
    assert_eq!(stats.ambiguous_keys, 0);
}

#[test]
fn keys_that_share_a_fingerprint_are_left_out() {
    /// A replica that lists one key twice, as two keys with one fingerprint.
    struct Twice;
    impl LocalStore for Twice {
        fn root(&self, _: u32) -> u128 {
            0
        }
        fn branches(&self, _: u32) -> [u128; BRANCHES] {
            [0; BRANCHES]
        }
        fn leaves(&self, _: u32, _: u8) -> [u128; LEAVES_PER_BRANCH] {
            [0; LEAVES_PER_BRANCH]
        }
        fn versions_in_leaves(&self, _: u32, leaves: &[u8]) -> Vec<(u8, Key, Stamp)> {
            let v = Stamp::register(Version::new(1, 1));
            let mut out = vec![(leaves[0], "a".into(), v), (leaves[0], "a".into(), v)];
            out.push((leaves[0], "b".into(), v));
            out.push((99, "not-asked".into(), v));
            out
        }
        fn entries(&self, _: &[&str]) -> Vec<(Key, Entry)> {
            Vec::new()
        }
    }
    let lists = fingerprinted(&Twice, 0, 0, &[3]);
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].ambiguous, 2);
    let keys: Vec<&str> = lists[0].keys.iter().map(|(_, _, k)| &**k).collect();
    assert_eq!(keys, ["b"]);
}

// ---- Malformed replies and requests ----

/// Two replicas that differ in both directions, with several keys a leaf.
fn pair() -> (MemStore, MemStore) {
    let mut a = MemStore::new(1);
    let mut b = MemStore::new(1);
    for i in 0..1500 {
        let key = format!("k{i}");
        let (ta, tb) = match i % 3 {
            0 => (1, 1),
            1 => (2, 1),
            _ => (1, 2),
        };
        a.merge(key.as_str().into(), write(&key, ta, 1));
        b.merge(key.as_str().into(), write(&key, tb, 1));
    }
    b.merge("only-b".into(), write("only-b", 1, 1));
    (a, b)
}

/// Runs a session until the reply of `kind`, tampers with it, and returns
/// what the initiator says of it; then checks the session is over.
fn tampered(kind: &str, tamper: impl FnOnce(&mut Reply)) -> SessionError {
    let (mut a, mut b) = pair();
    let limits = Limits::default();
    let mut initiator = Initiator::new(PartitionSet::new(0..4), limits, 11);
    let mut request = initiator.start(&a);
    loop {
        let answer = respond(&b, request, limits).expect("a valid request");
        b.apply(answer.merge);
        let mut reply = answer.reply;
        if reply.kind() == kind {
            tamper(&mut reply);
            let error = initiator.on_reply(&a, reply).expect_err("a tampered reply");
            let again = initiator.on_reply(
                &a,
                Reply::Roots {
                    groups: vec![],
                    covered: 0,
                },
            );
            assert_eq!(again, Err(SessionError::NotAwaiting));
            return error;
        }
        let step = initiator.on_reply(&a, reply).expect("a valid reply");
        a.apply(step.merge);
        match step.next {
            Next::Send(next) => request = next,
            Next::Done(_) => panic!("no {kind} reply came"),
        }
    }
}

fn is_bad(error: SessionError) -> bool {
    matches!(error, SessionError::BadReply(_))
}

#[test]
fn refuses_a_reply_of_another_kind() {
    let error = tampered("Leaves", |r| {
        *r = Reply::Entries {
            entries: vec![],
            covered: 0,
        }
    });
    assert_eq!(
        error,
        SessionError::UnexpectedReply {
            expected: "Leaves",
            got: "Entries"
        }
    );
    let (a, _) = pair();
    let mut idle = Initiator::new(PartitionSet::new(0..4), Limits::default(), 0);
    let reply = Reply::Roots {
        groups: vec![],
        covered: 1,
    };
    assert_eq!(idle.on_reply(&a, reply), Err(SessionError::NotAwaiting));
}

#[test]
fn refuses_bad_roots() {
    assert!(is_bad(tampered("Roots", |r| {
        if let Reply::Roots { covered, .. } = r {
            *covered = 2; // one group was asked about
        }
    })));
    assert!(is_bad(tampered("Roots", |r| {
        if let Reply::Roots { groups, .. } = r {
            groups[0].0 = 5;
        }
    })));
    assert!(is_bad(tampered("Roots", |r| {
        if let Reply::Roots { groups, .. } = r {
            groups[0].1.pop();
        }
    })));
    assert!(is_bad(tampered("Roots", |r| {
        if let Reply::Roots { covered, .. } = r {
            *covered = 0;
        }
    })));
}

/// A [`Reply::Leaves`]'s branch list.
type BranchLeaves = Vec<(u32, u8, [u128; LEAVES_PER_BRANCH])>;

#[test]
fn refuses_bad_leaves() {
    let with = |f: fn(&mut BranchLeaves, &mut u32)| {
        tampered("Leaves", move |r| {
            if let Reply::Leaves { branches, covered } = r {
                f(branches, covered)
            }
        })
    };
    assert!(is_bad(with(|b, _| b[0].1 = 16)));
    assert!(is_bad(with(|b, _| b[0].0 = 99)));
    assert!(is_bad(with(|b, _| {
        let first = b[0];
        b.push(first)
    })));
    assert!(is_bad(with(|_, c| *c = 0)));
    assert!(is_bad(with(|_, c| *c = 5)));
}

#[test]
fn refuses_bad_version_lists() {
    let with = |f: fn(&mut Vec<LeafVersions>)| {
        tampered("Versions", move |r| {
            if let Reply::Versions { leaves } = r {
                f(leaves)
            }
        })
    };
    assert!(is_bad(with(|l| l.clear())));
    assert!(is_bad(with(|l| l[0].leaf.leaf ^= 1)));
    assert!(is_bad(with(|l| l[0].versions.reverse())));
    assert!(is_bad(with(|l| {
        let first = l[0].versions[0];
        l[0].versions.push(first)
    })));
    assert!(is_bad(with(|l| {
        l.truncate(1);
        l[0].versions.clear();
        l[0].complete = false;
    })));
    assert!(is_bad(with(|l| {
        let first = l[0].clone();
        l.push(first)
    })));
}

#[test]
fn refuses_bad_entries() {
    let with = |f: fn(&mut Vec<(Key, Entry)>, &mut u32)| {
        tampered("Entries", move |r| {
            if let Reply::Entries { entries, covered } = r {
                f(entries, covered)
            }
        })
    };
    assert!(is_bad(with(|_, c| *c += 1)));
    assert!(is_bad(with(|_, c| *c = 0)));
    assert!(is_bad(with(|e, _| e[0].0 = "not-asked-for".into())));
    assert!(is_bad(with(|e, _| {
        let first = e[0].clone();
        e[1] = first
    })));
}

#[test]
fn refuses_bad_requests() {
    let (_, b) = pair();
    let limits = Limits::default();
    let bad = |request| {
        matches!(
            respond(&b, request, limits),
            Err(SessionError::BadRequest(_))
        )
    };
    assert!(bad(Request::Summary {
        partitions: PartitionSet::new(0..40),
        groups: vec![0],
        max_reply_bytes: 1 << 20,
    }));
    assert!(bad(Request::Branches {
        partitions: vec![(2, [0; 16]), (1, [0; 16])],
        max_reply_bytes: 1 << 20,
    }));
    let leaf = |leaf| LeafId { partition: 0, leaf };
    assert!(bad(Request::Versions {
        salt: 0,
        leaves: vec![leaf(3), leaf(3)],
        after: None,
        max_reply_bytes: 1 << 20,
    }));
    let wanted = |fingerprint| Wanted {
        leaf: leaf(1),
        fingerprint,
    };
    assert!(bad(Request::Repair {
        salt: 0,
        entries: vec![],
        wanted: vec![wanted(9), wanted(8)],
        max_reply_bytes: 1 << 20,
        handoff: false,
    }));
    // Any bitmap is a valid set, and an empty one an empty session.
    let answer = respond(
        &b,
        Request::Summary {
            partitions: PartitionSet::from_bitmap(&[]),
            groups: vec![],
            max_reply_bytes: 0,
        },
        limits,
    );
    assert_eq!(
        answer.map(|a| a.reply),
        Ok(Reply::Roots {
            groups: vec![],
            covered: 0
        })
    );
}

// ---- The figures quoted in the module documentation ----

#[test]
fn idle_session_over_1024_partitions_is_one_small_round_trip() {
    let mut a = MemStore::new(1024);
    for i in 0..20_000 {
        let key = format!("user:{i:011}");
        a.merge(key.as_str().into(), write(&key, 1, 1));
    }
    let mut b = a.clone();
    let (stats, transcript) = session(
        &mut a,
        &mut b,
        PartitionSet::new(0..1024),
        Limits::default(),
        5,
    );
    assert_eq!(stats.round_trips, 1);
    let (request, reply) = (transcript[0].wire_size(), transcript[1].wire_size());
    println!("idle, 1024 partitions: Summary {request} B, Roots {reply} B");
    assert_eq!(request, 652);
    assert!(request + reply < 1024, "{request} + {reply}");
}

#[test]
fn one_divergent_key_among_100k_costs_under_16_kib_plus_the_entry() {
    // One partition in the double holds every key; 1023 more are shared
    // and empty, as a partition of 100,000 keys among 1024.
    let mut a = MemStore::new(1);
    for i in 0..100_000 {
        let key = format!("user:{i:011}");
        a.merge(key.as_str().into(), write(&key, 1, 1));
    }
    let mut b = a.clone();
    let key = "user:00000012345";
    let entry = Entry::value(Version::new(2, 1), "v".repeat(100), 0);
    a.merge(key.into(), entry.clone());
    let (stats, transcript) = session(
        &mut a,
        &mut b,
        PartitionSet::new(0..1024),
        Limits::default(),
        9,
    );
    assert_eq!(a.entries, b.entries);
    assert_eq!(
        (stats.round_trips, stats.keys_sent, stats.keys_received),
        (4, 1, 0)
    );
    assert_eq!(
        (
            stats.partitions_differing,
            stats.branches_differing,
            stats.leaves_differing
        ),
        (1, 1, 1)
    );
    let sizes: Vec<(String, usize)> = transcript
        .iter()
        .map(|m| {
            let kind = match m {
                Message::Request(r) => r.kind(),
                Message::Reply(r) => r.kind(),
            };
            (kind.to_string(), m.wire_size())
        })
        .collect();
    let total: usize = sizes.iter().map(|(_, s)| s).sum();
    let leaf_keys = match &transcript[5] {
        Message::Reply(Reply::Versions { leaves }) => leaves[0].versions.len(),
        other => panic!("{other:?}"),
    };
    println!(
        "one key of 100,000: {sizes:?}; total {total} B, entry {} B, leaf of {leaf_keys} keys",
        entry_size(key, &entry)
    );
    assert!(total - entry_size(key, &entry) < 16 * 1024, "{total}");
}

/// Two replicas each hold a field of one map that the other lacks, with the
/// same newest version: a map's version alone would call them in sync. The
/// stamps tell them apart, and one session sends each side the other's.
#[test]
fn maps_with_equal_versions_and_different_fields_converge_in_one_session() {
    let mut a = MemStore::new(4);
    let mut b = MemStore::new(4);
    let version = Version::new(10, 1);
    let on_a = ops::map_set(None, 0, &[("x", "1")], version, 1, 100).unwrap();
    let on_b = ops::map_set(None, 0, &[("y", "2")], version, 2, 100).unwrap();
    assert_eq!(on_a.version, on_b.version);
    a.merge("m".into(), on_a.clone());
    b.merge("m".into(), on_b.clone());
    let counter = |actor| {
        Entry::counter(
            version,
            PnCounter::increment(Version::default(), Actor::new(actor, 1), 1, 7),
        )
    };
    a.merge("c".into(), counter(1));
    b.merge("c".into(), counter(2));
    let (stats, _) = session(
        &mut a,
        &mut b,
        PartitionSet::new(0..4),
        Limits::default(),
        3,
    );
    assert_eq!((stats.keys_sent, stats.keys_received), (2, 2));
    assert_eq!(a.entries, b.entries);
    let m = a.entries.get("m").unwrap();
    assert_eq!(ops::read_map(Some(m), 0, &[]).unwrap().unwrap().len(), 2);
    assert_eq!(ops::read_counter(a.entries.get("c"), 0), Ok(Some(14)));
    for p in 0..4 {
        assert_eq!(a.root(p), b.root(p));
    }
}

// ---- Settled entries: refused by a sync, kept from a handoff ----

use crate::store::Store;

/// Runs one session from `a` to `b` over every partition, both real
/// stores, merging on both sides exactly as the shell does; a handoff when
/// `handoff`. Returns whether `b` then holds `key`.
fn hand_over(a: &Store, b: &Store, key: &str, handoff: bool) -> bool {
    let clock = crate::clock::Clock::new(
        "b",
        crate::clock::system_time,
        std::time::Duration::from_millis(500),
    );
    let grace = 1 << 32;
    let limits = Limits::default();
    let mut initiator = Initiator::new(PartitionSet::new(0..a.partitions()), limits, 7);
    if handoff {
        initiator = initiator.handing_off();
    }
    let mut request = initiator.start(a);
    loop {
        let answer = respond(b, request, limits).expect("a valid request");
        merge_repairs(b, &clock, answer.merge, grace, answer.handoff);
        let step = initiator.on_reply(a, answer.reply).expect("a valid reply");
        merge_repairs(a, &clock, step.merge, grace, false);
        match step.next {
            Next::Send(next) => request = next,
            Next::Done(_) => return b.contains(key),
        }
    }
}

#[test]
fn a_handoff_keeps_settled_tombstones_a_sync_refuses() {
    // A tombstone long settled, and a replica that never held the key (it
    // joined, or restarted empty).
    let settled = || {
        let a = Store::new(16);
        a.merge("k", Entry::tombstone(Version::new(1 << 32, 1)));
        a
    };
    // Between replicas, the receiver may have collected it: refused.
    assert!(!hand_over(&settled(), &Store::new(16), "k", false));
    // From a node that drops the partition after the session: kept, or the
    // delete is gone and an older copy of the key could come back.
    assert!(hand_over(&settled(), &Store::new(16), "k", true));
}
