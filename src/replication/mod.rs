//! Replication: per-peer outbound delta queues, batched by size and a short
//! linger, and hinted handoff for peers that cannot take a write.
//!
//! The decisions live in pure state (`Batcher`, `Hints`); `Replicator` is
//! the thin async shell that moves batches over the peer protocol. Every
//! delta that fails to reach its peer becomes a hint, so one place decides
//! what is held for whom.

mod batcher;
mod hints;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use batcher::Batcher;
pub use hints::{entry_size, Hint, HintLimits, Hints};

use crate::clock::Clock;
use crate::crdt::Entry;
use crate::net::{PeerError, Peers};
use crate::store::{Key, Store};

/// Merges deltas a peer sent into `store`, letting `clock` observe their
/// versions so that this node's next writes order after them; returns how
/// many changed the store. What the peer service does with every batch.
/// An entry the clock does not admit (a version past the ceiling, see
/// [`Clock::admit`]) is left out, counted and logged; the rest merge.
pub fn apply_deltas(store: &Store, clock: &Clock, deltas: Vec<(Key, Entry)>) -> u64 {
    let mut changed = 0;
    for (key, entry) in deltas {
        if !clock.admit(&key, &entry) {
            continue;
        }
        clock.observe(entry.version);
        if store.merge(&key, entry) {
            changed += 1;
        }
    }
    changed
}

/// Tells a waiting coordinator whether its delta reached the peer.
pub type Ack = oneshot::Sender<Result<(), PeerError>>;

/// One write bound for one peer.
struct Delta {
    key: Key,
    entry: Entry,
    ack: Option<Ack>,
}

/// How deltas are batched.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Bytes that fill a batch.
    pub max_bytes: usize,
    /// How long a delta may wait for others to share its batch.
    pub linger: Duration,
}

struct Queue {
    tx: mpsc::UnboundedSender<Delta>,
    task: JoinHandle<()>,
}

/// The outbound side of replication for one node.
pub struct Replicator {
    peers: Arc<Peers>,
    batch: BatchLimits,
    queues: Mutex<HashMap<String, Queue>>,
    hints: Mutex<Hints>,
}

impl Replicator {
    /// A replicator sending through `peers`.
    pub fn new(peers: Arc<Peers>, batch: BatchLimits, hint_limits: HintLimits) -> Arc<Self> {
        Arc::new(Self {
            peers,
            batch,
            queues: Mutex::new(HashMap::new()),
            hints: Mutex::new(Hints::new(hint_limits)),
        })
    }

    /// Queues `entry` for `peer`; `ack`, when given, learns whether it
    /// arrived. A delta that does not arrive is kept as a hint.
    pub fn push(self: &Arc<Self>, peer: &str, key: Key, entry: Entry, ack: Option<Ack>) {
        let delta = Delta { key, entry, ack };
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = queues.entry(peer.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(self.clone().run_queue(peer.to_string(), rx));
            Queue { tx, task }
        });
        if let Err(mpsc::error::SendError(delta)) = queue.tx.send(delta) {
            // The queue task is gone (shutting down): hold the write.
            self.hint(peer, delta.key, delta.entry);
        }
    }

    /// Holds `entry` for `peer`, which cannot take it now.
    pub fn hint(&self, peer: &str, key: Key, entry: Entry) {
        self.hints().add(peer, key, entry, Instant::now());
    }

    /// Hints waiting, over all peers.
    pub fn hints_pending(&self) -> usize {
        self.hints().pending()
    }

    /// Hints dropped unsent since start.
    pub fn hints_dropped(&self) -> u64 {
        self.hints().dropped()
    }

    /// The peers hints are held for.
    pub fn hinted_peers(&self) -> Vec<String> {
        self.hints().peers()
    }

    /// Drops hints past their age; returns how many.
    pub fn expire_hints(&self) -> usize {
        let expired = self.hints().expire(Instant::now());
        if expired > 0 {
            tracing::warn!(
                expired,
                "dropped hints past --max-hint-age; anti-entropy repairs them"
            );
        }
        expired
    }

    /// Hands `peer` its hints, batch by batch, until none is left or a batch
    /// fails (then it is kept for the next try). Returns how many arrived.
    pub async fn replay(&self, peer: &str) -> usize {
        let mut delivered = 0;
        loop {
            let batch = self.hints().take(peer, self.batch.max_bytes);
            if batch.is_empty() {
                return delivered;
            }
            let entries: Vec<(Key, Entry)> = batch
                .iter()
                .map(|h| (h.key.clone(), h.entry.clone()))
                .collect();
            match self.peers.apply(peer, &entries).await {
                Ok(_) => delivered += entries.len(),
                Err(e) => {
                    tracing::debug!(peer, error = %e, "hint replay failed; kept for later");
                    self.hints().restore(peer, batch);
                    return delivered;
                }
            }
        }
    }

    /// Takes every hint held for `peer` (for handing them elsewhere).
    pub fn take_hints(&self, peer: &str) -> Vec<Hint> {
        self.hints().take(peer, usize::MAX)
    }

    /// Sends every queued delta and stops the queues; deltas pushed
    /// afterwards become hints.
    pub async fn flush(&self) {
        let queues: Vec<Queue> = self
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, q)| q)
            .collect();
        for q in queues {
            drop(q.tx);
            let _ = q.task.await;
        }
    }

    fn hints(&self) -> std::sync::MutexGuard<'_, Hints> {
        self.hints.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One peer's queue: gathers deltas into batches and sends one batch at
    /// a time, so a slow peer delays only its own deltas, and deltas that
    /// arrive while a batch is in flight form the next one.
    async fn run_queue(self: Arc<Self>, peer: String, mut rx: mpsc::UnboundedReceiver<Delta>) {
        let mut batcher = Batcher::new(self.batch.max_bytes, self.batch.linger);
        loop {
            let deadline = batcher.deadline();
            let linger = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                delta = rx.recv() => match delta {
                    Some(d) => {
                        let size = entry_size(&d.key, &d.entry);
                        if let Some(batch) = batcher.push(d, size, Instant::now()) {
                            self.send(&peer, batch).await;
                        }
                    }
                    None => {
                        let rest = batcher.take();
                        if !rest.is_empty() {
                            self.send(&peer, rest).await;
                        }
                        return;
                    }
                },
                () = linger => {
                    if let Some(batch) = batcher.due(Instant::now()) {
                        self.send(&peer, batch).await;
                    }
                }
            }
        }
    }

    async fn send(&self, peer: &str, batch: Vec<Delta>) {
        let entries: Vec<(Key, Entry)> = batch
            .iter()
            .map(|d| (d.key.clone(), d.entry.clone()))
            .collect();
        let result = self.peers.apply(peer, &entries).await.map(|_| ());
        if let Err(e) = &result {
            tracing::debug!(peer, error = %e, deltas = batch.len(), "delta batch failed; holding hints");
            let mut hints = self.hints();
            let now = Instant::now();
            for (key, entry) in entries {
                hints.add(peer, key, entry, now);
            }
        }
        for d in batch {
            if let Some(ack) = d.ack {
                let _ = ack.send(result.clone());
            }
        }
    }
}
