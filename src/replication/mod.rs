//! Replication: per-peer outbound delta queues, batched by size and a short
//! linger, and hinted handoff for peers that cannot take a write.
//!
//! The decisions live in pure state (`Batcher`, `Hints`); `Replicator` is
//! the thin async shell that moves batches over the peer protocol. Every
//! delta that fails to reach its peer becomes a hint, so one place decides
//! what is held for whom.

mod awaited;
mod batcher;
mod hints;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

pub use awaited::{settle, AwaitedRelay};
pub use batcher::{BatchLimits, Batcher, Overflow};
pub use hints::{entry_size, DropReason, Hint, HintLimits, Hints};

use crate::clock::Clock;
use crate::crdt::Entry;
use crate::net::{PeerError, Peers};
use crate::store::{Key, Store};

/// Merges deltas a peer sent into `store`, letting `clock` observe their
/// versions so that this node's next writes order after them; returns how
/// many changed the store. What the peer service does with every batch.
/// An entry the clock does not admit (a version past the ceiling, see
/// [`Clock::admit`]) is left out, counted and logged; so is one this store
/// collected ([`Store::collected`], with `grace`): a read repair joined
/// from a replica that had not yet received a delete must not bring back
/// what the others collected since. The rest merge.
pub fn apply_deltas(store: &Store, clock: &Clock, deltas: Vec<(Key, Entry)>, grace: u64) -> u64 {
    let now = clock.now();
    let mut changed = 0;
    for (key, entry) in deltas {
        if store.collected(&key, &entry, now, grace) || !clock.admit(&key, &entry) {
            continue;
        }
        clock.observe(entry.version);
        if store.merge(&key, entry) {
            changed += 1;
        }
    }
    changed
}

/// Where hints are logged once the node logs to disk (the `durability`
/// module), so that a write held only as a hint survives a restart.
pub trait HintLog: Send + Sync {
    /// `entry` at `key` is now held for `peer`, taken `age` ago.
    fn hinted(&self, peer: &str, key: &str, entry: &Entry, age: Duration);
}

/// Why a delta did not reach its peer (it is held as a hint then).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Undelivered {
    /// The peer call failed.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The peer's queue was full: the peer is slower than the writes to it.
    #[error("delta queue full ({queued_bytes} bytes waiting; the limit is {limit})")]
    QueueFull {
        /// Bytes waiting when the delta came.
        queued_bytes: usize,
        /// `--replication-queue-bytes`.
        limit: usize,
    },
    /// The queue stopped (the node is shutting down).
    #[error("delta queue closed")]
    Closed,
}

/// Tells a waiting coordinator whether its delta reached the peer.
pub type Ack = oneshot::Sender<Result<(), Undelivered>>;

/// One write bound for one peer.
struct Delta {
    key: Key,
    entry: Entry,
    ack: Option<Ack>,
    /// When it was queued: the age of the oldest unsent delta is how far
    /// the peer is behind.
    at: Instant,
}

/// What one peer's queue task and the writers share.
struct Shared {
    waiting: Mutex<Waiting>,
    wake: Notify,
}

/// One peer's waiting deltas.
struct Waiting {
    batcher: Batcher<Delta>,
    /// Set by [`Replicator::flush`]: send what waits, then stop.
    closed: bool,
    /// Deltas refused since the queue was last empty (for the log).
    overflowed: u64,
}

struct Queue {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// What waits for one peer ([`Replicator::backlog`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backlog {
    /// The peer.
    pub peer: String,
    /// Bytes of deltas in its queue.
    pub queued_bytes: usize,
    /// Hints held for it.
    pub hints: usize,
    /// When its oldest undelivered write was queued or hinted.
    pub oldest: Option<Instant>,
}

impl Backlog {
    fn new(peer: String) -> Self {
        Self {
            peer,
            queued_bytes: 0,
            hints: 0,
            oldest: None,
        }
    }
}

/// The outbound side of replication for one node.
pub struct Replicator {
    peers: Arc<Peers>,
    batch: BatchLimits,
    /// One queue per peer and kind: plain deltas, and deltas the peer is to
    /// relay to its region's other replicas of their keys.
    queues: Mutex<HashMap<(String, bool), Queue>>,
    hints: Mutex<Hints>,
    overflowed: AtomicU64,
    hint_log: OnceLock<Arc<dyn HintLog>>,
}

impl Replicator {
    /// A replicator sending through `peers`.
    pub fn new(peers: Arc<Peers>, batch: BatchLimits, hint_limits: HintLimits) -> Arc<Self> {
        Arc::new(Self {
            peers,
            batch,
            queues: Mutex::new(HashMap::new()),
            hints: Mutex::new(Hints::new(hint_limits)),
            overflowed: AtomicU64::new(0),
            hint_log: OnceLock::new(),
        })
    }

    /// Logs every hint taken from now on to `log`; once only (returns false
    /// when one is attached already).
    pub fn attach_hint_log(&self, log: Arc<dyn HintLog>) -> bool {
        self.hint_log.set(log).is_ok()
    }

    /// Whether hints are logged (the node has a data directory).
    pub fn logs_hints(&self) -> bool {
        self.hint_log.get().is_some()
    }

    /// Logs a hint taken `age` ago, when a log is attached.
    fn log_hint(&self, peer: &str, key: &str, entry: &Entry, age: Duration) {
        if let Some(log) = self.hint_log.get() {
            log.hinted(peer, key, entry, age);
        }
    }

    /// Holds `entry` for `peer` as a hint taken `age` ago (logged again):
    /// a hint recovered from disk keeps its age, so that it is dropped when
    /// it would have been, and no hint older than `--max-hint-age` is ever
    /// delivered. One already that old is not held.
    pub fn restore_hint(&self, peer: &str, key: Key, entry: Entry, age: Duration) {
        let Some(at) = Instant::now().checked_sub(age) else {
            return;
        };
        self.log_hint(peer, &key, &entry, age);
        let dropped = self.hints().add(peer, key, entry, at);
        log_over_bound(dropped);
        self.expire_hints();
    }

    /// Every hint held, with its peer and age: what a snapshot keeps.
    pub fn held_hints(&self) -> Vec<(String, Key, Entry, Duration)> {
        let hints = self.hints();
        let now = Instant::now();
        hints
            .peers()
            .into_iter()
            .flat_map(|peer| {
                hints
                    .held_for(&peer)
                    .map(|h| (peer.clone(), h.key.clone(), h.entry.clone(), now - h.at))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Queues `entry` for `peer`; `ack`, when given, learns whether it
    /// arrived. A delta that does not arrive is kept as a hint, and so is
    /// one that finds the peer's queue full (`max_queued_bytes`) or closed.
    pub fn push(self: &Arc<Self>, peer: &str, key: Key, entry: Entry, ack: Option<Ack>) {
        self.enqueue(peer, false, key, entry, ack);
    }

    /// Queues `entry` for `peer`, a replica of another region, which hands
    /// it on to the key's other replicas in its region: the write crosses
    /// to that region once. Held as a hint for `peer` alone when it does
    /// not arrive (anti-entropy then repairs the others).
    pub fn relay(self: &Arc<Self>, peer: &str, key: Key, entry: Entry) {
        self.enqueue(peer, true, key, entry, None);
    }

    /// Bytes of delta batches delivered to each peer since start.
    pub fn bytes_applied(&self) -> HashMap<String, u64> {
        self.peers.bytes_applied()
    }

    fn enqueue(
        self: &Arc<Self>,
        peer: &str,
        relay: bool,
        key: Key,
        entry: Entry,
        ack: Option<Ack>,
    ) {
        let shared = {
            let mut queues = lock(&self.queues);
            let queue = queues.entry((peer.to_string(), relay)).or_insert_with(|| {
                let shared = Arc::new(Shared {
                    waiting: Mutex::new(Waiting {
                        batcher: Batcher::new(self.batch),
                        closed: false,
                        overflowed: 0,
                    }),
                    wake: Notify::new(),
                });
                let task = tokio::spawn(self.clone().run_queue(
                    peer.to_string(),
                    relay,
                    shared.clone(),
                ));
                Queue { shared, task }
            });
            queue.shared.clone()
        };
        let size = entry_size(&key, &entry);
        let now = Instant::now();
        let delta = Delta {
            key,
            entry,
            ack,
            at: now,
        };
        let refused = {
            let mut waiting = lock(&shared.waiting);
            if waiting.closed {
                Some((delta, Undelivered::Closed))
            } else {
                match waiting.batcher.push(delta, size, now) {
                    Ok(()) => None,
                    Err(Overflow { item, queued_bytes }) => {
                        waiting.overflowed += 1;
                        if waiting.overflowed == 1 {
                            tracing::warn!(
                                peer,
                                queued_bytes,
                                limit = self.batch.max_queued_bytes,
                                "delta queue full: the peer is slower than the writes to it; \
                                 holding further deltas as hints"
                            );
                        }
                        let why = Undelivered::QueueFull {
                            queued_bytes,
                            limit: self.batch.max_queued_bytes,
                        };
                        Some((item, why))
                    }
                }
            }
        };
        match refused {
            None => shared.wake.notify_one(),
            Some((delta, why)) => {
                if matches!(why, Undelivered::QueueFull { .. }) {
                    self.overflowed.fetch_add(1, Ordering::Relaxed);
                }
                self.hint(peer, delta.key, delta.entry);
                if let Some(ack) = delta.ack {
                    let _ = ack.send(Err(why));
                }
            }
        }
    }

    /// Deltas that found their peer's queue full and were held as hints
    /// instead, since start.
    pub fn deltas_overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Holds `entry` for `peer`, which cannot take it now.
    pub fn hint(&self, peer: &str, key: Key, entry: Entry) {
        self.log_hint(peer, &key, &entry, Duration::ZERO);
        let dropped = self.hints().add(peer, key, entry, Instant::now());
        log_over_bound(dropped);
    }

    /// Hints dropped unsent since start, by reason.
    pub fn hints_dropped_by(&self) -> [(DropReason, u64); 3] {
        self.hints().dropped_by()
    }

    /// What waits for each peer: queued delta bytes, hints, and when the
    /// oldest undelivered write (queued or hinted) was taken. Batches in
    /// flight are not counted.
    pub fn backlog(&self) -> Vec<Backlog> {
        let mut by_peer: BTreeMap<String, Backlog> = BTreeMap::new();
        let queues: Vec<(String, Arc<Shared>)> = lock(&self.queues)
            .iter()
            .map(|((p, _), q)| (p.clone(), q.shared.clone()))
            .collect();
        for (peer, shared) in queues {
            let waiting = lock(&shared.waiting);
            let b = by_peer
                .entry(peer.clone())
                .or_insert_with(|| Backlog::new(peer));
            // A peer has two queues: plain deltas, and deltas to relay.
            b.queued_bytes += waiting.batcher.queued_bytes();
            let first = waiting.batcher.items().next().map(|d| d.at);
            if let Some(at) = first {
                b.oldest = Some(b.oldest.map_or(at, |o| o.min(at)));
            }
        }
        for (peer, n, at) in self.hints().oldest() {
            let b = by_peer
                .entry(peer.to_string())
                .or_insert_with(|| Backlog::new(peer.to_string()));
            b.hints = n;
            b.oldest = Some(b.oldest.map_or(at, |o| o.min(at)));
        }
        by_peer.into_values().collect()
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
        log_dropped(expired, "older than --max-hint-age");
        expired
    }

    /// Counts `n` hints taken out with [`Replicator::take_hints`] that will
    /// never be delivered, and logs why.
    pub fn hints_abandoned(&self, n: usize, reason: &str) {
        if n == 0 {
            return;
        }
        self.hints().count_dropped(n);
        log_dropped(n, reason);
    }

    /// Drops every hint still held, counted and logged with `reason`;
    /// returns how many (at shutdown: memory is not durable).
    pub fn drop_hints(&self, reason: &str) -> usize {
        let n = self.hints().drop_all();
        log_dropped(n, reason);
        n
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
                    let dropped = self.hints().restore(peer, batch);
                    log_over_bound(dropped);
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
    /// afterwards go to new queues.
    pub async fn flush(&self) {
        let queues: Vec<Queue> = self
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, q)| q)
            .collect();
        for q in queues {
            lock(&q.shared.waiting).closed = true;
            q.shared.wake.notify_one();
            let _ = q.task.await;
        }
    }

    fn hints(&self) -> MutexGuard<'_, Hints> {
        lock(&self.hints)
    }

    /// One peer's queue: sends its batches with at most
    /// [`MAX_IN_FLIGHT`] in flight, so that a slow peer delays only its own
    /// deltas and a write is not held back a whole round trip by the batch
    /// before it (over a WAN link, one batch at a time made each write
    /// wait for the previous answer); deltas that arrive while the batches
    /// in flight fill the limit form the next one. Once closed, sends what
    /// waits, waits for the batches in flight, and stops.
    async fn run_queue(self: Arc<Self>, peer: String, relay: bool, shared: Arc<Shared>) {
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            while in_flight.try_join_next().is_some() {}
            if in_flight.len() >= MAX_IN_FLIGHT {
                in_flight.join_next().await;
                continue;
            }
            let (batch, closed, deadline) = {
                let mut waiting = lock(&shared.waiting);
                let batch = match waiting.batcher.next(Instant::now()) {
                    Some(batch) => Some(batch),
                    None if waiting.closed => {
                        let rest = waiting.batcher.take();
                        (!rest.is_empty()).then_some(rest)
                    }
                    None => None,
                };
                if waiting.batcher.is_empty() && waiting.overflowed > 0 {
                    tracing::info!(
                        peer = %peer,
                        overflowed = waiting.overflowed,
                        "delta queue drained; the deltas it refused are held as hints"
                    );
                    waiting.overflowed = 0;
                }
                (batch, waiting.closed, waiting.batcher.deadline())
            };
            match batch {
                Some(batch) => {
                    let (me, peer) = (self.clone(), peer.clone());
                    in_flight.spawn(async move { me.send(&peer, relay, batch).await });
                }
                None if closed => {
                    while in_flight.join_next().await.is_some() {}
                    return;
                }
                None => {
                    let linger = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d.into()).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = shared.wake.notified() => {}
                        () = linger => {}
                        Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                    }
                }
            }
        }
    }

    /// Holds `entries`, which did not reach `peer`, as hints (logged).
    fn hold(&self, peer: &str, entries: &[(Key, Entry)]) {
        for (key, entry) in entries {
            self.log_hint(peer, key, entry, Duration::ZERO);
        }
        let mut hints = self.hints();
        let now = Instant::now();
        let dropped: usize = entries
            .iter()
            .map(|(key, entry)| hints.add(peer, key.clone(), entry.clone(), now))
            .sum();
        drop(hints);
        log_over_bound(dropped);
    }

    async fn send(&self, peer: &str, relay: bool, batch: Vec<Delta>) {
        let entries: Vec<(Key, Entry)> = batch
            .iter()
            .map(|d| (d.key.clone(), d.entry.clone()))
            .collect();
        let result = self
            .peers
            .apply_as(peer, &entries, relay)
            .await
            .map(|_| ())
            .map_err(Undelivered::from);
        if let Err(e) = &result {
            tracing::debug!(peer, error = %e, deltas = batch.len(), "delta batch failed; holding hints");
            self.hold(peer, &entries);
        }
        for d in batch {
            if let Some(ack) = d.ack {
                let _ = ack.send(result.clone());
            }
        }
    }
}

/// Batches one peer's queue keeps in flight at most: enough that a write is
/// not held back by the round trip of the batch before it over a WAN link,
/// few enough that a slow peer ties up little (each batch is at most
/// `--replication-batch-bytes`, on top of the queue's own bound).
pub const MAX_IN_FLIGHT: usize = 4;

/// Logs hints the count or byte bound dropped.
/// Logs `dropped` hints (when any) with the reason they went.
fn log_dropped(dropped: usize, reason: &str) {
    if dropped > 0 {
        tracing::warn!(
            dropped,
            reason,
            "dropped hints; anti-entropy repairs them only where a replica holds the write"
        );
    }
}

/// Logs hints the bounds dropped to make room.
fn log_over_bound(dropped: usize) {
    log_dropped(
        dropped,
        "over --max-hints or --max-hint-bytes (the oldest go first)",
    );
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::crdt::Version;
    use crate::switch::Switch;

    /// A read repair joined from a replica that had not yet received a
    /// delete must not bring back an entry this store collected (soak seed
    /// 2259670507).
    #[test]
    fn deltas_do_not_bring_back_what_this_store_collected() {
        let clock = Clock::new("n1", crate::clock::system_time, Duration::from_millis(500));
        let grace = crate::clock::ntp64(Duration::from_secs(60));
        let hour_ago = clock.now() - crate::clock::ntp64(Duration::from_secs(3600));
        let settled = Entry::tombstone(Version::new(hour_ago, 7));
        let store = Store::new(16);
        assert_eq!(
            apply_deltas(
                &store,
                &clock,
                vec![("gone".into(), settled.clone())],
                grace
            ),
            0
        );
        assert!(!store.contains("gone"), "collected here: refused");
        // Where the key is held, the settled entry still replaces what it
        // is newer than.
        store.merge(
            "held",
            Entry::value(Version::new(hour_ago - 1, 7), "old", 0),
        );
        assert_eq!(
            apply_deltas(
                &store,
                &clock,
                vec![("held".into(), settled.clone())],
                grace
            ),
            1
        );
        assert_eq!(store.get("held"), Some(settled));
    }

    /// A replicator of node `me` whose one peer, `peer`, accepts
    /// connections and never answers (16 KiB of queue, 1,000 hints). The
    /// returned task holds the silent peer's connections.
    pub(super) async fn replicator_with_a_silent_peer(
        me: &str,
        peer: &str,
    ) -> (Arc<Replicator>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let clock =
            crate::clock::Clock::new(me, crate::clock::system_time, Duration::from_millis(500));
        let peers = Arc::new(Peers::new(
            me.into(),
            Arc::new(clock),
            Arc::new(Switch::new()),
            Duration::from_secs(60),
            1 << 20,
            None,
        ));
        peers.set_addresses(HashMap::from([(peer.to_string(), addr.to_string())]));
        let replicator = Replicator::new(
            peers,
            BatchLimits {
                max_bytes: 1024,
                linger: Duration::from_millis(1),
                max_queued_bytes: 16 * 1024,
            },
            HintLimits {
                max_hints: 1000,
                max_bytes: 1 << 20,
                max_age: Duration::from_secs(60),
            },
        );
        (replicator, silent)
    }

    #[tokio::test]
    async fn a_slow_peer_overflows_its_queue_into_counted_hints() {
        let (replicator, _silent) = replicator_with_a_silent_peer("n1", "slow").await;
        let entry = Entry::value(Version::new(1, 1), "x".repeat(1000), 0);
        let size = entry_size("k00", &entry);
        let fit = 16 * 1024 / size;
        let mut acks = Vec::new();
        for i in 0..100 {
            let (tx, rx) = oneshot::channel();
            let key = format!("k{i:02}");
            replicator.push("slow", key.into(), entry.clone(), Some(tx));
            acks.push(rx);
        }
        // What fits the bound waits for the peer; the rest is held as
        // hints, counted, and its writers learn why at once.
        assert_eq!(replicator.deltas_overflowed(), (100 - fit) as u64);
        assert_eq!(replicator.hints_pending(), 100 - fit);
        let last = acks.pop().unwrap().await.unwrap();
        assert_eq!(
            last,
            Err(Undelivered::QueueFull {
                queued_bytes: fit * size,
                limit: 16 * 1024
            })
        );
        assert_eq!(
            last.unwrap_err().to_string(),
            format!(
                "delta queue full ({} bytes waiting; the limit is 16384)",
                fit * size
            )
        );
        // The backlog shows both: the bytes still queued (a batch in flight
        // is not counted) and the hints, with the oldest write.
        let backlog = replicator.backlog();
        assert_eq!(backlog.len(), 1);
        let slow = &backlog[0];
        assert_eq!((slow.peer.as_str(), slow.hints), ("slow", 100 - fit));
        assert!(slow.queued_bytes > 0 && slow.queued_bytes <= fit * size);
        assert!(slow.oldest.is_some_and(|at| at <= Instant::now()));
    }
}
