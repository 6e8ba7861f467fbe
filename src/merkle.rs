//! The Merkle tree of one partition, kept current on every write.
//!
//! Anti-entropy must tell cheaply whether two replicas of a partition hold
//! the same entries, and if not, where they differ. A classic Merkle tree
//! over sorted keys must be rebuilt (or kept sorted) as keys come and go.
//! This one follows Riak's *Tictac* trees instead: every level is the XOR of
//! its children, and a leaf is the XOR of the digests
//! ([`crate::keyspace::entry_digest`]) of the entries that fall into it.
//! XOR makes the tree:
//!
//! - **O(1) to update**: a write that replaces digest `a` by `b` XORs
//!   `a ^ b` into its leaf, that leaf's branch and the root (an insert XORs
//!   `b`, a removal `a`), without reading any other entry;
//! - **order-independent**: XOR is commutative and associative, so replicas
//!   that applied the same writes in any order, and concurrent updates
//!   applied in any interleaving, end with the same tree;
//! - **lock-free**: each node is a `u128` kept as two `AtomicU64` halves
//!   updated with `fetch_xor`, so writers to different keys never wait for
//!   each other here (the store serializes writers of the same key with the
//!   key's bucket lock, which it holds anyway).
//!
//! Shape: 256 leaves, 16 branches of 16 leaves each, one root. Comparing two
//! replicas costs one root; when the roots differ, 16 branches; then 16
//! leaves per differing branch; then the keys of the differing leaves only.
//!
//! A reader racing with writers may see a half-applied update (the two
//! halves of a node, or a leaf and its branch, from different moments).
//! Anti-entropy tolerates that: a spurious difference only costs a descent,
//! and the next round compares again.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::keyspace::{branch_of, BRANCHES, LEAVES, LEAVES_PER_BRANCH};

/// A 128-bit digest kept as two atomic halves, XOR-updated in place.
#[derive(Default)]
struct Digest {
    hi: AtomicU64,
    lo: AtomicU64,
}

impl Digest {
    fn xor(&self, digest: u128) {
        // Relaxed is enough: XOR commutes, so the final value does not
        // depend on the order in which updates land, and readers that need
        // to see a writer's updates synchronize through other means (the
        // map's locks, a thread join, a message).
        self.hi.fetch_xor((digest >> 64) as u64, Ordering::Relaxed);
        self.lo.fetch_xor(digest as u64, Ordering::Relaxed);
    }

    fn get(&self) -> u128 {
        (u128::from(self.hi.load(Ordering::Relaxed)) << 64)
            | u128::from(self.lo.load(Ordering::Relaxed))
    }

    fn new(value: u128) -> Self {
        Self {
            hi: AtomicU64::new((value >> 64) as u64),
            lo: AtomicU64::new(value as u64),
        }
    }
}

/// The Merkle tree of one partition: 256 leaves, 16 branches (each the XOR
/// of its 16 leaves) and a root (the XOR of the branches, hence of all
/// leaves). An empty partition's tree is all zeros; see the module
/// documentation for why XOR.
pub struct MerkleTree {
    root: Digest,
    branches: [Digest; BRANCHES],
    leaves: [Digest; LEAVES],
}

impl Default for MerkleTree {
    fn default() -> Self {
        Self::new()
    }
}

impl MerkleTree {
    /// An empty tree: every node 0.
    pub fn new() -> Self {
        Self {
            root: Digest::default(),
            branches: std::array::from_fn(|_| Digest::default()),
            leaves: std::array::from_fn(|_| Digest::default()),
        }
    }

    /// The tree of a partition holding entries with these `(leaf, digest)`
    /// pairs, computed from scratch. The store uses it to check that the
    /// incrementally kept tree still matches its map, and tests use it as
    /// the reference.
    pub fn from_entries(entries: impl IntoIterator<Item = (u8, u128)>) -> Self {
        let mut leaves = [0u128; LEAVES];
        for (leaf, digest) in entries {
            leaves[leaf as usize] ^= digest;
        }
        let branches: [u128; BRANCHES] = std::array::from_fn(|b| {
            leaves[b * LEAVES_PER_BRANCH..(b + 1) * LEAVES_PER_BRANCH]
                .iter()
                .fold(0, |acc, l| acc ^ l)
        });
        let root = branches.iter().fold(0, |acc, b| acc ^ b);
        Self {
            root: Digest::new(root),
            branches: branches.map(Digest::new),
            leaves: leaves.map(Digest::new),
        }
    }

    /// XORs `digest` into `leaf`, its branch and the root: 6 `fetch_xor`s.
    /// Adding an entry and removing it are the same toggle; replacing
    /// digest `a` by `b` is one toggle of `a ^ b` (a key's entries always
    /// fall into the same leaf).
    pub fn toggle(&self, leaf: u8, digest: u128) {
        if digest == 0 {
            return;
        }
        self.leaves[leaf as usize].xor(digest);
        self.branches[branch_of(leaf) as usize].xor(digest);
        self.root.xor(digest);
    }

    /// The root: the XOR of every entry digest in the partition; 0 when it
    /// is empty. Equal roots mean equal partitions (up to a 2^-128 chance).
    pub fn root(&self) -> u128 {
        self.root.get()
    }

    /// The 16 branches, in order.
    pub fn branches(&self) -> [u128; BRANCHES] {
        std::array::from_fn(|b| self.branches[b].get())
    }

    /// The 16 leaves under `branch` (leaves `16 * branch ..16 * branch + 16`),
    /// in order; all zeros when `branch` is not below 16.
    pub fn leaves(&self, branch: u8) -> [u128; LEAVES_PER_BRANCH] {
        let first = branch as usize * LEAVES_PER_BRANCH;
        std::array::from_fn(|i| self.leaves.get(first + i).map_or(0, Digest::get))
    }

    /// The leaf `i`.
    pub fn leaf(&self, i: u8) -> u128 {
        self.leaves[i as usize].get()
    }
}

impl PartialEq for MerkleTree {
    /// Two trees are equal when every node is: what a test compares to tell
    /// an incrementally kept tree from a recomputed one.
    fn eq(&self, other: &Self) -> bool {
        self.root() == other.root()
            && self.branches() == other.branches()
            && (0..LEAVES).all(|i| self.leaf(i as u8) == other.leaf(i as u8))
    }
}

impl std::fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerkleTree")
            .field("root", &format_args!("{:032x}", self.root()))
            .field(
                "nonzero_leaves",
                &(0..LEAVES).filter(|&i| self.leaf(i as u8) != 0).count(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_empty_tree_is_zero() {
        let t = MerkleTree::new();
        assert_eq!(t.root(), 0);
        assert_eq!(t.branches(), [0; BRANCHES]);
        assert_eq!(t.leaves(3), [0; LEAVES_PER_BRANCH]);
        assert_eq!(MerkleTree::from_entries([]), t);
    }

    #[test]
    fn toggle_updates_leaf_branch_and_root_and_undoes_itself() {
        let t = MerkleTree::new();
        let d = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        t.toggle(37, d);
        assert_eq!(t.leaf(37), d);
        assert_eq!(t.branches()[2], d);
        assert_eq!(t.leaves(2)[5], d);
        assert_eq!(t.root(), d);
        t.toggle(200, 1);
        assert_eq!(t.root(), d ^ 1);
        assert_eq!(t.branches()[12], 1);
        t.toggle(37, d);
        t.toggle(200, 1);
        assert_eq!(t, MerkleTree::new());
    }

    #[test]
    fn out_of_range_branches_read_as_zero() {
        let t = MerkleTree::from_entries([(255, 9)]);
        assert_eq!(t.leaves(15)[15], 9);
        assert_eq!(t.leaves(16), [0; LEAVES_PER_BRANCH]);
        assert_eq!(t.leaves(255), [0; LEAVES_PER_BRANCH]);
    }

    #[test]
    fn concurrent_toggles_end_in_the_same_state() {
        let t = std::sync::Arc::new(MerkleTree::new());
        let items: Vec<(u8, u128)> = (0..4000u32)
            .map(|i| {
                (
                    (i % 256) as u8,
                    u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
                )
            })
            .collect();
        let threads: Vec<_> = items
            .chunks(1000)
            .map(|chunk| {
                let (t, chunk) = (t.clone(), chunk.to_vec());
                std::thread::spawn(move || chunk.into_iter().for_each(|(l, d)| t.toggle(l, d)))
            })
            .collect();
        threads.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(*t, MerkleTree::from_entries(items));
    }

    proptest! {
        /// Toggling in any order equals computing from scratch, and every
        /// level is the XOR of the one below.
        #[test]
        fn incremental_equals_from_scratch(
            items in prop::collection::vec((any::<u8>(), any::<u128>()), 0..64),
            seed in any::<u64>(),
        ) {
            let t = MerkleTree::new();
            let mut order: Vec<usize> = (0..items.len()).collect();
            for i in 0..order.len() {
                let j = (seed.wrapping_mul(i as u64 + 3) % order.len() as u64) as usize;
                order.swap(i, j);
            }
            order.iter().for_each(|&i| t.toggle(items[i].0, items[i].1));
            let reference = MerkleTree::from_entries(items.iter().copied());
            prop_assert_eq!(&t, &reference);
            for b in 0..BRANCHES as u8 {
                prop_assert_eq!(t.branches()[b as usize], t.leaves(b).iter().fold(0, |a, l| a ^ l));
            }
            prop_assert_eq!(t.root(), t.branches().iter().fold(0, |a, b| a ^ b));
        }
    }
}
