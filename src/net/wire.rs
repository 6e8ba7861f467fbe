//! Entries as the peer protocol carries them, checked on the way in: a peer
//! that sends garbage gets an error, never a crash or a corrupt store.

use thiserror::Error;

use crate::config::{MAX_FIELD_NAME_BYTES, MAX_KEY_BYTES};
use crate::crdt::{Actor, ActorCount, Add, Entry, Field, OrMap, Payload, PnCounter, Version};
use crate::proto::cluster as wire;
use crate::store::Key;

/// Why an entry from a peer was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// The key is empty or longer than the limit.
    #[error("peer sent a key of {size} bytes; keys have 1 to {limit}")]
    BadKey {
        /// The key's length.
        size: usize,
        /// The longest key.
        limit: usize,
    },
    /// A tombstone that carries a value or an expiry.
    #[error("peer sent a tombstone for {key:?} with a value or an expiry")]
    BadTombstone {
        /// The key.
        key: String,
    },
    /// A map or counter that breaks the format; says how.
    #[error("peer sent a malformed map or counter for {key:?}: {why}")]
    BadStructure {
        /// The key.
        key: String,
        /// What is wrong.
        why: &'static str,
    },
}

fn actor_to_wire(a: Actor) -> Option<wire::Actor> {
    Some(wire::Actor {
        node: a.node,
        incarnation: a.incarnation,
    })
}

/// An entry for the wire.
pub fn to_wire(key: &str, entry: &Entry) -> wire::Entry {
    let mut out = wire::Entry {
        key: key.to_string(),
        time: entry.version.time,
        node: entry.version.node,
        expires_at: entry.expires_at,
        ..Default::default()
    };
    match &entry.payload {
        Payload::Tombstone => out.tombstone = true,
        Payload::Value(v) => out.value = v.to_string(),
        Payload::Expired => out.expired = true,
        Payload::Map(m) => out.map = Some(map_to_wire(m)),
        Payload::Counter(c) => out.counter = Some(counter_to_wire(c)),
    }
    out
}

fn map_to_wire(m: &OrMap) -> wire::MapState {
    wire::MapState {
        generation_time: m.generation().time,
        generation_node: m.generation().node,
        fields: m
            .fields()
            .map(|(name, f)| wire::MapField {
                name: name.to_string(),
                adds: f
                    .adds()
                    .iter()
                    .map(|a| wire::FieldAdd {
                        actor: actor_to_wire(a.actor),
                        time: a.time,
                        value: a.value.to_string(),
                    })
                    .collect(),
                context: f
                    .context()
                    .iter()
                    .map(|&(a, time)| wire::ActorTime {
                        actor: actor_to_wire(a),
                        time,
                    })
                    .collect(),
                removed_at: f.removed_at(),
            })
            .collect(),
    }
}

fn counter_to_wire(c: &PnCounter) -> wire::CounterState {
    wire::CounterState {
        generation_time: c.generation().time,
        generation_node: c.generation().node,
        actors: c
            .actors()
            .map(|(a, count)| wire::ActorCount {
                actor: actor_to_wire(a),
                upto: count.upto(),
                sum_low: count.sum() as u64,
                sum_high: (count.sum() >> 64) as i64,
                pending: count
                    .pending()
                    .map(|(seq, delta)| wire::PendingIncrement { seq, delta })
                    .collect(),
            })
            .collect(),
    }
}

/// An entry from the wire, checked.
pub fn from_wire(e: wire::Entry) -> Result<(Key, Entry), WireError> {
    if e.key.is_empty() || e.key.len() > MAX_KEY_BYTES {
        return Err(WireError::BadKey {
            size: e.key.len(),
            limit: MAX_KEY_BYTES,
        });
    }
    let version = Version::new(e.time, e.node);
    let bad = |why| WireError::BadStructure {
        key: e.key.clone(),
        why,
    };
    let structured = e.map.is_some() || e.counter.is_some();
    if e.expired && (structured || e.tombstone || !e.value.is_empty() || e.expires_at == 0) {
        return Err(bad(
            "an expired string with a value, a tombstone, a map, a counter or no expiry",
        ));
    }
    if structured && (e.tombstone || !e.value.is_empty() || e.expires_at != 0) {
        return Err(bad(
            "a map or counter with a string, a tombstone or an expiry",
        ));
    }
    let entry = match (e.map, e.counter) {
        (Some(_), Some(_)) => return Err(bad("both a map and a counter")),
        (Some(m), None) => Entry::map(version, map_from_wire(m).map_err(bad)?),
        (None, Some(c)) => Entry::counter(version, counter_from_wire(c).map_err(bad)?),
        (None, None) if e.tombstone => {
            if !e.value.is_empty() || e.expires_at != 0 {
                return Err(WireError::BadTombstone { key: e.key });
            }
            Entry::tombstone(version)
        }
        (None, None) if e.expired => Entry {
            version,
            expires_at: e.expires_at,
            payload: Payload::Expired,
        },
        (None, None) => Entry::value(version, e.value, e.expires_at),
    };
    Ok((e.key.into_boxed_str(), entry))
}

fn actor_from_wire(a: Option<wire::Actor>) -> Result<Actor, &'static str> {
    a.map(|a| Actor::new(a.node, a.incarnation))
        .ok_or("an element without an actor")
}

fn map_from_wire(m: wire::MapState) -> Result<OrMap, &'static str> {
    let mut map = OrMap::new(Version::new(m.generation_time, m.generation_node));
    for f in m.fields {
        if f.name.is_empty() || f.name.len() > MAX_FIELD_NAME_BYTES {
            return Err("a field name that is empty or over the limit");
        }
        let adds = f
            .adds
            .into_iter()
            .map(|a| {
                Ok(Add {
                    actor: actor_from_wire(a.actor)?,
                    time: a.time,
                    value: a.value.into(),
                })
            })
            .collect::<Result<Vec<_>, &'static str>>()?;
        let context = f
            .context
            .into_iter()
            .map(|c| Ok((actor_from_wire(c.actor)?, c.time)))
            .collect::<Result<Vec<_>, &'static str>>()?;
        // Duplicated names or dots merge as the join would.
        map.merge_field(&f.name, Field::from_parts(adds, context, f.removed_at));
    }
    Ok(map)
}

fn counter_from_wire(c: wire::CounterState) -> Result<PnCounter, &'static str> {
    let mut counter = PnCounter::new(Version::new(c.generation_time, c.generation_node));
    for a in c.actors {
        let sum = (i128::from(a.sum_high) << 64) | i128::from(a.sum_low);
        let count =
            ActorCount::from_parts(a.upto, sum, a.pending.into_iter().map(|p| (p.seq, p.delta)));
        counter.merge_actor(actor_from_wire(a.actor)?, count);
    }
    Ok(counter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::ops;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let mut e = Entry::value(Version::new(5, 9), "v", 77);
        assert_eq!(from_wire(to_wire("k", &e)), Ok(("k".into(), e.clone())));
        assert!(e.drop_expired_bytes(77));
        assert_eq!(from_wire(to_wire("k", &e)), Ok(("k".into(), e.clone())));
        let mut expired_without_expiry = to_wire("k", &e);
        expired_without_expiry.expires_at = 0;
        assert!(from_wire(expired_without_expiry).is_err());
        let mut expired_with_value = to_wire("k", &e);
        expired_with_value.value = "v".into();
        assert!(from_wire(expired_with_value).is_err());
        let t = Entry::tombstone(Version::new(6, 9));
        assert_eq!(from_wire(to_wire("k", &t)), Ok(("k".into(), t)));
        assert!(from_wire(wire::Entry::default()).is_err());
        let bad = wire::Entry {
            key: "k".into(),
            tombstone: true,
            value: "x".into(),
            ..Default::default()
        };
        assert!(matches!(
            from_wire(bad),
            Err(WireError::BadTombstone { .. })
        ));
    }

    #[test]
    fn maps_and_counters_round_trip() {
        let v = Version::new(7, 3);
        let mut map = ops::map_set(None, 0, &[("a", "1"), ("b", "2")], v, 4, 100).unwrap();
        let removal = ops::map_remove(Some(&map), 0, &["b"], Version::new(8, 3)).unwrap();
        map.merge_from(removal);
        assert_eq!(from_wire(to_wire("m", &map)), Ok(("m".into(), map)));

        let mut counter = Entry::counter(
            v,
            PnCounter::increment(Version::new(1, 1), Actor::new(3, 4), 1, i64::MIN),
        );
        counter.merge_from(Entry::counter(
            v,
            PnCounter::increment(Version::new(1, 1), Actor::new(3, 4), 2, i64::MIN),
        ));
        counter.merge_from(Entry::counter(
            v,
            PnCounter::increment(Version::new(1, 1), Actor::new(5, 4), 3, 9),
        ));
        assert_eq!(from_wire(to_wire("c", &counter)), Ok(("c".into(), counter)));
    }

    #[test]
    fn malformed_structures_are_refused() {
        let v = Version::new(7, 3);
        let map = ops::map_set(None, 0, &[("a", "1")], v, 4, 100).unwrap();
        let mut both = to_wire("k", &map);
        both.counter = Some(wire::CounterState::default());
        assert!(matches!(
            from_wire(both),
            Err(WireError::BadStructure { .. })
        ));
        let mut with_value = to_wire("k", &map);
        with_value.value = "x".into();
        assert!(from_wire(with_value).is_err());
        let mut no_actor = to_wire("k", &map);
        if let Some(m) = no_actor.map.as_mut() {
            m.fields[0].adds[0].actor = None;
        }
        assert!(from_wire(no_actor).is_err());
        let mut long_name = to_wire("k", &map);
        if let Some(m) = long_name.map.as_mut() {
            m.fields[0].name = "n".repeat(MAX_FIELD_NAME_BYTES + 1);
        }
        assert!(from_wire(long_name).is_err());
    }
}
