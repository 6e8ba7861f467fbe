//! Anti-entropy: the session two replicas of the same partitions run to find
//! and repair whatever replication missed (a cut link, a crash, a full delta
//! queue), in both directions at once.
//!
//! This module is the session logic only, as pure state without IO: messages
//! in, messages out. The initiator is a state machine ([`Initiator`]); the
//! responder is one stateless function ([`respond`]) that answers each
//! request from its replica alone, so the server side is a plain request
//! handler. A thin async shell maps the messages to the peer protocol, and a
//! deterministic simulator can drive the same code. Both sides read their
//! local store through the [`LocalStore`] trait, never through the store
//! type, and merging what a session returns is the caller's job.
//!
//! # The trees
//!
//! Every partition keeps a Merkle tree of [`LEAVES`] leaves (leaf by bits of
//! the key hash), [`BRANCHES`] branches (branch `b` is the XOR of leaves
//! `16 b .. 16 b + 15`) and a root (the XOR of the branches). A leaf is the
//! XOR of the 128-bit digests of its entries: `digest(key, version, kind)`
//! for a string or tombstone, and for a map or counter also its generation
//! and content digest (see [`crate::keyspace::entry_digest`]).
//!
//! # The protocol
//!
//! The initiator A holds the list of partitions it shares with the responder
//! B. Each level of the trees is compared in one round trip, and at each
//! level the side that receives digests compares them and answers with the
//! next level down only where they differ:
//!
//! 1. A -> B [`Request::Summary`]: the shared partitions (a bitmap) and one
//!    digest per group of [`GROUP_PARTITIONS`] consecutive shared partitions
//!    (a hash of their numbers and roots). B -> A [`Reply::Roots`]: B's roots
//!    of the groups whose digest differs. When nothing differs the reply is
//!    empty and the session ends here: **an idle session is one round trip**.
//! 2. A -> B [`Request::Branches`]: A's 16 branch digests of every partition
//!    whose root differs. B -> A [`Reply::Leaves`]: B's 16 leaf digests of
//!    every branch that differs.
//! 3. A -> B [`Request::Versions`]: the leaves that differ. B -> A
//!    [`Reply::Versions`]: for each, B's list of `(fingerprint, stamp)`,
//!    one per key, where the fingerprint is a 64-bit hash of the key salted
//!    per session and the stamp ([`Stamp`]) is the version of a string or
//!    tombstone, or the generation and a content hash of a map or counter.
//!    A joins it with its own list for the same leaves: a key whose state
//!    wins on B, or that A lacks, is wanted from B; a key whose state wins
//!    on A, or that B lacks, is sent to B; equal stamps are in sync. Two
//!    maps (or counters) of one generation with different contents go both
//!    ways, since each side needs the other's to hold the join: a map's
//!    newest version alone would not show that two replicas each hold
//!    fields the other lacks.
//! 4. A -> B [`Request::Repair`]: A's entries that B needs, and the
//!    fingerprints of the keys A wants. B merges the entries (returned by
//!    [`respond`]) and replies [`Reply::Entries`] with its entries for the
//!    wanted keys, which A merges.
//!
//! So a session that repairs anything takes **four round trips** (summary,
//! branches, versions, repair); one that finds nothing takes one. Each side
//! ends holding the join of both, key by key.
//!
//! Why fingerprints rather than keys in the version lists: a list entry then
//! costs 24 bytes whatever the key length (keys may be 4 KiB), which keeps
//! the repair of one key in a large partition small (see the figures below).
//! Keys that share a fingerprint with another key of their leaf on the same
//! replica are left out of that replica's lists for the session (counted in
//! [`SessionStats::ambiguous_keys`] on the initiator); the salt differs per
//! session, so the next session repairs them. (At 64 bits and some hundreds
//! of keys a leaf, that is about one leaf in 10^14.)
//!
//! # Bounded messages
//!
//! Every message stays under [`Limits::max_message_bytes`] (a single item
//! larger than that travels alone). The initiator cuts its requests to fit,
//! and every request carries the largest reply the initiator accepts; the
//! responder answers a prefix of what was asked within that, and at least
//! one item, and says how far it got. The initiator asks again for the rest.
//! So a refill of an empty replica runs as a stream of bounded messages,
//! and the rule "one request per level" holds whenever a level fits in one
//! message, which is the common case of a few divergent keys. The estimate
//! of each message's size ([`Request::wire_size`], [`Reply::wire_size`]) is
//! what the shell can charge against a repair rate cap.
//!
//! # Costs (measured by the tests in this module)
//!
//! - Idle, 1024 shared partitions all in sync: one round trip, the summary
//!   652 bytes (a 128-byte bitmap and 32 group digests) and the reply 8:
//!   660 bytes per peer per round, against a target of 8 KiB (16 bytes a
//!   root would have cost 20 KiB).
//! - One divergent key in a partition of 100,000 keys, among 1024 shared
//!   partitions: four round trips, 11,585 bytes plus the entry (147 bytes
//!   for a 100-byte value). Summary 652, Roots 528 (one group of 32 roots),
//!   Branches 270, Leaves 271, Versions 32 and 9,806 (the key's leaf held
//!   408 keys × 24 bytes), Repair 18 + the entry, Entries 8.
//!
//! The version list of one leaf is the bulk of that, and it grows with the
//! partition: about `keys / 256 × 24` bytes (94 KiB at a million keys a
//! partition). Listing keys instead of fingerprints would cost
//! `keys / 256 × (key length + 18)`, 14 KiB here with 16-byte keys. A
//! deeper level for large leaves (fingerprint ranges with digests, asked
//! for only when a leaf lists more than some hundreds of keys) would bring
//! it down at the price of a fifth round trip; not done yet.
//!
//! # Not this module's job
//!
//! Which partitions two nodes share (placement), when sessions run, timeouts
//! and retries (a session can simply be started again: every step is
//! idempotent because merge is), and turning the messages into protobuf.
//! [`respond`] treats every partition it is asked about as one it holds; the
//! server shell should refuse a session for partitions it does not hold.

mod collector;
mod initiator;
pub mod plan;
mod responder;
mod shell;
#[cfg(test)]
mod tests;

use thiserror::Error;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64_with_seed};

use crate::config::DEFAULT_SYNC_MESSAGE_BYTES;
use crate::crdt::Entry;
use crate::keyspace::Stamp;
use crate::store::Key;

pub use crate::sync_message::{
    entry_size, LeafId, LeafVersions, PartitionSet, Reply, Request, Wanted, GROUP_PARTITIONS,
};
pub use collector::{Collected, Collector};
pub use initiator::{Initiator, Next, SessionStats, Step};
pub use responder::{respond, Handled};
pub use shell::{merge_repairs, AntiEntropy, AntiEntropyConfig, AntiEntropyStats, SyncError};

/// Branches per partition tree; each is the XOR of [`LEAVES_PER_BRANCH`]
/// leaves.
pub const BRANCHES: usize = 16;

/// Leaves under one branch.
pub const LEAVES_PER_BRANCH: usize = 16;

/// Leaves per partition tree: leaf `l` is position `l % 16` of branch
/// `l / 16`.
pub const LEAVES: usize = BRANCHES * LEAVES_PER_BRANCH;

/// What a session reads of the local store (this replica's data): its
/// Merkle trees and its keys. The store implements it; the session never
/// sees the store type, and never writes: entries to merge are returned to
/// the caller. (A "replica" is a node holding a partition; this is the
/// store behind one.)
///
/// Every method answers for any partition number: a partition the replica
/// holds nothing of has an all-zero tree and no keys.
pub trait LocalStore {
    /// The root digest of `partition`: the XOR of its branches.
    fn root(&self, partition: u32) -> u128;

    /// The 16 branch digests of `partition`.
    fn branches(&self, partition: u32) -> [u128; BRANCHES];

    /// The 16 leaf digests under `branch` (0-15) of `partition`: leaves
    /// `16 branch .. 16 branch + 15`.
    fn leaves(&self, partition: u32, branch: u8) -> [u128; LEAVES_PER_BRANCH];

    /// Every key of `partition` whose leaf is one of `leaves`, with that leaf
    /// and the key's [`Stamp`], tombstones included, in any order. The leaf
    /// comes back with each key so that one call serves many leaves.
    fn versions_in_leaves(&self, partition: u32, leaves: &[u8]) -> Vec<(u8, Key, Stamp)>;

    /// The entries held for `keys`; keys not held are left out.
    fn entries(&self, keys: &[&str]) -> Vec<(Key, Entry)>;
}

/// How large the messages of a session may grow. Both sides take it from
/// the node's configuration; the limit must be under the peer transport's
/// message limit, less room for one entry of the largest value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes (as [`Request::wire_size`] and [`Reply::wire_size`]
    /// estimate them) a message may carry. A message always carries at
    /// least one item, so that every round trip makes progress: a single
    /// item larger than the limit (an entry of a large value, or one
    /// partition's leaf digests, 4.2 KiB) travels alone.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    /// [`DEFAULT_SYNC_MESSAGE_BYTES`] (256 KiB): large enough that the repair
    /// of a few thousand keys takes one message, small enough that one
    /// message does not hold a link for long.
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_SYNC_MESSAGE_BYTES,
        }
    }
}

/// Why a session ended early, or why a request was refused. The peer sent
/// something that does not fit the protocol: the shell logs it and drops the
/// session; nothing was merged from the offending message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SessionError {
    /// The reply is of another kind than the request asked for.
    #[error("anti-entropy: expected a {expected} reply, got {got}")]
    UnexpectedReply {
        /// The kind the request asked for.
        expected: &'static str,
        /// The kind that came.
        got: &'static str,
    },
    /// The reply does not match the request; says how.
    #[error("anti-entropy: bad reply: {0}")]
    BadReply(String),
    /// The request breaks the protocol; says how.
    #[error("anti-entropy: bad request: {0}")]
    BadRequest(String),
    /// A reply came when none was awaited: the session was not started, has
    /// finished, or ended with an error.
    #[error("anti-entropy: no request awaits a reply")]
    NotAwaiting,
}

/// The fingerprint that names `key` in version lists: xxh3-64 of the key,
/// seeded with the session's salt. Both sides compute it the same way.
pub fn fingerprint(salt: u64, key: &str) -> u64 {
    xxh3_64_with_seed(key.as_bytes(), salt)
}

/// The digest of one group of partitions in [`Request::Summary`]: xxh3-128
/// of each partition number and root, little-endian, in order.
fn group_digest(store: &impl LocalStore, partitions: &[u32]) -> u128 {
    let mut bytes = Vec::with_capacity(partitions.len() * 20);
    for &p in partitions {
        bytes.extend_from_slice(&p.to_le_bytes());
        bytes.extend_from_slice(&store.root(p).to_le_bytes());
    }
    xxh3_128(&bytes)
}

/// The keys of one leaf as a version list names them.
struct FingerprintedLeaf {
    /// `(fingerprint, stamp, key)`, by fingerprint ascending, without the
    /// keys whose fingerprint another key of the leaf shares.
    keys: Vec<(u64, Stamp, Key)>,
    /// How many keys were left out for sharing a fingerprint.
    ambiguous: u64,
}

/// The fingerprinted keys of `leaves` (ascending) of `partition`, one list
/// per leaf in the order of `leaves`, from one store call.
fn fingerprinted(
    store: &impl LocalStore,
    salt: u64,
    partition: u32,
    leaves: &[u8],
) -> Vec<FingerprintedLeaf> {
    let mut lists: Vec<Vec<(u64, Stamp, Key)>> = vec![Vec::new(); leaves.len()];
    for (leaf, key, version) in store.versions_in_leaves(partition, leaves) {
        // A store that answers for a leaf not asked about is ignored.
        if let Ok(i) = leaves.binary_search(&leaf) {
            lists[i].push((fingerprint(salt, &key), version, key));
        }
    }
    lists
        .into_iter()
        .map(|mut keys| {
            keys.sort_unstable_by_key(|&(fp, _, _)| fp);
            let fps: Vec<u64> = keys.iter().map(|&(fp, _, _)| fp).collect();
            let shared =
                |i: usize| (i > 0 && fps[i - 1] == fps[i]) || fps.get(i + 1) == Some(&fps[i]);
            let before = keys.len();
            let mut i = 0;
            keys.retain(|_| {
                i += 1;
                !shared(i - 1)
            });
            FingerprintedLeaf {
                ambiguous: (before - keys.len()) as u64,
                keys,
            }
        })
        .collect()
}
