//! What happened in one run: every client operation with its invocation,
//! stamp and outcome, and every fault and membership change, on the
//! virtual time line. The checker reads it; a failure prints the part of
//! it that concerns the failing key.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::node::{OpKind, OpResult};
use crate::coordinator::Consistency;
use crate::crdt::Version;
use crate::store::Key;

/// One client operation.
#[derive(Clone, Debug)]
pub struct OpRecord {
    /// Its number.
    pub id: usize,
    /// The node that coordinated it.
    pub node: String,
    /// The key.
    pub key: Key,
    /// What it did.
    pub kind: OpKind,
    /// Its level.
    pub level: Consistency,
    /// Virtual microseconds when it was invoked.
    pub invoked: u64,
    /// The version a write was stamped with, once stamped.
    pub stamped: Option<Version>,
    /// The delta a map or counter write built, once stamped.
    pub delta: Option<crate::crdt::Entry>,
    /// The coordinator's clocks when it stamped the write.
    pub clock: Option<StampClock>,
    /// When and how it ended; `None` while pending or when its coordinator
    /// crashed first (indeterminate).
    pub ended: Option<(u64, OpResult)>,
    /// Whether it is one of the reads after the final heal.
    pub after_heal: bool,
}

impl OpRecord {
    /// Whether it writes (Set, Delete, MapSet, MapRemove, Increment).
    pub fn is_write(&self) -> bool {
        self.kind.is_write()
    }

    /// Whether it was acknowledged: its result, if a successful write.
    pub fn written(&self) -> Option<(u64, crate::coordinator::Written)> {
        match &self.ended {
            Some((at, OpResult::Written(w))) => Some((*at, *w)),
            _ => None,
        }
    }

    /// Whether it deletes or sets a value with an expiry: what may leave
    /// a tombstone or expired value that collection removes.
    pub fn may_be_collected(&self) -> bool {
        match &self.kind {
            OpKind::Delete => true,
            OpKind::Set { ttl_ms, .. } => *ttl_ms > 0,
            _ => false,
        }
    }
}

/// A coordinator's clocks at the moment it stamped a write.
#[derive(Clone, Copy, Debug)]
pub struct StampClock {
    /// Virtual microseconds.
    pub at: u64,
    /// True time (NTP64).
    pub true_time: u64,
    /// The coordinator's wall clock (NTP64).
    pub wall: u64,
    /// The furthest its wall clock ever read until then (NTP64): an HLC
    /// never goes back, so after a clock jumps back its stamps follow this.
    pub wall_high: u64,
    /// How far its wall clock was from true time, microseconds.
    pub offset_us: i64,
    /// The expiry instant a Set wrote (0: none).
    pub expires_at: u64,
}

/// A change to the cluster that can undo what replication guarantees:
/// placement moved (join, leave). A node losing its memory undoes it only
/// for the writes it took with it ([`History::unheld`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disruption {
    /// Placement changed.
    Placement,
}

/// The history of one run.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Client operations, by number.
    pub ops: Vec<OpRecord>,
    /// Faults and membership changes, with their time.
    pub events: Vec<(u64, String)>,
    /// Disruptions, with their time.
    pub disruptions: Vec<(u64, Disruption)>,
    /// Writes whose every copy was lost to crashes, leaves or hints aging
    /// out, with when.
    pub lost: Vec<(usize, u64)>,
    /// Acknowledged writes that no node's store held any more (every replica
    /// that had it lost its memory), with when: no replication can make a
    /// read see such a write until a copy from a queue or hint arrives.
    pub unheld: Vec<(usize, u64)>,
    /// Tombstones and expired values some node collected.
    pub collected: BTreeSet<(Key, Version)>,
    /// How long after a placement change nodes may still route by
    /// different placements, or new replicas lack what they should hold
    /// (microseconds).
    pub placement_settles: u64,
    /// Operations whose coordinator went down (crashed or left) before it
    /// answered and within [`ONE_DEADLINE`] of the invocation: the client
    /// lost its node, which was no longer reachable.
    pub coordinator_lost: BTreeSet<usize>,
    /// Reads at ONE invoked when no ready replica of the key was up and
    /// linked to the coordinator: no node could answer them.
    pub no_replica: BTreeSet<usize>,
    /// Reads at ONE whose every ready replica that was up and linked to
    /// the coordinator when invoked went down or was cut off from it before
    /// the read was answered and within [`ONE_DEADLINE`] of the invocation:
    /// as for a coordinator lost, no node was left to answer them.
    pub replicas_gone: BTreeSet<usize>,
    /// Operations invoked while the network dropped, duplicated and
    /// delayed messages.
    pub lossy: BTreeSet<usize>,
}

/// The client deadline the availability of ONE is measured against
/// (virtual microseconds).
pub const ONE_DEADLINE: u64 = 1_000_000;

/// How ONE requests to live nodes fared: reads and writes of every kind
/// during the faults (not the reads after the final heal), whose
/// coordinator was up when invoked and did not go down within
/// [`ONE_DEADLINE`] before answering. In the simulator a client reaches
/// every live node, so these are the requests sent to reachable nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Availability {
    /// Requests counted (the kinds left out below excepted).
    pub counted: usize,
    /// Of those, the ones answered successfully within the deadline.
    pub answered: usize,
    /// Of the requests counted, the writes.
    pub writes: usize,
    /// Of those, the ones answered successfully within the deadline.
    pub writes_answered: usize,
    /// The requests counted but not answered in time, by why ([`Miss`]).
    pub misses: Misses,
    /// Reads left out because no ready replica was reachable from their
    /// coordinator when invoked: no node could answer them.
    pub no_replica: usize,
    /// Of those, the ones answered within the deadline all the same (a
    /// replica came back in time).
    pub no_replica_answered: usize,
    /// Reads left out because every replica they could reach went down or
    /// was cut off before they were answered ([`History::replicas_gone`]).
    pub replicas_gone: usize,
    /// Of those, the ones answered within the deadline all the same.
    pub replicas_gone_answered: usize,
    /// Writes left out because their coordinator refused them, by design,
    /// for its clock being off past `--max-clock-drift`.
    pub clock_refused: usize,
}

/// Why a counted ONE request was not answered successfully within
/// [`ONE_DEADLINE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// Answered successfully, but late.
    Late,
    /// Failed with some replica silent (its request or answer lost).
    Silent,
    /// Failed with every replica refusing (link cut, down, not ready,
    /// leaving): the coordinator asked none that could answer.
    Refused,
    /// Failed otherwise.
    Other,
}

/// Counts of [`Miss`]es, and how many of them were invoked while the
/// network lost messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Misses {
    /// [`Miss::Late`].
    pub late: usize,
    /// [`Miss::Silent`].
    pub silent: usize,
    /// [`Miss::Refused`].
    pub refused: usize,
    /// [`Miss::Other`].
    pub other: usize,
    /// Of all of them, those invoked while the network lost messages.
    pub lossy: usize,
}

impl Misses {
    fn add(&mut self, o: Misses) {
        self.late += o.late;
        self.silent += o.silent;
        self.refused += o.refused;
        self.other += o.other;
        self.lossy += o.lossy;
    }
}

impl Availability {
    /// Adds another run's figures.
    pub fn add(&mut self, other: Availability) {
        self.counted += other.counted;
        self.answered += other.answered;
        self.writes += other.writes;
        self.writes_answered += other.writes_answered;
        self.misses.add(other.misses);
        self.no_replica += other.no_replica;
        self.no_replica_answered += other.no_replica_answered;
        self.replicas_gone += other.replicas_gone;
        self.replicas_gone_answered += other.replicas_gone_answered;
        self.clock_refused += other.clock_refused;
    }
}

impl std::fmt::Display for Availability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let percent = if self.counted == 0 {
            100.0
        } else {
            100.0 * self.answered as f64 / self.counted as f64
        };
        let m = &self.misses;
        write!(
            f,
            "ONE at live nodes: {percent:.2}% answered within 1 s ({} of {}; \
             writes {} of {}); \
             missed: {} late, {} failed with a replica silent, {} failed refused by every replica, \
             {} other ({} of them on a lossy network); \
             left out: {} reads with no replica reachable ({} answered), \
             {} reads whose replicas all went away ({} answered), \
             {} writes refused for a clock off past the drift bound",
            self.answered,
            self.counted,
            self.writes_answered,
            self.writes,
            m.late,
            m.silent,
            m.refused,
            m.other,
            m.lossy,
            self.no_replica,
            self.no_replica_answered,
            self.replicas_gone,
            self.replicas_gone_answered,
            self.clock_refused
        )
    }
}

impl History {
    /// Records an event at `at`.
    pub fn note(&mut self, at: u64, what: impl Into<String>) {
        self.events.push((at, what.into()));
    }

    /// Whether a disruption was in effect in `from..=to`: placement changed
    /// shortly before or then.
    pub fn disrupted(&self, from: u64, to: u64) -> bool {
        self.disruptions.iter().any(|&(at, kind)| match kind {
            Disruption::Placement => at <= to && from <= at + self.placement_settles,
        })
    }

    /// Whether write `op` was held by no store at some moment up to `to`.
    pub fn unheld_by(&self, op: usize, to: u64) -> bool {
        self.unheld.iter().any(|&(o, at)| o == op && at <= to)
    }

    /// Whether write `op` lost every copy.
    pub fn is_lost(&self, op: usize) -> bool {
        self.lost.iter().any(|&(o, _)| o == op)
    }

    /// The counted ONE requests ([`Availability`]) not answered
    /// successfully within [`ONE_DEADLINE`], each with why.
    pub fn one_misses(&self) -> Vec<(&OpRecord, Miss)> {
        self.one_requests()
            .filter(|(_, counted)| *counted)
            .filter_map(|(op, _)| miss(op).map(|m| (op, m)))
            .collect()
    }

    /// The ONE requests during the faults whose coordinator was not lost,
    /// each with whether it is counted (not left out).
    fn one_requests(&self) -> impl Iterator<Item = (&OpRecord, bool)> {
        self.ops
            .iter()
            .filter(|op| {
                op.level == Consistency::One
                    && !op.after_heal
                    && !self.coordinator_lost.contains(&op.id)
            })
            .map(|op| {
                let left_out = self.no_replica.contains(&op.id)
                    || self.replicas_gone.contains(&op.id)
                    || clock_refused(op);
                (op, !left_out)
            })
    }

    /// How the ONE requests to live nodes fared ([`Availability`]).
    pub fn availability(&self) -> Availability {
        let mut a = Availability::default();
        for (op, counted) in self.one_requests() {
            let missed = miss(op);
            let answered = missed.is_none();
            if self.no_replica.contains(&op.id) {
                a.no_replica += 1;
                a.no_replica_answered += usize::from(answered);
            } else if self.replicas_gone.contains(&op.id) {
                a.replicas_gone += 1;
                a.replicas_gone_answered += usize::from(answered);
            } else if !counted {
                a.clock_refused += 1;
            } else {
                a.counted += 1;
                a.answered += usize::from(answered);
                if op.is_write() {
                    a.writes += 1;
                    a.writes_answered += usize::from(answered);
                }
                let m = &mut a.misses;
                match missed {
                    None => {}
                    Some(Miss::Late) => m.late += 1,
                    Some(Miss::Silent) => m.silent += 1,
                    Some(Miss::Refused) => m.refused += 1,
                    Some(Miss::Other) => m.other += 1,
                }
                m.lossy += usize::from(missed.is_some() && self.lossy.contains(&op.id));
            }
        }
        a
    }

    /// The whole history, one line per operation end and event, in time
    /// order: what replays compare.
    pub fn render(&self) -> String {
        self.render_where(|_| true)
    }

    /// The operations on `key`, and every event, in time order.
    pub fn render_key(&self, key: &str) -> String {
        self.render_where(|op| &*op.key == key)
    }

    fn render_where(&self, keep: impl Fn(&OpRecord) -> bool) -> String {
        // Sorted by time, then events before invocations before ends, then
        // by number.
        let mut lines: Vec<(u64, u8, usize, String)> = Vec::new();
        for (i, (at, what)) in self.events.iter().enumerate() {
            lines.push((*at, 0, i, format!("{:>10}  ** {what}", ms(*at))));
        }
        for op in self.ops.iter().filter(|op| keep(op)) {
            let what = describe(op);
            lines.push((
                op.invoked,
                1,
                op.id,
                format!(
                    "{:>10}  {} #{} invoke {what}",
                    ms(op.invoked),
                    op.node,
                    op.id
                ),
            ));
            let end = match &op.ended {
                Some((at, result)) => (*at, outcome(result)),
                None => (
                    u64::MAX,
                    "never answered (coordinator crashed or left)".into(),
                ),
            };
            let stamp = op
                .stamped
                .map(|v| format!(" stamped {v:?}"))
                .unwrap_or_default();
            let lost = if self.is_lost(op.id) {
                " [every copy lost to crashes]"
            } else {
                ""
            };
            lines.push((
                end.0,
                2,
                op.id,
                format!(
                    "{:>10}  {} #{} {}{stamp}{lost}",
                    if end.0 == u64::MAX {
                        "-".into()
                    } else {
                        ms(end.0)
                    },
                    op.node,
                    op.id,
                    end.1
                ),
            ));
        }
        lines.sort();
        let mut out = String::new();
        for (_, _, _, line) in lines {
            let _ = writeln!(out, "{line}");
        }
        out
    }
}

/// Whether a write was refused, by design, for its coordinator's clock
/// being off past `--max-clock-drift`.
fn clock_refused(op: &OpRecord) -> bool {
    matches!(&op.ended, Some((_, OpResult::Failed(why))) if why.contains("--max-clock-drift"))
}

/// Why `op` was not answered successfully within [`ONE_DEADLINE`], or
/// `None` when it was.
fn miss(op: &OpRecord) -> Option<Miss> {
    match &op.ended {
        Some((_, OpResult::Failed(why))) => Some(if why.contains("no answer within") {
            Miss::Silent
        } else if why.contains("0 answered") {
            Miss::Refused
        } else {
            Miss::Other
        }),
        Some((at, _)) if *at <= op.invoked + ONE_DEADLINE => None,
        _ => Some(Miss::Late),
    }
}

fn describe(op: &OpRecord) -> String {
    let what = match &op.kind {
        OpKind::Set { value, ttl_ms: 0 } => format!("set {}={value}", op.key),
        OpKind::Set { value, ttl_ms } => format!("set {}={value} ttl {ttl_ms}ms", op.key),
        OpKind::Delete => format!("delete {}", op.key),
        OpKind::Get => format!("get {}", op.key),
        OpKind::MapSet { fields } => {
            let set: Vec<String> = fields.iter().map(|(n, v)| format!("{n}={v}")).collect();
            format!("map-set {} {}", op.key, set.join(","))
        }
        OpKind::MapRemove { fields } => format!("map-remove {} {}", op.key, fields.join(",")),
        OpKind::MapGet => format!("map-get {}", op.key),
        OpKind::Increment { delta } => format!("increment {} by {delta}", op.key),
        OpKind::GetCounter => format!("get-counter {}", op.key),
    };
    let heal = if op.after_heal { " (after heal)" } else { "" };
    format!("{what} at {}{heal}", op.level.name())
}

fn outcome(result: &OpResult) -> String {
    match result {
        OpResult::Written(w) => format!("ok {:?} on {} replicas", w.version, w.replicas),
        OpResult::Read { read, replicas } => format!(
            "read {} {:?} from {replicas} replicas",
            read.value.as_deref().unwrap_or("<none>"),
            read.version
        ),
        OpResult::MapRead {
            fields: None,
            replicas,
        } => format!("read no map from {replicas} replicas"),
        OpResult::MapRead {
            fields: Some(fields),
            replicas,
        } => {
            let read: Vec<String> = fields.iter().map(|(n, v)| format!("{n}={v}")).collect();
            format!("read {{{}}} from {replicas} replicas", read.join(","))
        }
        OpResult::CounterRead { value, replicas } => match value {
            Some(v) => format!("read {v} from {replicas} replicas"),
            None => format!("read no counter from {replicas} replicas"),
        },
        OpResult::Unchanged => "ok: none of the fields was there, nothing written".into(),
        OpResult::Failed(e) => format!("failed: {e}"),
    }
}

/// Virtual microseconds as milliseconds, for the history.
pub fn ms(us: u64) -> String {
    format!("{}.{:03}ms", us / 1000, us % 1000)
}
