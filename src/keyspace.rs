//! Where a key lives: its stable hash, its partition, its Merkle leaf inside
//! the partition, and the digest anti-entropy compares for an entry.
//!
//! Everything here is a pure function of fixed-seed xxh3 hashes, so it gives
//! the same answer on every node, platform and release. That is a contract
//! between the nodes of a running cluster: changing a seed or the encoding of
//! a digest makes every node disagree with the others about where keys live
//! or whether their replicas match. The pinned values in the tests catch such
//! a change.
//!
//! The key hash is split in two, so that the partition and the leaf use
//! independent bits of it:
//!
//! ```text
//! key_hash(key) = q * P + partition      (partition = key_hash mod P)
//! leaf          = q mod 256              (the bits the partition did not use)
//! branch        = leaf / 16
//! ```
//!
//! With `P` a power of two that is simply "the low bits pick the partition,
//! the next eight pick the leaf", but the arithmetic form works for any `P`.
//!
//! This module sits just above `crdt` (it reads an entry's version, kind
//! and content digest) and below `store`, `ring` and `anti_entropy`, which
//! use it.

use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64_with_seed, Xxh3};

use crate::crdt::{Entry, Kind, Version};

/// The seed of [`key_hash`]: the ASCII bytes of `"kilovolt"`, big-endian.
/// Part of the placement contract: every node must use the same value,
/// forever, or they disagree on where keys live.
pub const KEY_HASH_SEED: u64 = 0x6b69_6c6f_766f_6c74;

/// The seed of [`entry_digest`]: the ASCII bytes of `"kv-merkl"`,
/// big-endian. Distinct from [`KEY_HASH_SEED`] so that digests are
/// independent of placement; fixed forever, because replicas compare digests
/// computed by different nodes and releases.
pub const DIGEST_SEED: u64 = 0x6b76_2d6d_6572_6b6c;

/// The number of Merkle leaves per partition (Riak's Tictac trees use the
/// same fan-out idea): 256 leaves of 16 bytes keep a partition's tree at
/// about 4 KiB, and a partition of `n` keys puts about `n / 256` keys in a
/// leaf, which bounds what a differing leaf costs to list.
pub const LEAVES: usize = 256;

/// The number of Merkle branches per partition, each covering
/// [`LEAVES_PER_BRANCH`] consecutive leaves.
pub const BRANCHES: usize = 16;

/// The number of leaves under one branch.
pub const LEAVES_PER_BRANCH: usize = LEAVES / BRANCHES;

/// The 64-bit hash of a key: xxh3-64 of its UTF-8 bytes with
/// [`KEY_HASH_SEED`]. Stable across platforms and releases (never std's
/// hasher, which is randomized per process). Its remainder mod `P` is the
/// key's partition ([`partition_of`]); the quotient `key_hash(key) / P`
/// carries the bits the partition did not use, for finer buckets inside a
/// partition (the Merkle leaves, [`leaf_of`]).
pub fn key_hash(key: &str) -> u64 {
    xxh3_64_with_seed(key.as_bytes(), KEY_HASH_SEED)
}

/// The partition of `key` among `partitions`: [`key_hash`] mod `partitions`.
/// Every node, on every platform and release, puts a key in the same
/// partition, which is what lets any node coordinate any key.
///
/// # Panics
///
/// When `partitions` is 0.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    partition_of_hash(key_hash(key), partitions)
}

/// The partition of a key whose [`key_hash`] is `key_hash`, for callers that
/// need the hash for the leaf too and hash the key once.
///
/// # Panics
///
/// When `partitions` is 0.
pub fn partition_of_hash(key_hash: u64, partitions: u32) -> u32 {
    assert!(partitions > 0, "the number of partitions must be positive");
    (key_hash % u64::from(partitions)) as u32
}

/// The Merkle leaf (0..256) of a key whose [`key_hash`] is `key_hash`, in a
/// keyspace of `partitions` partitions: `(key_hash / partitions) mod 256`,
/// the bits the partition does not use. Using other bits than the partition's
/// matters: with the same bits, every key of a partition would fall into the
/// same few leaves.
///
/// # Panics
///
/// When `partitions` is 0.
pub fn leaf_of(key_hash: u64, partitions: u32) -> u8 {
    assert!(partitions > 0, "the number of partitions must be positive");
    ((key_hash / u64::from(partitions)) % LEAVES as u64) as u8
}

/// The Merkle branch (0..16) that covers `leaf`: `leaf / 16`, so a branch
/// covers 16 consecutive leaves.
pub const fn branch_of(leaf: u8) -> u8 {
    leaf / LEAVES_PER_BRANCH as u8
}

/// The 128-bit digest of the entry `entry` at `key`, as Merkle leaves
/// accumulate it.
///
/// For a string or a tombstone: [`digest_of`] its key, version and kind.
/// The value bytes and the expiry are left out on purpose: a version names
/// one write, so two replicas holding the same version of a key hold the
/// same write, and hashing a 1 MiB value on every merge would cost more than
/// the merge. 128 bits make an accidental collision (two different states
/// with equal roots) negligible even when XOR-combined over millions of
/// keys.
///
/// For a map or a counter, whose content is made of many writes that merge:
/// [`structured_digest`] of its key, newest version, kind, generation and
/// content digest (the XOR of one hash per element, so it does not depend
/// on the order the elements arrived in, and is kept current by every
/// merge): two replicas holding the same newest version but different
/// fields or increments have different digests.
pub fn entry_digest(key: &str, entry: &Entry) -> u128 {
    match (entry.content_digest(), entry.generation()) {
        (Some(content), Some(generation)) => {
            structured_digest(key, entry.version, entry.kind(), generation, content)
        }
        _ => digest_of(key, entry.version, entry.is_value()),
    }
}

/// [`entry_digest`] with the content digest of a map or counter computed
/// from scratch rather than taken from the one kept by merges: what the
/// periodic tree check compares against, so that a kept digest gone wrong
/// shows as a mismatch.
pub fn recomputed_entry_digest(key: &str, entry: &Entry) -> u128 {
    match (entry.recomputed_content_digest(), entry.generation()) {
        (Some(content), Some(generation)) => {
            structured_digest(key, entry.version, entry.kind(), generation, content)
        }
        _ => digest_of(key, entry.version, entry.is_value()),
    }
}

/// The digest of a string or tombstone from the parts it depends on: the
/// key, the version and whether it is a value (`true`) or a tombstone
/// (`false`). Equal to [`entry_digest`] of such an entry; useful when the
/// entry has already been replaced (the store keeps the old version and
/// kind, not a clone of the old entry).
///
/// The hashed bytes are `key ‖ time (8, LE) ‖ node (8, LE) ‖ kind (1)`,
/// with xxh3-128 and [`DIGEST_SEED`]. Only the key has a variable length,
/// and it comes first, so the encoding is unambiguous.
pub fn digest_of(key: &str, version: Version, is_value: bool) -> u128 {
    hash_tail(key, &register_tail(version, is_value))
}

fn register_tail(version: Version, is_value: bool) -> [u8; 17] {
    let mut tail = [0u8; 17];
    tail[..8].copy_from_slice(&version.time.to_le_bytes());
    tail[8..16].copy_from_slice(&version.node.to_le_bytes());
    tail[16] = u8::from(is_value);
    tail
}

/// The digest of a map or counter: xxh3-128 with [`DIGEST_SEED`] of
/// `key ‖ time (8, LE) ‖ node (8, LE) ‖ kind (1: 2 for a map, 3 for a
/// counter) ‖ generation time (8, LE) ‖ generation node (8, LE) ‖ content
/// (16, LE)`. The kind byte never equals a string's or tombstone's (1, 0),
/// and only the key has a variable length, so the encoding is unambiguous.
pub fn structured_digest(
    key: &str,
    version: Version,
    kind: Kind,
    generation: Version,
    content: u128,
) -> u128 {
    let mut tail = [0u8; 49];
    tail[..17].copy_from_slice(&register_tail(version, false));
    tail[16] = if kind == Kind::Counter { 3 } else { 2 };
    tail[17..25].copy_from_slice(&generation.time.to_le_bytes());
    tail[25..33].copy_from_slice(&generation.node.to_le_bytes());
    tail[33..49].copy_from_slice(&content.to_le_bytes());
    hash_tail(key, &tail)
}

/// xxh3-128 with [`DIGEST_SEED`] of `key ‖ tail`.
fn hash_tail(key: &str, tail: &[u8]) -> u128 {
    /// Keys up to this length are hashed from a stack buffer in one shot;
    /// longer ones (rare: keys are usually short) stream through `Xxh3`,
    /// which gives the same result without allocating.
    const INLINE: usize = 128;
    const TAIL: usize = 49;
    let key = key.as_bytes();
    if key.len() <= INLINE && tail.len() <= TAIL {
        let mut buf = [0u8; INLINE + TAIL];
        buf[..key.len()].copy_from_slice(key);
        buf[key.len()..key.len() + tail.len()].copy_from_slice(tail);
        xxh3_128_with_seed(&buf[..key.len() + tail.len()], DIGEST_SEED)
    } else {
        let mut hasher = Xxh3::with_seed(DIGEST_SEED);
        hasher.update(key);
        hasher.update(tail);
        hasher.digest128()
    }
}

/// What anti-entropy's version lists say of a key's state: enough to tell,
/// without the entries, whether two replicas hold the same state and which
/// one's state wins or whether both must be exchanged.
///
/// `version` is where the state stands in merge's order (the version of a
/// string or tombstone, the generation of a map or counter, see
/// [`Entry::rank`]); `state` is 0 for a string or tombstone, whose version
/// names its content, and for a map or counter 64 bits of its
/// [`entry_digest`] with the low two bits replaced by its rank (1 for a
/// counter, 2 for a map), so never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// The version (string, tombstone) or generation (map, counter).
    pub version: Version,
    /// 0, or the digest and rank of a map or counter.
    pub state: u64,
}

/// Which way a key's state must travel between two replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Both hold the same state.
    InSync,
    /// Mine wins: send it.
    Push,
    /// Theirs wins: ask for it.
    Pull,
    /// Two maps or two counters of one generation with different contents:
    /// each side needs the other's to hold the join.
    Both,
}

impl Stamp {
    /// The stamp of `entry` at `key`.
    pub fn of(key: &str, entry: &Entry) -> Self {
        let (version, rank) = entry.rank();
        let state = if rank == 0 {
            0
        } else {
            (entry_digest(key, entry) as u64 & !3) | u64::from(rank)
        };
        Self { version, state }
    }

    /// The stamp of a string or tombstone at `version`.
    pub const fn register(version: Version) -> Self {
        Self { version, state: 0 }
    }

    /// Where the state stands in merge's order ([`Entry::rank`]).
    pub fn rank(&self) -> (Version, u8) {
        (self.version, (self.state & 3) as u8)
    }

    /// Which way the state must travel when this replica holds `self` and
    /// the other `theirs`.
    pub fn flow(&self, theirs: &Stamp) -> Flow {
        if self == theirs {
            return Flow::InSync;
        }
        match self.rank().cmp(&theirs.rank()) {
            std::cmp::Ordering::Greater => Flow::Push,
            std::cmp::Ordering::Less => Flow::Pull,
            // Equal ranks with different stamps: two maps or two counters
            // of one generation (two strings of one version share a stamp).
            std::cmp::Ordering::Equal => Flow::Both,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_and_partition_are_pinned() {
        // Computed once; a change here moves every key of a running cluster.
        assert_eq!(key_hash(""), 0x75ee_5998_7949_8774);
        assert_eq!(partition_of("user:42", 1024), 695);
        assert_eq!(partition_of("hello", 1024), 889);
        assert_eq!(partition_of("kilovolt", 1024), 661);
        assert_eq!(partition_of("anything", 1), 0);
        assert_eq!(partition_of_hash(key_hash("hello"), 1024), 889);
    }

    #[test]
    fn leaves_use_the_bits_the_partition_does_not() {
        let h = key_hash("user:42");
        assert_eq!(u64::from(leaf_of(h, 1024)), (h >> 10) & 0xff);
        assert_eq!(leaf_of(h, 1024), 32);
        assert_eq!(leaf_of(key_hash("hello"), 1024), 78);
        // One partition: the leaf is the low byte.
        assert_eq!(u64::from(leaf_of(h, 1)), h & 0xff);
        // A partition's keys spread over all its leaves.
        let mut seen = [false; LEAVES];
        let mut keys = 0;
        for i in 0.. {
            let h = key_hash(&format!("key-{i}"));
            if partition_of_hash(h, 1024) == 7 {
                seen[leaf_of(h, 1024) as usize] = true;
                keys += 1;
                if keys == 4000 {
                    break;
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn branches_cover_sixteen_consecutive_leaves() {
        assert_eq!(branch_of(0), 0);
        assert_eq!(branch_of(15), 0);
        assert_eq!(branch_of(16), 1);
        assert_eq!(branch_of(255), 15);
    }

    #[test]
    #[should_panic(expected = "positive")]
    fn zero_partitions_is_refused() {
        leaf_of(1, 0);
    }

    #[test]
    fn entry_digest_is_pinned() {
        // Computed once, and checked against the reference C xxHash
        // (libxxhash 0.8.3, XXH3_128bits_withSeed over the same bytes); a
        // change here makes every replica of a running cluster look
        // divergent to the others.
        let v = Version::new(0x1234_5678_9abc_def0, 0xfeed);
        assert_eq!(
            entry_digest("user:42", &Entry::value(v, "x", 0)),
            0x64bd_85b6_e252_b621_617f_93be_0117_791f
        );
        assert_eq!(
            entry_digest("user:42", &Entry::tombstone(v)),
            0x0645_8c8c_3368_727a_e1ab_f2c3_02e2_f2f2
        );
        assert_eq!(
            entry_digest("", &Entry::tombstone(Version::default())),
            0x66d5_b057_479f_0490_cd81_4de3_3381_db51
        );
    }

    #[test]
    fn entry_digest_depends_on_key_version_and_kind_only() {
        let v = Version::new(10, 1);
        let base = entry_digest("k", &Entry::value(v, "a", 0));
        // Not on the value bytes, nor on the expiry.
        assert_eq!(base, entry_digest("k", &Entry::value(v, "bbb", 99)));
        assert_eq!(base, digest_of("k", v, true));
        // On everything else.
        assert_ne!(base, entry_digest("k", &Entry::tombstone(v)));
        assert_ne!(base, entry_digest("k2", &Entry::value(v, "a", 0)));
        assert_ne!(
            base,
            entry_digest("k", &Entry::value(Version::new(11, 1), "a", 0))
        );
        assert_ne!(
            base,
            entry_digest("k", &Entry::value(Version::new(10, 2), "a", 0))
        );
    }

    #[test]
    fn long_keys_digest_like_one_shot_hashing() {
        let v = Version::new(77, 5);
        for len in [127, 128, 129, 1000, 4096] {
            let key = "k".repeat(len);
            let mut bytes = key.as_bytes().to_vec();
            bytes.extend_from_slice(&77u64.to_le_bytes());
            bytes.extend_from_slice(&5u64.to_le_bytes());
            bytes.push(0);
            assert_eq!(
                digest_of(&key, v, false),
                xxh3_128_with_seed(&bytes, DIGEST_SEED),
                "key of {len} bytes"
            );
        }
    }

    #[test]
    fn structured_digests_depend_on_content_and_differ_from_registers() {
        use crate::crdt::ops;
        let v = Version::new(10, 1);
        let a = ops::map_set(None, 0, &[("x", "1")], v, 1, 100).unwrap();
        let b = ops::map_set(None, 0, &[("y", "1")], v, 1, 100).unwrap();
        assert_ne!(entry_digest("k", &a), entry_digest("k", &b));
        assert_ne!(entry_digest("k", &a), digest_of("k", v, true));
        assert_ne!(entry_digest("k", &a), digest_of("k", v, false));
        assert_eq!(entry_digest("k", &a), recomputed_entry_digest("k", &a));
        // Pinned: a change here makes every map of a running cluster look
        // divergent to replicas of another release.
        assert_eq!(
            structured_digest("k", v, Kind::Map, Version::default(), 7),
            structured_digest("k", v, Kind::Map, Version::default(), 7)
        );
        assert_ne!(
            structured_digest("k", v, Kind::Map, Version::default(), 7),
            structured_digest("k", v, Kind::Counter, Version::default(), 7)
        );
    }

    #[test]
    fn stamps_say_which_way_state_travels() {
        use crate::crdt::ops;
        let v = Version::new(10, 1);
        let old = Stamp::register(Version::new(5, 1));
        let new = Stamp::register(v);
        assert_eq!(new.flow(&old), Flow::Push);
        assert_eq!(old.flow(&new), Flow::Pull);
        assert_eq!(new.flow(&new), Flow::InSync);
        let a = Stamp::of(
            "k",
            &ops::map_set(None, 0, &[("x", "1")], v, 1, 100).unwrap(),
        );
        let b = Stamp::of(
            "k",
            &ops::map_set(None, 0, &[("y", "1")], v, 1, 100).unwrap(),
        );
        assert_eq!(a.rank(), (Version::default(), 2));
        assert_eq!(a.flow(&b), Flow::Both);
        // A map over nothing loses to any later string or tombstone.
        assert_eq!(a.flow(&old), Flow::Pull);
        let tomb = Entry::tombstone(Version::new(5, 1));
        let over = ops::map_set(Some(&tomb), 0, &[("x", "1")], Version::new(6, 1), 1, 100);
        let over = Stamp::of("k", &over.unwrap());
        assert_eq!(over.flow(&old), Flow::Push);
    }
}
