//! One simulated node: the production state machines (store, clock,
//! request calls, delta batching, hints, anti-entropy sessions, acknowledged
//! collection, round planning) behind a shell that speaks to the simulated
//! network instead of tonic. Every handler runs to completion at one
//! virtual instant and leaves what it wants done in [`SimNode::out`].
//!
//! Where this shell differs from the production one (`Replicator`,
//! `AntiEntropy`, the peer service, `node.rs`), the difference is named in
//! docs/testing.md: no byte-rate throttle, a leaving node does not wait for
//! its last batches to be answered, and membership comes from the
//! simulator's oracle rather than gossip.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::disk::{DiskMode, SimDisk};
use crate::anti_entropy::plan::{filled, hand_offs, live_peers, shared_partitions};
use crate::anti_entropy::{
    merge_repairs, respond, Collector, Initiator, Limits, Next, PartitionSet, Reply, Request,
};
use crate::clock::{ntp64, Clock, RoundTrip};
use crate::coordinator::{
    tombstone_entry, value_entry, Answer, Consistency, Decision, Read, ReadCall, ReadOne, Route,
    Topology, WriteCall, Written,
};
use crate::crdt::{ops, Entry, Version};
use crate::dots::{Dots, DEFAULT_CAPACITY};
use crate::net::latency::{Latencies, OBSERVE_AT_ONE};
use crate::net::service::NOT_READY;
use crate::replication::{
    apply_deltas, entry_size, BatchLimits, Batcher, Hint, HintLimits, Hints, Overflow, Undelivered,
};
use crate::store::{Key, Store};

/// Settings every simulated node shares.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Partitions of the keyspace.
    pub partitions: u32,
    /// Replicas of each key.
    pub replication_factor: usize,
    /// How long a request or a peer call waits for answers.
    pub request_timeout: Duration,
    /// Delta batching.
    pub batch: BatchLimits,
    /// Hint bounds.
    pub hints: HintLimits,
    /// Time between anti-entropy rounds.
    pub anti_entropy_interval: Duration,
    /// Time between rounds while a node is still refilling.
    pub syncing_retry: Duration,
    /// Age after which tombstones and expired values may be collected.
    pub settle_grace: Duration,
    /// How often hints are expired and replayed.
    pub hint_tick: Duration,
    /// The most wall-clock drift a remote version may move a clock.
    pub max_clock_drift: Duration,
    /// What a crash keeps (`--data-dir`, `--durability`).
    pub disk: DiskMode,
}

/// A client operation, as the workload issues it.
#[derive(Clone, Debug)]
pub struct ClientOp {
    /// Its number in the history.
    pub id: usize,
    /// The key it touches.
    pub key: Key,
    /// What it does.
    pub kind: OpKind,
    /// Its consistency level.
    pub level: Consistency,
}

/// What a client operation does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Set the key to a value, expiring after `ttl_ms` (0: never).
    Set {
        /// The value (unique per operation, so reads name their write).
        value: String,
        /// Time to live.
        ttl_ms: u64,
    },
    /// Delete the key.
    Delete,
    /// Read the key.
    Get,
    /// Set fields of the map at the key.
    MapSet {
        /// Field names and values (values unique per operation).
        fields: Vec<(String, String)>,
    },
    /// Remove fields of the map at the key (the values this coordinator
    /// sees).
    MapRemove {
        /// Field names.
        fields: Vec<String>,
    },
    /// Read every field of the map at the key.
    MapGet,
    /// Add `delta` to the counter at the key.
    Increment {
        /// The amount, possibly negative.
        delta: i64,
    },
    /// Read the counter at the key.
    GetCounter,
}

impl OpKind {
    /// Whether it writes.
    pub fn is_write(&self) -> bool {
        !matches!(self, OpKind::Get | OpKind::MapGet | OpKind::GetCounter)
    }

    /// Whether it is a map or counter write, which builds on the key's
    /// state and so first reads it where its coordinator is no replica.
    fn observes(&self) -> bool {
        matches!(
            self,
            OpKind::MapSet { .. } | OpKind::MapRemove { .. } | OpKind::Increment { .. }
        )
    }
}

/// The size a simulated map may reach (`--max-value-bytes`): far above
/// what the workload's few short fields need.
pub const MAP_LIMIT: usize = 64 * 1024;

/// How a client operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// A write was acknowledged.
    Written(Written),
    /// A read answered, having joined `replicas` answers.
    Read {
        /// What it read.
        read: Read,
        /// Replicas whose answers it joined.
        replicas: usize,
    },
    /// A map read answered: the fields (`None`: no map), having joined
    /// `replicas` answers.
    MapRead {
        /// The fields read.
        fields: Option<BTreeMap<String, String>>,
        /// Replicas whose answers it joined.
        replicas: usize,
    },
    /// A counter read answered: the value (`None`: no counter), having
    /// joined `replicas` answers.
    CounterRead {
        /// The value read.
        value: Option<i128>,
        /// Replicas whose answers it joined.
        replicas: usize,
    },
    /// A map removal found none of its fields and wrote nothing.
    Unchanged,
    /// The request failed with this error.
    Failed(String),
}

/// A message between nodes.
#[derive(Clone, Debug)]
pub enum Msg {
    /// A peer call.
    Request {
        /// The call's number at the caller.
        rpc: u64,
        /// What is asked.
        req: Req,
    },
    /// The answer to a peer call.
    Response {
        /// The call's number at the caller.
        rpc: u64,
        /// The answer.
        resp: Resp,
        /// The answering node's physical clock (NTP64), as production
        /// answers carry it in their metadata.
        clock: u64,
    },
}

/// A peer call, as the peer protocol has them.
#[derive(Clone, Debug)]
pub enum Req {
    /// Merge these deltas.
    Apply(Vec<(Key, Entry)>),
    /// Read one key.
    Read(Key),
    /// Tell your clock.
    Clock,
    /// One anti-entropy step.
    Sync(Request),
    /// Which of these partitions do you hold entries of?
    Holding(Vec<u32>),
}

/// The answer to a [`Req`].
#[derive(Clone, Debug)]
pub enum Resp {
    /// Deltas merged.
    Applied,
    /// The entry held.
    Read(Option<Entry>),
    /// A read refused: the node is still refilling after a restart.
    NotReady,
    /// The clock's time (NTP64).
    Clock(u64),
    /// The step's reply, or why it was refused.
    Sync(Result<Reply, String>),
    /// The partitions asked about that are held.
    Holding(Vec<u32>),
}

/// A timer a node sets.
#[derive(Clone, Debug)]
pub enum Timer {
    /// A peer's batch linger may have passed.
    Linger(String),
    /// A peer call's deadline.
    Rpc(u64),
    /// A peer call refused at once (cut link, node down), and why.
    Refused(u64, String),
    /// A client request's deadline (for a read at ONE, only the bound
    /// on a write's read of the key before it builds).
    Call(u64),
    /// A read at ONE may ask its next replica: the peer call it sent
    /// last has been silent for its hedge delay.
    Hedge {
        /// The read.
        call: u64,
        /// The peer call.
        rpc: u64,
    },
    /// Time for an anti-entropy round (stale when its number is not the
    /// latest set).
    AntiEntropy(u64),
    /// Expire and replay hints.
    Hints,
}

/// What a handler asks the simulator to do.
#[derive(Debug)]
pub enum Out {
    /// Send a message to the node `to`.
    Send {
        /// The recipient's id.
        to: String,
        /// The message.
        msg: Msg,
    },
    /// Fire `timer` after `after`.
    Timer {
        /// How long from now.
        after: Duration,
        /// The timer.
        timer: Timer,
    },
    /// A client operation was stamped with this version (writes).
    Stamped {
        /// The operation.
        op: usize,
        /// Its version.
        version: Version,
        /// The delta a map or counter write built (its dots and contexts),
        /// which the checker needs to tell what it adds, removes or counts.
        delta: Option<Entry>,
        /// The expiry instant a Set wrote (0: none).
        expires_at: u64,
    },
    /// A client operation ended.
    Done {
        /// The operation.
        op: usize,
        /// How.
        result: OpResult,
    },
    /// The node has filled what it holds and announces itself ready.
    Ready,
    /// A partition's kept Merkle root differs from the recomputed one.
    TreeMismatch(u32),
    /// Hints past their age or over a bound were dropped (a copy of a
    /// write may be gone).
    HintsExpired,
    /// Settled entries collection removed.
    Collected(Vec<(Key, Version)>),
}

/// One write bound for one peer.
#[derive(Clone, Debug)]
struct Delta {
    key: Key,
    entry: Entry,
    ack: Option<u64>,
}

/// One peer's outbound deltas: one batch in flight at a time.
struct Queue {
    batcher: Batcher<Delta>,
    in_flight: bool,
    linger_at: Option<Instant>,
}

/// A client request in progress at its coordinator.
enum Call {
    Write { op: usize, call: WriteCall },
    ReadMany { op: ClientOp, call: ReadCall },
    ReadOne { op: ClientOp, call: ReadOne },
}

/// A peer call in flight, and what its answer is for.
enum Rpc {
    Batch {
        peer: String,
        deltas: Vec<Delta>,
    },
    Replay {
        peer: String,
        hints: Vec<Hint>,
    },
    Read {
        call: u64,
        peer: Arc<str>,
    },
    Clock,
    Sync,
    Holding {
        peer: String,
        asked: Vec<u32>,
        at: Instant,
    },
    /// A leaving node's last deltas: nobody waits for the answer.
    Parting,
}

/// One anti-entropy session's job: a peer and the partitions to compare,
/// as a round's sync or as a handoff.
struct Job {
    peer: String,
    partitions: Vec<u32>,
    handoff: bool,
}

/// The anti-entropy round in progress.
struct Round {
    jobs: VecDeque<Job>,
    handoffs_planned: bool,
    moved: BTreeSet<u32>,
    failed: BTreeSet<u32>,
    session: Option<(Job, Initiator, Instant)>,
}

/// One simulated node.
pub struct SimNode {
    /// Its id (`n1`, `n2`...).
    pub id: String,
    settings: Settings,
    /// Its replica.
    pub store: Store,
    /// Its disk, when it keeps one.
    disk: Option<Arc<SimDisk>>,
    clock: Clock,
    dots: Dots,
    topology: Arc<Topology>,
    queues: BTreeMap<String, Queue>,
    hints: Hints,
    replaying: BTreeSet<String>,
    collector: Collector,
    /// Whether it has filled every partition it holds since it started.
    pub ready: bool,
    synced: BTreeSet<(u32, String)>,
    round: Option<Round>,
    wake_pending: bool,
    ae_timer: u64,
    next_check: u32,
    calls: BTreeMap<u64, Call>,
    rpcs: BTreeMap<u64, Rpc>,
    /// Per call in flight: to whom, when (this node's clock) it left, and
    /// when (virtual time) it left if its round trip counts for the peer's
    /// latency.
    sent: BTreeMap<u64, (String, RoundTrip, Option<Instant>)>,
    /// Each peer's smoothed round-trip time, from small peer calls.
    latencies: Latencies,
    next_id: u64,
    now: Instant,
    /// What its handlers asked for, drained by the simulator.
    pub out: Vec<Out>,
}

impl SimNode {
    /// A node `id` starting empty at `now` with `topology`: ready when it
    /// starts a cluster, syncing when it joins one (or restarts). Each
    /// start is a new actor for maps and counters: its incarnation is its
    /// clock's time, or just after `last_incarnation` (its previous life's)
    /// when that is later, as production draws one per process. A node
    /// with a disk first replays what its last crash `kept`.
    pub fn start(
        id: &str,
        settings: Settings,
        topology: Topology,
        ready: bool,
        now: Instant,
        last_incarnation: u64,
        kept: Vec<Vec<u8>>,
    ) -> Self {
        let clock = Clock::new(id, super::time::physical, settings.max_clock_drift)
            .with_monotonic(super::time::monotonic);
        let store = Store::new(settings.partitions);
        let disk = (settings.disk != DiskMode::Memory).then(|| {
            let found = crate::durability::files::replay_payloads(
                &store,
                kept.iter().map(|p| p.as_slice()),
            );
            // The records were encoded by the same code: a failure is a bug.
            if let Some(latest) = found.expect("simulated disk records decode").0 {
                clock.observe(latest);
            }
            let disk = SimDisk::new(settings.disk, now, kept);
            store.attach_journal(disk.clone());
            disk
        });
        let incarnation = clock.now().max(last_incarnation.saturating_add(1));
        let mut node = Self {
            id: id.to_string(),
            settings,
            store,
            disk,
            dots: Dots::with_incarnation(clock.id(), incarnation, DEFAULT_CAPACITY),
            clock,
            topology: Arc::new(topology),
            queues: BTreeMap::new(),
            hints: Hints::new(settings.hints),
            replaying: BTreeSet::new(),
            collector: Collector::new(),
            ready,
            synced: BTreeSet::new(),
            round: None,
            wake_pending: false,
            ae_timer: 0,
            next_check: 0,
            calls: BTreeMap::new(),
            rpcs: BTreeMap::new(),
            sent: BTreeMap::new(),
            latencies: Latencies::new(),
            next_id: 0,
            now,
            out: Vec::new(),
        };
        if !ready {
            // Read the peers' clocks before serving as a replica.
            for peer in live_peers(&node.topology, id) {
                node.call(&peer, Rpc::Clock, Req::Clock);
            }
        }
        let first = if ready {
            settings.anti_entropy_interval
        } else {
            settings.syncing_retry
        };
        node.schedule_round(first);
        node.out.push(Out::Timer {
            after: settings.hint_tick,
            timer: Timer::Hints,
        });
        node
    }

    /// The incarnation of this life of the node: its actor's.
    pub fn incarnation(&self) -> u64 {
        self.dots.incarnation()
    }

    /// Sets the instant the next handler runs at.
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
        if let Some(d) = &self.disk {
            d.set_now(now);
        }
    }

    /// What a crash at `now` leaves on its disk (nothing without one).
    pub fn kept(&self, now: Instant) -> Vec<Vec<u8>> {
        self.disk.as_ref().map_or_else(Vec::new, |d| d.kept(now))
    }

    /// A completed anti-entropy step acknowledges what it merged: fsynced
    /// first, whatever the mode, as the real node does.
    fn sync_merged(&self, changed: u64) {
        if let (Some(d), true) = (&self.disk, changed > 0) {
            d.force_sync();
        }
    }

    /// The topology this node routes by.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Takes a new membership view: hands hints to peers that came back
    /// and wakes anti-entropy when a peer came back or placement moved.
    pub fn set_topology(&mut self, topology: Topology) {
        let before = std::mem::replace(&mut self.topology, Arc::new(topology));
        let back: Vec<String> = self
            .topology
            .members()
            .filter(|m| m.alive && !before.is_alive(&m.id))
            .map(|m| m.id.clone())
            .collect();
        let moved = self.topology.ring() != before.ring();
        if moved || !back.is_empty() {
            self.wake();
        }
        let mut back = back;
        back.sort();
        for peer in back {
            self.replay(&peer);
        }
    }

    /// Starts a client operation coordinated here.
    pub fn invoke(&mut self, op: ClientOp) {
        match &op.kind {
            OpKind::Set { value, ttl_ms } => {
                let (value, ttl_ms) = (value.clone(), *ttl_ms);
                self.write(op.id, &op.key, op.level, |clock, _, stored| {
                    value_entry(clock, &op.key, stored, &value, ttl_ms)
                });
            }
            OpKind::Delete => {
                self.write(op.id, &op.key, op.level, |clock, _, stored| {
                    tombstone_entry(clock, &op.key, stored)
                });
            }
            kind if kind.observes() => {
                let replica = self
                    .topology
                    .replicas(&op.key)
                    .iter()
                    .any(|r| **r == *self.id);
                if op.level == Consistency::Local || replica {
                    self.build(op, None);
                } else {
                    // Where the coordinator is no replica, production first
                    // reads the key at ONE (`observe`), then builds on it.
                    self.read_one(op);
                }
            }
            _ => self.read(op),
        }
    }

    /// A map or counter write, built as the production coordinator builds
    /// it on the key's stored entry, or on `observed` (what a replica held,
    /// read first where this node is not one).
    fn build(&mut self, op: ClientOp, observed: Option<Option<Entry>>) {
        let seen = observed.clone().flatten();
        let (id, key, level) = (op.id, op.key.clone(), op.level);
        match op.kind {
            OpKind::MapSet { fields } => {
                let fields: Vec<(&str, &str)> = fields
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                self.write(id, &key, level, |clock, dots, stored| {
                    let stored = stored.or(seen.as_ref());
                    let version = clock.stamp_after(&key, stored.map(|e| e.version))?;
                    let incarnation = dots.incarnation();
                    let now = clock.now();
                    Ok(ops::map_set(
                        stored,
                        now,
                        &fields,
                        version,
                        incarnation,
                        MAP_LIMIT,
                    )?)
                });
            }
            OpKind::MapRemove { fields } => {
                let names: Vec<&str> = fields.iter().map(String::as_str).collect();
                let now = self.clock.now();
                let removes = match &observed {
                    Some(seen) => ops::removes_any(seen.as_ref(), now, &names),
                    None => self
                        .store
                        .peek(&key, |e| ops::removes_any(Some(e), now, &names))
                        .unwrap_or(Ok(false)),
                };
                match removes {
                    Err(e) => return self.done(id, OpResult::Failed(e.to_string())),
                    Ok(false) => return self.done(id, OpResult::Unchanged),
                    Ok(true) => {}
                }
                self.write(id, &key, level, |clock, _, stored| {
                    let stored = stored.or(seen.as_ref());
                    let version = clock.stamp_after(&key, stored.map(|e| e.version))?;
                    Ok(ops::map_remove(stored, clock.now(), &names, version)?)
                });
            }
            OpKind::Increment { delta } => {
                let key_name = key.clone();
                self.write(id, &key, level, |clock, dots, stored| {
                    let stored = stored.or(seen.as_ref());
                    let version = clock.stamp_after(&key, stored.map(|e| e.version))?;
                    let now = clock.now();
                    let (entry, _) = ops::increment(stored, now, delta, version, |g, c| {
                        dots.next_increment(&key_name, g, c, now)
                    })?;
                    Ok(entry)
                });
            }
            _ => {}
        }
    }

    fn write(
        &mut self,
        op: usize,
        key: &Key,
        level: Consistency,
        make: impl FnOnce(&Clock, &Dots, Option<&Entry>) -> Result<Entry, crate::error::Error>,
    ) {
        if level != Consistency::Local {
            if let Err(e) = self.clock.check_offset() {
                return self.done(op, OpResult::Failed(e.to_string()));
            }
        }
        let (clock, dots) = (&self.clock, &self.dots);
        let started = WriteCall::start(&self.id, &self.topology, &self.store, key, level, |s| {
            make(clock, dots, s)
        });
        let (call, routes) = match started {
            Ok(started) => started,
            Err(e) => return self.done(op, OpResult::Failed(e.to_string())),
        };
        let entry = call.entry();
        self.out.push(Out::Stamped {
            op,
            version: entry.version,
            delta: matches!(
                entry.payload,
                crate::crdt::Payload::Map(_) | crate::crdt::Payload::Counter(_)
            )
            .then(|| entry.clone()),
            expires_at: entry.expires_at,
        });
        let id = self.next_id();
        let entry = call.entry().clone();
        // ONE never fails for want of replicas: once the replicas awaited
        // have been silent for longer than they usually take, the write is
        // answered from its queued copies (each becomes a hint if delivery
        // fails), as production's is.
        let wait = match level {
            Consistency::One => self.latencies.longest_hedge(
                routes
                    .iter()
                    .filter(|(_, route)| *route == Route::Await)
                    .map(|(replica, _)| &**replica),
            ),
            _ => self.settings.request_timeout,
        };
        // The call waits before the deltas are queued: a full queue answers
        // at once.
        if call.decision() == Decision::Open {
            self.calls.insert(id, Call::Write { op, call });
            self.timer(wait, Timer::Call(id));
        } else {
            let result = finish_write(&call, "not waited for");
            self.done(op, result);
        }
        for (replica, route) in routes {
            let entry = entry.clone();
            match route {
                Route::Hint => self.hint(&replica, key.clone(), entry),
                Route::Push => self.push(&replica, key.clone(), entry, None),
                Route::Await => self.push(&replica, key.clone(), entry, Some(id)),
            }
        }
    }

    fn read(&mut self, op: ClientOp) {
        match op.level {
            Consistency::Local => {
                let entry = self.store.get(&op.key);
                self.read_done(op, Ok(entry), 1);
            }
            Consistency::One => self.read_one(op),
            Consistency::Quorum | Consistency::All => {
                let (call, ask) = ReadCall::start(
                    &self.id,
                    &self.topology,
                    &self.store,
                    &op.key,
                    op.level,
                    self.clock.now(),
                    self.grace(),
                );
                let id = self.next_id();
                let key = op.key.clone();
                for replica in ask {
                    let req = Req::Read(key.clone());
                    self.call(
                        &replica.clone(),
                        Rpc::Read {
                            call: id,
                            peer: replica,
                        },
                        req,
                    );
                }
                self.calls.insert(id, Call::ReadMany { op, call });
                self.timer(self.settings.request_timeout, Timer::Call(id));
                self.settle_read(id);
            }
        }
    }

    /// Starts a read at ONE: a client's, or a write's `observe` (which, at
    /// ONE, gives up after [`OBSERVE_AT_ONE`] and builds on nothing, as
    /// production's does).
    fn read_one(&mut self, op: ClientOp) {
        let call = ReadOne::start(&self.id, &self.topology, &op.key);
        let id = self.next_id();
        if op.kind.is_write() && op.level == Consistency::One {
            self.timer(OBSERVE_AT_ONE, Timer::Call(id));
        }
        self.calls.insert(id, Call::ReadOne { op, call });
        self.read_one_next(id);
    }

    /// What a read found, or why it found nothing: the client's answer, as
    /// the production coordinator makes it of the entry, or, for a write
    /// that observed the key first, the write built on it. A write at ONE
    /// that no replica answered builds on nothing, as production's does.
    fn read_done(&mut self, op: ClientOp, entry: Result<Option<Entry>, String>, replicas: usize) {
        let now = self.clock.now();
        let result = match (&op.kind, entry) {
            (kind, Ok(entry)) if kind.is_write() => return self.build(op, Some(entry)),
            (kind, Err(_)) if kind.is_write() && op.level == Consistency::One => {
                return self.build(op, Some(None))
            }
            (_, Err(e)) => OpResult::Failed(e),
            (OpKind::MapGet, Ok(entry)) => match ops::read_map(entry.as_ref(), now, &[]) {
                Ok(fields) => OpResult::MapRead { fields, replicas },
                Err(e) => OpResult::Failed(e.to_string()),
            },
            (OpKind::GetCounter, Ok(entry)) => match ops::read_counter(entry.as_ref(), now) {
                Ok(value) => OpResult::CounterRead { value, replicas },
                Err(e) => OpResult::Failed(e.to_string()),
            },
            (_, Ok(entry)) => OpResult::Read {
                read: Read::of(entry, now),
                replicas,
            },
        };
        self.done(op.id, result);
    }

    /// Asks the next replica of a ONE read, or answers from this node;
    /// when every replica has been asked, waits for those still silent, or
    /// fails when none is.
    fn read_one_next(&mut self, id: u64) {
        let Some(Call::ReadOne { op, call }) = self.calls.get_mut(&id) else {
            return;
        };
        let key = op.key.clone();
        match call.next_replica() {
            None if call.waiting() => {}
            None => {
                let error = call.unavailable().to_string();
                if let Some(Call::ReadOne { op, .. }) = self.calls.remove(&id) {
                    self.read_done(op, Err(error), 0);
                }
            }
            Some(replica) if *replica == *self.id => {
                if let Some(Call::ReadOne { op, .. }) = self.calls.remove(&id) {
                    let entry = self.store.get(&key);
                    self.read_done(op, Ok(entry), 1);
                }
            }
            Some(replica) => {
                let hedge = self.latencies.hedge_after(&replica);
                let rpc = self.call(
                    &replica.clone(),
                    Rpc::Read {
                        call: id,
                        peer: replica,
                    },
                    Req::Read(key),
                );
                self.timer(hedge, Timer::Hedge { call: id, rpc });
            }
        }
    }

    /// Answers a QUORUM or ALL read once it is decided.
    fn settle_read(&mut self, id: u64) {
        if let Some(Call::ReadMany { call, .. }) = self.calls.get(&id) {
            if call.decision() != Decision::Open {
                self.finish_read(id, "not waited for (the level was decided)");
            }
        }
    }

    fn finish_read(&mut self, id: u64, waiting: &str) {
        let Some(Call::ReadMany { op, call }) = self.calls.remove(&id) else {
            return;
        };
        match call.finish(waiting) {
            Err(e) => self.done(op.id, OpResult::Failed(e.to_string())),
            Ok(found) => {
                for (replica, newest) in found.repairs {
                    if *replica == *self.id {
                        self.store.merge(&op.key, newest);
                    } else {
                        self.push(&replica, op.key.clone(), newest, None);
                    }
                }
                self.read_done(op, Ok(found.entry), found.replicas);
            }
        }
    }

    /// A replica's answer to a write this node coordinates.
    fn write_answer(&mut self, id: u64, replica: &str, answer: Answer) {
        let Some(Call::Write { call, .. }) = self.calls.get_mut(&id) else {
            return;
        };
        if call.record(replica, answer) != Decision::Open {
            self.finish_write_call(id, "not waited for (the level was decided)");
        }
    }

    fn finish_write_call(&mut self, id: u64, waiting: &str) {
        if let Some(Call::Write { op, call }) = self.calls.remove(&id) {
            let result = finish_write(&call, waiting);
            self.done(op, result);
        }
    }

    /// Handles a message from node `from`.
    pub fn receive(&mut self, from: &str, msg: Msg) {
        match msg {
            Msg::Request { rpc, req } => {
                let resp = self.serve(req);
                let clock = self.clock.now();
                self.out.push(Out::Send {
                    to: from.to_string(),
                    msg: Msg::Response { rpc, resp, clock },
                });
            }
            Msg::Response { rpc, resp, clock } => {
                if let Some((peer, start, measured)) = self.sent.remove(&rpc) {
                    self.clock.record_round_trip(&peer, start, clock);
                    if let Some(at) = measured {
                        self.latencies.record(&peer, self.now - at);
                    }
                }
                self.answered(rpc, Ok(resp));
            }
        }
    }

    /// The peer service: what this node answers to a peer call.
    fn serve(&mut self, req: Req) -> Resp {
        match req {
            Req::Apply(deltas) => {
                apply_deltas(&self.store, &self.clock, deltas, self.grace());
                Resp::Applied
            }
            // As the production peer service: a node still refilling
            // answers no reads (the asker's view of it may lag).
            Req::Read(_) if !self.ready => Resp::NotReady,
            Req::Read(key) => Resp::Read(self.store.get(&key)),
            Req::Clock => Resp::Clock(self.clock.latest().time),
            Req::Holding(partitions) => Resp::Holding(
                partitions
                    .into_iter()
                    .filter(|&p| self.store.partition_len(p) > 0)
                    .collect(),
            ),
            Req::Sync(request) => Resp::Sync(
                respond(&self.store, request, Limits::default())
                    .map(|answer| {
                        let grace = self.grace();
                        let changed = merge_repairs(
                            &self.store,
                            &self.clock,
                            answer.merge,
                            grace,
                            answer.handoff,
                        );
                        self.sync_merged(changed);
                        answer.reply
                    })
                    .map_err(|e| e.to_string()),
            ),
        }
    }

    /// Handles a timer.
    pub fn fire(&mut self, timer: Timer) {
        match timer {
            Timer::Linger(peer) => {
                if let Some(q) = self.queues.get_mut(&peer) {
                    q.linger_at = None;
                }
                self.pump(&peer);
            }
            Timer::Rpc(rpc) => {
                let timeout = self.settings.request_timeout;
                if let Some((peer, _, Some(_))) = self.sent.get(&rpc) {
                    self.latencies.record(peer, timeout);
                }
                self.answered(rpc, Err(format!("no answer within {timeout:?}")));
            }
            Timer::Hedge { call, rpc } => {
                if self.rpcs.contains_key(&rpc) {
                    self.read_one_next(call);
                }
            }
            Timer::Refused(rpc, why) => self.answered(rpc, Err(why)),
            Timer::Call(id) => {
                let waiting = format!("no answer within {:?}", self.settings.request_timeout);
                match self.calls.get(&id) {
                    Some(Call::Write { .. }) => self.finish_write_call(id, &waiting),
                    Some(Call::ReadMany { .. }) => self.finish_read(id, &waiting),
                    Some(Call::ReadOne { .. }) => {
                        if let Some(Call::ReadOne { op, .. }) = self.calls.remove(&id) {
                            let why = format!("no replica answered within {OBSERVE_AT_ONE:?}");
                            self.read_done(op, Err(why), 0);
                        }
                    }
                    None => {}
                }
            }
            Timer::AntiEntropy(n) => {
                if n == self.ae_timer {
                    self.start_round();
                }
            }
            Timer::Hints => {
                // As the production node's expiry tick does in a cluster.
                self.store.drop_expired_bytes(self.clock.now(), usize::MAX);
                if self.hints.expire(self.now) > 0 {
                    self.out.push(Out::HintsExpired);
                }
                for peer in self.hints.peers() {
                    if self.topology.is_alive(&peer) {
                        self.replay(&peer);
                    }
                }
                self.timer(self.settings.hint_tick, Timer::Hints);
            }
        }
    }

    /// A peer call ended: its answer, or why there is none.
    fn answered(&mut self, rpc: u64, answer: Result<Resp, String>) {
        self.sent.remove(&rpc);
        let Some(purpose) = self.rpcs.remove(&rpc) else {
            return; // answered already, or from before a restart
        };
        match (purpose, answer) {
            (Rpc::Batch { peer, deltas }, answer) => {
                if let Some(q) = self.queues.get_mut(&peer) {
                    q.in_flight = false;
                }
                let ok = answer.is_ok();
                for d in deltas {
                    if !ok {
                        self.hint(&peer, d.key.clone(), d.entry.clone());
                    }
                    if let Some(call) = d.ack {
                        let answer = match &answer {
                            Ok(_) => Answer::Ok,
                            Err(why) => Answer::Failed(format!("{why}; hinted")),
                        };
                        self.write_answer(call, &peer, answer);
                    }
                }
                self.pump(&peer);
            }
            (Rpc::Replay { peer, hints }, answer) => {
                self.replaying.remove(&peer);
                if answer.is_ok() {
                    self.replay(&peer);
                } else if self.hints.restore(&peer, hints) > 0 {
                    self.out.push(Out::HintsExpired);
                }
            }
            (Rpc::Read { call, peer }, answer) => {
                let entry = match answer {
                    Ok(Resp::Read(entry)) => Ok(entry),
                    Ok(Resp::NotReady) => Err(NOT_READY.to_string()),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(why) => Err(why),
                };
                self.read_answer(call, &peer, entry);
            }
            (Rpc::Clock, Ok(Resp::Clock(time))) => {
                self.clock.observe(Version::new(time, 0));
            }
            (Rpc::Holding { peer, asked, at }, Ok(Resp::Holding(held))) => {
                self.collector.confirm_absent(&peer, &asked, &held, at);
            }
            (Rpc::Clock | Rpc::Parting | Rpc::Holding { .. }, _) => {}
            (Rpc::Sync, answer) => {
                let reply = match answer {
                    Ok(Resp::Sync(reply)) => reply,
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(why) => Err(why),
                };
                self.session_step(reply);
            }
        }
    }

    fn read_answer(&mut self, id: u64, peer: &Arc<str>, entry: Result<Option<Entry>, String>) {
        match self.calls.get_mut(&id) {
            Some(Call::ReadOne { call, .. }) => match entry {
                Ok(entry) => {
                    if let Some(Call::ReadOne { op, .. }) = self.calls.remove(&id) {
                        self.read_done(op, Ok(entry), 1);
                    }
                }
                Err(why) => {
                    call.failed(peer, why);
                    self.read_one_next(id);
                }
            },
            Some(Call::ReadMany { call, .. }) => {
                call.record(peer, entry);
                self.settle_read(id);
            }
            _ => {}
        }
    }

    // --- Replication: per-peer delta queues and hints ---------------------

    fn push(&mut self, peer: &str, key: Key, entry: Entry, ack: Option<u64>) {
        let size = entry_size(&key, &entry);
        let limits = self.settings.batch;
        let q = self
            .queues
            .entry(peer.to_string())
            .or_insert_with(|| Queue {
                batcher: Batcher::new(limits),
                in_flight: false,
                linger_at: None,
            });
        match q.batcher.push(Delta { key, entry, ack }, size, self.now) {
            Ok(()) => self.pump(peer),
            // The peer is slower than the writes to it: hold the delta as
            // a hint, as production's queue does.
            Err(Overflow { item, queued_bytes }) => {
                self.hint(peer, item.key, item.entry);
                if let Some(call) = item.ack {
                    let why = Undelivered::QueueFull {
                        queued_bytes,
                        limit: limits.max_queued_bytes,
                    };
                    self.write_answer(call, peer, Answer::Failed(format!("{why}; hinted")));
                }
            }
        }
    }

    /// Holds `entry` for `peer`; says so when the bounds drop older hints.
    fn hint(&mut self, peer: &str, key: Key, entry: Entry) {
        if self.hints.add(peer, key, entry, self.now) > 0 {
            self.out.push(Out::HintsExpired);
        }
    }

    /// Sends `peer` its next batch when none is in flight and one is full
    /// or due; otherwise sets a timer for the linger.
    fn pump(&mut self, peer: &str) {
        let now = self.now;
        let Some(q) = self.queues.get_mut(peer) else {
            return;
        };
        if q.in_flight {
            return;
        }
        match q.batcher.next(now) {
            Some(deltas) => {
                q.in_flight = true;
                let entries = deltas
                    .iter()
                    .map(|d| (d.key.clone(), d.entry.clone()))
                    .collect();
                let purpose = Rpc::Batch {
                    peer: peer.to_string(),
                    deltas,
                };
                self.call(peer, purpose, Req::Apply(entries));
            }
            None => {
                if let Some(due) = q.batcher.deadline() {
                    if q.linger_at != Some(due) {
                        q.linger_at = Some(due);
                        let after = due.saturating_duration_since(now);
                        self.timer(after, Timer::Linger(peer.to_string()));
                    }
                }
            }
        }
    }

    /// Hands `peer` its hints, one batch at a time.
    fn replay(&mut self, peer: &str) {
        if self.replaying.contains(peer) {
            return;
        }
        let hints = self.hints.take(peer, self.settings.batch.max_bytes);
        if hints.is_empty() {
            return;
        }
        self.replaying.insert(peer.to_string());
        let entries = hints
            .iter()
            .map(|h| (h.key.clone(), h.entry.clone()))
            .collect();
        let purpose = Rpc::Replay {
            peer: peer.to_string(),
            hints,
        };
        self.call(peer, purpose, Req::Apply(entries));
    }

    /// Leaves the cluster gracefully: sends every queued delta, and gives
    /// every hint to the live replicas of its key. Does not wait for
    /// answers.
    pub fn leave(&mut self) {
        let peers: Vec<String> = self.queues.keys().cloned().collect();
        for peer in peers {
            let Some(q) = self.queues.get_mut(&peer) else {
                continue;
            };
            let rest = q.batcher.take();
            if !rest.is_empty() {
                let entries = rest.into_iter().map(|d| (d.key, d.entry)).collect();
                self.call(&peer, Rpc::Parting, Req::Apply(entries));
            }
        }
        let held: Vec<Hint> = self.hints.held().cloned().collect();
        for hint in held {
            let replicas = self.topology.replicas(&hint.key).to_vec();
            for replica in replicas {
                if *replica != *self.id && self.topology.is_alive(&replica) {
                    let entries = vec![(hint.key.clone(), hint.entry.clone())];
                    self.call(&replica, Rpc::Parting, Req::Apply(entries));
                }
            }
        }
    }

    // --- Anti-entropy --------------------------------------------------------

    /// Starts a round now (or after the one running).
    fn wake(&mut self) {
        if self.round.is_some() {
            self.wake_pending = true;
        } else {
            self.schedule_round(Duration::ZERO);
        }
    }

    fn schedule_round(&mut self, after: Duration) {
        self.ae_timer += 1;
        self.timer(after, Timer::AntiEntropy(self.ae_timer));
    }

    fn start_round(&mut self) {
        if self.round.is_some() {
            self.wake_pending = true;
            return;
        }
        for (peer, asked) in self.collector.outsiders(&self.id, &self.topology) {
            let req = Req::Holding(asked.clone());
            let at = self.now;
            self.call(&peer.clone(), Rpc::Holding { peer, asked, at }, req);
        }
        let ring = self.topology.ring();
        let jobs = live_peers(&self.topology, &self.id)
            .into_iter()
            .filter_map(|peer| {
                let shared = shared_partitions(ring, &self.id, &peer);
                (!shared.is_empty()).then(|| Job {
                    partitions: shared.as_slice().to_vec(),
                    peer,
                    handoff: false,
                })
            })
            .collect();
        self.round = Some(Round {
            jobs,
            handoffs_planned: false,
            moved: BTreeSet::new(),
            failed: BTreeSet::new(),
            session: None,
        });
        self.next_job();
    }

    /// Starts the round's next session, or ends the round.
    fn next_job(&mut self) {
        let Some(round) = self.round.as_mut() else {
            return;
        };
        if round.jobs.is_empty() && !round.handoffs_planned {
            round.handoffs_planned = true;
            for (target, partitions) in hand_offs(&self.topology, &self.id, &self.store) {
                round.moved.extend(partitions.iter().copied());
                round.jobs.push_back(Job {
                    peer: target.to_string(),
                    partitions,
                    handoff: true,
                });
            }
        }
        let Some(job) = round.jobs.pop_front() else {
            return self.end_round();
        };
        let salt = self.clock.latest().time;
        let mut initiator = Initiator::new(
            PartitionSet::new(job.partitions.iter().copied()),
            Limits::default(),
            salt,
        );
        if job.handoff {
            initiator = initiator.handing_off();
        }
        let request = initiator.start(&self.store);
        let peer = job.peer.clone();
        round.session = Some((job, initiator, self.now));
        self.call(&peer, Rpc::Sync, Req::Sync(request));
    }

    /// The reply to the running session's last step.
    fn session_step(&mut self, reply: Result<Reply, String>) {
        let grace = self.grace();
        let Some(round) = self.round.as_mut() else {
            return;
        };
        let Some((job, mut initiator, started)) = round.session.take() else {
            return;
        };
        let step = reply.and_then(|r| {
            initiator
                .on_reply(&self.store, r)
                .map_err(|e| e.to_string())
        });
        match step {
            Err(_) => {
                if job.handoff {
                    round.failed.extend(job.partitions.iter().copied());
                }
                self.next_job();
            }
            Ok(step) => {
                let changed = merge_repairs(&self.store, &self.clock, step.merge, grace, false);
                if let (Some(d), true) = (&self.disk, changed > 0) {
                    d.force_sync();
                }
                match step.next {
                    Next::Send(request) => {
                        let peer = job.peer.clone();
                        round.session = Some((job, initiator, started));
                        self.call(&peer, Rpc::Sync, Req::Sync(request));
                    }
                    Next::Done(_) => {
                        if !job.handoff {
                            self.collector.confirm(&job.peer, &job.partitions, started);
                            if !self.ready {
                                let peer = &job.peer;
                                self.synced
                                    .extend(job.partitions.iter().map(|p| (*p, peer.clone())));
                            }
                        }
                        self.next_job();
                    }
                }
            }
        }
    }

    /// After a round: drop what was handed off, collect acknowledged
    /// settled entries, check one tree, turn ready when filled, and set
    /// the next round.
    fn end_round(&mut self) {
        let Some(round) = self.round.take() else {
            return;
        };
        for p in round.moved.difference(&round.failed) {
            self.store.drop_partition(*p);
        }
        // As the shell's: nothing while the wall clock is judged off.
        if self.clock.check_wall_offset().is_ok() {
            let collected = self.collector.collect(
                &self.id,
                &self.topology,
                &self.store,
                self.clock.now(),
                self.grace(),
                self.now,
            );
            if !collected.entries.is_empty() {
                self.out.push(Out::Collected(collected.entries));
            }
        }
        let p = self.next_check % self.settings.partitions;
        self.next_check = self.next_check.wrapping_add(1);
        if self.store.recompute_root(p) != self.store.root(p) {
            self.out.push(Out::TreeMismatch(p));
        }
        if !self.ready && filled(&self.topology, &self.id, &self.synced) {
            self.ready = true;
            self.out.push(Out::Ready);
        }
        let pause = if std::mem::take(&mut self.wake_pending) {
            Duration::ZERO
        } else if self.ready {
            self.settings.anti_entropy_interval
        } else {
            self.settings.syncing_retry
        };
        self.schedule_round(pause);
    }

    // --- Inspection for the checker -----------------------------------------

    /// Entries from peers its clock refused (see [`Clock::admit`]): none
    /// should be, since every entry here comes from a write.
    pub fn refused_entries(&self) -> u64 {
        self.clock.refused()
    }

    /// The greatest version of `key` this node holds anywhere: in its store,
    /// its delta queues, its hints, or peer calls it may still retry.
    pub fn greatest_copy(&self, key: &str) -> Option<Version> {
        let mut best: Option<Version> = None;
        self.each_copy(key, |e| best = best.max(Some(e.version)));
        best
    }

    /// Calls `f` with every copy of `key` this node holds: in its store, its
    /// delta queues, its hints, or peer calls it may still retry.
    pub fn each_copy(&self, key: &str, mut f: impl FnMut(&Entry)) {
        if let Some(e) = self.store.get(key) {
            f(&e);
        }
        let mut see = |k: &str, e: &Entry| {
            if k == key {
                f(e);
            }
        };
        for q in self.queues.values() {
            for d in q.batcher.items() {
                see(&d.key, &d.entry);
            }
        }
        for h in self.hints.held() {
            see(&h.key, &h.entry);
        }
        for rpc in self.rpcs.values() {
            match rpc {
                Rpc::Batch { deltas, .. } => deltas.iter().for_each(|d| see(&d.key, &d.entry)),
                Rpc::Replay { hints, .. } => hints.iter().for_each(|h| see(&h.key, &h.entry)),
                _ => {}
            }
        }
    }

    // --- Plumbing -----------------------------------------------------------

    fn grace(&self) -> u64 {
        ntp64(self.settings.settle_grace)
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends `req` to `to` for `purpose`; returns the call's number. Its
    /// round trip counts for the peer's latency unless it is an
    /// anti-entropy step, as in production.
    fn call(&mut self, to: &str, purpose: Rpc, req: Req) -> u64 {
        let rpc = self.next_id();
        let measured = (!matches!(purpose, Rpc::Sync)).then_some(self.now);
        self.rpcs.insert(rpc, purpose);
        self.sent
            .insert(rpc, (to.to_string(), self.clock.round_trip(), measured));
        self.out.push(Out::Send {
            to: to.to_string(),
            msg: Msg::Request { rpc, req },
        });
        self.timer(self.settings.request_timeout, Timer::Rpc(rpc));
        rpc
    }

    fn timer(&mut self, after: Duration, timer: Timer) {
        self.out.push(Out::Timer { after, timer });
    }

    fn done(&mut self, op: usize, result: OpResult) {
        self.out.push(Out::Done { op, result });
    }
}

fn finish_write(call: &WriteCall, waiting: &str) -> OpResult {
    match call.finish(waiting) {
        Ok(written) => OpResult::Written(written),
        Err(e) => OpResult::Failed(e.to_string()),
    }
}
