//! What a node exposes at scrape time: figures its parts already keep
//! (the store's counts, hints, delta queues, the clock, anti-entropy,
//! membership, the process), read when Prometheus asks rather than counted
//! a second time. Also the node's own state as `/ready` and the gRPC
//! health service report it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::anti_entropy::AntiEntropyStats;
use crate::clock::Clock;
use crate::cluster::{Member, NodeState};
use crate::coordinator::Coordinator;
use crate::durability::Durability;
use crate::metrics::process::{resident_bytes, OpenConnections};
use crate::metrics::{Exposition, Kind, Metrics};
use crate::replication::Replicator;
use crate::store::Store;

/// The parts of a node whose figures are read at scrape time.
#[derive(Clone)]
pub struct Parts {
    /// This node's id.
    pub me: String,
    /// The local replica.
    pub store: Arc<Store>,
    /// The coordinator, for the current membership.
    pub coordinator: Arc<Coordinator>,
    /// Delta queues and hints.
    pub replicator: Arc<Replicator>,
    /// The clock.
    pub clock: Arc<Clock>,
    /// Anti-entropy's counters.
    pub sync: Arc<AntiEntropyStats>,
    /// Set once the node has begun to leave.
    pub leaving: Arc<AtomicBool>,
    /// The gRPC server's open connections.
    pub connections: OpenConnections,
    /// The member list as membership publishes it (this node included).
    pub members: watch::Receiver<Vec<Member>>,
    /// The write-ahead log and snapshots, with `--data-dir`.
    pub durability: Option<Arc<Durability>>,
}

impl Parts {
    /// This node's state: `leaving` once shutdown began, else what it
    /// announced (`syncing` until it has refilled, then `ready`).
    pub fn state(&self) -> NodeState {
        if self.leaving.load(Ordering::Relaxed) {
            return NodeState::Leaving;
        }
        self.members
            .borrow()
            .iter()
            .find(|m| m.id == self.me)
            .map_or(NodeState::Joining, |m| m.state)
    }

    /// Registers the scrape-time figures with `metrics`.
    pub fn register(self, metrics: &Metrics) {
        metrics.add_source(Box::new(move |out| self.write(out)));
    }

    fn write(&self, out: &mut Exposition) {
        use Kind::{Counter, Gauge};
        let held = self.store.stats();
        out.single(
            "kilovolt_store_keys",
            "Live keys held (strings, maps with fields, counters; expired strings until collected).",
            Gauge,
            held.values as f64,
        );
        out.single(
            "kilovolt_store_tombstones",
            "Tombstones held, not yet collected.",
            Gauge,
            held.tombstones as f64,
        );
        out.single(
            "kilovolt_store_expired",
            "Expired values awaiting collection: bytes dropped (waiting for every replica), or past expiry and not yet reached by the collector.",
            Gauge,
            (held.expired + self.store.expired_due(self.clock.now())) as f64,
        );
        out.single(
            "kilovolt_store_bytes",
            "Bytes of keys and values held (not the memory the map itself takes).",
            Gauge,
            held.bytes as f64,
        );

        let backlog = self.replicator.backlog();
        out.family(
            "kilovolt_replication_queue_bytes",
            "Bytes of deltas waiting in each peer's queue.",
            Gauge,
            backlog
                .iter()
                .map(|b| ([("peer", b.peer.as_str())], b.queued_bytes as f64)),
        );
        out.family(
            "kilovolt_hints",
            "Writes held as hints for each unreachable peer.",
            Gauge,
            backlog
                .iter()
                .filter(|b| b.hints > 0)
                .map(|b| ([("peer", b.peer.as_str())], b.hints as f64)),
        );
        out.single(
            "kilovolt_hints_held",
            "Writes held as hints, over all peers (Admin.Stats hints_pending).",
            Gauge,
            self.replicator.hints_pending() as f64,
        );
        let dropped = self.replicator.hints_dropped_by();
        out.family(
            "kilovolt_hints_dropped_total",
            "Hints dropped unsent, by reason: age (--max-hint-age), bound (--max-hints, --max-hint-bytes), shutdown.",
            Counter,
            dropped
                .iter()
                .map(|(reason, n)| ([("reason", reason.name())], *n as f64)),
        );
        out.single(
            "kilovolt_replication_deltas_overflowed_total",
            "Writes that found a peer's delta queue full and were held as hints instead.",
            Counter,
            self.replicator.deltas_overflowed() as f64,
        );
        let topology = self.coordinator.topology();
        let now = Instant::now();
        let mut oldest: BTreeMap<&str, f64> = BTreeMap::new();
        for b in &backlog {
            let Some(at) = b.oldest else { continue };
            let region = topology.member(&b.peer).map_or("", |m| m.region.as_str());
            let age = now.duration_since(at).as_secs_f64();
            let slot = oldest.entry(region).or_insert(0.0);
            *slot = slot.max(age);
        }
        out.family(
            "kilovolt_replication_oldest_undelivered_seconds",
            "Age of the oldest write not yet delivered (queued or hinted) to a peer of each region.",
            Gauge,
            oldest.iter().map(|(region, age)| ([("region", *region)], *age)),
        );

        out.single(
            "kilovolt_anti_entropy_rounds_total",
            "Anti-entropy sessions this node started that completed.",
            Counter,
            self.sync.rounds() as f64,
        );
        out.single(
            "kilovolt_anti_entropy_keys_repaired_total",
            "Entries anti-entropy merged into this node's store that changed it.",
            Counter,
            self.sync.repaired() as f64,
        );
        out.single(
            "kilovolt_anti_entropy_merkle_mismatches_total",
            "Partitions whose kept Merkle root differed from one recomputed from the store (should stay 0).",
            Counter,
            self.sync.mismatches() as f64,
        );
        out.single(
            "kilovolt_anti_entropy_last_completed_timestamp_seconds",
            "Unix time the last anti-entropy session this node started completed (0: none yet).",
            Gauge,
            self.sync.last_completed_ms() as f64 / 1000.0,
        );

        let mut members: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for m in topology.members() {
            let alive = if m.alive { "alive" } else { "dead" };
            *members.entry((m.state.as_str(), alive)).or_default() += 1;
        }
        out.family(
            "kilovolt_members",
            "Members this node knows, by announced state and liveness.",
            Gauge,
            members
                .iter()
                .map(|((state, alive), n)| ([("state", *state), ("liveness", *alive)], *n as f64)),
        );
        let state = self.state();
        out.family(
            "kilovolt_node_state",
            "This node's state: 1 for the state it is in.",
            Gauge,
            [
                NodeState::Joining,
                NodeState::Syncing,
                NodeState::Ready,
                NodeState::Leaving,
            ]
            .map(|s| ([("state", s.as_str())], f64::from(u8::from(s == state)))),
        );

        out.single(
            "kilovolt_clock_drift_events_total",
            "Remote versions seen further ahead than --max-clock-drift.",
            Counter,
            self.clock.drift_events() as f64,
        );
        out.single(
            "kilovolt_clock_versions_refused_total",
            "Entries from peers refused for a version past the ceiling of version times.",
            Counter,
            self.clock.refused() as f64,
        );
        out.single(
            "kilovolt_clock_max_remote_lead_seconds",
            "Largest lead over this clock of a remote version seen beyond --max-clock-drift.",
            Gauge,
            self.clock.max_remote_lead_secs(),
        );
        let offsets = self.clock.peer_offsets();
        out.family(
            "kilovolt_clock_peer_offset_seconds",
            "Each peer's clock minus this one, as last measured over a round trip.",
            Gauge,
            offsets
                .iter()
                .map(|(peer, offset)| ([("peer", peer.as_str())], *offset)),
        );

        if let Some(rss) = resident_bytes() {
            out.single(
                "kilovolt_process_resident_memory_bytes",
                "Resident memory of the process.",
                Gauge,
                rss as f64,
            );
        }
        if let Some(durability) = &self.durability {
            write_durability(durability, out);
        }
        out.single(
            "kilovolt_open_connections",
            "TCP connections the gRPC server holds open (clients and peers).",
            Gauge,
            self.connections.get() as f64,
        );
    }
}

/// The write-ahead log's figures (`--data-dir`): what an operator watches
/// to see that writes are durable, and the one that says they are refused.
fn write_durability(durability: &Durability, out: &mut Exposition) {
    use Kind::Gauge;
    let stats = durability.stats();
    out.single(
        "kilovolt_log_bytes",
        "Bytes of write-ahead log segments on disk.",
        Gauge,
        stats.log_bytes as f64,
    );
    out.single(
        "kilovolt_log_last_fsync_timestamp_seconds",
        "Unix time of the log's last fsync (0: none yet).",
        Gauge,
        stats.last_fsync_ms as f64 / 1000.0,
    );
    out.single(
        "kilovolt_log_failed",
        "1 once the log failed to write or fsync: the node refuses writes (the cause is in Admin.Stats and the log).",
        Gauge,
        if durability.log().check().is_err() { 1.0 } else { 0.0 },
    );
    out.single(
        "kilovolt_snapshot_bytes",
        "Bytes of the newest snapshot on disk.",
        Gauge,
        stats.snapshot_bytes as f64,
    );
    out.single(
        "kilovolt_snapshot_last_timestamp_seconds",
        "Unix time of the newest snapshot (0: none).",
        Gauge,
        stats.last_snapshot_ms as f64 / 1000.0,
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn member(state: NodeState) -> Member {
        Member {
            id: "n1".into(),
            address: String::new(),
            peer_address: String::new(),
            region: String::new(),
            state,
            alive: true,
            generation: 1,
        }
    }

    #[tokio::test]
    async fn the_state_follows_membership_until_the_node_leaves() {
        let (coordinator, replicator) =
            crate::coordinator::test_coordinator(vec![member(NodeState::Syncing)]);
        let (announce, members) = watch::channel(vec![member(NodeState::Syncing)]);
        let parts = Parts {
            me: "n1".into(),
            store: Arc::new(Store::new(16)),
            coordinator: Arc::new(coordinator),
            replicator,
            clock: Arc::new(Clock::new(
                "n1",
                crate::clock::system_time,
                Duration::from_millis(500),
            )),
            sync: Arc::default(),
            leaving: Arc::new(AtomicBool::new(false)),
            connections: OpenConnections::default(),
            members,
            durability: None,
        };
        let metrics = Metrics::on();
        parts.clone().register(&metrics);
        assert_eq!(parts.state(), NodeState::Syncing);
        assert!(metrics
            .render()
            .contains("kilovolt_node_state{state=\"syncing\"} 1\n"));
        announce.send_replace(vec![member(NodeState::Ready)]);
        assert_eq!(parts.state(), NodeState::Ready);
        parts.leaving.store(true, Ordering::Relaxed);
        assert_eq!(parts.state(), NodeState::Leaving);
        let text = metrics.render();
        assert!(
            text.contains("kilovolt_node_state{state=\"leaving\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kilovolt_node_state{state=\"ready\"} 0\n"),
            "{text}"
        );
    }
}
