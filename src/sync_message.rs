//! The messages of an anti-entropy session, and what each costs on the wire.
//!
//! They are plain Rust types, below both `net` (whose `sync_wire` maps them
//! to protobuf and whose peer client carries them) and `anti_entropy` (whose
//! initiator and responder speak them), so that neither needs the other. The size
//! estimates model that encoding: fixed-width numbers at their width
//! (digests as 16 bytes, packed), 2 bytes of tag and length for each nested
//! record and string, 4 bytes of framing per message.

use crate::crdt::Entry;
use crate::keyspace::Stamp;
use crate::store::Key;

use crate::keyspace::{BRANCHES, LEAVES_PER_BRANCH};

/// Shared partitions summarized by one digest in [`Request::Summary`]. With
/// 1024 partitions that is 32 digests (512 bytes) when idle, and a divergent
/// partition costs its group's 32 roots (512 bytes) in the reply: the
/// grouping that makes the sum of both smallest.
pub const GROUP_PARTITIONS: usize = 32;

/// Tag and length of a nested record or string.
const FRAME: usize = 2;
/// Framing of a whole message.
const MESSAGE: usize = 4;
/// A digest.
const DIGEST: usize = 16;
/// A partition number.
const PARTITION: usize = 4;
/// A limit or count field.
const COUNT: usize = 4;
/// A leaf id: partition and leaf index.
const LEAF_ID: usize = PARTITION + 1;
/// One `(fingerprint, version)` of a version list.
pub(crate) const VERSION_ITEM: usize = 8 + 16;
/// The state of a stamp, listed only when a leaf holds a map or counter.
pub(crate) const STATE_ITEM: usize = 8;

/// One leaf of one partition's tree: the unit whose keys are listed when
/// its digest differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeafId {
    /// The partition.
    pub partition: u32,
    /// The leaf index, 0-255: branch `leaf / 16`, position `leaf % 16`.
    pub leaf: u8,
}

/// A key the initiator wants from the responder, named as the responder's
/// version list named it: by leaf and fingerprint (the initiator may not
/// know the key itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Wanted {
    /// The leaf the key is in.
    pub leaf: LeafId,
    /// The key's fingerprint under the session's salt.
    pub fingerprint: u64,
}

/// The responder's keys in one leaf, as `(fingerprint, stamp)` sorted by
/// fingerprint, all of them or a first part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafVersions {
    /// The leaf.
    pub leaf: LeafId,
    /// `(fingerprint, stamp)` of each key, by fingerprint ascending, above
    /// the request's `after` for the first leaf of a reply. The stamp says
    /// which state wins and whether two maps or counters differ.
    pub versions: Vec<(u64, Stamp)>,
    /// Whether the list ends here. When false (only the last leaf of a reply
    /// may be cut), the list covers the fingerprints up to its last one, and
    /// the initiator asks again from there.
    pub complete: bool,
}

/// A set of partition numbers, ascending. On the wire a bitmap (bit `p % 8`
/// of byte `p / 8`), so 1024 partitions take 128 bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionSet(Vec<u32>);

impl PartitionSet {
    /// The set of `partitions` (any order; duplicates are dropped).
    pub fn new(partitions: impl IntoIterator<Item = u32>) -> Self {
        let mut v: Vec<u32> = partitions.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        Self(v)
    }

    /// The set a bitmap encodes. Every byte string is a valid bitmap.
    pub fn from_bitmap(bitmap: &[u8]) -> Self {
        let mut v = Vec::new();
        // Bytes past partition u32::MAX are ignored.
        for (i, &byte) in bitmap.iter().enumerate().take(1 << 29) {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    v.push(i as u32 * 8 + bit);
                }
            }
        }
        Self(v)
    }

    /// The bitmap of the set: as many bytes as its greatest member needs.
    pub fn to_bitmap(&self) -> Vec<u8> {
        let mut bitmap = vec![0u8; self.bitmap_len()];
        for &p in &self.0 {
            bitmap[p as usize / 8] |= 1 << (p % 8);
        }
        bitmap
    }

    /// The partitions, ascending.
    pub fn as_slice(&self) -> &[u32] {
        &self.0
    }

    /// How many partitions the set holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many groups of [`GROUP_PARTITIONS`] the set makes (the last may
    /// be short).
    pub fn groups(&self) -> usize {
        self.0.len().div_ceil(GROUP_PARTITIONS)
    }

    fn bitmap_len(&self) -> usize {
        self.0.last().map_or(0, |&p| p as usize / 8 + 1)
    }
}

/// What the initiator sends. Each request asks for one level of the trees
/// (or the repair) and states the largest reply it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Round trip 1: the shared partitions and one digest per group of
    /// [`GROUP_PARTITIONS`] of them, so that an idle session costs a few
    /// hundred bytes rather than 16 per partition.
    Summary {
        /// The partitions to compare, grouped in this order.
        partitions: PartitionSet,
        /// The initiator's digest of each group, in order:
        /// `partitions.groups()` of them.
        groups: Vec<u128>,
        /// The largest reply accepted.
        max_reply_bytes: u32,
    },
    /// Round trip 2: the initiator's branch digests of partitions whose
    /// roots differ, by partition ascending.
    Branches {
        /// `(partition, its 16 branch digests)`.
        partitions: Vec<(u32, [u128; BRANCHES])>,
        /// The largest reply accepted.
        max_reply_bytes: u32,
    },
    /// Round trip 3: the leaves whose digests differ; asks for the
    /// responder's version list of each.
    Versions {
        /// The session's fingerprint salt.
        salt: u64,
        /// The leaves, ascending.
        leaves: Vec<LeafId>,
        /// List only fingerprints above this in the first leaf (it continues
        /// a list an earlier reply cut).
        after: Option<u64>,
        /// The largest reply accepted.
        max_reply_bytes: u32,
    },
    /// Round trip 4: the initiator's entries the responder lacks or holds
    /// older, and the keys the initiator wants.
    Repair {
        /// The session's fingerprint salt (names the wanted keys).
        salt: u64,
        /// Entries for the responder to merge.
        entries: Vec<(Key, Entry)>,
        /// Keys wanted, ascending.
        wanted: Vec<Wanted>,
        /// The largest reply accepted.
        max_reply_bytes: u32,
        /// Whether the initiator is handing the partitions off: it drops
        /// its copy after the session, so the responder must keep every
        /// entry, settled ones included (see `anti_entropy::merge_repairs`).
        handoff: bool,
    },
}

/// What the responder answers. Each reply answers a prefix of the request
/// (at least one item of it) and says how far it got, so that replies stay
/// within the size the request accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answers [`Request::Summary`]: the responder's roots of each group
    /// whose digest differs.
    Roots {
        /// `(group index, the roots of its partitions in order)`, ascending.
        groups: Vec<(u32, Vec<u128>)>,
        /// How many groups, from the first, were compared.
        covered: u32,
    },
    /// Answers [`Request::Branches`]: the responder's leaf digests of each
    /// branch that differs.
    Leaves {
        /// `(partition, branch, its 16 leaf digests)`, ascending.
        branches: Vec<(u32, u8, [u128; LEAVES_PER_BRANCH])>,
        /// How many partitions, from the first, were compared.
        covered: u32,
    },
    /// Answers [`Request::Versions`]: the version lists of the first leaves
    /// asked for, in order; all complete but perhaps the last.
    Versions {
        /// The lists.
        leaves: Vec<LeafVersions>,
    },
    /// Answers [`Request::Repair`]: the responder's entries for the first
    /// wanted keys.
    Entries {
        /// The entries held for the covered keys.
        entries: Vec<(Key, Entry)>,
        /// How many wanted keys, from the first, were looked up.
        covered: u32,
    },
}

impl Request {
    /// The name of the request's kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Summary { .. } => "Summary",
            Request::Branches { .. } => "Branches",
            Request::Versions { .. } => "Versions",
            Request::Repair { .. } => "Repair",
        }
    }

    /// The largest reply the initiator accepts.
    pub fn max_reply_bytes(&self) -> usize {
        let (Request::Summary {
            max_reply_bytes, ..
        }
        | Request::Branches {
            max_reply_bytes, ..
        }
        | Request::Versions {
            max_reply_bytes, ..
        }
        | Request::Repair {
            max_reply_bytes, ..
        }) = self;
        *max_reply_bytes as usize
    }

    /// An estimate of the encoded size in bytes (see the module
    /// documentation), for rate caps and cost figures.
    pub fn wire_size(&self) -> usize {
        MESSAGE
            + COUNT
            + match self {
                Request::Summary {
                    partitions, groups, ..
                } => summary_size(partitions.bitmap_len(), groups.len()),
                Request::Branches { partitions, .. } => partitions.len() * BRANCHES_ITEM,
                Request::Versions { leaves, .. } => 8 + 9 + FRAME + leaves.len() * LEAF_ID,
                Request::Repair {
                    entries, wanted, ..
                } => {
                    8 + FRAME
                        + wanted.len() * WANTED_ITEM
                        + entries.iter().map(|(k, e)| entry_size(k, e)).sum::<usize>()
                }
            }
    }
}

impl Reply {
    /// The name of the reply's kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Roots { .. } => "Roots",
            Reply::Leaves { .. } => "Leaves",
            Reply::Versions { .. } => "Versions",
            Reply::Entries { .. } => "Entries",
        }
    }

    /// An estimate of the encoded size in bytes (see the module
    /// documentation), for rate caps and cost figures.
    pub fn wire_size(&self) -> usize {
        match self {
            Reply::Roots { groups, .. } => {
                EMPTY_REPLY
                    + groups
                        .iter()
                        .map(|(_, r)| roots_item(r.len()))
                        .sum::<usize>()
            }
            Reply::Leaves { branches, .. } => EMPTY_REPLY + branches.len() * LEAVES_ITEM,
            Reply::Versions { leaves } => {
                MESSAGE
                    + leaves
                        .iter()
                        .map(|l| leaf_versions_size(&l.versions))
                        .sum::<usize>()
            }
            Reply::Entries { entries, .. } => {
                EMPTY_REPLY + entries.iter().map(|(k, e)| entry_size(k, e)).sum::<usize>()
            }
        }
    }
}

/// The bytes an entry for `key` takes in a message: key, value (a string,
/// or a map's or counter's elements), version, expiry, kind and their
/// framing.
pub fn entry_size(key: &str, entry: &Entry) -> usize {
    FRAME + (FRAME + key.len()) + 16 + 8 + 1 + (FRAME + entry.payload_size())
}

/// A reply with nothing in it: framing and its `covered` count.
pub(crate) const EMPTY_REPLY: usize = MESSAGE + COUNT;
/// A request with nothing in it: framing and its `max_reply_bytes`.
pub(crate) const EMPTY_REQUEST: usize = MESSAGE + COUNT;
/// One partition's branches in [`Request::Branches`].
pub(crate) const BRANCHES_ITEM: usize = FRAME + PARTITION + BRANCHES * DIGEST;
/// One branch's leaves in [`Reply::Leaves`].
pub(crate) const LEAVES_ITEM: usize = FRAME + PARTITION + 1 + LEAVES_PER_BRANCH * DIGEST;
/// One wanted key in [`Request::Repair`].
pub(crate) const WANTED_ITEM: usize = LEAF_ID + 8;
/// One leaf id in [`Request::Versions`].
pub(crate) const LEAF_ID_ITEM: usize = LEAF_ID;
/// A [`Request::Versions`] with no leaves.
pub(crate) const EMPTY_VERSIONS_REQUEST: usize = MESSAGE + COUNT + 8 + 9 + FRAME;
/// A [`Request::Repair`] with nothing in it.
pub(crate) const EMPTY_REPAIR_REQUEST: usize = MESSAGE + COUNT + 8 + FRAME;

/// A [`Request::Summary`] body with a bitmap of `bitmap` bytes and `groups`
/// digests.
pub(crate) fn summary_size(bitmap: usize, groups: usize) -> usize {
    FRAME + bitmap + FRAME + groups * DIGEST
}

/// One group's roots in [`Reply::Roots`].
pub(crate) fn roots_item(roots: usize) -> usize {
    FRAME + COUNT + FRAME + roots * DIGEST
}

/// One leaf's list of `versions` items in [`Reply::Versions`], without
/// states (strings and tombstones only).
pub(crate) fn leaf_versions_item(versions: usize) -> usize {
    FRAME + LEAF_ID + 1 + FRAME + versions * VERSION_ITEM
}

/// One leaf's list in [`Reply::Versions`]: states are listed, one per item,
/// when any key of the list is a map or counter.
pub(crate) fn leaf_versions_size(versions: &[(u64, Stamp)]) -> usize {
    let states = if versions.iter().any(|(_, s)| s.state != 0) {
        FRAME + versions.len() * STATE_ITEM
    } else {
        0
    };
    leaf_versions_item(versions.len()) + states
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_round_trip() {
        let set = PartitionSet::new([9, 0, 1023, 9, 8]);
        assert_eq!(set.as_slice(), &[0, 8, 9, 1023]);
        let bitmap = set.to_bitmap();
        assert_eq!(bitmap.len(), 128);
        assert_eq!(PartitionSet::from_bitmap(&bitmap), set);
        assert_eq!(PartitionSet::new(0..1024).to_bitmap(), vec![0xff; 128]);
        assert!(PartitionSet::from_bitmap(&[0, 0]).is_empty());
        assert_eq!(PartitionSet::new(0..33).groups(), 2);
    }
}
