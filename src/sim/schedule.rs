//! What a seed makes happen: the client workload and the nemesis's faults,
//! drawn before the run from their own random streams.

use std::time::Duration;

use super::node::OpKind;
use super::rng::Rng;
use crate::coordinator::Consistency;

/// A client operation to invoke at a time, on a node picked then among
/// the nodes up (by `pick`).
#[derive(Clone, Debug)]
pub struct Planned {
    /// Virtual microseconds.
    pub at: u64,
    /// Picks the coordinator among the nodes up at `at`.
    pub pick: u64,
    /// The key's index (among the keys of its kind: strings, maps or
    /// counters).
    pub key: usize,
    /// What it does.
    pub kind: OpKind,
    /// Its level.
    pub level: Consistency,
}

/// A fault the nemesis injects. Nodes are picked when the fault starts,
/// among the nodes it can apply to then, by the `pick` numbers.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Cut the network into two halves.
    Halves {
        /// Shuffles the nodes.
        pick: u64,
    },
    /// Cut one node off from every other.
    Isolate {
        /// Picks the node.
        pick: u64,
    },
    /// Cut one region off from the others.
    CutRegion {
        /// Picks the region.
        pick: u64,
    },
    /// Cut the nodes into two sides that only one bridge node joins.
    Bridge {
        /// Shuffles the nodes.
        pick: u64,
    },
    /// Crash a node (its memory is lost) and restart it empty later.
    Crash {
        /// Picks the node.
        pick: u64,
        /// How long it stays down.
        down: Duration,
    },
    /// Lose, duplicate and delay messages.
    Lossy {
        /// Percent of messages dropped.
        drop: u64,
        /// Percent of messages delivered twice.
        duplicate: u64,
        /// The most extra delay of a message (reorders them).
        delay: Duration,
    },
    /// Jump a node's wall clock by `offset` microseconds (beyond the drift
    /// bound, either way), and back later.
    ClockJump {
        /// Picks the node.
        pick: u64,
        /// The jump.
        offset_us: i64,
    },
    /// A new node joins, during a partition.
    JoinDuringPartition {
        /// Shuffles the partition's sides.
        pick: u64,
    },
    /// A node leaves gracefully, during a partition.
    LeaveDuringPartition {
        /// Shuffles the sides and picks the node.
        pick: u64,
    },
}

/// A fault, when it starts and how long it lasts.
#[derive(Clone, Debug)]
pub struct PlannedFault {
    /// Virtual microseconds.
    pub at: u64,
    /// How long until it is healed.
    pub lasts: Duration,
    /// The fault.
    pub fault: Fault,
}

/// The workload: `count` operations over `keys` keys spread over `window`.
/// Writes and reads conflict on the small key space; values are unique per
/// operation so that a read names the write it saw.
pub fn workload(rng: &mut Rng, count: usize, keys: usize, window: Duration) -> Vec<Planned> {
    let window_us = window.as_micros() as u64;
    let mut ops: Vec<Planned> = (0..count)
        .map(|_| {
            let at = rng.below(window_us);
            let pick = rng.next_u64();
            // Half the operations on two hot keys, so that writes conflict;
            // the rest spread, so that some keys stay quiet long enough for
            // their tombstones to settle and be collected.
            let key = if rng.percent(50) {
                rng.below(2)
            } else {
                rng.below(keys as u64)
            } as usize;
            let roll = rng.below(100);
            let (kind, level) = if roll < 45 {
                let ttl_ms = if rng.percent(10) {
                    rng.between(300, 3000)
                } else {
                    0
                };
                let kind = OpKind::Set {
                    value: String::new(),
                    ttl_ms,
                };
                (kind, write_level(rng))
            } else if roll < 62 {
                (OpKind::Delete, write_level(rng))
            } else {
                let level = read_level(rng);
                (OpKind::Get, level)
            };
            Planned {
                at,
                pick,
                key,
                kind,
                level,
            }
        })
        .collect();
    ops.sort_by_key(|op| op.at);
    ops
}

/// The fields the map workload sets and removes: few, so that sets and
/// removals of one field conflict.
const FIELDS: [&str; 4] = ["a", "b", "c", "d"];

/// The map and counter workload: `count` operations over `keys` map keys
/// and `keys` counter keys (their own, so kinds never collide) spread over
/// `window`: per type, 40% writes that add (MapSet of 1 to 3 fields,
/// Increment by -3 to 5, never 0), 20% MapRemove of 1 or 2 fields (maps) or
/// more increments (counters), 40% reads. Writes at ONE, QUORUM and ALL,
/// reads also at LOCAL. Drawn from its own stream, so a seed's string
/// workload does not change with it. Map values are filled in when invoked.
pub fn typed_workload(rng: &mut Rng, count: usize, keys: usize, window: Duration) -> Vec<Planned> {
    let window_us = window.as_micros() as u64;
    let mut ops: Vec<Planned> = (0..count)
        .map(|_| {
            let at = rng.below(window_us);
            let pick = rng.next_u64();
            let key = rng.below(keys as u64) as usize;
            let map = rng.percent(50);
            let roll = rng.below(100);
            let (kind, level) = if roll < 60 {
                let kind = if map && roll < 40 {
                    let mut fields: Vec<(String, String)> = Vec::new();
                    for _ in 0..rng.between(1, 4) {
                        let name = FIELDS[rng.below(FIELDS.len() as u64) as usize];
                        if !fields.iter().any(|(n, _)| n == name) {
                            fields.push((name.to_string(), String::new()));
                        }
                    }
                    OpKind::MapSet { fields }
                } else if map {
                    let mut fields: Vec<String> = Vec::new();
                    for _ in 0..rng.between(1, 3) {
                        let name = FIELDS[rng.below(FIELDS.len() as u64) as usize];
                        if !fields.iter().any(|n| n == name) {
                            fields.push(name.to_string());
                        }
                    }
                    OpKind::MapRemove { fields }
                } else {
                    let delta = rng.between(0, 8) as i64 - 3;
                    OpKind::Increment {
                        delta: if delta == 0 { 1 } else { delta },
                    }
                };
                (kind, write_level(rng))
            } else {
                let level = read_level(rng);
                let kind = if map {
                    OpKind::MapGet
                } else {
                    OpKind::GetCounter
                };
                (kind, level)
            };
            Planned {
                at,
                pick,
                key,
                kind,
                level,
            }
        })
        .collect();
    ops.sort_by_key(|op| op.at);
    ops
}

/// A write's level: ONE, QUORUM, ALL, LOCAL_ONE, LOCAL_QUORUM or
/// EACH_QUORUM.
fn write_level(rng: &mut Rng) -> Consistency {
    match rng.below(6) {
        0 => Consistency::One,
        1 => Consistency::Quorum,
        2 => Consistency::All,
        3 => Consistency::LocalOne,
        4 => Consistency::LocalQuorum,
        _ => Consistency::EachQuorum,
    }
}

/// A read's level: every write level, and LOCAL.
fn read_level(rng: &mut Rng) -> Consistency {
    match rng.below(13) {
        0 => Consistency::Local,
        1..=3 => Consistency::One,
        4..=6 => Consistency::Quorum,
        7..=9 => Consistency::All,
        10 => Consistency::LocalOne,
        11 => Consistency::LocalQuorum,
        _ => Consistency::EachQuorum,
    }
}

/// The nemesis's faults over `window`: one every 0.5 to 3 seconds, each
/// lasting 0.3 to 6 seconds; faults overlap (partitions too: a link is
/// cut while any partition cuts it). `drift` is the clock drift bound that
/// jumps exceed.
pub fn faults(rng: &mut Rng, window: Duration, drift: Duration) -> Vec<PlannedFault> {
    let window_us = window.as_micros() as u64;
    let drift_us = drift.as_micros() as i64;
    let mut at = rng.between(200_000, 1_000_000);
    let mut planned = Vec::new();
    while at < window_us {
        let mut lasts = Duration::from_micros(rng.between(300_000, 6_000_000));
        let pick = rng.next_u64();
        let fault = match rng.below(18) {
            0..=2 => Fault::Halves { pick },
            3..=4 => {
                // A node cut off for long: longer than hints live and than
                // the tombstone grace, so repairs and collection meet it.
                lasts += Duration::from_secs(3);
                Fault::Isolate { pick }
            }
            5..=6 => Fault::Bridge { pick },
            7..=9 => Fault::Crash { pick, down: lasts },
            10..=11 => Fault::Lossy {
                drop: rng.between(5, 40),
                duplicate: rng.between(0, 20),
                delay: Duration::from_micros(rng.between(1_000, 300_000)),
            },
            12..=13 => {
                let size = rng.between(2, 20) as i64 * drift_us;
                let size = if rng.percent(20) { 3_600_000_000 } else { size };
                Fault::ClockJump {
                    pick,
                    offset_us: if rng.percent(50) { size } else { -size },
                }
            }
            14 => Fault::JoinDuringPartition { pick },
            15 => Fault::LeaveDuringPartition { pick },
            _ => Fault::CutRegion { pick },
        };
        planned.push(PlannedFault { at, lasts, fault });
        at += rng.between(500_000, 3_000_000);
    }
    planned
}
