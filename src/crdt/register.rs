//! The last-writer-wins register every key holds.

use std::cmp::Ordering;
use std::convert::Infallible;

use super::Version;

/// What a write left at a key: a value, or a tombstone that says the key was
/// deleted. A tombstone is state like any other: it must win over every older
/// value that a lagging replica still holds, or deletes would come back.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Payload {
    /// The key was deleted.
    Tombstone,
    /// The key holds this string.
    Value(Box<str>),
}

/// A last-writer-wins register over [`Payload`], stamped with the [`Version`]
/// of the write that produced it and an optional expiry.
///
/// Merge keeps the entry with the greater version. Versions are unique in a
/// correct cluster, but merge must still be a join when they are not (a bug,
/// a replayed message from a reused clock id): then the greater
/// `(expires_at, payload)` wins, so that replicas never stay divergent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The version of the write.
    pub version: Version,
    /// The instant (NTP64, the version's time scale) from which a value reads
    /// as absent; 0 for never. Fixed at write time, so every replica expires
    /// the value at the same instant.
    pub expires_at: u64,
    /// The value or tombstone.
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

    /// The value when it is readable at `now` (NTP64): present and not expired.
    pub fn live_value(&self, now: u64) -> Option<&str> {
        match &self.payload {
            Payload::Value(v) if !self.is_expired(now) => Some(v),
            _ => None,
        }
    }

    /// Whether this entry is a value whose expiry has passed at `now`.
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now && self.is_value()
    }

    /// Whether this entry is a value (expired or not) rather than a tombstone.
    pub fn is_value(&self) -> bool {
        matches!(self.payload, Payload::Value(_))
    }

    /// Merges `other` into `self`; returns whether `self` changed.
    ///
    /// This is the join of the register's lattice: commutative, associative
    /// and idempotent (see the property tests below).
    pub fn merge_from(&mut self, other: Entry) -> bool {
        if self.precedence(&other) == planted_order(Ordering::Less) {
            *self = other;
            true
        } else {
            false
        }
    }

    /// The total order merge follows: version first, then the tie-breakers.
    fn precedence(&self, other: &Entry) -> Ordering {
        (self.version, self.expires_at, &self.payload).cmp(&(
            other.version,
            other.expires_at,
            &other.payload,
        ))
    }
}

/// The order in which the incoming entry wins: reversed by the simulator's
/// planted bug.
#[cfg(test)]
fn planted_order(wins: Ordering) -> Ordering {
    use crate::sim::planted::{is, Bug};
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

/// The `crdts` crate's state-based CRDT interface, so the register composes
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
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = Entry> {
        // Small ranges so that equal times and equal versions occur often.
        (0u64..4, 0u64..3, 0u64..3, prop::option::of("[ab]{0,2}")).prop_map(
            |(time, node, expires_at, value)| {
                let version = Version::new(time, node);
                match value {
                    Some(v) => Entry::value(version, v, expires_at),
                    None => Entry::tombstone(version),
                }
            },
        )
    }

    fn merged(mut a: Entry, b: Entry) -> Entry {
        a.merge_from(b);
        a
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in entry(), b in entry()) {
            prop_assert_eq!(merged(a.clone(), b.clone()), merged(b, a));
        }

        #[test]
        fn merge_is_associative(a in entry(), b in entry(), c in entry()) {
            prop_assert_eq!(
                merged(merged(a.clone(), b.clone()), c.clone()),
                merged(a, merged(b, c))
            );
        }

        #[test]
        fn merge_is_idempotent(a in entry(), b in entry()) {
            let once = merged(a.clone(), b.clone());
            prop_assert_eq!(merged(once.clone(), b), once.clone());
            prop_assert_eq!(merged(once.clone(), once.clone()), once);
        }

        #[test]
        fn greater_version_wins(a in entry(), b in entry()) {
            prop_assume!(a.version != b.version);
            let winner = if a.version > b.version { a.clone() } else { b.clone() };
            prop_assert_eq!(merged(a, b), winner);
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
    fn expiry_hides_the_value_from_its_instant_on() {
        let e = Entry::value(Version::new(1, 1), "v", 100);
        assert_eq!(e.live_value(99), Some("v"));
        assert_eq!(e.live_value(100), None);
        assert!(e.is_expired(100));
        assert!(!Entry::tombstone(Version::new(1, 1)).is_expired(u64::MAX));
    }
}
