//! Replication from a node: per-peer delta queues (up to
//! [`MAX_IN_FLIGHT`] batches in flight, a linger timer for a batch not yet
//! full), a second queue per peer for deltas it is to relay to its
//! region's other replicas, hints for peers that did not take their
//! deltas, and a graceful leave. As production's `Replicator`.

use std::time::Instant;

use crate::coordinator::ReplicaAnswer;
use crate::crdt::Entry;
use crate::replication::{entry_size, Batcher, Hint, Overflow, Undelivered, MAX_IN_FLIGHT};
use crate::store::Key;

use super::{Out, Req, Rpc, SimNode, Timer};

/// One write bound for one peer.
#[derive(Clone, Debug)]
pub(super) struct Delta {
    pub(super) key: Key,
    pub(super) entry: Entry,
    pub(super) ack: Option<u64>,
}

/// Which outbound queue: the peer, and whether it relays what it is sent
/// (a peer has one queue of each kind, as in production).
pub(super) type QueueId = (String, bool);

/// One peer's outbound deltas of one kind: up to [`MAX_IN_FLIGHT`] batches
/// in flight.
pub(super) struct Queue {
    pub(super) batcher: Batcher<Delta>,
    pub(super) in_flight: usize,
    pub(super) linger_at: Option<Instant>,
}

impl SimNode {
    /// Queues `entry` for `peer`; `ack`, when given, is the write call that
    /// waits for its answer.
    pub(super) fn push(&mut self, peer: &str, key: Key, entry: Entry, ack: Option<u64>) {
        self.enqueue(peer, false, key, entry, ack);
    }

    /// Queues `entry` for `peer`, a replica of another region, which hands
    /// it on to the key's other replicas in its region
    /// ([`crate::coordinator::relay::region_mates`]); held as a hint for
    /// `peer` alone when it does not arrive, as production's is.
    pub(super) fn relay(&mut self, peer: &str, key: Key, entry: Entry) {
        self.enqueue(peer, true, key, entry, None);
    }

    fn enqueue(&mut self, peer: &str, relay: bool, key: Key, entry: Entry, ack: Option<u64>) {
        let size = entry_size(&key, &entry);
        let limits = self.settings.batch;
        let id = (peer.to_string(), relay);
        let q = self.queues.entry(id.clone()).or_insert_with(|| Queue {
            batcher: Batcher::new(limits),
            in_flight: 0,
            linger_at: None,
        });
        match q.batcher.push(Delta { key, entry, ack }, size, self.now) {
            Ok(()) => self.pump(&id),
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

    /// Sends the queue's batches that are full or due while fewer than
    /// [`MAX_IN_FLIGHT`] are in flight; sets a timer for the linger of one
    /// not yet due. As production's queue task does.
    pub(super) fn pump(&mut self, id: &QueueId) {
        let now = self.now;
        loop {
            let Some(q) = self.queues.get_mut(id) else {
                return;
            };
            if q.in_flight >= MAX_IN_FLIGHT {
                return;
            }
            let Some(deltas) = q.batcher.next(now) else {
                if let Some(due) = q.batcher.deadline() {
                    if q.linger_at != Some(due) {
                        q.linger_at = Some(due);
                        let after = due.saturating_duration_since(now);
                        self.timer(after, Timer::Linger(id.clone()));
                    }
                }
                return;
            };
            q.in_flight += 1;
            let entries = deltas
                .iter()
                .map(|d| (d.key.clone(), d.entry.clone()))
                .collect();
            let (peer, relay) = id.clone();
            let req = if relay {
                Req::Relay(entries)
            } else {
                Req::Apply(entries)
            };
            let purpose = Rpc::Batch {
                queue: id.clone(),
                deltas,
            };
            self.call(&peer, purpose, req);
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

    /// Leaves the cluster gracefully: sends every queued delta (those to
    /// relay, to relay), and gives every hint to the live replicas of its
    /// key. Does not wait for answers.
    pub fn leave(&mut self) {
        let ids: Vec<QueueId> = self.queues.keys().cloned().collect();
        for (peer, relay) in ids {
            let Some(q) = self.queues.get_mut(&(peer.clone(), relay)) else {
                continue;
            };
            let rest = q.batcher.take();
            if !rest.is_empty() {
                let entries = rest.into_iter().map(|d| (d.key, d.entry)).collect();
                let req = if relay {
                    Req::Relay(entries)
                } else {
                    Req::Apply(entries)
                };
                self.call(&peer, Rpc::Parting, req);
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
