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

mod anti_entropy;
mod client;
mod messages;
mod replication;
mod serve;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::anti_entropy::plan::live_peers;
use crate::anti_entropy::Collector;
use crate::clock::{ntp64, Clock, RoundTrip};
use crate::cluster::Topology;
use crate::coordinator::ReplicaAnswer;
use crate::crdt::{Entry, Version};
use crate::dots::{Dots, DEFAULT_CAPACITY};
use crate::net::latency::{Latencies, OBSERVE_AT_ONE};
use crate::replication::{Hint, Hints};
use crate::server::NOT_READY;
use crate::store::Store;

use super::disk::{DiskMode, SimDisk};

use anti_entropy::Round;
use client::Call;
pub use messages::{ClientOp, Msg, OpKind, OpResult, Out, Req, Resp, Settings, Timer, MAP_LIMIT};
use replication::{Delta, Queue, QueueId};

/// A peer call in flight, and what its answer is for.
enum Rpc {
    Batch {
        queue: QueueId,
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
    queues: BTreeMap<QueueId, Queue>,
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
    /// when that is later, as production draws one per process.
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
    pub(super) fn sync_merged(&self, changed: u64) {
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
        self.replan_reads();
        let mut back = back;
        back.sort();
        for peer in back {
            self.replay(&peer);
        }
    }

    /// Handles a message from node `from`.
    pub fn receive(&mut self, from: &str, msg: Msg) {
        match msg {
            Msg::Request { rpc, req } => {
                let resp = self.serve(from, req);
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

    /// Handles a timer.
    pub fn fire(&mut self, timer: Timer) {
        match timer {
            Timer::Linger(queue) => {
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.linger_at = None;
                }
                self.pump(&queue);
            }
            Timer::Rpc(rpc) => {
                let timeout = self.settings.request_timeout;
                if let Some((peer, _, Some(_))) = self.sent.get(&rpc) {
                    self.latencies.record(peer, timeout);
                }
                let why = format!("no answer within {timeout:?}");
                if let Some(Rpc::Read { call, peer }) = self.rpcs.get(&rpc) {
                    let (call, peer) = (*call, peer.clone());
                    self.rpcs.remove(&rpc);
                    self.sent.remove(&rpc);
                    self.read_silent(call, &peer, why);
                } else {
                    self.answered(rpc, Err(why));
                }
            }
            Timer::Hedge { call, rpc } => {
                if let Some(Call::ReadOne { hedge, .. }) = self.calls.get(&call) {
                    if *hedge == Some(rpc) {
                        self.read_one_next(call, true);
                    }
                }
            }
            Timer::Refused(rpc, why) => self.answered(rpc, Err(why)),
            Timer::Call(id) => {
                let waiting = format!("no answer within {:?}", self.settings.request_timeout);
                match self.calls.get(&id) {
                    Some(Call::Write { .. }) => self.finish_write_call(id, &waiting),
                    Some(Call::ReadMany { .. }) => self.finish_read(id, &waiting),
                    Some(Call::ReadOne { op, parked, .. }) => {
                        let why = match parked {
                            Some(why) => why.clone(),
                            None if op.kind.is_write() => {
                                format!("no replica answered within {OBSERVE_AT_ONE:?}")
                            }
                            None => return,
                        };
                        if let Some(Call::ReadOne { op, .. }) = self.calls.remove(&id) {
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
            (Rpc::Batch { queue, deltas }, answer) => {
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.in_flight = q.in_flight.saturating_sub(1);
                }
                let peer = &queue.0;
                let ok = answer.is_ok();
                for d in deltas {
                    if !ok {
                        self.hint(peer, d.key.clone(), d.entry.clone());
                    }
                    if let Some(call) = d.ack {
                        let answer = match &answer {
                            Ok(_) => ReplicaAnswer::Ok,
                            Err(why) => ReplicaAnswer::Failed(format!("{why}; hinted")),
                        };
                        self.write_answer(call, peer, answer);
                    }
                }
                self.pump(&queue);
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
