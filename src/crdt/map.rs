//! The observed-remove map: a map from field names to last-writer-wins
//! registers, where removing a field removes only the writes the remover
//! had seen (add wins).
//!
//! # State
//!
//! Each field holds its *live adds*, each named by a dot `(actor, time)`
//! (the actor is one life of one node, the time is the HLC time of the
//! write's version), and a *context*: for each actor, the greatest time of
//! its writes to this field that this replica has seen, whether they are
//! still live or were removed since. The field reads as the value of its
//! live add with the greatest version; a field without live adds is
//! absent.
//!
//! A write to a field, made where the map was observed, carries the new add
//! and the observed context of the field: merged anywhere, it removes every
//! add of that field the writer had seen, and leaves the ones it had not
//! (concurrent writes). A removal is the same without the add. Merge of
//! two states of a field keeps an add when both hold it, or when one holds
//! it and the other has not seen it (its context does not cover it): the
//! usual join of a dot store with its causal context, with contexts kept
//! per actor as a maximum. That is sound because one actor's writes to one
//! field are ordered (an actor stamps each write of a key after everything
//! it observed of the key): having seen an actor's write at time `t` means
//! having seen, or superseded, its earlier ones.
//!
//! # Digest
//!
//! Anti-entropy compares replicas by digest. A map's content digest is the
//! XOR of one 128-bit hash per live add, `(field, actor, time)`, so it does
//! not depend on the order in which anything arrived, and it is kept
//! current by every change in O(changed adds). Contexts are left out: two
//! replicas whose live adds are the same read the same, and a difference in
//! live adds makes them exchange whole states, contexts included. Leaving
//! contexts out also lets a replica drop the context of a removed field
//! (tombstone collection) without making its digest differ from the others.

use std::cmp::Ordering;
use std::collections::btree_map::{self, BTreeMap};

use xxhash_rust::xxh3::xxh3_128_with_seed;

use super::{Actor, Version};

/// The seed of the hash of a live add in a map's content digest: the ASCII
/// bytes of `"kv-mapad"`, big-endian. Part of the digest contract between
/// nodes, like the `keyspace` module's `DIGEST_SEED`: fixed forever.
pub const MAP_ADD_SEED: u64 = 0x6b76_2d6d_6170_6164;

/// What one live value costs in a map's size ([`OrMap::bytes`]) beyond its
/// field name and its bytes: about its framing in a `MapGet` answer, so
/// that a map within the value limit always fits in an answer, however many
/// small fields it has.
pub const FIELD_OVERHEAD: usize = 16;

/// One write of a field that is still live: its dot and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Add {
    /// The actor that wrote it.
    pub actor: Actor,
    /// The HLC time of the write's version.
    pub time: u64,
    /// The value written.
    pub value: Box<str>,
}

impl Add {
    /// The version of the write: its time and its actor's node.
    pub fn version(&self) -> Version {
        Version::new(self.time, self.actor.node)
    }

    /// The order of concurrent adds of one field: by version (time, then
    /// node as a number, as the contract orders versions), then by the
    /// parts that only differ if versions collide.
    fn precedence(&self) -> (u64, u64, u64, &str) {
        (
            self.time,
            self.actor.node,
            self.actor.incarnation,
            &self.value,
        )
    }

    fn dot(&self) -> (Actor, u64) {
        (self.actor, self.time)
    }
}

/// The state of one field: its live adds and its context.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Field {
    /// Live adds, sorted by dot, one per dot.
    adds: Vec<Add>,
    /// Per actor, the greatest time seen; sorted by actor. Covers every
    /// dot in `adds`.
    context: Vec<(Actor, u64)>,
    /// The HLC time of the newest removal of this field merged here (0 for
    /// none): when a field without adds was removed, which tombstone
    /// collection needs to know.
    removed: u64,
}

impl Field {
    /// A field state from parts in any order (as a peer may send them):
    /// duplicates are resolved as a merge would, and the context is extended
    /// to cover the adds, so the state keeps the invariants merge relies on.
    /// Sorts, so it takes O(n log n) in the parts whatever their order.
    pub fn from_parts(adds: Vec<Add>, context: Vec<(Actor, u64)>, removed: u64) -> Self {
        let mut adds = adds;
        adds.sort_by(|a, b| a.dot().cmp(&b.dot()).then_with(|| b.value.cmp(&a.value)));
        adds.dedup_by(|later, kept| later.dot() == kept.dot());
        let mut context = context;
        context.extend(adds.iter().map(Add::dot));
        context.sort_unstable();
        // Sorted by (actor, time): the last of each actor's run is its
        // greatest time.
        context.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = later.1;
            }
            same
        });
        Field {
            adds,
            context,
            removed,
        }
    }

    /// A field holding one new add and the context `observed` (the
    /// writer's context of the field, which the add supersedes).
    pub fn written(add: Add, observed: &[(Actor, u64)]) -> Self {
        Field::from_parts(vec![add], observed.to_vec(), 0)
    }

    /// A field holding no add and the context `observed`, removed at HLC
    /// time `at`: merged, it removes the adds the remover had seen.
    pub fn removed(observed: &[(Actor, u64)], at: u64) -> Self {
        Field::from_parts(Vec::new(), observed.to_vec(), at)
    }

    /// The HLC time of the newest removal of this field merged here (0 for
    /// none).
    pub fn removed_at(&self) -> u64 {
        self.removed
    }

    /// The live adds, sorted by dot.
    pub fn adds(&self) -> &[Add] {
        &self.adds
    }

    /// The context: per actor, the greatest time seen, sorted by actor.
    pub fn context(&self) -> &[(Actor, u64)] {
        &self.context
    }

    /// The value the field reads as: its live add with the greatest version.
    pub fn value(&self) -> Option<&str> {
        self.winner().map(|a| &*a.value)
    }

    /// The live add the field reads as.
    pub fn winner(&self) -> Option<&Add> {
        self.adds
            .iter()
            .max_by(|a, b| a.precedence().cmp(&b.precedence()))
    }

    /// Whether `actor` at `time` is covered by the context.
    fn covers(&self, actor: Actor, time: u64) -> bool {
        match self.context.binary_search_by(|(a, _)| a.cmp(&actor)) {
            Ok(i) => self.context[i].1 >= time,
            Err(_) => false,
        }
    }

    /// When a field without adds settled: the newest time of its context
    /// and of its removal.
    fn settle_time(&self) -> u64 {
        self.context
            .iter()
            .map(|&(_, t)| t)
            .fold(self.removed, u64::max)
    }

    /// Joins `other` into this field; `name` and `digest` keep the map's
    /// content digest current. Returns whether this field changed.
    fn join(&mut self, name: &str, other: Field, digest: &mut u128) -> bool {
        let mut changed = false;
        let mine = std::mem::take(&mut self.adds);
        let mut kept = Vec::with_capacity(mine.len().max(other.adds.len()));
        let mut theirs = other.adds.into_iter().peekable();
        let mut mine = mine.into_iter().peekable();
        loop {
            let order = match (mine.peek(), theirs.peek()) {
                (Some(m), Some(t)) => m.dot().cmp(&t.dot()),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => break,
            };
            match order {
                Ordering::Equal => {
                    let (Some(mut m), Some(t)) = (mine.next(), theirs.next()) else {
                        break;
                    };
                    // Same dot: the same write. Values only differ if dots
                    // collided; keep the greater so that merge stays a join.
                    if t.value > m.value {
                        m.value = t.value;
                        changed = true;
                    }
                    kept.push(m);
                }
                Ordering::Less => {
                    let Some(m) = mine.next() else { break };
                    if other_covers(&other.context, m.actor, m.time) {
                        *digest ^= add_hash(name, &m);
                        changed = true;
                    } else {
                        kept.push(m);
                    }
                }
                Ordering::Greater => {
                    let Some(t) = theirs.next() else { break };
                    if !self.covers(t.actor, t.time) {
                        *digest ^= add_hash(name, &t);
                        changed = true;
                        kept.push(t);
                    }
                }
            }
        }
        self.adds = kept;
        changed |= join_contexts(&mut self.context, other.context);
        if other.removed > self.removed {
            self.removed = other.removed;
            changed = true;
        }
        changed
    }

    /// The size of the live values: their bytes and [`FIELD_OVERHEAD`]
    /// each.
    pub fn bytes(&self) -> usize {
        self.adds
            .iter()
            .map(|a| a.value.len() + FIELD_OVERHEAD)
            .sum()
    }
}

fn other_covers(context: &[(Actor, u64)], actor: Actor, time: u64) -> bool {
    match context.binary_search_by(|(a, _)| a.cmp(&actor)) {
        Ok(i) => context[i].1 >= time,
        Err(_) => false,
    }
}

/// Joins the sorted context `theirs` into the sorted context `mine`: each
/// actor's greater time. Returns whether `mine` changed. Linear in both:
/// a few items are raised in place (each a search and at most one shift);
/// more are merged in one pass, since raising each of many in place would
/// shift the vector once per new actor, quadratic in the actors.
fn join_contexts(mine: &mut Vec<(Actor, u64)>, theirs: Vec<(Actor, u64)>) -> bool {
    /// Up to this many items, raising in place beats building a new vector.
    const IN_PLACE: usize = 8;
    if theirs.len() <= IN_PLACE {
        let mut changed = false;
        for (actor, time) in theirs {
            changed |= raise(mine, actor, time);
        }
        return changed;
    }
    let old = std::mem::take(mine);
    let mut out = Vec::with_capacity(old.len().max(theirs.len()));
    let mut changed = false;
    let mut old = old.into_iter().peekable();
    let mut theirs = theirs.into_iter().peekable();
    loop {
        let next = match (old.peek(), theirs.peek()) {
            (Some(m), Some(t)) => match m.0.cmp(&t.0) {
                Ordering::Less => old.next(),
                Ordering::Greater => {
                    changed = true;
                    theirs.next()
                }
                Ordering::Equal => {
                    let (m, t) = (old.next(), theirs.next());
                    match (m, t) {
                        (Some(m), Some(t)) if t.1 > m.1 => {
                            changed = true;
                            Some(t)
                        }
                        (m, _) => m,
                    }
                }
            },
            (Some(_), None) => old.next(),
            (None, Some(_)) => {
                changed = true;
                theirs.next()
            }
            (None, None) => break,
        };
        out.extend(next);
    }
    *mine = out;
    changed
}

/// Raises `actor`'s time in a sorted context to at least `time`; returns
/// whether it changed.
fn raise(context: &mut Vec<(Actor, u64)>, actor: Actor, time: u64) -> bool {
    match context.binary_search_by(|(a, _)| a.cmp(&actor)) {
        Ok(i) if context[i].1 >= time => false,
        Ok(i) => {
            context[i].1 = time;
            true
        }
        Err(i) => {
            context.insert(i, (actor, time));
            true
        }
    }
}

/// The hash of one live add in a map's content digest: xxh3-128 with
/// [`MAP_ADD_SEED`] of `field ‖ node (8, LE) ‖ incarnation (8, LE) ‖ time
/// (8, LE)`. The field name is the only part of variable length and comes
/// first, so the encoding is unambiguous. The value is left out: the dot
/// names the write, as a version names a string's write.
pub fn add_hash(field: &str, add: &Add) -> u128 {
    let mut bytes = Vec::with_capacity(field.len() + 24);
    bytes.extend_from_slice(field.as_bytes());
    bytes.extend_from_slice(&add.actor.node.to_le_bytes());
    bytes.extend_from_slice(&add.actor.incarnation.to_le_bytes());
    bytes.extend_from_slice(&add.time.to_le_bytes());
    xxh3_128_with_seed(&bytes, MAP_ADD_SEED)
}

/// An observed-remove map of string fields to last-writer-wins string
/// values, within one generation (see [`crate::crdt::Entry`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrMap {
    generation: Version,
    fields: BTreeMap<Box<str>, Field>,
    /// XOR of [`add_hash`] over the live adds.
    digest: u128,
    /// Fields with a live add, kept so that reading whether the map is
    /// empty (every kind check, every store merge) does not scan it.
    live: usize,
    /// [`OrMap::bytes`], kept so that checking the map limit on a write
    /// does not scan the map.
    bytes: usize,
}

/// What a field adds to a map's live count and size.
fn weight(name: &str, field: &Field) -> (usize, usize) {
    if field.adds.is_empty() {
        (0, 0)
    } else {
        (1, name.len() + field.bytes())
    }
}

impl OrMap {
    /// An empty map of generation `generation`: the version of the state it
    /// was created over (`Version::default()` for a key never written).
    pub fn new(generation: Version) -> Self {
        Self {
            generation,
            fields: BTreeMap::new(),
            digest: 0,
            live: 0,
            bytes: 0,
        }
    }

    /// The map's generation.
    pub fn generation(&self) -> Version {
        self.generation
    }

    /// Merges `state` into field `name` (creating it); returns whether the
    /// map changed. The way deltas and decoded states are built.
    pub fn merge_field(&mut self, name: &str, state: Field) -> bool {
        let (before, after, changed) = match self.fields.entry(name.into()) {
            btree_map::Entry::Occupied(mut slot) => {
                let before = weight(name, slot.get());
                let changed = slot.get_mut().join(name, state, &mut self.digest);
                (before, weight(name, slot.get()), changed)
            }
            btree_map::Entry::Vacant(slot) => {
                for add in &state.adds {
                    self.digest ^= add_hash(name, add);
                }
                let after = weight(name, &state);
                slot.insert(state);
                ((0, 0), after, true)
            }
        };
        self.live = self.live - before.0 + after.0;
        self.bytes = self.bytes - before.1 + after.1;
        changed
    }

    /// Merges `other` (of the same generation) into this map; returns
    /// whether this map changed. The join of the map lattice: commutative,
    /// associative and idempotent (see the property tests).
    pub fn join(&mut self, other: OrMap) -> bool {
        let mut changed = false;
        for (name, field) in other.fields {
            changed |= self.merge_field(&name, field);
        }
        changed
    }

    /// Whether no field has a live add: such a map reads as absent.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The value of field `name`, if it is present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Field::value)
    }

    /// The state of field `name` (present or removed), if this map knows it.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }

    /// The present fields and their values, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .filter_map(|(n, f)| f.value().map(|v| (&**n, v)))
    }

    /// Every field this map knows, removed ones included, by name: what the
    /// wire carries.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &Field)> {
        self.fields.iter().map(|(n, f)| (&**n, f))
    }

    /// How many fields are present.
    pub fn len(&self) -> usize {
        self.live
    }

    /// The size of the present fields: names, every live value
    /// (concurrent values of one field all count) and [`FIELD_OVERHEAD`]
    /// per value. What the map limit (`--max-value-bytes`) bounds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// An estimate of the state's size in memory and on the wire: names,
    /// values, 24 bytes per dot and per context item.
    pub fn wire_size(&self) -> usize {
        self.fields
            .iter()
            .map(|(n, f)| n.len() + 4 + f.bytes() + 28 * f.adds.len() + 26 * f.context.len())
            .sum()
    }

    /// The content digest, kept current by every change.
    pub fn digest(&self) -> u128 {
        self.digest
    }

    /// The live field count and size ([`OrMap::len`], [`OrMap::bytes`])
    /// computed from scratch, to check the kept ones.
    pub fn recompute_size(&self) -> (usize, usize) {
        self.fields
            .iter()
            .map(|(n, f)| weight(n, f))
            .fold((0, 0), |(l, b), (fl, fb)| (l + fl, b + fb))
    }

    /// The content digest computed from scratch, to check the kept one.
    pub fn recompute_digest(&self) -> u128 {
        self.fields
            .iter()
            .flat_map(|(n, f)| f.adds.iter().map(move |a| add_hash(n, a)))
            .fold(0, |d, h| d ^ h)
    }

    /// The removed fields (no live add) settled at `horizon` (an HLC time:
    /// their removal and every write they saw are at or before it), each
    /// with its settle time: what tombstone collection may drop once every
    /// replica holds the removals.
    pub fn settled_fields(&self, horizon: u64) -> Vec<(Box<str>, u64)> {
        self.fields
            .iter()
            .filter(|(_, f)| f.adds.is_empty() && f.settle_time() <= horizon)
            .map(|(n, f)| (n.clone(), f.settle_time()))
            .collect()
    }

    /// Drops each listed field that is still removed with the same settle
    /// time (a later write or removal of it keeps it); returns how many.
    /// Only safe once no write of those fields that old can still arrive and
    /// every replica holds the removals (acknowledged collection sees to
    /// both). Leaves the digest unchanged: it covers live adds only.
    pub fn prune_fields(&mut self, fields: &[(Box<str>, u64)]) -> usize {
        let mut pruned = 0;
        for (name, settled) in fields {
            let due = self
                .fields
                .get(name)
                .is_some_and(|f| f.adds.is_empty() && f.settle_time() == *settled);
            if due {
                self.fields.remove(name);
                pruned += 1;
            }
        }
        pruned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: Actor = Actor::new(1, 1);
    const B: Actor = Actor::new(2, 1);

    /// A replica that applies map operations as the coordinator does: each
    /// write observes this replica's state.
    #[derive(Clone)]
    struct Replica {
        actor: Actor,
        map: OrMap,
    }

    impl Replica {
        fn set(&mut self, field: &str, time: u64, value: &str) -> OrMap {
            let observed = self
                .map
                .field(field)
                .map(|f| f.context().to_vec())
                .unwrap_or_default();
            let add = Add {
                actor: self.actor,
                time,
                value: value.into(),
            };
            let mut delta = OrMap::new(self.map.generation());
            delta.merge_field(field, Field::written(add, &observed));
            self.map.join(delta.clone());
            delta
        }

        fn remove(&mut self, field: &str, time: u64) -> OrMap {
            let observed = self
                .map
                .field(field)
                .map(|f| f.context().to_vec())
                .unwrap_or_default();
            let mut delta = OrMap::new(self.map.generation());
            delta.merge_field(field, Field::removed(&observed, time));
            self.map.join(delta.clone());
            delta
        }
    }

    fn replica(actor: Actor) -> Replica {
        Replica {
            actor,
            map: OrMap::new(Version::default()),
        }
    }

    fn joined(mut a: OrMap, b: OrMap) -> OrMap {
        a.join(b);
        a
    }

    fn contents(m: &OrMap) -> Vec<(String, String)> {
        m.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    /// Operations on three replicas with exchanges between them, so that
    /// the states have shared history, concurrent writes and removals.
    #[derive(Clone, Debug)]
    enum Op {
        Set(usize, u8, u8),
        Remove(usize, u8),
        Sync(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize, 0..3u8, 0..3u8).prop_map(|(r, f, v)| Op::Set(r, f, v)),
            (0..3usize, 0..3u8).prop_map(|(r, f)| Op::Remove(r, f)),
            (0..3usize, 0..3usize).prop_map(|(a, b)| Op::Sync(a, b)),
        ]
    }

    /// The states of three replicas after `ops`, with every delta produced.
    fn run(ops: &[Op]) -> (Vec<OrMap>, Vec<OrMap>) {
        let mut replicas = [replica(A), replica(B), replica(Actor::new(3, 7))];
        let mut deltas = Vec::new();
        for (time, op) in ops.iter().enumerate() {
            let time = time as u64 + 1;
            match *op {
                Op::Set(r, f, v) => {
                    deltas.push(replicas[r].set(&format!("f{f}"), time, &format!("v{v}")))
                }
                Op::Remove(r, f) => deltas.push(replicas[r].remove(&format!("f{f}"), time)),
                Op::Sync(a, b) => {
                    let from = replicas[a].map.clone();
                    replicas[b].map.join(from);
                }
            }
        }
        (replicas.into_iter().map(|r| r.map).collect(), deltas)
    }

    fn states() -> impl Strategy<Value = Vec<OrMap>> {
        prop::collection::vec(op(), 0..24).prop_map(|ops| run(&ops).0)
    }

    proptest! {
        #[test]
        fn merge_is_a_join(s in states()) {
            crate::crdt::laws::check(&s[0], &s[1], &s[2], joined)?;
        }

        #[test]
        fn kept_digest_and_size_equal_recomputed(s in states()) {
            for m in &s {
                prop_assert_eq!(m.digest(), m.recompute_digest());
                prop_assert_eq!((m.len(), m.bytes()), m.recompute_size());
            }
            let all = joined(joined(s[0].clone(), s[1].clone()), s[2].clone());
            prop_assert_eq!(all.digest(), all.recompute_digest());
            prop_assert_eq!((all.len(), all.bytes()), all.recompute_size());
        }

        /// Deltas delivered in any order, any number of times, give the same
        /// state as delivering each once in order.
        #[test]
        fn deltas_in_any_order_and_repeated_converge(
            ops in prop::collection::vec(op(), 0..20),
            seed in any::<u64>(),
        ) {
            let (_, deltas) = run(&ops);
            let in_order = deltas.iter().cloned().fold(OrMap::new(Version::default()), joined);
            let mut shuffled: Vec<OrMap> = deltas.iter().chain(deltas.iter()).cloned().collect();
            shuffle(&mut shuffled, seed);
            let any_order = shuffled.into_iter().fold(OrMap::new(Version::default()), joined);
            prop_assert_eq!(contents(&in_order), contents(&any_order));
            prop_assert_eq!(in_order.digest(), any_order.digest());
        }
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

    #[test]
    fn concurrent_sets_of_different_fields_all_survive() {
        let mut a = replica(A);
        let mut b = replica(B);
        a.set("x", 1, "1");
        b.set("y", 2, "2");
        let merged = joined(a.map.clone(), b.map.clone());
        assert_eq!(
            contents(&merged),
            vec![("x".into(), "1".into()), ("y".into(), "2".into())]
        );
    }

    #[test]
    fn concurrent_sets_of_one_field_keep_the_greater_version() {
        let mut a = replica(A);
        let mut b = replica(B);
        a.set("x", 5, "from-a");
        b.set("x", 5, "from-b"); // equal times: node 2 > node 1
        assert_eq!(
            joined(a.map.clone(), b.map.clone()).get("x"),
            Some("from-b")
        );
        assert_eq!(joined(b.map, a.map).get("x"), Some("from-b"));
    }

    #[test]
    fn add_wins_over_a_concurrent_remove_it_had_not_seen() {
        let mut a = replica(A);
        let mut b = replica(B);
        a.set("x", 1, "old");
        b.map.join(a.map.clone());
        // Concurrently: a removes x (having seen "old"), b sets x again.
        a.remove("x", 50);
        b.set("x", 2, "new");
        let merged = joined(a.map.clone(), b.map.clone());
        assert_eq!(merged.get("x"), Some("new"));
        // Even when the remove carries a later time than the set: the
        // remover had not seen it, so it survives.
        let mut a = replica(A);
        let mut b = replica(B);
        a.set("x", 1, "old");
        b.map.join(a.map.clone());
        b.set("x", 2, "new");
        a.set("y", 9, "later"); // a's clock is ahead
        a.remove("x", 50);
        assert_eq!(joined(a.map, b.map).get("x"), Some("new"));
    }

    #[test]
    fn a_remove_removes_what_it_saw_everywhere() {
        let mut a = replica(A);
        let mut b = replica(B);
        a.set("x", 1, "v");
        b.map.join(a.map.clone());
        let removal = b.remove("x", 50);
        assert!(b.map.is_empty());
        a.map.join(removal);
        assert_eq!(a.map.get("x"), None);
        assert!(a.map.is_empty());
        assert_eq!(a.map.len(), 0);
        // The removed field's context stays until it is pruned.
        let removed_at = a.map.field("x").unwrap().removed_at();
        assert!(removed_at > 1);
        assert!(a.map.settled_fields(removed_at - 1).is_empty());
        let settled = a.map.settled_fields(removed_at);
        assert_eq!(settled, vec![("x".into(), removed_at)]);
        assert_eq!(a.map.prune_fields(&settled), 1);
        assert!(a.map.field("x").is_none());
        assert_eq!(a.map.digest(), a.map.recompute_digest());
    }

    #[test]
    fn a_write_supersedes_the_values_it_saw() {
        let mut a = replica(A);
        let mut b = replica(B);
        a.set("x", 1, "a");
        b.set("x", 2, "b");
        a.map.join(b.map.clone());
        let field = a.map.field("x").unwrap();
        assert_eq!(field.adds().len(), 2, "concurrent values are both kept");
        a.set("x", 3, "c");
        assert_eq!(a.map.field("x").unwrap().adds().len(), 1);
        assert_eq!(a.map.bytes(), 2 + FIELD_OVERHEAD);
        b.map.join(a.map.clone());
        assert_eq!(b.map.get("x"), Some("c"));
        assert_eq!(b.map.field("x").unwrap().adds().len(), 1);
    }

    /// Runs `work` on a thread and fails if it takes longer than `limit`:
    /// linear work on the sizes below takes milliseconds, quadratic work
    /// minutes.
    fn within<T: Send + 'static>(
        limit: std::time::Duration,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(work());
        });
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| panic!("the work took longer than {limit:?}"))
    }

    #[test]
    fn contexts_decode_and_merge_in_time_linear_in_their_actors() {
        let limit = std::time::Duration::from_secs(10);
        const N: u64 = 400_000;
        // Descending actors, as a hostile peer may send them: each one was
        // inserted at the front of the sorted context.
        let descending: Vec<(Actor, u64)> = (0..N).rev().map(|i| (Actor::new(i, 1), 1)).collect();
        let field = within(limit, move || Field::from_parts(Vec::new(), descending, 0));
        assert_eq!(field.context().len(), N as usize);
        assert!(field.context().windows(2).all(|w| w[0].0 < w[1].0));
        // Interleaved actors: each of theirs lands between two of mine.
        let evens = Field::from_parts(
            Vec::new(),
            (0..N).map(|i| (Actor::new(2 * i, 1), 1)).collect(),
            0,
        );
        let odds = Field::from_parts(
            Vec::new(),
            (0..N).map(|i| (Actor::new(2 * i + 1, 1), 2)).collect(),
            0,
        );
        let joined = within(limit, move || {
            let mut map = OrMap::new(Version::default());
            map.merge_field("f", evens);
            map.merge_field("f", odds);
            map
        });
        let context = joined.field("f").map(Field::context).unwrap_or_default();
        assert_eq!(context.len(), 2 * N as usize);
        assert!(context.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(context[1], (Actor::new(1, 1), 2));
    }

    #[test]
    fn parts_from_a_peer_are_normalized() {
        let add = Add {
            actor: A,
            time: 4,
            value: "v".into(),
        };
        let field = Field::from_parts(vec![add.clone(), add.clone()], vec![(B, 2), (B, 1)], 0);
        assert_eq!(field.adds().len(), 1);
        assert_eq!(field.context(), &[(A, 4), (B, 2)]);
    }
}
