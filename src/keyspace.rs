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
//! This module sits just above `crdt` (it reads an entry's version and kind)
//! and below `store` and `ring`, which both use it.

use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64_with_seed, Xxh3};

use crate::crdt::{Entry, Version};

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
/// accumulate it: [`digest_of`] its key, version and kind.
///
/// The value bytes and the expiry are left out on purpose: a version names
/// one write, so two replicas holding the same version of a key hold the same
/// write, and hashing a 1 MiB value on every merge would cost more than the
/// merge. 128 bits make an accidental collision (two different states with
/// equal roots) negligible even when XOR-combined over millions of keys.
pub fn entry_digest(key: &str, entry: &Entry) -> u128 {
    digest_of(key, entry.version, entry.is_value())
}

/// The digest of an entry from the parts it depends on: the key, the
/// version and whether it is a value (`true`) or a tombstone (`false`).
/// Equal to [`entry_digest`] of such an entry; useful when the entry has
/// already been replaced (the store keeps the old version and kind, not a
/// clone of the old entry).
///
/// The hashed bytes are `key ‖ time (8, LE) ‖ node (8, LE) ‖ kind (1)`,
/// with xxh3-128 and [`DIGEST_SEED`]. Only the key has a variable length,
/// and it comes first, so the encoding is unambiguous.
pub fn digest_of(key: &str, version: Version, is_value: bool) -> u128 {
    /// Keys up to this length are hashed from a stack buffer in one shot;
    /// longer ones (rare: keys are usually short) stream through `Xxh3`,
    /// which gives the same result without allocating.
    const INLINE: usize = 128;
    const TAIL: usize = 17;
    let mut tail = [0u8; TAIL];
    tail[..8].copy_from_slice(&version.time.to_le_bytes());
    tail[8..16].copy_from_slice(&version.node.to_le_bytes());
    tail[16] = u8::from(is_value);
    let key = key.as_bytes();
    if key.len() <= INLINE {
        let mut buf = [0u8; INLINE + TAIL];
        buf[..key.len()].copy_from_slice(key);
        buf[key.len()..key.len() + TAIL].copy_from_slice(&tail);
        xxh3_128_with_seed(&buf[..key.len() + TAIL], DIGEST_SEED)
    } else {
        let mut hasher = Xxh3::with_seed(DIGEST_SEED);
        hasher.update(key);
        hasher.update(&tail);
        hasher.digest128()
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
}
