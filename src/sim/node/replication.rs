//! Replication from a node: per-peer delta queues (one batch in flight at a
//! time, a linger timer for a batch not yet full), hints for peers that did
//! not take their deltas, and a graceful leave.

use std::time::Instant;

use crate::coordinator::ReplicaAnswer;
use crate::crdt::Entry;
use crate::replication::{entry_size, Batcher, Hint, Overflow, Undelivered};
use crate::store::Key;

use super::{Out, Req, Rpc, SimNode, Timer};

/// One write bound for one peer.
#[derive(Clone, Debug)]
pub(super) struct Delta {
    pub(super) key: Key,
    pub(super) entry: Entry,
    pub(super) ack: Option<u64>,
}

/// One peer's outbound deltas: one batch in flight at a time.
pub(super) struct Queue {
    pub(super) batcher: Batcher<Delta>,
    pub(super) in_flight: bool,
    pub(super) linger_at: Option<Instant>,
}

impl SimNode {
    pub(super) fn push(&mut self, peer: &str, key: Key, entry: Entry, ack: Option<u64>) {
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
                    self.write_answer(call, peer, ReplicaAnswer::Failed(format!("{why}; hinted")));
                }
            }
        }
    }

    /// Holds `entry` for `peer`; says so when the bounds drop older hints.
    pub(super) fn hint(&mut self, peer: &str, key: Key, entry: Entry) {
        if self.hints.add(peer, key, entry, self.now) > 0 {
            self.out.push(Out::HintsExpired);
        }
    }

    /// Sends `peer` its next batch when none is in flight and one is full
    /// or due; otherwise sets a timer for the linger.
    pub(super) fn pump(&mut self, peer: &str) {
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
    pub(super) fn replay(&mut self, peer: &str) {
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
}
