//! Client operations on typed values, as pure functions of the state the
//! coordinator observed: the kind check, the limits that depend on the
//! stored value, and the delta each write ships.
//!
//! A write builds a *delta*: an [`Entry`] holding only what the operation
//! adds (a map delta carries the fields written and the context they
//! supersede; a counter delta carries one increment). The coordinator
//! merges the delta into its store when it is a replica and ships the same
//! delta to the other replicas and into hints, so the bytes moved per write
//! stay those of the write, not of the whole map. A delta is a state of the
//! lattice like any other, so merging it any number of times, in any order
//! with others, is safe.

use std::collections::BTreeMap;

use thiserror::Error;

use super::{
    Actor, Add, Entry, Field, Held, Kind, OrMap, Payload, PnCounter, Version, FIELD_OVERHEAD,
};

/// Why an operation does not fit the value the key holds.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TypeError {
    /// The key holds a value of another kind.
    #[error("key holds {}; {op} needs {needs}", holds.article())]
    WrongKind {
        /// The operation, as the contract names it.
        op: &'static str,
        /// The kind the key holds.
        holds: Kind,
        /// What the operation works on.
        needs: &'static str,
    },
    /// The map would grow past the value limit.
    #[error("map would hold {size} bytes (field names, values and 16 per value); the limit is {limit} (--max-value-bytes)")]
    MapTooLarge {
        /// The map's size after the write ([`OrMap::bytes`]).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The counter would leave the signed 64-bit range.
    #[error("counter is {value}; adding {delta} would pass {bound}, the limit of a signed 64-bit counter")]
    CounterOverflow {
        /// The counter's value as the coordinator sees it.
        value: i128,
        /// The increment refused.
        delta: i64,
        /// The bound it would pass.
        bound: i64,
    },
}

const STRING_WRITE: &str = "a string or an absent key (Delete removes any kind)";
const STRING_READ: &str = "a string (read maps with MapGet, counters with GetCounter)";
const MAP: &str = "a map or an absent key (Delete removes any kind)";
const COUNTER: &str = "a counter or an absent key (Delete removes any kind)";

fn wrong(op: &'static str, holds: Kind, needs: &'static str) -> TypeError {
    TypeError::WrongKind { op, holds, needs }
}

/// What `stored` reads as at `now`; absent when there is nothing.
fn held(stored: Option<&Entry>, now: u64) -> Held<'_> {
    stored.map_or(Held::Absent, |e| e.held(now))
}

/// The generation a new map or counter begins over `stored`: the version of
/// what it replaces, or the default version for a key never written.
fn new_generation(stored: Option<&Entry>) -> Version {
    stored.map_or_else(Version::default, |e| e.version)
}

/// `Set` may write a string where the key holds a string or nothing.
pub fn check_string_write(stored: Option<&Entry>, now: u64) -> Result<(), TypeError> {
    match held(stored, now).kind() {
        Some(kind @ (Kind::Map | Kind::Counter)) => Err(wrong("Set", kind, STRING_WRITE)),
        _ => Ok(()),
    }
}

/// `Get`: the string, if the key holds a readable one.
pub fn read_string(entry: Option<&Entry>, now: u64) -> Result<Option<&str>, TypeError> {
    match held(entry, now) {
        Held::String(s) => Ok(Some(s)),
        Held::Absent => Ok(None),
        other => Err(wrong(
            "Get",
            other.kind().unwrap_or(Kind::Tombstone),
            STRING_READ,
        )),
    }
}

/// `MapGet`: the named fields (every field when `names` is empty) of the
/// map the key holds, `None` when it holds none.
pub fn read_map(
    entry: Option<&Entry>,
    now: u64,
    names: &[&str],
) -> Result<Option<BTreeMap<String, String>>, TypeError> {
    match held(entry, now) {
        Held::Map(m) if names.is_empty() => {
            Ok(Some(m.iter().map(|(n, v)| (n.into(), v.into())).collect()))
        }
        Held::Map(m) => Ok(Some(
            names
                .iter()
                .filter_map(|&n| m.get(n).map(|v| (n.into(), v.into())))
                .collect(),
        )),
        Held::Absent => Ok(None),
        other => Err(wrong(
            "MapGet",
            other.kind().unwrap_or(Kind::Tombstone),
            MAP,
        )),
    }
}

/// `GetCounter`: the counter's exact value, `None` when the key holds none.
pub fn read_counter(entry: Option<&Entry>, now: u64) -> Result<Option<i128>, TypeError> {
    match held(entry, now) {
        Held::Counter(c) => Ok(Some(c.value())),
        Held::Absent => Ok(None),
        other => Err(wrong(
            "GetCounter",
            other.kind().unwrap_or(Kind::Tombstone),
            COUNTER,
        )),
    }
}

/// The map a map operation builds on: the one stored (even with no field
/// left, so that its removals keep holding), or none.
fn observed_map<'a>(
    op: &'static str,
    stored: Option<&'a Entry>,
    now: u64,
) -> Result<Option<&'a OrMap>, TypeError> {
    match held(stored, now) {
        Held::String(_) => Err(wrong(op, Kind::String, MAP)),
        Held::Counter(_) => Err(wrong(op, Kind::Counter, MAP)),
        _ => Ok(stored.and_then(|e| match &e.payload {
            Payload::Map(m) => Some(&**m),
            _ => None,
        })),
    }
}

/// `MapSet`: the delta that sets `fields` at `version`, written by
/// incarnation `incarnation` of the node that issued `version`, over the
/// `stored` state observed at `now`. Each field's delta carries the field's
/// observed context, so it supersedes every value the writer saw. Refused
/// when the key holds another kind, or when the map's size
/// ([`OrMap::bytes`]) would pass `limit`.
pub fn map_set(
    stored: Option<&Entry>,
    now: u64,
    fields: &[(&str, &str)],
    version: Version,
    incarnation: u64,
    limit: usize,
) -> Result<Entry, TypeError> {
    let observed = observed_map("MapSet", stored, now)?;
    let generation = observed.map_or_else(|| new_generation(stored), |m| m.generation());
    let mut size = observed.map_or(0, |m| m.bytes());
    for &(name, value) in fields {
        let old = observed
            .and_then(|m| m.field(name))
            .filter(|f| !f.adds().is_empty())
            .map_or(0, |f| name.len() + f.bytes());
        size = size.saturating_sub(old) + name.len() + value.len() + FIELD_OVERHEAD;
    }
    if size > limit {
        return Err(TypeError::MapTooLarge { size, limit });
    }
    let actor = Actor::new(version.node, incarnation);
    let mut delta = OrMap::new(generation);
    for &(name, value) in fields {
        let context = observed
            .and_then(|m| m.field(name))
            .map_or(&[][..], Field::context);
        let add = Add {
            actor,
            time: version.time,
            value: value.into(),
        };
        delta.merge_field(name, Field::written(add, context));
    }
    Ok(Entry::map(version, delta))
}

/// Whether `MapRemove` of `names` over `stored` has anything to remove: a
/// named field present in the map. Refused when the key holds another kind.
pub fn removes_any(stored: Option<&Entry>, now: u64, names: &[&str]) -> Result<bool, TypeError> {
    let observed = observed_map("MapRemove", stored, now)?;
    Ok(observed.is_some_and(|m| names.iter().any(|&n| m.get(n).is_some())))
}

/// `MapRemove`: the delta that removes, at `version`, the values of the
/// fields `names` that the `stored` state observed at `now` holds. Values
/// written concurrently elsewhere, unseen here, survive it (add wins).
pub fn map_remove(
    stored: Option<&Entry>,
    now: u64,
    names: &[&str],
    version: Version,
) -> Result<Entry, TypeError> {
    let observed = observed_map("MapRemove", stored, now)?;
    let generation = observed.map_or_else(|| new_generation(stored), |m| m.generation());
    let mut delta = OrMap::new(generation);
    for &name in names {
        if let Some(field) = observed.and_then(|m| m.field(name)) {
            if !field.adds().is_empty() {
                delta.merge_field(name, Field::removed(field.context(), version.time));
            }
        }
    }
    Ok(Entry::map(version, delta))
}

/// `Increment`: the delta that adds `delta` at `version` over the `stored`
/// state observed at `now`, and the counter's value after it as the
/// coordinator sees it. `issue` names the increment's dot: given the
/// counter's generation and the observed counter, it returns the actor and
/// the sequence number (see the `dots` module). Refused when the key holds
/// another kind, or when the value would leave the signed 64-bit range
/// (nothing is written then).
pub fn increment(
    stored: Option<&Entry>,
    now: u64,
    delta: i64,
    version: Version,
    issue: impl FnOnce(Version, Option<&PnCounter>) -> (Actor, u64),
) -> Result<(Entry, i64), TypeError> {
    let observed = match held(stored, now) {
        Held::String(_) => return Err(wrong("Increment", Kind::String, COUNTER)),
        Held::Map(_) => return Err(wrong("Increment", Kind::Map, COUNTER)),
        Held::Counter(c) => Some(c),
        Held::Absent => None,
    };
    let generation = observed.map_or_else(|| new_generation(stored), |c| c.generation());
    let value = observed.map_or(0, PnCounter::value);
    let after = value + i128::from(delta);
    let after = i64::try_from(after).map_err(|_| TypeError::CounterOverflow {
        value,
        delta,
        bound: if delta > 0 { i64::MAX } else { i64::MIN },
    })?;
    let (actor, seq) = issue(generation, observed);
    Ok((
        Entry::counter(version, PnCounter::increment(generation, actor, seq, delta)),
        after,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(t: u64) -> Version {
        Version::new(t, 1)
    }

    fn apply(state: &mut Option<Entry>, delta: Entry) {
        match state {
            Some(e) => {
                e.merge_from(delta);
            }
            None => *state = Some(delta),
        }
    }

    #[test]
    fn kinds_are_checked_and_named() {
        let string = Entry::value(v(1), "s", 0);
        let err = map_set(Some(&string), 0, &[("f", "x")], v(2), 1, 100).unwrap_err();
        assert_eq!(
            err.to_string(),
            "key holds a string; MapSet needs a map or an absent key (Delete removes any kind)"
        );
        let err = increment(Some(&string), 0, 1, v(2), |_, _| (Actor::new(1, 1), 1)).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("key holds a string; Increment needs a counter"));
        // An expired string is no longer there.
        let expiring = Entry::value(v(1), "s", 10);
        assert!(map_set(Some(&expiring), 10, &[("f", "x")], v(2), 1, 100).is_ok());

        let map = map_set(None, 0, &[("f", "x")], v(2), 1, 100).unwrap();
        assert_eq!(
            check_string_write(Some(&map), 0).unwrap_err().to_string(),
            "key holds a map; Set needs a string or an absent key (Delete removes any kind)"
        );
        assert_eq!(
            read_string(Some(&map), 0).unwrap_err().to_string(),
            "key holds a map; Get needs a string (read maps with MapGet, counters with GetCounter)"
        );
        assert!(read_counter(Some(&map), 0).is_err());
        let (counter, _) = increment(None, 0, 1, v(3), |_, _| (Actor::new(1, 1), 1)).unwrap();
        assert!(read_map(Some(&counter), 0, &[]).is_err());
        assert!(removes_any(Some(&counter), 0, &["f"]).is_err());
        assert_eq!(read_counter(Some(&counter), 0), Ok(Some(1)));
        assert_eq!(read_counter(None, 0), Ok(None));
    }

    #[test]
    fn a_map_over_a_tombstone_begins_a_generation_that_wins_over_it() {
        let tomb = Entry::tombstone(v(5));
        let delta = map_set(Some(&tomb), 0, &[("f", "x")], v(6), 1, 100).unwrap();
        assert_eq!(delta.generation(), Some(v(5)));
        let mut state = Some(tomb);
        apply(&mut state, delta);
        let got = read_map(state.as_ref(), 0, &[]).unwrap().unwrap();
        assert_eq!(got.get("f").map(String::as_str), Some("x"));
    }

    #[test]
    fn set_remove_and_read_back() {
        let mut state = None;
        let d = map_set(state.as_ref(), 0, &[("a", "1"), ("b", "2")], v(1), 1, 100).unwrap();
        apply(&mut state, d);
        assert!(removes_any(state.as_ref(), 0, &["b", "zz"]).unwrap());
        assert!(!removes_any(state.as_ref(), 0, &["zz"]).unwrap());
        let d = map_remove(state.as_ref(), 0, &["b"], v(2)).unwrap();
        apply(&mut state, d);
        let got = read_map(state.as_ref(), 0, &["a", "b"]).unwrap().unwrap();
        assert_eq!(got.len(), 1);
        let d = map_remove(state.as_ref(), 0, &["a"], v(3)).unwrap();
        apply(&mut state, d);
        // No field left: the map reads as absent, and a string may follow.
        assert_eq!(read_map(state.as_ref(), 0, &[]), Ok(None));
        assert!(check_string_write(state.as_ref(), 0).is_ok());
        assert_eq!(state.as_ref().unwrap().version, v(3));
    }

    #[test]
    fn the_map_limit_counts_names_and_values_after_the_write() {
        let mut state = None;
        let d = map_set(None, 0, &[("ab", "1234")], v(1), 1, 30).unwrap();
        apply(&mut state, d);
        // Replacing the field's value does not count the old one.
        assert!(map_set(state.as_ref(), 0, &[("ab", "12345678")], v(2), 1, 30).is_ok());
        let err = map_set(state.as_ref(), 0, &[("cd", "12345")], v(2), 1, 30).unwrap_err();
        assert_eq!(
            err.to_string(),
            "map would hold 45 bytes (field names, values and 16 per value); the limit is 30 (--max-value-bytes)"
        );
    }

    #[test]
    fn counters_refuse_to_overflow_and_say_so() {
        let mut state = None;
        let actor = Actor::new(1, 1);
        let mut seq = 0;
        let mut issue = |_: Version, _: Option<&PnCounter>| {
            seq += 1;
            (actor, seq)
        };
        let (d, after) = increment(None, 0, i64::MAX - 1, v(1), &mut issue).unwrap();
        apply(&mut state, d);
        assert_eq!(after, i64::MAX - 1);
        let (d, after) = increment(state.as_ref(), 0, 1, v(2), &mut issue).unwrap();
        apply(&mut state, d);
        assert_eq!(after, i64::MAX);
        let err = increment(state.as_ref(), 0, 1, v(3), &mut issue).unwrap_err();
        assert_eq!(
            err.to_string(),
            "counter is 9223372036854775807; adding 1 would pass 9223372036854775807, the limit of a signed 64-bit counter"
        );
        let (_, after) = increment(state.as_ref(), 0, -5, v(3), &mut issue).unwrap();
        assert_eq!(after, i64::MAX - 5);
        let low = increment(None, 0, i64::MIN, v(1), &mut issue).unwrap().0;
        let err = increment(Some(&low), 0, -1, v(2), &mut issue).unwrap_err();
        assert!(matches!(
            err,
            TypeError::CounterOverflow {
                bound: i64::MIN,
                ..
            }
        ));
    }

    #[test]
    fn a_counter_over_a_map_without_fields_begins_a_new_generation() {
        let mut state = None;
        let d = map_set(None, 0, &[("a", "1")], v(1), 1, 100).unwrap();
        apply(&mut state, d);
        let d = map_remove(state.as_ref(), 0, &["a"], v(2)).unwrap();
        apply(&mut state, d);
        let (d, after) =
            increment(state.as_ref(), 0, 3, v(3), |_, _| (Actor::new(1, 1), 1)).unwrap();
        assert_eq!(d.generation(), Some(v(2)));
        apply(&mut state, d);
        assert_eq!(after, 3);
        assert_eq!(read_counter(state.as_ref(), 0), Ok(Some(3)));
    }
}
