//! The PN-counter: increments and decrements on any node all count, each
//! exactly once, however often and in whatever order they are delivered.
//!
//! # State
//!
//! Every increment is a *dot* `(actor, seq)`: the actor is one life of the
//! node that coordinated it, the sequence number counts that actor's
//! increments of this counter from 1 without gaps (the node keeps the last
//! one it issued per counter, see the `dots` module). Per actor the counter
//! keeps the sum of its increments `1..=upto`, the longest run without a
//! gap received so far, and the increments past a gap individually until
//! the gap fills. An increment whose dot is already counted is ignored.
//!
//! So a delta replayed from a hint, retried after a timeout, repaired by
//! anti-entropy and also carried inside a whole state all count once, in
//! any order, and the state per actor stays small: normally one sum and no
//! pending increments. Merge takes, per actor, the longer run and the union
//! of the pending increments, then folds what became contiguous: the join
//! of the lattice of dot sets, in compact form.
//!
//! This is the delta-state form of a PN-counter: a classic PN-counter keeps
//! per actor a total of increments and one of decrements; here each actor's
//! signed total is kept (the two totals' difference), with the dots that
//! make it exact under duplicated and reordered delivery.
//!
//! # Digest
//!
//! The content digest is the XOR of one hash per actor `(actor, upto)` and
//! one per pending increment `(actor, seq)`: the dots held, in any order.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_128_with_seed;

use super::{Actor, Version};

/// The seed of the hashes in a counter's content digest: the ASCII bytes of
/// `"kv-count"`, big-endian. Part of the digest contract between nodes:
/// fixed forever.
pub const COUNTER_SEED: u64 = 0x6b76_2d63_6f75_6e74;

/// One actor's increments of a counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActorCount {
    /// Increments `1..=upto` are all counted in `sum`.
    upto: u64,
    /// Their sum.
    sum: i128,
    /// Increments past a gap, by sequence number (all above `upto + 1`).
    pending: BTreeMap<u64, i64>,
}

impl ActorCount {
    /// An actor's state from parts as a peer sends them; pending increments
    /// already counted are dropped and contiguous ones folded.
    pub fn from_parts(upto: u64, sum: i128, pending: impl IntoIterator<Item = (u64, i64)>) -> Self {
        let mut count = ActorCount {
            upto,
            sum,
            pending: BTreeMap::new(),
        };
        for (seq, delta) in pending {
            count.add_pending(seq, delta);
        }
        count.fold();
        count
    }

    /// The longest run of sequence numbers without a gap.
    pub fn upto(&self) -> u64 {
        self.upto
    }

    /// The sum of increments `1..=upto`.
    pub fn sum(&self) -> i128 {
        self.sum
    }

    /// The increments past a gap, by sequence number.
    pub fn pending(&self) -> impl Iterator<Item = (u64, i64)> + '_ {
        self.pending.iter().map(|(&s, &d)| (s, d))
    }

    /// Everything this actor contributes to the counter.
    fn total(&self) -> i128 {
        self.pending
            .values()
            .fold(self.sum, |t, &d| t.saturating_add(i128::from(d)))
    }

    fn add_pending(&mut self, seq: u64, delta: i64) {
        if seq > self.upto {
            // The same dot twice only differs if dots collided; keep the
            // greater so that merge stays a join.
            let slot = self.pending.entry(seq).or_insert(delta);
            *slot = (*slot).max(delta);
        } else if planted_counts_twice() {
            self.sum = self.sum.saturating_add(i128::from(delta));
        }
    }

    fn fold(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.upto.saturating_add(1) {
                break;
            }
            let (seq, delta) = entry.remove_entry();
            self.upto = seq;
            self.sum = self.sum.saturating_add(i128::from(delta));
        }
    }

    /// Joins `other` into this; returns whether this changed.
    fn join(&mut self, other: ActorCount) -> bool {
        // Usually no increment is pending, so the copy is a few words.
        let before = self.clone();
        let other = if (other.upto, other.sum) > (self.upto, self.sum) {
            std::mem::replace(self, other)
        } else {
            other
        };
        for (seq, delta) in other.pending {
            self.add_pending(seq, delta);
        }
        // The longer run may cover increments the other side held pending.
        self.pending = self.pending.split_off(&self.upto.saturating_add(1));
        self.fold();
        *self != before
    }

    fn digest(&self, actor: Actor) -> u128 {
        let mut d = if self.upto > 0 {
            dot_hash(actor, self.upto, 0)
        } else {
            0
        };
        for &seq in self.pending.keys() {
            d ^= dot_hash(actor, seq, 1);
        }
        d
    }
}

/// The simulator's planted bug: an increment delivered again is counted
/// again.
#[cfg(test)]
fn planted_counts_twice() -> bool {
    crate::planted::is(crate::planted::Bug::DuplicateCountedTwice)
}

#[cfg(not(test))]
fn planted_counts_twice() -> bool {
    false
}

/// The hash of a counter's dot summary: xxh3-128 with [`COUNTER_SEED`] of
/// `node (8, LE) ‖ incarnation (8, LE) ‖ seq (8, LE) ‖ tag (1)`, tag 0 for
/// an actor's run `1..=seq`, 1 for a pending increment `seq`.
fn dot_hash(actor: Actor, seq: u64, tag: u8) -> u128 {
    let mut bytes = [0u8; 25];
    bytes[..8].copy_from_slice(&actor.node.to_le_bytes());
    bytes[8..16].copy_from_slice(&actor.incarnation.to_le_bytes());
    bytes[16..24].copy_from_slice(&seq.to_le_bytes());
    bytes[24] = tag;
    xxh3_128_with_seed(&bytes, COUNTER_SEED)
}

/// A PN-counter within one generation (see [`crate::crdt::Entry`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PnCounter {
    generation: Version,
    actors: BTreeMap<Actor, ActorCount>,
    /// XOR of every actor's dot hashes.
    digest: u128,
}

impl PnCounter {
    /// A counter at 0 of generation `generation`: the version of the state
    /// it was created over (`Version::default()` for a key never written).
    pub fn new(generation: Version) -> Self {
        Self {
            generation,
            actors: BTreeMap::new(),
            digest: 0,
        }
    }

    /// A delta holding one increment: `delta` by `actor`, its `seq`th.
    pub fn increment(generation: Version, actor: Actor, seq: u64, delta: i64) -> Self {
        let mut counter = PnCounter::new(generation);
        counter.merge_actor(actor, ActorCount::from_parts(0, 0, [(seq, delta)]));
        counter
    }

    /// The counter's generation.
    pub fn generation(&self) -> Version {
        self.generation
    }

    /// The counter's value: the sum of every increment held, exact in 128
    /// bits.
    pub fn value(&self) -> i128 {
        self.actors
            .values()
            .fold(0i128, |v, a| v.saturating_add(a.total()))
    }

    /// The next sequence number `actor` would use after what this state
    /// holds of it (1 when none).
    pub fn next_seq(&self, actor: Actor) -> u64 {
        self.actors.get(&actor).map_or(1, |a| {
            a.pending
                .keys()
                .next_back()
                .copied()
                .unwrap_or(a.upto)
                .saturating_add(1)
        })
    }

    /// Every actor's state, by actor: what the wire carries.
    pub fn actors(&self) -> impl Iterator<Item = (Actor, &ActorCount)> {
        self.actors.iter().map(|(&a, c)| (a, c))
    }

    /// Merges one actor's state in; returns whether the counter changed.
    pub fn merge_actor(&mut self, actor: Actor, count: ActorCount) -> bool {
        match self.actors.entry(actor) {
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                let before = slot.get().digest(actor);
                let changed = slot.get_mut().join(count);
                if changed {
                    self.digest ^= before ^ slot.get().digest(actor);
                }
                changed
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                self.digest ^= count.digest(actor);
                slot.insert(count);
                true
            }
        }
    }

    /// Merges `other` (of the same generation) into this counter; returns
    /// whether this changed. The join of the counter lattice.
    pub fn join(&mut self, other: PnCounter) -> bool {
        let mut changed = false;
        for (actor, count) in other.actors {
            changed |= self.merge_actor(actor, count);
        }
        changed
    }

    /// The content digest, kept current by every change.
    pub fn digest(&self) -> u128 {
        self.digest
    }

    /// The content digest computed from scratch, to check the kept one.
    pub fn recompute_digest(&self) -> u128 {
        self.actors.iter().fold(0, |d, (&a, c)| d ^ c.digest(a))
    }

    /// An estimate of the state's size in memory and on the wire.
    pub fn wire_size(&self) -> usize {
        self.actors
            .values()
            .map(|c| 44 + 12 * c.pending.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn joined(mut a: PnCounter, b: PnCounter) -> PnCounter {
        a.join(b);
        a
    }

    /// Increments by three actors: `(actor, delta)` in issue order; each
    /// actor numbers its own from 1.
    fn increments() -> impl Strategy<Value = Vec<(u64, i64)>> {
        prop::collection::vec((0..3u64, -1000i64..1000), 0..40)
    }

    /// One delta per increment, as coordinators make them.
    fn deltas(incs: &[(u64, i64)]) -> Vec<PnCounter> {
        let mut next = [1u64; 3];
        incs.iter()
            .map(|&(a, d)| {
                let seq = next[a as usize];
                next[a as usize] += 1;
                PnCounter::increment(Version::default(), Actor::new(a, 9), seq, d)
            })
            .collect()
    }

    /// A deterministic Fisher-Yates shuffle from `seed`.
    fn shuffle<T>(items: &mut [T], mut seed: u64) {
        for i in (1..items.len()).rev() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            items.swap(i, (seed >> 33) as usize % (i + 1));
        }
    }

    /// Three replica states made of random subsets of the deltas, each
    /// merged in a random order.
    fn states() -> impl Strategy<Value = Vec<PnCounter>> {
        (
            increments(),
            any::<u64>(),
            prop::collection::vec(any::<u64>(), 3),
        )
            .prop_map(|(incs, seed, masks)| {
                let all = deltas(&incs);
                masks
                    .iter()
                    .enumerate()
                    .map(|(r, mask)| {
                        let mut mine: Vec<PnCounter> = all
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| mask >> (i % 64) & 1 == 1)
                            .map(|(_, d)| d.clone())
                            .collect();
                        shuffle(&mut mine, seed ^ r as u64);
                        mine.into_iter()
                            .fold(PnCounter::new(Version::default()), joined)
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn merge_is_a_join(s in states()) {
            crate::crdt::laws::check(&s[0], &s[1], &s[2], joined)?;
        }

        #[test]
        fn kept_digest_equals_recomputed(s in states()) {
            for c in &s {
                prop_assert_eq!(c.digest(), c.recompute_digest());
            }
        }

        /// Every increment counts exactly once however deltas are
        /// duplicated and reordered: the value is the plain sum.
        #[test]
        fn duplicated_and_reordered_delivery_counts_each_increment_once(
            incs in increments(),
            copies in prop::collection::vec(1usize..4, 40),
            seed in any::<u64>(),
        ) {
            let all = deltas(&incs);
            let mut delivered: Vec<PnCounter> = all
                .iter()
                .zip(copies.iter().cycle())
                .flat_map(|(d, &n)| std::iter::repeat_n(d.clone(), n))
                .collect();
            shuffle(&mut delivered, seed);
            let state = delivered.into_iter().fold(PnCounter::new(Version::default()), joined);
            let sum: i128 = incs.iter().map(|&(_, d)| i128::from(d)).sum();
            prop_assert_eq!(state.value(), sum);
            // Everything folded: no gaps are left once all arrived.
            prop_assert!(state.actors().all(|(_, c)| c.pending().next().is_none()));
        }
    }

    #[test]
    fn a_gap_holds_later_increments_until_it_fills() {
        let a = Actor::new(1, 1);
        let mut c = PnCounter::new(Version::default());
        c.join(PnCounter::increment(Version::default(), a, 2, 10));
        c.join(PnCounter::increment(Version::default(), a, 3, 100));
        assert_eq!(c.value(), 110);
        assert_eq!(c.next_seq(a), 4);
        let (_, count) = c.actors().next().unwrap();
        assert_eq!((count.upto(), count.pending().count()), (0, 2));
        c.join(PnCounter::increment(Version::default(), a, 1, 1));
        let (_, count) = c.actors().next().unwrap();
        assert_eq!(
            (count.upto(), count.sum(), count.pending().count()),
            (3, 111, 0)
        );
        // A replayed increment changes nothing.
        assert!(!c.join(PnCounter::increment(Version::default(), a, 2, 10)));
        assert_eq!(c.value(), 111);
    }
}
