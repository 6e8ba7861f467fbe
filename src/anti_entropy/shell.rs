//! The thin async shell that drives sessions over the peer protocol: when
//! to sync with whom, the repair byte budget, merging what arrives, and the
//! counters Stats reports. The decisions are the state machines'.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::plan::{filled, hand_offs, live_peers, shared_partitions};
use super::{
    Collector, Initiator, Limits, LocalStore, Next, PartitionSet, Reply, Request, SessionStats,
};
use crate::clock::{ntp64, Clock};
use crate::cluster::{NodeState, StateAnnouncer};
use crate::coordinator::Coordinator;
use crate::crdt::{Entry, Version};
use crate::keyspace::Stamp;
use crate::metrics::Metrics;
use crate::net::{PeerError, Peers};
use crate::store::{Key, Store};

impl LocalStore for Store {
    fn root(&self, partition: u32) -> u128 {
        Store::root(self, partition)
    }

    fn branches(&self, partition: u32) -> [u128; super::BRANCHES] {
        Store::branches(self, partition)
    }

    fn leaves(&self, partition: u32, branch: u8) -> [u128; super::LEAVES_PER_BRANCH] {
        Store::leaves(self, partition, branch)
    }

    fn versions_in_leaves(&self, partition: u32, leaves: &[u8]) -> Vec<(u8, Key, Stamp)> {
        Store::versions_in_leaves(self, partition, leaves)
    }

    fn entries(&self, keys: &[&str]) -> Vec<(Key, Entry)> {
        Store::entries(self, keys)
    }
}

/// Merges entries that anti-entropy brought into `store`, letting `clock`
/// observe their versions; returns how many changed the store. A settled
/// entry (a tombstone older than `grace`, or a value expired that long) for
/// a key this store lacks is refused: this store collected it once every
/// replica held it, and taking it back would only make the replicas trade
/// it forever. An entry the clock does not admit (a version past the
/// ceiling, see [`Clock::admit`]) is left out, counted and logged.
///
/// A `handoff`'s entries are all kept: their sender drops its copy after
/// the session, and a new or refilled replica never held them. Refusing a
/// settled tombstone there would drop the delete, and an older value that
/// another former replica hands off would come back.
pub fn merge_repairs(
    store: &Store,
    clock: &Clock,
    entries: Vec<(Key, Entry)>,
    grace: u64,
    handoff: bool,
) -> u64 {
    let now = clock.now();
    let mut changed = 0;
    for (key, entry) in entries {
        if (!handoff && store.collected(&key, &entry, now, grace)) || !clock.admit(&key, &entry) {
            continue;
        }
        clock.observe(entry.version);
        if store.merge(&key, entry) {
            changed += 1;
        }
    }
    changed
}

/// Counters of this node's anti-entropy work.
#[derive(Default)]
pub struct AntiEntropyStats {
    rounds: AtomicU64,
    repaired: AtomicU64,
    mismatches: AtomicU64,
    bytes: AtomicU64,
    /// Unix time (ms) the last session this node started completed; 0
    /// before the first.
    last_completed: AtomicU64,
}

impl AntiEntropyStats {
    /// Sessions this node completed as initiator.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Entries anti-entropy merged into this node's store that changed it,
    /// as initiator or responder.
    pub fn repaired(&self) -> u64 {
        self.repaired.load(Ordering::Relaxed)
    }

    /// Partitions whose incrementally kept Merkle root differed from one
    /// recomputed from the map (a bug if ever non-zero).
    pub fn mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Relaxed)
    }

    /// Bytes of anti-entropy messages this node sent and received, as
    /// initiator and as responder: what refilling it after a restart cost.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Counts `n` bytes of anti-entropy messages.
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// When (Unix time, ms) the last session this node started completed;
    /// 0 before the first.
    pub fn last_completed_ms(&self) -> u64 {
        self.last_completed.load(Ordering::Relaxed)
    }

    /// Counts `n` repaired entries.
    pub fn add_repaired(&self, n: u64) {
        self.repaired.fetch_add(n, Ordering::Relaxed);
    }
}

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The peer could not be reached or failed.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The peer broke the protocol.
    #[error(transparent)]
    Session(#[from] super::SessionError),
    /// This node's log cannot take what the session merged.
    #[error("this node cannot log to disk: {0}")]
    Journal(#[from] crate::store::JournalError),
}

/// Settings of the anti-entropy loop.
#[derive(Clone, Copy, Debug)]
pub struct AntiEntropyConfig {
    /// Time between rounds with every peer.
    pub interval: Duration,
    /// The most bytes per second sessions may send and receive.
    pub max_bytes_per_sec: u64,
    /// Message size limits.
    pub limits: Limits,
    /// How old a tombstone (or how long expired a value) must be before it
    /// may be collected: longer than any hint or delta can live, so that no
    /// older write still in flight can arrive after it is gone.
    pub settle_grace: Duration,
    /// Whether the node starts ready (alone, or the first of a cluster)
    /// rather than syncing (it joins others and starts empty).
    pub start_ready: bool,
}

/// How often a syncing node retries, whatever the interval: it is not
/// ready until it has synced every partition it holds.
const SYNCING_RETRY: Duration = Duration::from_millis(200);

/// Runs anti-entropy sessions with this node's replica peers, and turns a
/// node that started `syncing` ready once it has synced every partition it
/// holds with each of the partition's other replicas.
pub struct AntiEntropy {
    me: String,
    store: Arc<Store>,
    clock: Arc<Clock>,
    peers: Arc<Peers>,
    coordinator: Arc<Coordinator>,
    config: AntiEntropyConfig,
    stats: Arc<AntiEntropyStats>,
    wake: Notify,
    announcer: StateAnnouncer,
    ready: AtomicBool,
    /// While syncing: the partitions synced, each with the peer.
    synced: Mutex<BTreeSet<(u32, String)>>,
    /// The partition the next tree check recomputes.
    next_check: AtomicU64,
    /// Settled entries awaiting every replica's acknowledgement.
    collector: Mutex<Collector>,
    /// Nothing is collected before this instant ([`AntiEntropy::hold_collection`]).
    hold_until: Mutex<Option<Instant>>,
    metrics: Metrics,
}

impl AntiEntropy {
    /// Anti-entropy for node `me`.
    pub fn new(
        me: String,
        store: Arc<Store>,
        clock: Arc<Clock>,
        peers: Arc<Peers>,
        coordinator: Arc<Coordinator>,
        config: AntiEntropyConfig,
        announcer: StateAnnouncer,
    ) -> Self {
        Self {
            me,
            store,
            clock,
            peers,
            coordinator,
            config,
            stats: Arc::default(),
            wake: Notify::new(),
            announcer,
            ready: AtomicBool::new(config.start_ready),
            synced: Mutex::new(BTreeSet::new()),
            next_check: AtomicU64::new(0),
            collector: Mutex::new(Collector::new()),
            hold_until: Mutex::new(None),
            metrics: Metrics::off(),
        }
    }

    /// Counts every session this node starts in `metrics` (outcome, bytes,
    /// duration).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The counters of this node's anti-entropy work, shared with the peer
    /// service (which counts what it repairs as responder) and Admin.
    pub fn stats(&self) -> Arc<AntiEntropyStats> {
        self.stats.clone()
    }

    /// The grace in force (NTP64): how old a tombstone, or how long expired
    /// a value, must be before it is settled.
    pub fn grace(&self) -> u64 {
        ntp64(self.config.settle_grace)
    }

    /// Whether this node has synced every partition it holds since it
    /// started (or started ready).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Starts a round now rather than at the next interval (a peer came
    /// back alive, or placement changed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The loop: a round with every live peer that shares partitions with
    /// this node, every interval or when woken.
    pub async fn run(self: Arc<Self>) {
        if !self.is_ready() {
            self.seed_clock().await;
        }
        loop {
            let pause = if self.is_ready() {
                self.config.interval
            } else {
                self.config.interval.min(SYNCING_RETRY)
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.wake.notified() => {}
            }
            self.ask_outsiders().await;
            self.round().await;
            self.hand_off().await;
            // Both scan what this node holds (every held partition, then one
            // whole partition): on a blocking thread, so that requests on the
            // async workers do not queue behind them.
            let scans = self.clone();
            let scanned = tokio::task::spawn_blocking(move || {
                scans.collect_settled();
                scans.check_tree();
            })
            .await;
            if let Err(e) = scanned {
                tracing::error!(error = %e, "tombstone collection or the tree check failed");
            }
            if !self.is_ready() && self.filled() {
                self.ready.store(true, Ordering::Relaxed);
                self.announcer.announce(NodeState::Ready).await;
            }
        }
    }

    /// A node that starts empty reads its peers' clocks before it serves as
    /// a replica, so its next writes order after whatever they issued.
    /// Bounded: peers that do not answer are skipped (the refill observes
    /// every version it brings in any case).
    async fn seed_clock(&self) {
        let deadline = Instant::now() + self.peers.timeout();
        while Instant::now() < deadline {
            let peers = live_peers(&self.coordinator.topology(), &self.me);
            if !peers.is_empty() {
                for peer in peers {
                    if let Ok(time) = self.peers.clock(&peer).await {
                        self.clock.observe(Version::new(time, 0));
                    }
                }
                return;
            }
            tokio::time::sleep(SYNCING_RETRY / 4).await;
        }
    }

    /// Whether every partition this node holds has been synced with each of
    /// its other replicas.
    fn filled(&self) -> bool {
        let synced = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        filled(&self.coordinator.topology(), &self.me, &synced)
    }

    /// One session with every live peer sharing partitions; returns the
    /// peers synced without error.
    pub async fn round(&self) -> usize {
        let topology = self.coordinator.topology();
        let ring = topology.ring();
        let mut synced = 0;
        for peer in live_peers(&topology, &self.me) {
            let shared = shared_partitions(ring, &self.me, &peer);
            if shared.is_empty() {
                continue;
            }
            let partitions = shared.as_slice().to_vec();
            let started = Instant::now();
            match self.session(&peer, shared, false).await {
                Ok(stats) => {
                    synced += 1;
                    self.confirm(&peer, &partitions, started);
                    if !self.is_ready() {
                        self.synced
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .extend(partitions.iter().map(|p| (*p, peer.clone())));
                    }
                    if stats.keys_sent + stats.keys_received > 0 {
                        tracing::info!(
                            peer = %peer,
                            sent = stats.keys_sent,
                            received = stats.keys_received,
                            round_trips = stats.round_trips,
                            bytes = stats.bytes_sent + stats.bytes_received,
                            "anti-entropy repaired"
                        );
                    }
                }
                Err(e) => tracing::debug!(peer = %peer, error = %e, "anti-entropy session failed"),
            }
        }
        synced
    }

    /// Hands the partitions this node holds entries of but no longer
    /// replicates (placement moved them) to their replicas, one session per
    /// replica over all such partitions, then drops each partition every
    /// replica of which took it. Waits while any of those replicas is down.
    pub async fn hand_off(&self) -> usize {
        let targets = hand_offs(&self.coordinator.topology(), &self.me, &self.store);
        if targets.is_empty() {
            return 0;
        }
        let mut failed: BTreeSet<u32> = BTreeSet::new();
        for (target, theirs) in &targets {
            if let Err(e) = self
                .session(target, PartitionSet::new(theirs.iter().copied()), true)
                .await
            {
                tracing::debug!(peer = %target, error = %e, "handoff session failed");
                failed.extend(theirs);
            }
        }
        let moved: BTreeSet<u32> = targets.into_values().flatten().collect();
        let mut dropped = 0;
        for p in moved.into_iter().filter(|p| !failed.contains(p)) {
            let entries = self.store.drop_partition(p);
            tracing::info!(partition = p, entries, "partition handed off and dropped");
            dropped += 1;
        }
        dropped
    }

    /// Asks the members that do not replicate partitions with pending
    /// candidates whether they still hold entries of them
    /// ([`Collector::outsiders`]); those that answer none are confirmed.
    async fn ask_outsiders(&self) {
        let ask = self
            .collector
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .outsiders(&self.me, &self.coordinator.topology());
        for (peer, partitions) in ask {
            let asked_at = Instant::now();
            match self.peers.holding(&peer, &partitions).await {
                Ok(held) => self
                    .collector
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .confirm_absent(&peer, &partitions, &held, asked_at),
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "could not ask what a peer holds")
                }
            }
        }
    }

    /// Records that `peer` completed a session over `partitions` that started
    /// at `started`.
    fn confirm(&self, peer: &str, partitions: &[u32], started: Instant) {
        self.collector
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .confirm(peer, partitions, started);
    }

    /// Collects nothing for `hold` from now. A node restarted from its data
    /// directory holds collection for the dead-node grace: a member that
    /// was down when it stopped may be known to no live peer (they all
    /// restarted too), and must be able to come back within that grace
    /// and keep its own data without a delete it missed having been
    /// collected around it (docs/durability.md).
    pub fn hold_collection(&self, hold: Duration) {
        *self
            .hold_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + hold);
    }

    /// Acknowledged collection of tombstones and expired values
    /// ([`Collector::collect`]). Returns how many entries were collected.
    /// Nothing is collected while this node's wall clock is judged off
    /// ([`Clock::check_wall_offset`]): it would find entries settled early.
    pub fn collect_settled(&self) -> usize {
        if let Err(reason) = self.clock.check_wall_offset() {
            tracing::debug!(%reason, "collecting nothing while the clock is off");
            return 0;
        }
        let held = *self
            .hold_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if held.is_some_and(|until| Instant::now() < until) {
            tracing::debug!("collecting nothing for the dead-node grace after a restart from disk");
            return 0;
        }
        let collected = self
            .collector
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .collect(
                &self.me,
                &self.coordinator.topology(),
                &self.store,
                self.clock.now(),
                self.grace(),
                Instant::now(),
            )
            .total();
        if collected > 0 {
            tracing::debug!(
                collected,
                "collected acknowledged tombstones and expired values"
            );
        }
        collected
    }

    /// Answers one anti-entropy step from a peer: the reply, after merging
    /// what the peer sent, and how many entries that merge changed.
    pub fn respond(&self, request: Request) -> Result<(Reply, u64), super::SessionError> {
        let answer = super::respond(&*self.store, request, self.config.limits)?;
        let changed = merge_repairs(
            &self.store,
            &self.clock,
            answer.merge,
            self.grace(),
            answer.handoff,
        );
        self.stats.add_repaired(changed);
        Ok((answer.reply, changed))
    }

    /// Recomputes one held partition's root from its map and compares it
    /// with the incrementally kept one; a difference is counted and logged.
    /// One partition per round, in turn, so the check costs little.
    fn check_tree(&self) {
        let partitions = u64::from(self.store.partitions());
        let p = (self.next_check.fetch_add(1, Ordering::Relaxed) % partitions) as u32;
        let before = self.store.root(p);
        let recomputed = self.store.recompute_root(p);
        // A write during the scan changes the root: only a stable root that
        // disagrees with the map is a mismatch.
        if recomputed != before && self.store.root(p) == before {
            self.stats.mismatches.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                partition = p,
                "Merkle root differs from the one recomputed from the store"
            );
        }
    }

    /// One full session with `peer` over `shared`; a `handoff` when this
    /// node no longer replicates them and drops them after. Counted in the
    /// metrics (outcome, bytes each way, duration), and in the stats when it
    /// completes.
    pub async fn session(
        &self,
        peer: &str,
        shared: PartitionSet,
        handoff: bool,
    ) -> Result<SessionStats, SyncError> {
        let started = Instant::now();
        let mut moved = (0, 0);
        let result = self.steps(peer, shared, handoff, &mut moved).await;
        if result.is_ok() {
            self.stats.rounds.fetch_add(1, Ordering::Relaxed);
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.stats.last_completed.store(now_ms, Ordering::Relaxed);
        }
        self.metrics
            .session(result.is_ok(), moved.0, moved.1, started.elapsed());
        result
    }

    /// The steps of [`AntiEntropy::session`]; adds the bytes sent and
    /// received to `moved` as they go.
    async fn steps(
        &self,
        peer: &str,
        shared: PartitionSet,
        handoff: bool,
        moved: &mut (u64, u64),
    ) -> Result<SessionStats, SyncError> {
        // A node whose log failed takes nothing it could not log.
        self.store.check_journal()?;
        let salt = self.clock.latest().time;
        let mut session = Initiator::new(shared, self.config.limits, salt);
        if handoff {
            session = session.handing_off();
        }
        let mut request = session.start(&*self.store);
        let mut merged = false;
        loop {
            let started = Instant::now();
            let reply = self.peers.sync(peer, &request).await?;
            let (sent, received) = (request.wire_size() as u64, reply.wire_size() as u64);
            moved.0 += sent;
            moved.1 += received;
            let step = session.on_reply(&*self.store, reply)?;
            let grace = self.grace();
            let changed = merge_repairs(&self.store, &self.clock, step.merge, grace, false);
            self.stats.add_repaired(changed);
            self.stats.add_bytes(sent + received);
            merged |= changed > 0;
            self.throttle(sent + received, started).await;
            match step.next {
                Next::Send(next) => request = next,
                Next::Done(stats) => {
                    // A completed session acknowledges what it merged
                    // (collection counts on it): fsynced first, whatever
                    // the mode.
                    if merged {
                        self.store.synced().await?;
                    }
                    return Ok(stats);
                }
            }
        }
    }

    /// Keeps sessions under the byte budget: a step that moved `bytes` may
    /// not be followed by the next before `bytes / rate` has passed since
    /// it started.
    async fn throttle(&self, bytes: u64, started: Instant) {
        let rate = self.config.max_bytes_per_sec.max(1);
        let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let elapsed = started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}
