//! Placement: which nodes hold which keys, computed from the member list
//! alone.
//!
//! A key belongs to one of `P` fixed partitions ([`partition_of`]: xxh3-64 of
//! the key with a fixed seed, mod `P`; `P` = [`DEFAULT_PARTITIONS`] unless
//! configured, and fixed for a cluster's life). The partition is the unit of
//! placement, handoff and anti-entropy. A [`Ring`] maps every partition to an
//! ordered list of `N` replicas (preference order: the first is the primary).
//! It is a pure function of `(members, P, N)`: every node that sees the same
//! member list computes the same table, with no coordination, whatever the
//! order in which the members arrived.
//!
//! # Placement rule
//!
//! Rendezvous (highest random weight) hashing: node `i` scores partition `p`
//! with a stable hash of `(p, id_i)` ([`Ring::score`]), and a partition
//! prefers high scores. Region-aware: a partition first takes one node from
//! each of `min(N, regions)` distinct regions (the regions whose best node
//! scores highest), then fills the remaining slots from any region. The
//! region representatives come first in the replica list (ordered by score),
//! then the fill (ordered by score).
//!
//! # Bounded loads, and the trade-off
//!
//! Plain rendezvous hashing gives each node a binomial share of the replica
//! slots: with 1024 partitions, `N` = 3 and 20 nodes that is about 154 slots
//! per node with a standard deviation near 12, so the busiest node routinely
//! holds 1.3x to 1.4x what the idlest holds. We therefore use *consistent
//! hashing with bounded loads* (Mirrokni, Thorup, Zadimoghaddam, 2018) in
//! its "stable assignment" form: all `(partition, node)` pairs are visited
//! once, from the highest score down, and a pair is taken when the partition
//! still needs a replica and the node is below its cap, `ceil(fair share *
//! (1 + epsilon))`. Two passes do this:
//!
//! 1. Region representatives, capped per region at the region's
//!    representative slots over its nodes.
//! 2. The fill, capped at a water level of the total load (the level `L`
//!    with `sum(max(load, L))` = all slots), so that nodes the region rule
//!    already made heavy take no fill.
//!
//! The region rule wins over the cap: a region with few nodes still gets its
//! representative in every partition that chose it, and its nodes carry
//! more than the cluster average.
//!
//! Epsilon trades balance against movement. A smaller epsilon bounds the
//! busiest node more tightly, but more nodes sit at their cap, so a
//! membership change displaces pairs along chains of capped nodes and more
//! slots move than the ideal `1/n`; a larger epsilon approaches plain
//! rendezvous hashing (minimal movement, binomial imbalance). Measured over
//! 3 to 20 nodes with 1024 partitions and `N` = 3, epsilon 0 for the total
//! load (the cap is the fair share rounded up) keeps the busiest node within
//! about 1.07x to 1.09x of the idlest and moves at most about 1.3x to 1.4x
//! the ideal `1/n` on a join or a leave; epsilon 1% already lets the ratio
//! reach 1.2x for a movement gain of a few percent, and epsilon 5% reaches
//! 1.34x. With a cap of zero slack, the balance is also nearly a guarantee
//! rather than luck: nobody exceeds the fair share rounded up (but for a few
//! slots, when the last partitions to fill find only capped nodes left), so
//! nobody can fall far below it. The representatives get 10% slack when a fill pass follows
//! (with one region they are the primaries): the fill evens out the totals
//! anyway, and the looser cap moves fewer primaries (at most about 1.3x the
//! ideal instead of 1.6x). The price: no node is primary for more than 1.1x
//! its share, but the least-favoured node may be primary for only about
//! 0.6x of it, as with plain rendezvous hashing.
//!
//! A consequence of the cap: the replicas of a partition are not always the
//! `N` top-scoring nodes, only the top-scoring ones that had room.
//!
//! Building a ring costs `O(P n log(P n))` for `n` nodes (one sort of all
//! pairs), well under a millisecond for 1024 partitions and 20 nodes in a
//! release build; lookups are a slice of a precomputed table.
//!
//! Everything here is integer arithmetic on fixed-seed hashes, so the table
//! is identical on every platform and release; changing a seed, the hash or
//! the rule is a breaking change for a running cluster.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64_with_seed;

// The key hash and partition function live in `crate::keyspace` (the store
// needs them too, and must not depend on placement); re-exported here
// because they are half of the placement contract.
pub use crate::keyspace::{key_hash, partition_of, KEY_HASH_SEED};

/// The number of partitions a cluster uses unless configured otherwise. It is
/// fixed for the cluster's life (changing it moves almost every key), so it
/// is large enough to spread load over many nodes and small enough that
/// per-partition state (Merkle trees, handoff bookkeeping) stays cheap.
pub const DEFAULT_PARTITIONS: u32 = 1024;

/// The seed of the rendezvous scores ([`Ring::score`]): the ASCII bytes of
/// `"kv-place"`, big-endian. Like [`KEY_HASH_SEED`], fixed forever, and
/// distinct from it so that node scores are independent of key hashes.
pub const PLACEMENT_SEED: u64 = 0x6b76_2d70_6c61_6365;

/// Epsilon of the bounded-load cap on a node's total replica slots, in
/// percent: 0, so the cap is the fair share rounded up. See the module
/// documentation for why this is tight.
const LOAD_SLACK_PERCENT: u64 = 0;

/// Epsilon of the cap on region representatives when a fill pass follows
/// them, in percent. With one region the representative is the primary, so
/// this bounds how unevenly primaries spread; the looser cap makes fewer
/// primaries move on a membership change, and the fill pass evens out the
/// totals whatever the representatives did.
const PRIMARY_SLACK_PERCENT: u64 = 10;

/// One node as placement sees it: only what placement depends on, so that a
/// change of address, state or liveness does not move partitions. The
/// coordinator builds these from the cluster members it keeps in placement.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RingNode {
    /// The node id; its scores, and so its partitions, derive from it alone.
    pub id: String,
    /// Its region label (empty when unset); replicas of a partition spread
    /// over distinct regions first.
    pub region: String,
}

impl RingNode {
    /// A placement input from an id and a region label.
    pub fn new(id: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            region: region.into(),
        }
    }
}

/// Marks an unassigned slot while building.
const NONE: u32 = u32::MAX;

/// The placement of every partition over a set of nodes: partition ->
/// ordered replica ids, precomputed so that a lookup (on every request) is a
/// slice of a table. Rebuilt with [`Ring::new`] on every membership change;
/// see the module documentation for the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    /// The distinct nodes, sorted by id.
    nodes: Vec<RingNode>,
    /// The ids of `nodes`, shared by the table.
    ids: Vec<Arc<str>>,
    partitions: u32,
    /// The effective replication factor (capped at the node count).
    replication_factor: usize,
    /// `partitions * replication_factor` ids, partition-major.
    table: Vec<Arc<str>>,
    /// For each node (same index as `nodes`), its partitions, ascending.
    held: Vec<Vec<u32>>,
}

impl Ring {
    /// Computes the placement of `partitions` partitions over `nodes` with
    /// `replication_factor` replicas each.
    ///
    /// The nodes may come in any order and with repeated ids: they are
    /// deduplicated by id (when a repeated id carries different regions, the
    /// smallest region label wins) and sorted, so the result depends on the
    /// set of nodes only. The replication factor is capped at the number of
    /// distinct nodes; with no nodes every partition has no replicas.
    ///
    /// # Panics
    ///
    /// When `partitions` is 0.
    pub fn new(mut nodes: Vec<RingNode>, partitions: u32, replication_factor: usize) -> Ring {
        assert!(partitions > 0, "the number of partitions must be positive");
        nodes.sort();
        nodes.dedup_by(|later, first| later.id == first.id);
        let ids: Vec<Arc<str>> = nodes.iter().map(|n| Arc::from(n.id.as_str())).collect();
        let rf = replication_factor.min(nodes.len());
        let slots = place(&nodes, partitions as usize, rf);

        let mut held = vec![Vec::new(); nodes.len()];
        for (slot, &node) in slots.iter().enumerate() {
            held[node as usize].push((slot / rf) as u32);
        }
        let table = slots
            .iter()
            .map(|&i| Arc::clone(&ids[i as usize]))
            .collect();
        Ring {
            nodes,
            ids,
            partitions,
            replication_factor: rf,
            table,
            held,
        }
    }

    /// The rendezvous score of `node_id` for `partition`: xxh3-64, seeded
    /// with [`PLACEMENT_SEED`], of the node id's hash (8 bytes,
    /// little-endian) followed by the partition (4 bytes, little-endian).
    /// Higher is preferred. Exposed for diagnostics and tests.
    pub fn score(partition: u32, node_id: &str) -> u64 {
        score_with(node_seed(node_id), partition)
    }

    /// The replicas of `partition` in preference order (the first is the
    /// primary); `replication_factor()` ids, or none when the ring has no
    /// nodes or `partition` is out of range (a peer's bad partition number
    /// must not crash the node). A slice of the precomputed table.
    pub fn replicas(&self, partition: u32) -> &[Arc<str>] {
        if partition >= self.partitions {
            return &[];
        }
        let start = partition as usize * self.replication_factor;
        &self.table[start..start + self.replication_factor]
    }

    /// The replicas of the partition of `key`, in preference order.
    pub fn replicas_for_key(&self, key: &str) -> &[Arc<str>] {
        self.replicas(self.partition_of_key(key))
    }

    /// The partition of `key` in this ring ([`partition_of`] with this ring's
    /// partition count).
    pub fn partition_of_key(&self, key: &str) -> u32 {
        partition_of(key, self.partitions)
    }

    /// The partitions of which `node_id` is a replica, ascending; empty for a
    /// node not in the ring. What a node must hold, sync and summarize.
    pub fn partitions_held_by(&self, node_id: &str) -> Vec<u32> {
        self.index_of(node_id)
            .map(|i| self.held[i].clone())
            .unwrap_or_default()
    }

    /// Whether `node_id` is one of the replicas of `partition`.
    pub fn is_replica(&self, partition: u32, node_id: &str) -> bool {
        self.replicas(partition).iter().any(|r| &**r == node_id)
    }

    /// The number of partitions (`P`).
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The effective replication factor: the requested one capped at the
    /// number of distinct nodes. Every partition has exactly this many
    /// replicas.
    pub fn replication_factor(&self) -> usize {
        self.replication_factor
    }

    /// The distinct nodes of the ring, sorted by id.
    pub fn nodes(&self) -> &[RingNode] {
        &self.nodes
    }

    fn index_of(&self, node_id: &str) -> Option<usize> {
        self.ids.binary_search_by(|id| (**id).cmp(node_id)).ok()
    }
}

/// The per-node seed of its scores: the hash of its id.
fn node_seed(node_id: &str) -> u64 {
    xxh3_64_with_seed(node_id.as_bytes(), PLACEMENT_SEED)
}

/// The score of the node whose seed is `seed` for `partition`.
fn score_with(seed: u64, partition: u32) -> u64 {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..].copy_from_slice(&partition.to_le_bytes());
    xxh3_64_with_seed(&bytes, PLACEMENT_SEED)
}

/// `ceil(demand / holders * (1 + slack / 100))`: the most slots one of
/// `holders` nodes may take of `demand`.
fn cap(demand: u64, holders: u64, slack_percent: u64) -> u64 {
    if holders == 0 {
        return 0;
    }
    let scaled = demand * (100 + slack_percent);
    scaled.div_ceil(holders * 100)
}

/// The placement table: `partitions * rf` node indexes (into the sorted,
/// deduplicated `nodes`), partition-major, each partition's replicas in
/// preference order.
fn place(nodes: &[RingNode], partitions: usize, rf: usize) -> Vec<u32> {
    let n = nodes.len();
    if rf == 0 {
        return Vec::new();
    }

    // Regions, numbered in label order; each node's region.
    let mut region_index: BTreeMap<&str, usize> = BTreeMap::new();
    for node in nodes {
        region_index.insert(node.region.as_str(), 0);
    }
    for (i, index) in region_index.values_mut().enumerate() {
        *index = i;
    }
    let region_of: Vec<usize> = nodes
        .iter()
        .map(|n| region_index[n.region.as_str()])
        .collect();
    let regions = region_index.len();
    let mut region_size = vec![0u64; regions];
    for &r in &region_of {
        region_size[r] += 1;
    }
    // Region representatives per partition.
    let k = rf.min(regions);

    // All scores, partition-major.
    let seeds: Vec<u64> = nodes.iter().map(|n| node_seed(&n.id)).collect();
    let mut scores = vec![0u64; partitions * n];
    for p in 0..partitions {
        for (i, &seed) in seeds.iter().enumerate() {
            scores[p * n + i] = score_with(seed, p as u32);
        }
    }

    // Which regions each partition draws its representatives from: the `k`
    // regions whose best node scores highest (all of them when k = regions).
    let mut chosen = vec![k == regions; partitions * regions];
    if k < regions {
        let mut best = vec![(0u64, 0usize); regions];
        for p in 0..partitions {
            for (r, b) in best.iter_mut().enumerate() {
                *b = (0, r);
            }
            for i in 0..n {
                let b = &mut best[region_of[i]];
                b.0 = b.0.max(scores[p * n + i]);
            }
            best.sort_unstable_by_key(|&(s, r)| (Reverse(s), r));
            for &(_, r) in &best[..k] {
                chosen[p * regions + r] = true;
            }
        }
    }
    let mut region_demand = vec![0u64; regions];
    for p in 0..partitions {
        for r in 0..regions {
            region_demand[r] += u64::from(chosen[p * regions + r]);
        }
    }
    // Tight when the representatives are the whole placement; looser when a
    // fill pass follows and evens out the totals anyway.
    let rep_slack = if rf > k {
        PRIMARY_SLACK_PERCENT
    } else {
        LOAD_SLACK_PERCENT
    };
    let rep_cap: Vec<u64> = (0..regions)
        .map(|r| cap(region_demand[r], region_size[r], rep_slack))
        .collect();

    // Every (partition, node) pair, best score first; ties (practically
    // never) by node, then partition, so the order is total.
    let mut pairs: Vec<(u64, u32, u32)> = Vec::with_capacity(partitions * n);
    for p in 0..partitions {
        for i in 0..n {
            pairs.push((scores[p * n + i], p as u32, i as u32));
        }
    }
    pairs.sort_unstable_by_key(|&(s, p, i)| (Reverse(s), i, p));

    // Pass 1: one representative per chosen region, bounded per region.
    let mut load = vec![0u64; n];
    let mut rep = vec![NONE; partitions * regions];
    for &(_, p, i) in &pairs {
        let (p, i) = (p as usize, i as usize);
        let r = region_of[i];
        let at = p * regions + r;
        if chosen[at] && rep[at] == NONE && load[i] < rep_cap[r] {
            rep[at] = i as u32;
            load[i] += 1;
        }
    }
    // The pass fills every chosen region (its nodes' caps add up to at
    // least its demand); this fallback only makes that robust.
    for p in 0..partitions {
        for r in 0..regions {
            let at = p * regions + r;
            if chosen[at] && rep[at] == NONE {
                let i = (0..n)
                    .filter(|&i| region_of[i] == r)
                    .min_by_key(|&i| (load[i], Reverse(scores[p * n + i]), i))
                    .expect("a region has nodes");
                rep[at] = i as u32;
                load[i] += 1;
            }
        }
    }

    let mut table = vec![NONE; partitions * rf];
    let mut filled = vec![0usize; partitions];
    for p in 0..partitions {
        for &i in &rep[p * regions..(p + 1) * regions] {
            if i != NONE {
                table[p * rf + filled[p]] = i;
                filled[p] += 1;
            }
        }
        debug_assert_eq!(filled[p], k);
    }

    // Pass 2: the remaining rf - k slots from any node not yet a replica,
    // bounded by a water level of the total load: nodes the region rule
    // already loaded above it take no fill.
    if rf > k {
        let total = (partitions * rf) as u64;
        let fill_cap = water_cap(&load, total);
        for &(_, p, i) in &pairs {
            let p = p as usize;
            if filled[p] < rf && load[i as usize] < fill_cap {
                let row = &mut table[p * rf..(p + 1) * rf];
                if !row[..filled[p]].contains(&i) {
                    row[filled[p]] = i;
                    filled[p] += 1;
                    load[i as usize] += 1;
                }
            }
        }
        // Partitions left short: all their non-replicas were at the cap when
        // their turn came. Give the slot to the least loaded of them.
        for p in 0..partitions {
            while filled[p] < rf {
                let row = &table[p * rf..p * rf + filled[p]];
                let i = (0..n as u32)
                    .filter(|i| !row.contains(i))
                    .min_by_key(|&i| (load[i as usize], Reverse(scores[p * n + i as usize]), i))
                    .expect("rf <= n leaves a non-replica");
                table[p * rf + filled[p]] = i;
                filled[p] += 1;
                load[i as usize] += 1;
            }
        }
    }

    // Preference order: representatives by score, then the fill by score.
    for p in 0..partitions {
        let by_score = |i: &u32| (Reverse(scores[p * n + *i as usize]), *i);
        let row = &mut table[p * rf..(p + 1) * rf];
        row[..k].sort_unstable_by_key(by_score);
        row[k..].sort_unstable_by_key(by_score);
    }
    table
}

/// The fill cap: `ceil(level * (1 + epsilon))` where `level` is the water
/// level at which `sum(max(load_i, level))` equals `total`.
fn water_cap(load: &[u64], total: u64) -> u64 {
    let mut desc = load.to_vec();
    desc.sort_unstable_by(|a, b| b.cmp(a));
    let n = desc.len() as u64;
    let mut above = 0u64;
    for (m, &l) in desc.iter().enumerate() {
        let rest = total.saturating_sub(above);
        let below = n - m as u64;
        // level = rest / below; node m is under it when l <= level.
        if l * below <= rest {
            return cap(rest, below, LOAD_SLACK_PERCENT);
        }
        above += l;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(ids: &[String], rf: usize) -> Ring {
        let nodes = ids.iter().map(|id| RingNode::new(id.clone(), "")).collect();
        Ring::new(nodes, DEFAULT_PARTITIONS, rf)
    }

    fn ip_ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:50051")).collect()
    }

    fn name_ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("node-{i}")).collect()
    }

    /// Replica slots per node, in `ring.nodes()` order.
    fn loads(ring: &Ring) -> Vec<usize> {
        ring.nodes()
            .iter()
            .map(|n| ring.partitions_held_by(&n.id).len())
            .collect()
    }

    fn ratio(loads: &[usize]) -> f64 {
        let max = *loads.iter().max().unwrap() as f64;
        let min = *loads.iter().min().unwrap() as f64;
        max / min
    }

    /// (slots moved / slots, primaries moved / partitions) between two rings.
    fn movement(a: &Ring, b: &Ring) -> (f64, f64) {
        let mut moved = 0usize;
        let mut primaries = 0usize;
        for p in 0..a.partitions() {
            let (ra, rb) = (a.replicas(p), b.replicas(p));
            let gone = ra.iter().filter(|x| !rb.contains(x)).count();
            let came = rb.iter().filter(|x| !ra.contains(x)).count();
            moved += gone.max(came);
            primaries += usize::from(ra.first() != rb.first());
        }
        let slots = a.partitions() as usize * a.replication_factor().max(b.replication_factor());
        (
            moved as f64 / slots as f64,
            primaries as f64 / a.partitions() as f64,
        )
    }

    fn check_invariants(ring: &Ring, requested_rf: usize) {
        let distinct = ring.nodes().len();
        assert_eq!(ring.replication_factor(), requested_rf.min(distinct));
        for p in 0..ring.partitions() {
            let r = ring.replicas(p);
            assert_eq!(r.len(), ring.replication_factor());
            for (j, id) in r.iter().enumerate() {
                assert!(!r[..j].contains(id), "duplicate replica in {p}");
                assert!(ring.nodes().iter().any(|n| *n.id == **id));
                assert!(ring.is_replica(p, id));
            }
        }
        let held: usize = ring
            .nodes()
            .iter()
            .map(|n| ring.partitions_held_by(&n.id).len())
            .sum();
        assert_eq!(held, ring.partitions() as usize * ring.replication_factor());
    }

    #[test]
    fn partition_of_is_pinned() {
        // Computed once; a change here moves every key of a running cluster.
        assert_eq!(key_hash(""), 0x75ee_5998_7949_8774);
        assert_eq!(partition_of("user:42", DEFAULT_PARTITIONS), 695);
        assert_eq!(partition_of("hello", DEFAULT_PARTITIONS), 889);
        assert_eq!(partition_of("kilovolt", DEFAULT_PARTITIONS), 661);
        assert_eq!(Ring::score(7, "10.0.0.1:50051"), 18_077_370_942_435_800_585);
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[test]
    fn placement_is_pinned() {
        // Computed once; a change here moves partitions of a running cluster.
        let ring = ring_of(&ip_ids(5), 3);
        let pinned: [(u32, [u8; 3]); 3] = [(0, [2, 5, 1]), (1, [4, 2, 1]), (1023, [3, 4, 5])];
        for (p, hosts) in pinned {
            let expected: Vec<String> = hosts.iter().map(|h| format!("10.0.0.{h}:50051")).collect();
            let actual: Vec<&str> = ring.replicas(p).iter().map(|r| &**r).collect();
            assert_eq!(actual, expected, "partition {p}");
        }
    }

    #[test]
    fn keys_spread_evenly_over_partitions() {
        let keys = 100_000usize;
        let mut buckets = vec![0usize; DEFAULT_PARTITIONS as usize];
        for i in 0..keys {
            buckets[partition_of(&format!("key-{i}"), DEFAULT_PARTITIONS) as usize] += 1;
        }
        let expected = keys as f64 / DEFAULT_PARTITIONS as f64;
        let chi2: f64 = buckets
            .iter()
            .map(|&b| (b as f64 - expected).powi(2) / expected)
            .sum();
        // 1023 degrees of freedom: mean 1023, standard deviation ~45.
        assert!(chi2 < 1023.0 + 5.0 * 45.0, "chi-square {chi2}");
        let min = *buckets.iter().min().unwrap();
        let max = *buckets.iter().max().unwrap();
        assert!(min >= 55 && max <= 145, "buckets {min}..{max}");
    }

    #[test]
    #[should_panic(expected = "positive")]
    fn zero_partitions_is_refused() {
        partition_of("k", 0);
    }

    #[test]
    fn empty_ring_has_no_replicas() {
        let ring = Ring::new(Vec::new(), DEFAULT_PARTITIONS, 3);
        assert_eq!(ring.replication_factor(), 0);
        assert!(ring.replicas(0).is_empty());
        assert!(ring.replicas(DEFAULT_PARTITIONS - 1).is_empty());
        assert!(ring.replicas(u32::MAX).is_empty());
        assert!(ring.replicas_for_key("k").is_empty());
        assert!(ring.partitions_held_by("a").is_empty());
        assert!(!ring.is_replica(0, "a"));
        assert!(ring.nodes().is_empty());
        assert_eq!(ring.partitions(), DEFAULT_PARTITIONS);
    }

    #[test]
    fn out_of_range_partition_has_no_replicas() {
        let ring = ring_of(&ip_ids(5), 3);
        assert!(ring.replicas(DEFAULT_PARTITIONS).is_empty());
        assert!(!ring.is_replica(DEFAULT_PARTITIONS, "10.0.0.1:50051"));
    }

    #[test]
    fn replication_factor_is_capped_at_node_count() {
        for n in 1..=4 {
            let ring = ring_of(&name_ids(n), 3);
            check_invariants(&ring, 3);
            assert_eq!(ring.replication_factor(), n.min(3));
        }
        let ring = ring_of(&name_ids(4), 0);
        assert_eq!(ring.replication_factor(), 0);
        assert!(ring.replicas(7).is_empty());
    }

    #[test]
    fn lookups_agree() {
        let ring = ring_of(&ip_ids(7), 3);
        check_invariants(&ring, 3);
        for key in ["a", "b", "user:1", "user:2"] {
            let p = ring.partition_of_key(key);
            assert_eq!(p, partition_of(key, DEFAULT_PARTITIONS));
            assert_eq!(ring.replicas_for_key(key), ring.replicas(p));
        }
        for node in ring.nodes() {
            for p in ring.partitions_held_by(&node.id) {
                assert!(ring.is_replica(p, &node.id));
            }
        }
        assert!(ring.partitions_held_by("unknown").is_empty());
    }

    #[test]
    fn placement_ignores_input_order_and_duplicates() {
        let ids = ip_ids(12);
        let nodes: Vec<RingNode> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| RingNode::new(id.clone(), format!("r{}", i % 3)))
            .collect();
        let reference = Ring::new(nodes.clone(), DEFAULT_PARTITIONS, 3);
        // Deterministic shuffles (xorshift), plus repeated entries.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..10 {
            let mut shuffled = nodes.clone();
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            for dup in 0..round {
                shuffled.push(nodes[dup % nodes.len()].clone());
            }
            let ring = Ring::new(shuffled, DEFAULT_PARTITIONS, 3);
            assert_eq!(ring, reference);
        }
        // A repeated id with another region: the smallest label wins,
        // whichever comes first.
        let a = Ring::new(
            vec![
                RingNode::new("x", "b"),
                RingNode::new("x", "a"),
                RingNode::new("y", "a"),
            ],
            16,
            2,
        );
        let b = Ring::new(
            vec![
                RingNode::new("y", "a"),
                RingNode::new("x", "a"),
                RingNode::new("x", "b"),
            ],
            16,
            2,
        );
        assert_eq!(a, b);
        assert_eq!(a.nodes().len(), 2);
        assert_eq!(a.nodes()[0], RingNode::new("x", "a"));
    }

    #[test]
    fn balanced_for_3_to_20_nodes() {
        for (style, make) in [
            ("ip", ip_ids as fn(usize) -> Vec<String>),
            ("name", name_ids),
        ] {
            for n in 3..=20 {
                let ring = ring_of(&make(n), 3);
                check_invariants(&ring, 3);
                let loads = loads(&ring);
                let r = ratio(&loads);
                let primaries: Vec<usize> = ring
                    .nodes()
                    .iter()
                    .map(|node| {
                        (0..ring.partitions())
                            .filter(|&p| *ring.replicas(p)[0] == node.id)
                            .count()
                    })
                    .collect();
                println!(
                    "balance {style} n={n}: slots max/min {r:.3} ({}..{}), primaries max/min {:.3}",
                    loads.iter().min().unwrap(),
                    loads.iter().max().unwrap(),
                    ratio(&primaries)
                );
                assert!(r <= 1.25, "{style} n={n}: max/min {r:.3} {loads:?}");
            }
        }
    }

    #[test]
    fn a_join_or_leave_moves_about_one_nth() {
        for (style, make) in [
            ("ip", ip_ids as fn(usize) -> Vec<String>),
            ("name", name_ids),
        ] {
            for n in 3..=20 {
                let ids = make(n + 1);
                let before = ring_of(&ids[..n], 3);
                let after = ring_of(&ids, 3);
                // Join of node n+1 into n nodes.
                let ideal = 1.0 / (n + 1) as f64;
                let (slots, primaries) = movement(&before, &after);
                println!(
                    "join {style} {n}->{}: slots {slots:.4} ({:.2}x ideal {ideal:.4}), \
                     primaries {primaries:.4} ({:.2}x)",
                    n + 1,
                    slots / ideal,
                    primaries / ideal
                );
                assert!(slots <= 2.0 * ideal, "join {style} n={n}: {slots}");
                assert!(primaries <= 2.0 * ideal, "join {style} n={n}: {primaries}");

                // Leave of each node of the n in turn.
                let ideal = 1.0 / n as f64;
                let full = ring_of(&ids[..n], 3);
                let (mut worst, mut sum, mut worst_primary) = (0f64, 0f64, 0f64);
                for gone in 0..n {
                    let rest: Vec<String> = ids[..n]
                        .iter()
                        .enumerate()
                        .filter(|&(i, _)| i != gone)
                        .map(|(_, id)| id.clone())
                        .collect();
                    let (slots, primaries) = movement(&full, &ring_of(&rest, 3));
                    worst = worst.max(slots);
                    sum += slots;
                    worst_primary = worst_primary.max(primaries);
                }
                println!(
                    "leave {style} {n}->{}: slots mean {:.4} worst {worst:.4} \
                     ({:.2}x ideal {ideal:.4}), primaries worst {worst_primary:.4} ({:.2}x)",
                    n - 1,
                    sum / n as f64,
                    worst / ideal,
                    worst_primary / ideal
                );
                assert!(worst <= 2.0 * ideal, "leave {style} n={n}: {worst}");
                assert!(
                    worst_primary <= 2.0 * ideal,
                    "leave {style} n={n}: {worst_primary}"
                );
            }
        }
    }

    #[test]
    fn random_ids_stay_balanced_and_move_little() {
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut balance, mut join, mut leave) = (0f64, 0f64, 0f64);
        for _ in 0..3 {
            for n in 3..=20 {
                let ids: Vec<String> = (0..=n)
                    .map(|_| format!("{:x}.internal:50051", next() % 1_000_000_007))
                    .collect();
                let before = ring_of(&ids[..n], 3);
                balance = balance.max(ratio(&loads(&before)));
                let (slots, _) = movement(&before, &ring_of(&ids, 3));
                join = join.max(slots * (n + 1) as f64);
                let gone = (next() % n as u64) as usize;
                let rest: Vec<String> = ids[..n]
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != gone)
                    .map(|(_, id)| id.clone())
                    .collect();
                let (slots, _) = movement(&before, &ring_of(&rest, 3));
                leave = leave.max(slots * n as f64);
            }
        }
        println!(
            "random ids: worst max/min {balance:.3}, worst join {join:.2}x ideal, \
             worst leave {leave:.2}x ideal"
        );
        assert!(balance <= 1.25 && join <= 2.0 && leave <= 2.0);
    }

    #[test]
    fn a_join_moves_only_its_regions_share() {
        let nodes = |per_region: usize, extra: bool| {
            let mut nodes = Vec::new();
            for region in ["ap", "eu", "us"] {
                for i in 0..per_region {
                    nodes.push(RingNode::new(format!("{region}-{i}"), region));
                }
            }
            if extra {
                nodes.push(RingNode::new("eu-new", "eu"));
            }
            nodes
        };
        for per_region in 2..=6 {
            let before = Ring::new(nodes(per_region, false), DEFAULT_PARTITIONS, 3);
            let after = Ring::new(nodes(per_region, true), DEFAULT_PARTITIONS, 3);
            // The newcomer's fair share: 1/(per_region + 1) of eu's slots,
            // which are a third of all slots.
            let ideal = 1.0 / (3 * (per_region + 1)) as f64;
            let (slots, _) = movement(&before, &after);
            println!(
                "regions 3x{per_region} + 1 in eu: slots {slots:.4} ({:.2}x ideal {ideal:.4})",
                slots / ideal
            );
            assert!(slots <= 2.0 * ideal, "{per_region}: {slots}");
            // The other regions keep every slot.
            for p in 0..DEFAULT_PARTITIONS {
                for id in before.replicas(p) {
                    if !id.starts_with("eu") {
                        assert!(after.replicas(p).contains(id), "{id} lost {p}");
                    }
                }
            }
        }
    }

    #[test]
    fn three_regions_get_one_replica_each() {
        let mut nodes = Vec::new();
        for (region, count) in [("eu", 2), ("us", 3), ("ap", 3)] {
            for i in 0..count {
                nodes.push(RingNode::new(format!("{region}-{i}"), region));
            }
        }
        let ring = Ring::new(nodes, DEFAULT_PARTITIONS, 3);
        check_invariants(&ring, 3);
        let region_of = |id: &str| {
            ring.nodes()
                .iter()
                .find(|n| n.id == id)
                .unwrap()
                .region
                .clone()
        };
        for p in 0..ring.partitions() {
            let mut regions: Vec<String> = ring.replicas(p).iter().map(|r| region_of(r)).collect();
            regions.sort();
            assert_eq!(regions, ["ap", "eu", "us"], "partition {p}");
        }
        // Within a region the load is still balanced.
        let loads = loads(&ring);
        println!("three regions 2/3/3: loads {loads:?}");
        for (region, fair) in [("eu", 512.0), ("us", 341.3), ("ap", 341.3)] {
            for (node, &load) in ring.nodes().iter().zip(&loads) {
                if node.region == region {
                    let off = (load as f64 - fair).abs() / fair;
                    assert!(off < 0.15, "{} holds {load}, fair {fair}", node.id);
                }
            }
        }
    }

    #[test]
    fn two_regions_both_hold_every_partition() {
        let mut nodes = Vec::new();
        for (region, count) in [("eu", 3), ("us", 4)] {
            for i in 0..count {
                nodes.push(RingNode::new(format!("{region}-{i}"), region));
            }
        }
        let ring = Ring::new(nodes, DEFAULT_PARTITIONS, 3);
        check_invariants(&ring, 3);
        for p in 0..ring.partitions() {
            let r = ring.replicas(p);
            assert!(r.iter().any(|id| id.starts_with("eu")), "partition {p}");
            assert!(r.iter().any(|id| id.starts_with("us")), "partition {p}");
            // The two region representatives come first.
            assert_ne!(r[0][..2], r[1][..2], "partition {p}");
        }
        let loads = loads(&ring);
        println!(
            "two regions 3/4: loads {loads:?}, max/min {:.3}",
            ratio(&loads)
        );
        assert!(ratio(&loads) <= 1.25);
    }

    #[test]
    fn lopsided_regions_follow_the_region_rule() {
        // One node alone in its region holds every partition; the others
        // share the rest evenly.
        let mut nodes = vec![RingNode::new("solo", "eu")];
        nodes.extend((0..5).map(|i| RingNode::new(format!("us-{i}"), "us")));
        let ring = Ring::new(nodes, DEFAULT_PARTITIONS, 3);
        check_invariants(&ring, 3);
        assert_eq!(
            ring.partitions_held_by("solo").len(),
            DEFAULT_PARTITIONS as usize
        );
        let others: Vec<usize> = (0..5)
            .map(|i| ring.partitions_held_by(&format!("us-{i}")).len())
            .collect();
        assert!(ratio(&others) <= 1.25, "{others:?}");
    }

    #[test]
    fn more_regions_than_replicas() {
        let nodes: Vec<RingNode> = (0..10)
            .map(|i| RingNode::new(format!("n{i}"), format!("r{}", i % 5)))
            .collect();
        let ring = Ring::new(nodes, DEFAULT_PARTITIONS, 3);
        check_invariants(&ring, 3);
        let region_of = |id: &str| {
            ring.nodes()
                .iter()
                .find(|n| n.id == id)
                .unwrap()
                .region
                .clone()
        };
        for p in 0..ring.partitions() {
            let mut regions: Vec<String> = ring.replicas(p).iter().map(|r| region_of(r)).collect();
            regions.sort();
            regions.dedup();
            assert_eq!(regions.len(), 3, "partition {p}");
        }
    }

    #[test]
    fn one_region_is_plain_placement() {
        let ids = ip_ids(9);
        let unlabeled = ring_of(&ids, 3);
        let labeled = Ring::new(
            ids.iter()
                .map(|id| RingNode::new(id.clone(), "eu-west"))
                .collect(),
            DEFAULT_PARTITIONS,
            3,
        );
        for p in 0..DEFAULT_PARTITIONS {
            assert_eq!(unlabeled.replicas(p), labeled.replicas(p));
        }
    }

    #[test]
    fn building_is_fast() {
        let nodes: Vec<RingNode> = ip_ids(20)
            .into_iter()
            .map(|id| RingNode::new(id, ""))
            .collect();
        let mut best = std::time::Duration::MAX;
        for _ in 0..5 {
            let start = std::time::Instant::now();
            let ring = Ring::new(nodes.clone(), DEFAULT_PARTITIONS, 3);
            best = best.min(start.elapsed());
            assert_eq!(ring.replication_factor(), 3);
        }
        println!("Ring::new, 20 nodes x 1024 partitions: {best:?}");
        // Generous for unoptimized builds on a busy machine; release is far
        // below 10 ms.
        let limit = if cfg!(debug_assertions) { 500 } else { 10 };
        assert!(best.as_millis() < limit, "{best:?}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn any_member_list_gives_a_valid_table(
            members in proptest::collection::vec((0u8..40, 0u8..4), 0..25),
            rf in 0usize..6,
            partitions in 1u32..200,
        ) {
            let nodes: Vec<RingNode> = members
                .iter()
                .map(|&(id, region)| RingNode::new(format!("n{id}"), format!("r{region}")))
                .collect();
            let ring = Ring::new(nodes.clone(), partitions, rf);
            check_invariants(&ring, rf);
            let regions: std::collections::BTreeSet<&str> =
                ring.nodes().iter().map(|n| n.region.as_str()).collect();
            for p in 0..partitions {
                let mut seen: Vec<&str> = ring
                    .replicas(p)
                    .iter()
                    .map(|id| ring.nodes().iter().find(|n| *n.id == **id).unwrap().region.as_str())
                    .collect();
                seen.sort_unstable();
                seen.dedup();
                proptest::prop_assert_eq!(seen.len(), ring.replication_factor().min(regions.len()));
            }
            let mut reversed = nodes;
            reversed.reverse();
            proptest::prop_assert_eq!(Ring::new(reversed, partitions, rf), ring);
        }
    }
}
