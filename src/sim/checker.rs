//! The checker: what must hold of a run's history and its final state,
//! given what the store promises (docs/testing.md lists the rules).

use std::collections::BTreeMap;

use super::history::{History, OpRecord};
use super::node::{OpKind, OpResult};
use super::time;
use super::world::World;
use crate::clock::ntp64;
use crate::coordinator::{Consistency, Read};
use crate::crdt::{Actor, Entry, Payload, Version};
use crate::store::Key;

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key it concerns, if one.
    pub key: Option<String>,
    /// What is wrong.
    pub what: String,
}

/// Checks the run that `world` holds, after its final heal and settle.
pub fn check(world: &World) -> Vec<Violation> {
    let mut found = Vec::new();
    let history = &world.history;
    let finals = converged(world, &mut found);
    for (node, p) in &world.tree_mismatches {
        found.push(Violation {
            key: None,
            what: format!(
                "{node}: the Merkle root of partition {p} differs from the recomputed one"
            ),
        });
    }
    let by_key = ops_by_key(history);
    for (key, ops) in &by_key {
        let fin = finals.get(*key).cloned().flatten();
        let mut bad = |what: String| {
            found.push(Violation {
                key: Some(key.to_string()),
                what,
            })
        };
        let now = time::true_ntp64(world.now());
        if ops.iter().any(|op| {
            matches!(
                op.kind,
                OpKind::MapSet { .. } | OpKind::MapRemove { .. } | OpKind::MapGet
            )
        }) {
            check_map(history, ops, fin.as_ref(), now, &mut bad);
            continue;
        }
        if ops
            .iter()
            .any(|op| matches!(op.kind, OpKind::Increment { .. } | OpKind::GetCounter))
        {
            check_counter(history, ops, fin.as_ref(), now, &mut bad);
            continue;
        }
        for w in ops.iter().filter(|op| op.is_write()) {
            let Some((_, written)) = w.written() else {
                continue;
            };
            if history.is_lost(w.id) {
                continue;
            }
            if !sees(fin.as_ref().map(|e| e.version), written.version, ops) {
                bad(format!(
                    "acknowledged write #{} ({:?}) is lost: the replicas converged on {:?}",
                    w.id,
                    written.version,
                    fin.as_ref().map(|e| e.version)
                ));
            }
        }
        if let Some(e) = &fin {
            if writer(ops, e.version, e.is_value().then_some(&e.payload)).is_none() {
                bad(format!(
                    "the replicas converged on {:?}, which no client wrote",
                    e.version
                ));
            }
        }
        for r in ops.iter().filter(|op| op.kind == OpKind::Get) {
            let Some((ended, OpResult::Read { read, replicas })) = &r.ended else {
                continue;
            };
            check_read(history, ops, r, *ended, read, *replicas, world, &mut bad);
            if r.after_heal {
                let expected = fin.as_ref().map(|e| e.version);
                // Nothing is left when the read found a tombstone or an
                // expired value, or a value that expired after the read and
                // was collected before the check.
                let collected = expected.is_none()
                    && (read.value.is_none()
                        || read
                            .version
                            .is_some_and(|v| history.collected.contains(&(Key::from(*key), v))));
                if read.version != expected && !collected {
                    bad(format!(
                        "read #{} after the heal found {:?}, the replicas hold {expected:?}",
                        r.id, read.version
                    ));
                }
            }
        }
    }
    uncollected(world, &mut found);
    clocks(world, &by_key, &mut found);
    found
}

/// The clock outcomes, for writes coordinated by a node whose wall clock
/// was within the drift bound of true time: its version stays within the
/// bound of the furthest its wall clock had read (an HLC never goes back),
/// unless it is one past a version of the same key stamped before (the
/// `stored + 1` rule, which raises that key only); and a TTL's expiry
/// instant lies within the bound of the true instant it was asked for.
/// Catches one key's far-future version dragging a node's other stamps, and
/// expiries counted from a raised version. And no node refused an entry a
/// peer sent (every entry comes from a write, so the version ceiling and
/// the checks of inner times must admit it).
fn clocks(world: &World, by_key: &BTreeMap<&str, Vec<&OpRecord>>, found: &mut Vec<Violation>) {
    for i in world.up() {
        let Some(node) = world.node(i) else { continue };
        let refused = node.refused_entries();
        if refused > 0 {
            found.push(Violation {
                key: None,
                what: format!(
                    "{} refused {refused} entries from peers, which only writes produced",
                    node.id
                ),
            });
        }
    }
    let drift = world.config().settings.max_clock_drift;
    let drift_us = drift.as_micros() as i64;
    // Slack for the HLC's logical steps and the microsecond clock.
    let bound = ntp64(drift) + ntp64(std::time::Duration::from_millis(1));
    for (key, ops) in by_key {
        for op in ops {
            let (Some(version), Some(c)) = (op.stamped, op.clock) else {
                continue;
            };
            if c.offset_us.abs() > drift_us {
                continue;
            }
            if version.time > c.wall_high.saturating_add(bound) {
                let raised = ops.iter().any(|o| {
                    o.id != op.id
                        && o.stamped
                            .is_some_and(|v| v.time.saturating_add(1) >= version.time)
                        && o.clock.is_some_and(|oc| oc.at <= c.at)
                });
                if !raised {
                    found.push(Violation {
                        key: Some(key.to_string()),
                        what: format!(
                            "write #{} by {} was stamped {} ms ahead of its wall clock, past --max-clock-drift, and no earlier version of the key raised it",
                            op.id,
                            op.node,
                            ntp64_ms(version.time - c.wall_high)
                        ),
                    });
                }
            }
            if let OpKind::Set { ttl_ms, .. } = op.kind {
                if ttl_ms > 0 {
                    let asked = c
                        .true_time
                        .saturating_add(ntp64(std::time::Duration::from_millis(ttl_ms)));
                    if c.expires_at.abs_diff(asked) > bound {
                        found.push(Violation {
                            key: Some(key.to_string()),
                            what: format!(
                                "write #{} by {} with a {ttl_ms} ms TTL expires {} ms from when it was asked for, past --max-clock-drift",
                                op.id,
                                op.node,
                                ntp64_ms(c.expires_at.abs_diff(asked))
                            ),
                        });
                    }
                }
            }
        }
    }
}

fn ntp64_ms(span: u64) -> u64 {
    ((u128::from(span) * 1000) >> 32) as u64
}

/// One MapSet's add of one field, from the delta it built.
struct SetAdd<'a> {
    op: &'a OpRecord,
    field: String,
    actor: Actor,
    time: u64,
    value: String,
}

/// Every stamped MapSet's adds.
fn set_adds<'a>(ops: &[&'a OpRecord]) -> Vec<SetAdd<'a>> {
    let mut adds = Vec::new();
    for op in ops {
        let (
            OpKind::MapSet { .. },
            Some(Entry {
                payload: Payload::Map(m),
                ..
            }),
        ) = (&op.kind, &op.delta)
        else {
            continue;
        };
        for (name, field) in m.fields() {
            for add in field.adds() {
                adds.push(SetAdd {
                    op,
                    field: name.to_string(),
                    actor: add.actor,
                    time: add.time,
                    value: add.value.to_string(),
                });
            }
        }
    }
    adds
}

/// Whether write `x` (a MapSet or MapRemove) observed `add` and so
/// supersedes or removes it: its delta's context of the field covers the
/// add's dot.
fn covers(x: &OpRecord, add: &SetAdd) -> bool {
    x.id != add.op.id
        && matches!(&x.delta, Some(Entry { payload: Payload::Map(m), .. })
            if m.field(&add.field).is_some_and(|f| f
                .context()
                .iter()
                .any(|(a, t)| *a == add.actor && *t >= add.time)))
}

/// Whether `op` was acknowledged and a copy of it survived.
fn acknowledged(history: &History, op: &OpRecord) -> bool {
    op.written().is_some() && !history.is_lost(op.id)
}

/// A map's rules: after the heal the converged map holds a field exactly
/// when some set of it is not removed or superseded by a write that
/// observed it. Precisely, for every field value the map holds, its MapSet
/// exists and no acknowledged (surviving) write observed and superseded
/// it; and every acknowledged (surviving) MapSet that no stamped write
/// observed is held (its field present). Indeterminate writes and writes
/// whose every copy was lost may go either way. Every value a MapGet read
/// was set by a MapSet of that field, and the reads after the heal find
/// the converged map.
fn check_map(
    history: &History,
    ops: &[&OpRecord],
    fin: Option<&Entry>,
    now: u64,
    bad: &mut impl FnMut(String),
) {
    let finals = match crate::crdt::ops::read_map(fin, now, &[]) {
        Ok(fields) => fields.unwrap_or_default(),
        Err(e) => return bad(format!("the replicas converged on something else: {e}")),
    };
    let adds = set_adds(ops);
    let writes: Vec<&OpRecord> = ops
        .iter()
        .copied()
        .filter(|op| op.delta.is_some())
        .collect();
    for (field, value) in &finals {
        let Some(add) = adds.iter().find(|a| a.field == *field && a.value == *value) else {
            bad(format!(
                "the replicas converged on {field}={value}, which no client set"
            ));
            continue;
        };
        if let Some(x) = writes
            .iter()
            .find(|x| acknowledged(history, x) && covers(x, add))
        {
            bad(format!(
                "{field}={value} of #{} survives acknowledged #{}, which observed it",
                add.op.id, x.id
            ));
        }
    }
    for add in adds.iter().filter(|a| acknowledged(history, a.op)) {
        if !finals.contains_key(&add.field) && !writes.iter().any(|x| covers(x, add)) {
            bad(format!(
                "acknowledged #{} set {}={}, which no write observed, but the converged map \
                 lacks the field",
                add.op.id, add.field, add.value
            ));
        }
    }
    for r in ops.iter().filter(|op| op.kind == OpKind::MapGet) {
        let Some((ended, OpResult::MapRead { fields, .. })) = &r.ended else {
            continue;
        };
        for (field, value) in fields.iter().flatten() {
            if !adds
                .iter()
                .any(|a| a.field == *field && a.value == *value && a.op.invoked <= *ended)
            {
                bad(format!(
                    "read #{} found {field}={value}, which no client set before",
                    r.id
                ));
            }
        }
        if r.after_heal && fields.clone().unwrap_or_default() != finals {
            bad(format!(
                "read #{} after the heal found {fields:?}, the replicas hold {finals:?}",
                r.id
            ));
        }
    }
}

/// A counter's rules: after the heal the converged counter counts each
/// increment at most once and every acknowledged (surviving) increment
/// exactly once: the dots it holds are dots of stamped increments, those
/// of acknowledged surviving increments among them, and its value is the
/// sum of their deltas. So the value lies between the acknowledged sum
/// plus the negative indeterminate deltas and that sum plus the positive
/// ones. Every value a GetCounter read is within the sums of the negative
/// and positive increments stamped before it ended, and the reads after
/// the heal find the converged value.
fn check_counter(
    history: &History,
    ops: &[&OpRecord],
    fin: Option<&Entry>,
    now: u64,
    bad: &mut impl FnMut(String),
) {
    let value = match crate::crdt::ops::read_counter(fin, now) {
        Ok(value) => value,
        Err(e) => return bad(format!("the replicas converged on something else: {e}")),
    };
    let mut dots: BTreeMap<(Actor, u64), (&OpRecord, i64)> = BTreeMap::new();
    for op in ops {
        let (
            OpKind::Increment { delta },
            Some(Entry {
                payload: Payload::Counter(c),
                ..
            }),
        ) = (&op.kind, &op.delta)
        else {
            continue;
        };
        for dot in counter_dots(c) {
            dots.insert(dot, (op, *delta));
        }
    }
    let (mut low, mut high, mut acked) = (0i128, 0i128, 0i128);
    for (op, delta) in dots.values() {
        let d = i128::from(*delta);
        if acknowledged(history, op) {
            acked += d;
        } else if d < 0 {
            low += d;
        } else {
            high += d;
        }
    }
    let held = match fin {
        Some(Entry {
            payload: Payload::Counter(c),
            ..
        }) => counter_dots(c),
        _ => Vec::new(),
    };
    let mut sum = 0i128;
    for dot in &held {
        match dots.get(dot) {
            Some((_, delta)) => sum += i128::from(*delta),
            None => bad(format!(
                "the converged counter holds increment {dot:?}, which no client issued"
            )),
        }
    }
    let value = value.unwrap_or(0);
    if value != sum {
        bad(format!(
            "the converged counter reads {value}, but the increments it holds sum to {sum}"
        ));
    }
    for (dot, (op, _)) in &dots {
        if acknowledged(history, op) && !held.contains(dot) {
            bad(format!(
                "acknowledged increment #{} ({dot:?}) is not counted",
                op.id
            ));
        }
    }
    if value < acked + low || value > acked + high {
        bad(format!(
            "the converged counter reads {value}, outside {}..={} (acknowledged {acked})",
            acked + low,
            acked + high
        ));
    }
    for r in ops.iter().filter(|op| op.kind == OpKind::GetCounter) {
        let Some((ended, OpResult::CounterRead { value: read, .. })) = &r.ended else {
            continue;
        };
        let before = dots.values().filter(|(op, _)| op.invoked <= *ended);
        let (lo, hi) = before.fold((0i128, 0i128), |(lo, hi), (_, d)| {
            let d = i128::from(*d);
            (lo + d.min(0), hi + d.max(0))
        });
        let got = read.unwrap_or(0);
        if got < lo || got > hi {
            bad(format!(
                "read #{} found {got}, outside {lo}..={hi}, the sums of the increments \
                 issued before it ended",
                r.id
            ));
        }
        if r.after_heal && got != value {
            bad(format!(
                "read #{} after the heal found {got}, the replicas hold {value}",
                r.id
            ));
        }
    }
}

/// The dots a counter (or an increment's delta) counts: per actor its run
/// without gaps and the increments past a gap.
pub fn counter_dots(c: &crate::crdt::PnCounter) -> Vec<(Actor, u64)> {
    let mut dots = Vec::new();
    for (actor, count) in c.actors() {
        dots.extend((1..=count.upto()).map(|seq| (actor, seq)));
        dots.extend(count.pending().map(|(seq, _)| (actor, seq)));
    }
    dots
}

/// The operations of each key, in invocation order.
fn ops_by_key(history: &History) -> BTreeMap<&str, Vec<&OpRecord>> {
    let mut by_key: BTreeMap<&str, Vec<&OpRecord>> = BTreeMap::new();
    for op in &history.ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    by_key
}

/// Whether state at `version` (`None`: the key holds nothing) shows a
/// write of `written` or something newer. Nothing counts when a tombstone
/// or expired value at least as new may have been collected.
fn sees(version: Option<Version>, written: Version, ops: &[&OpRecord]) -> bool {
    match version {
        Some(v) => v >= written,
        None => ops
            .iter()
            .any(|op| op.may_be_collected() && op.stamped.is_some_and(|s| s >= written)),
    }
}

/// The write stamped `version` (with `value`, when one was read).
fn writer<'a>(
    ops: &[&'a OpRecord],
    version: Version,
    value: Option<&Payload>,
) -> Option<&'a OpRecord> {
    ops.iter().copied().find(|op| {
        op.stamped == Some(version)
            && match (&op.kind, value) {
                (OpKind::Set { value: v, .. }, Some(Payload::Value(read))) => **v == **read,
                (OpKind::Set { ttl_ms, .. }, None | Some(Payload::Expired)) => *ttl_ms > 0,
                (OpKind::Delete, None) => true,
                _ => false,
            }
    })
}

/// A read names a write that happened, and, when its level overlaps an
/// acknowledged write's (R + W > N, or majorities of one region:
/// [`regional_majorities`]), sees that write or something newer,
/// across crashes and restarts, unless placement moved between them or no
/// node's store held the write any more before the read ended (every
/// replica that had it lost its memory: what no replication survives).
#[allow(clippy::too_many_arguments)]
fn check_read(
    history: &History,
    ops: &[&OpRecord],
    r: &OpRecord,
    ended: u64,
    read: &Read,
    replicas: usize,
    world: &World,
    bad: &mut impl FnMut(String),
) {
    if let Some(v) = read.version {
        let value = read.value.as_ref().map(|s| Payload::Value(s.clone()));
        if writer(ops, v, value.as_ref()).is_none() {
            bad(format!(
                "read #{} found {:?} = {:?}, which no client wrote",
                r.id, read.value, v
            ));
        }
    }
    if r.level == Consistency::Local {
        return;
    }
    let n = world.truth().ring().replication_factor();
    for w in ops.iter().filter(|op| op.is_write()) {
        let Some((acked, written)) = w.written() else {
            continue;
        };
        let overlap = written.replicas + replicas > n || regional_majorities(world, w, r);
        if acked >= r.invoked || !overlap {
            continue;
        }
        if history.is_lost(w.id)
            || history.unheld_by(w.id, ended)
            || history.disrupted(w.invoked, ended)
        {
            continue;
        }
        if !sees(read.version, written.version, ops) {
            bad(format!(
                "read #{} at {} ({replicas} replicas) found {:?}, older than write #{} \
                 at {} acknowledged by {} replicas before it",
                r.id,
                r.level.name(),
                read.version,
                w.id,
                w.level.name(),
                written.replicas
            ));
        }
    }
}

/// Whether write `w` and read `r` both reached a majority of the key's
/// replicas in one same region: LOCAL_QUORUM in the same region, or
/// EACH_QUORUM on either side (a majority in every region). Then the read
/// sees the write, as two majorities of one replica set meet.
fn regional_majorities(world: &World, w: &OpRecord, r: &OpRecord) -> bool {
    let regional = |level| matches!(level, Consistency::LocalQuorum | Consistency::EachQuorum);
    regional(w.level)
        && regional(r.level)
        && (w.level == Consistency::EachQuorum
            || r.level == Consistency::EachQuorum
            || world.region_of(&w.node) == world.region_of(&r.node))
}

/// Every key's replicas hold the same entry, every partition's replicas
/// the same root, and no node holds a key it does not replicate. Returns
/// each key's converged entry.
fn converged(world: &World, found: &mut Vec<Violation>) -> BTreeMap<String, Option<Entry>> {
    let truth = world.truth();
    let up = world.up();
    let mut finals = BTreeMap::new();
    for key in world.history.ops.iter().map(|op| op.key.to_string()) {
        if finals.contains_key(&key) {
            continue;
        }
        let replicas = truth.replicas(&key);
        let mut held: Vec<(String, Option<Entry>)> = Vec::new();
        for &i in &up {
            let Some(node) = world.node(i) else { continue };
            let entry = node.store.get(&key);
            if replicas.iter().any(|r| **r == *node.id) {
                held.push((node.id.clone(), entry));
            } else if entry.is_some() {
                found.push(Violation {
                    key: Some(key.clone()),
                    what: format!("{} holds the key but is not one of its replicas", node.id),
                });
            }
        }
        if held.len() < replicas.len() {
            found.push(Violation {
                key: Some(key.clone()),
                what: format!(
                    "only {} of {} replicas are up after the heal",
                    held.len(),
                    replicas.len()
                ),
            });
        }
        if held.windows(2).any(|w| w[0].1 != w[1].1) {
            found.push(Violation {
                key: Some(key.clone()),
                what: format!("replicas did not converge: {held:?}"),
            });
        }
        finals.insert(key, held.first().and_then(|(_, e)| e.clone()));
    }
    let ring = truth.ring();
    for p in 0..ring.partitions() {
        let roots: Vec<(String, u128)> = ring
            .replicas(p)
            .iter()
            .filter_map(|r| {
                let i = up
                    .iter()
                    .copied()
                    .find(|&i| world.node(i).is_some_and(|n| *n.id == **r))?;
                world.node(i).map(|n| (n.id.clone(), n.store.root(p)))
            })
            .collect();
        if roots.windows(2).any(|w| w[0].1 != w[1].1) {
            found.push(Violation {
                key: None,
                what: format!("partition {p}: replicas' Merkle roots differ: {roots:x?}"),
            });
        }
    }
    finals
}

/// Tombstones and expired values settled long before the end are gone
/// from every node: the grace plus four anti-entropy intervals.
fn uncollected(world: &World, found: &mut Vec<Violation>) {
    let s = &world.config().settings;
    let now = time::true_ntp64(world.now());
    let grace = ntp64(s.settle_grace + 4 * s.anti_entropy_interval);
    for i in world.up() {
        let Some(node) = world.node(i) else { continue };
        for p in 0..s.partitions {
            for (key, version) in node.store.settled(p, now, grace) {
                found.push(Violation {
                    key: Some(key.to_string()),
                    what: format!(
                        "{} still holds a settled tombstone or expired value {version:?}",
                        node.id
                    ),
                });
            }
        }
    }
}
