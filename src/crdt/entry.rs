//! The state every key holds: a string or a tombstone (a last-writer-wins
//! register), a map, or a counter, and how two states of a key merge.
//!
//! # Kinds and generations
//!
//! A string write and a delete replace the whole key: their state is a
//! last-writer-wins register, and the greater version wins. A map or a
//! counter instead accumulates writes that merge (see [`OrMap`] and
//! [`PnCounter`]); it begins over whatever the key held when its first
//! write was made (absent, a tombstone, an expired string) and keeps, as
//! its *generation*, the version of that state (`Version::default()` for a
//! key never written). Writes to an existing map or counter continue its
//! generation, so maps created concurrently over the same state, on two
//! sides of a partition, are one map and merge field by field.
//!
//! Merge orders the states of a key by `(g, rank)`, where `g` is the
//! version of a string or tombstone and the generation of a map or
//! counter, and the rank is 0 for a string or tombstone, 1 for a counter,
//! 2 for a map. The greater wins whole; equal ones merge (two maps or two
//! counters of one generation join; two registers of one version keep the
//! greater by expiry and payload, which only happens if versions collided).
//! That is a lexicographic product of a total order and join
//! semilattices, so merge is commutative, associative and idempotent.
//!
//! What it means for concurrent writes (made without seeing each other):
//!
//! - a delete or a string write whose version is newer than a map's or a
//!   counter's generation replaces it, with every write of that generation
//!   (including ones the deleter had not seen): a delete wins over
//!   concurrent map and counter writes;
//! - a map or counter created over a state replaces that state, and any
//!   string write or delete older than it;
//! - a map and a counter created concurrently over the same state: the
//!   map wins (rank), on every replica.
//!
//! Coordinators check kinds before writing (a map write where a string is
//! held fails), so these rules only decide between writes that could not
//! see each other.
//!
//! # The entry's version
//!
//! `Entry::version` is the greatest version of any write the state holds:
//! a string's or tombstone's own, the newest write of a map or counter.
//! New writes are stamped above it, so a delete orders after everything it
//! replaces.

use std::cmp::Ordering;
use std::convert::Infallible;

use super::{OrMap, PnCounter, Version};

/// What a key holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// The key was deleted.
    Tombstone,
    /// The key holds this string.
    Value(Box<str>),
    /// The key held a string whose expiry has passed, and its bytes were
    /// dropped. In a cluster an expired string stays until every replica
    /// holds it (so that no replica's older value comes back), which may be
    /// hours: dropping its bytes at expiry keeps that wait from holding
    /// memory. It reads as absent on every node, whatever its clock says,
    /// and at the same version and expiry it wins over the string it
    /// replaced, so the bytes drop on every replica it reaches.
    Expired,
    /// The key holds a map.
    Map(Box<OrMap>),
    /// The key holds a counter.
    Counter(Box<PnCounter>),
}

/// The kind of state a key holds, as stored (an expired string or a map
/// with no field is still its kind here; see [`Held`] for how it reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A tombstone.
    Tombstone,
    /// A string.
    String,
    /// A map.
    Map,
    /// A counter.
    Counter,
}

impl Kind {
    /// The kind as error messages name it: "a string", "a map"...
    pub fn article(self) -> &'static str {
        match self {
            Kind::Tombstone => "nothing (deleted)",
            Kind::String => "a string",
            Kind::Map => "a map",
            Kind::Counter => "a counter",
        }
    }
}

/// What a key reads as at some instant: absent (never written, deleted,
/// expired, or a map with no field), or a value of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held<'a> {
    /// Nothing readable.
    Absent,
    /// A string.
    String(&'a str),
    /// A map with at least one field.
    Map(&'a OrMap),
    /// A counter (at 0 too: a counter exists once incremented).
    Counter(&'a PnCounter),
}

impl Held<'_> {
    /// The kind read, `None` when absent.
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Held::Absent => None,
            Held::String(_) => Some(Kind::String),
            Held::Map(_) => Some(Kind::Map),
            Held::Counter(_) => Some(Kind::Counter),
        }
    }
}

/// The state of one key, stamped with the [`Version`] of the newest write
/// it holds and, for a string, an optional expiry.
///
/// Merge ([`Entry::merge_from`]) is the join described in the module
/// documentation. Versions are unique in a correct cluster, but merge must
/// still be a join when they are not (a bug, a replayed message from a
/// reused clock id), so every tie is broken by a total order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The greatest version of any write the state holds.
    pub version: Version,
    /// For a string: the instant (NTP64, the version's time scale) from
    /// which it reads as absent; 0 for never. Fixed at write time, so every
    /// replica expires the value at the same instant. Always 0 otherwise.
    pub expires_at: u64,
    /// The value, tombstone, map or counter.
    pub payload: Payload,
}

impl Entry {
    /// A value written at `version`, expiring at `expires_at` (0 for never).
    pub fn value(version: Version, value: impl Into<Box<str>>, expires_at: u64) -> Self {
        Self {
            version,
            expires_at,
            payload: Payload::Value(value.into()),
        }
    }

    /// A tombstone written at `version`.
    pub fn tombstone(version: Version) -> Self {
        Self {
            version,
            expires_at: 0,
            payload: Payload::Tombstone,
        }
    }

    /// A map whose newest write is `version`.
    pub fn map(version: Version, map: OrMap) -> Self {
        Self {
            version,
            expires_at: 0,
            payload: Payload::Map(Box::new(map)),
        }
    }

    /// A counter whose newest write is `version`.
    pub fn counter(version: Version, counter: PnCounter) -> Self {
        Self {
            version,
            expires_at: 0,
            payload: Payload::Counter(Box::new(counter)),
        }
    }

    /// The kind stored.
    pub fn kind(&self) -> Kind {
        match self.payload {
            Payload::Tombstone => Kind::Tombstone,
            Payload::Value(_) | Payload::Expired => Kind::String,
            Payload::Map(_) => Kind::Map,
            Payload::Counter(_) => Kind::Counter,
        }
    }

    /// What the key reads as at `now` (NTP64).
    pub fn held(&self, now: u64) -> Held<'_> {
        match &self.payload {
            Payload::Tombstone | Payload::Expired => Held::Absent,
            Payload::Value(_) if self.is_expired(now) => Held::Absent,
            Payload::Value(v) => Held::String(v),
            Payload::Map(m) if m.is_empty() => Held::Absent,
            Payload::Map(m) => Held::Map(m),
            Payload::Counter(c) => Held::Counter(c),
        }
    }

    /// The string when it is readable at `now` (NTP64): present and not
    /// expired.
    pub fn live_value(&self, now: u64) -> Option<&str> {
        match &self.payload {
            Payload::Value(v) if !self.is_expired(now) => Some(v),
            _ => None,
        }
    }

    /// Whether this entry is a string whose expiry has passed at `now`
    /// (an [`Payload::Expired`] one has, by definition).
    pub fn is_expired(&self, now: u64) -> bool {
        match self.payload {
            Payload::Value(_) => self.expires_at != 0 && self.expires_at <= now,
            Payload::Expired => true,
            _ => false,
        }
    }

    /// Whether this entry is a string (expired or not, its bytes dropped
    /// or not).
    pub fn is_value(&self) -> bool {
        matches!(self.payload, Payload::Value(_) | Payload::Expired)
    }

    /// Drops the bytes of a string whose expiry has passed at `now`;
    /// returns whether it did. The version, expiry and Merkle digest stay.
    pub fn drop_expired_bytes(&mut self, now: u64) -> bool {
        let due = matches!(self.payload, Payload::Value(_)) && self.is_expired(now);
        if due {
            self.payload = Payload::Expired;
        }
        due
    }

    /// Whether this entry holds something: not a tombstone, nor a map whose
    /// fields were all removed (which reads as absent and is collected like
    /// a tombstone). An expired string still counts until collected.
    pub fn is_live(&self) -> bool {
        match &self.payload {
            Payload::Tombstone => false,
            Payload::Map(m) => !m.is_empty(),
            Payload::Value(_) | Payload::Expired | Payload::Counter(_) => true,
        }
    }

    /// The generation of a map or counter; `None` for a string or tombstone.
    pub fn generation(&self) -> Option<Version> {
        match &self.payload {
            Payload::Map(m) => Some(m.generation()),
            Payload::Counter(c) => Some(c.generation()),
            Payload::Tombstone | Payload::Value(_) | Payload::Expired => None,
        }
    }

    /// Where this state stands in merge's order: its version (string or
    /// tombstone) or generation (map or counter), and its kind's rank. The
    /// greater rank wins whole; equal ranks merge. Anti-entropy compares
    /// ranks to tell which side holds the state that wins.
    pub fn rank(&self) -> (Version, u8) {
        match &self.payload {
            Payload::Tombstone | Payload::Value(_) | Payload::Expired => (self.version, 0),
            Payload::Counter(c) => (c.generation(), 1),
            Payload::Map(m) => (m.generation(), 2),
        }
    }

    /// The content digest of a map or counter (the XOR of its elements'
    /// hashes, kept current by every change); `None` for a string or
    /// tombstone, whose version alone names its content.
    pub fn content_digest(&self) -> Option<u128> {
        match &self.payload {
            Payload::Map(m) => Some(m.digest()),
            Payload::Counter(c) => Some(c.digest()),
            Payload::Tombstone | Payload::Value(_) | Payload::Expired => None,
        }
    }

    /// [`Entry::content_digest`] computed from scratch: the periodic tree
    /// check uses it, so that a kept digest gone wrong would show.
    pub fn recomputed_content_digest(&self) -> Option<u128> {
        match &self.payload {
            Payload::Map(m) => Some(m.recompute_digest()),
            Payload::Counter(c) => Some(c.recompute_digest()),
            Payload::Tombstone | Payload::Value(_) | Payload::Expired => None,
        }
    }

    /// The bytes of the value: the string, the map's elements, the counter's
    /// actors (estimates for the last two), 0 for a tombstone. What message
    /// and hint bounds count.
    pub fn payload_size(&self) -> usize {
        match &self.payload {
            Payload::Tombstone | Payload::Expired => 0,
            Payload::Value(v) => v.len(),
            Payload::Map(m) => m.wire_size(),
            Payload::Counter(c) => c.wire_size(),
        }
    }

    /// Merges `other` into `self`; returns whether `self` changed.
    ///
    /// This is the join of the lattice described in the module
    /// documentation: commutative, associative and idempotent (see the
    /// property tests below).
    pub fn merge_from(&mut self, other: Entry) -> bool {
        let order = self.rank().cmp(&other.rank());
        if order == planted_order(Ordering::Less) {
            *self = other;
            return true;
        }
        match order {
            Ordering::Less | Ordering::Greater => false,
            Ordering::Equal => {
                let Entry {
                    version,
                    expires_at,
                    payload,
                } = other;
                let changed = match (&mut self.payload, payload) {
                    (Payload::Map(mine), Payload::Map(theirs)) => mine.join(*theirs),
                    (Payload::Counter(mine), Payload::Counter(theirs)) => mine.join(*theirs),
                    (_, payload) => {
                        // Two registers of the same version.
                        let other = Entry {
                            version,
                            expires_at,
                            payload,
                        };
                        if register_order(self, &other) == planted_order(Ordering::Less) {
                            *self = other;
                            return true;
                        }
                        return false;
                    }
                };
                if version > self.version {
                    self.version = version;
                    return true;
                }
                changed
            }
        }
    }
}

/// The order of two strings or tombstones: version, then the tie-breakers
/// (expiry, then a tombstone before any string, strings by their bytes,
/// and an expired string whose bytes were dropped after the string it
/// was: the same write, later in its life).
fn register_order(a: &Entry, b: &Entry) -> Ordering {
    fn payload(e: &Entry) -> (u8, &str) {
        match &e.payload {
            Payload::Value(v) => (1, v),
            Payload::Expired => (2, ""),
            _ => (0, ""),
        }
    }
    (a.version, a.expires_at)
        .cmp(&(b.version, b.expires_at))
        .then_with(|| payload(a).cmp(&payload(b)))
}

/// The order in which the incoming entry wins: reversed by the simulator's
/// planted bug.
#[cfg(test)]
fn planted_order(wins: Ordering) -> Ordering {
    use crate::planted::{is, Bug};
    if is(Bug::SmallerVersionWins) {
        wins.reverse()
    } else {
        wins
    }
}

#[cfg(not(test))]
fn planted_order(wins: Ordering) -> Ordering {
    wins
}

/// The `crdts` crate's state-based CRDT interface, so the entry composes
/// with that crate's containers and tooling.
impl crdts::CvRDT for Entry {
    type Validation = Infallible;

    fn validate_merge(&self, _other: &Self) -> Result<(), Self::Validation> {
        Ok(())
    }

    fn merge(&mut self, other: Self) {
        self.merge_from(other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{Actor, Add, Field};
    use proptest::prelude::*;

    fn register() -> impl Strategy<Value = Entry> {
        // Small ranges so that equal times and equal versions occur often.
        (
            0u64..4,
            0u64..3,
            0u64..3,
            prop::option::of("[ab]{0,2}"),
            any::<bool>(),
        )
            .prop_map(|(time, node, expires_at, value, dropped)| {
                let version = Version::new(time, node);
                match value {
                    Some(v) => {
                        let mut e = Entry::value(version, v, expires_at);
                        if dropped {
                            e.drop_expired_bytes(u64::MAX);
                        }
                        e
                    }
                    None => Entry::tombstone(version),
                }
            })
    }

    fn generation() -> impl Strategy<Value = Version> {
        prop_oneof![
            Just(Version::default()),
            Just(Version::new(1, 1)),
            Just(Version::new(2, 0))
        ]
    }

    /// A map whose adds come from a fixed pool of dots, each with one value,
    /// as unique dots guarantee in a cluster; contexts are random.
    fn map() -> impl Strategy<Value = Entry> {
        let field = (
            prop::collection::vec((0u64..2, 1u64..4), 0..3),
            prop::collection::vec((0u64..2, 0u64..5), 0..3),
        );
        (
            generation(),
            0u64..6,
            prop::collection::vec((0u8..2, field), 0..3),
        )
            .prop_map(|(generation, top, fields)| {
                let mut m = OrMap::new(generation);
                for (name, (adds, context)) in fields {
                    let adds = adds
                        .into_iter()
                        .map(|(a, time)| Add {
                            actor: Actor::new(a, 1),
                            time,
                            value: format!("{a}@{time}").into(),
                        })
                        .collect();
                    let context = context
                        .into_iter()
                        .map(|(a, t)| (Actor::new(a, 1), t))
                        .collect();
                    m.merge_field(&format!("f{name}"), Field::from_parts(adds, context, 0));
                }
                Entry::map(Version::new(top, 0), m)
            })
    }

    /// A counter whose increments come from a fixed pool of dots.
    fn counter() -> impl Strategy<Value = Entry> {
        (
            generation(),
            0u64..6,
            prop::collection::vec((0u64..2, 1u64..5), 0..5),
        )
            .prop_map(|(generation, top, dots)| {
                let mut c = PnCounter::new(generation);
                for (a, seq) in dots {
                    let delta = (a as i64 * 10 + seq as i64) * if seq % 2 == 0 { -1 } else { 1 };
                    c.join(PnCounter::increment(
                        generation,
                        Actor::new(a, 1),
                        seq,
                        delta,
                    ));
                }
                Entry::counter(Version::new(top, 0), c)
            })
    }

    fn entry() -> impl Strategy<Value = Entry> {
        prop_oneof![register(), map(), counter()]
    }

    fn merged(mut a: Entry, b: Entry) -> Entry {
        a.merge_from(b);
        a
    }

    proptest! {
        #[test]
        fn merge_is_a_join(a in entry(), b in entry(), c in entry()) {
            crate::crdt::laws::check(&a, &b, &c, merged)?;
        }

        #[test]
        fn greater_version_wins_between_registers(a in register(), b in register()) {
            prop_assume!(a.version != b.version);
            let winner = if a.version > b.version { a.clone() } else { b.clone() };
            prop_assert_eq!(merged(a, b), winner);
        }

        #[test]
        fn the_greater_rank_wins_whole(a in entry(), b in entry()) {
            prop_assume!(a.rank() != b.rank());
            let winner = if a.rank() > b.rank() { a.clone() } else { b.clone() };
            prop_assert_eq!(merged(a, b), winner);
        }

        #[test]
        fn the_version_is_the_newest_of_equal_ranks(
            (a, b) in prop_oneof![(map(), map()), (counter(), counter())]
        ) {
            prop_assume!(a.rank() == b.rank());
            let newest = a.version.max(b.version);
            prop_assert_eq!(merged(a, b).version, newest);
        }
    }

    #[test]
    fn equal_times_are_broken_by_node_id_as_a_number() {
        let low = Entry::value(Version::new(7, 0x2), "low", 0);
        let high = Entry::value(Version::new(7, 0x100), "high", 0);
        assert_eq!(merged(low.clone(), high.clone()), high);
        assert_eq!(merged(high.clone(), low), high);
    }

    #[test]
    fn a_newer_tombstone_hides_an_older_value() {
        let value = Entry::value(Version::new(1, 1), "v", 0);
        let tomb = Entry::tombstone(Version::new(2, 1));
        let state = merged(value.clone(), tomb.clone());
        assert_eq!(state.live_value(0), None);
        // And a stale value arriving later does not resurrect it.
        assert_eq!(merged(state, value), tomb);
    }

    #[test]
    fn an_expired_string_drops_its_bytes_and_they_do_not_come_back() {
        let full = Entry::value(Version::new(1, 1), "a large value", 100);
        let mut dropped = full.clone();
        assert!(!dropped.drop_expired_bytes(99), "not before its expiry");
        assert!(dropped.drop_expired_bytes(100));
        assert_eq!(dropped.payload, Payload::Expired);
        assert_eq!((dropped.version, dropped.expires_at), (full.version, 100));
        assert_eq!(dropped.payload_size(), 0);
        // Absent everywhere, even on a node whose clock is behind the expiry.
        assert_eq!(dropped.held(0), Held::Absent);
        assert!(dropped.is_expired(0) && dropped.is_value() && dropped.is_live());
        // The same write, later in its life: it wins over its bytes either way.
        assert_eq!(merged(full.clone(), dropped.clone()), dropped);
        assert_eq!(merged(dropped.clone(), full), dropped);
        // A newer write still replaces it.
        let newer = Entry::value(Version::new(2, 1), "new", 0);
        assert_eq!(merged(dropped, newer.clone()), newer);
    }

    #[test]
    fn expiry_hides_the_value_from_its_instant_on() {
        let e = Entry::value(Version::new(1, 1), "v", 100);
        assert_eq!(e.live_value(99), Some("v"));
        assert_eq!(e.live_value(100), None);
        assert!(e.is_expired(100));
        assert_eq!(e.held(100), Held::Absent);
        assert!(!Entry::tombstone(Version::new(1, 1)).is_expired(u64::MAX));
    }

    fn map_with(generation: Version, time: u64, field: &str) -> Entry {
        let mut m = OrMap::new(generation);
        let add = Add {
            actor: Actor::new(time, 1),
            time,
            value: "v".into(),
        };
        m.merge_field(field, Field::written(add, &[]));
        Entry::map(Version::new(time, 1), m)
    }

    #[test]
    fn a_delete_replaces_the_generation_it_saw_with_concurrent_writes() {
        let created = map_with(Version::default(), 5, "a");
        // On one side the map is deleted (stamped after what it saw); on the
        // other, a field is set concurrently, later by the clock.
        let tomb = Entry::tombstone(Version::new(6, 1));
        let concurrent = map_with(Version::default(), 9, "b");
        let all = merged(merged(created.clone(), concurrent.clone()), tomb.clone());
        assert_eq!(all, tomb);
        // A map created after the delete (over it) wins over it.
        let recreated = map_with(tomb.version, 7, "c");
        let all = merged(merged(tomb.clone(), created), recreated.clone());
        assert_eq!(all, recreated);
        assert!(matches!(all.held(0), Held::Map(m) if m.get("c") == Some("v")));
    }

    #[test]
    fn maps_created_concurrently_over_the_same_state_merge() {
        let tomb = Entry::tombstone(Version::new(3, 1));
        let a = map_with(tomb.version, 5, "a");
        let b = map_with(tomb.version, 6, "b");
        let all = merged(merged(tomb, a), b);
        let Held::Map(m) = all.held(0) else {
            panic!("a map: {all:?}")
        };
        assert_eq!(m.len(), 2);
        assert_eq!(all.version, Version::new(6, 1));
    }

    #[test]
    fn a_map_wins_over_a_counter_created_concurrently_over_the_same_state() {
        let m = map_with(Version::default(), 5, "a");
        let c = Entry::counter(
            Version::new(9, 2),
            PnCounter::increment(Version::default(), Actor::new(2, 1), 1, 1),
        );
        assert_eq!(merged(m.clone(), c.clone()), m);
        assert_eq!(merged(c, m.clone()), m);
    }

    #[test]
    fn a_map_without_fields_reads_absent_and_is_not_live() {
        let empty = Entry::map(Version::new(2, 1), OrMap::new(Version::default()));
        assert_eq!(empty.held(0), Held::Absent);
        assert!(!empty.is_live());
        assert_eq!(empty.kind(), Kind::Map);
    }
}
