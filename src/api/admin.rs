//! The contract's `Admin` service: the cluster as this node sees it.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::validate;
use crate::anti_entropy::AntiEntropyStats;
use crate::clock::Clock;
use crate::cluster::{Member, NodeInfo};
use crate::coordinator::Coordinator;
use crate::durability::Durability;
use crate::net::Served;
use crate::proto;
use crate::proto::admin_server::Admin;
use crate::replication::Replicator;
use crate::store::Store;

/// Serves membership, placement and counters of one node.
pub struct AdminService {
    node: NodeInfo,
    store: Arc<Store>,
    coordinator: Arc<Coordinator>,
    replicator: Arc<Replicator>,
    clock: Arc<Clock>,
    sync: Arc<AntiEntropyStats>,
    served: Arc<Served>,
    durability: Option<Arc<Durability>>,
}

impl AdminService {
    /// The service for the node `node`.
    pub fn new(
        node: NodeInfo,
        store: Arc<Store>,
        coordinator: Arc<Coordinator>,
        replicator: Arc<Replicator>,
        clock: Arc<Clock>,
        sync: Arc<AntiEntropyStats>,
        durability: Option<Arc<Durability>>,
    ) -> Self {
        Self {
            node,
            store,
            coordinator,
            replicator,
            clock,
            sync,
            served: Arc::new(Served::new()),
            durability,
        }
    }

    /// Reports the peer requests counted in `served` (by the node's
    /// [`crate::net::PeerService`]).
    pub fn counting(mut self, served: Arc<Served>) -> Self {
        self.served = served;
        self
    }
}

impl AdminService {
    /// Replication to each other region: the backlog of its nodes' delta
    /// queues and hints, and the bytes delivered to them.
    fn regions(&self) -> Vec<proto::RegionReplication> {
        let topology = self.coordinator.topology();
        let local = topology.region_of(&self.node.id).to_string();
        let mut regions: std::collections::BTreeMap<String, proto::RegionReplication> = topology
            .members()
            .filter(|m| m.region != local)
            .map(|m| {
                let r = proto::RegionReplication {
                    region: m.region.clone(),
                    ..Default::default()
                };
                (m.region.clone(), r)
            })
            .collect();
        let now = std::time::Instant::now();
        for backlog in self.replicator.backlog() {
            if let Some(r) = regions.get_mut(topology.region_of(&backlog.peer)) {
                r.queued_bytes += backlog.queued_bytes as u64;
                r.hints += backlog.hints as u64;
                if let Some(at) = backlog.oldest {
                    let waited = now.saturating_duration_since(at).as_millis();
                    let ms = u64::try_from(waited).unwrap_or(u64::MAX);
                    r.oldest_unsent_ms = r.oldest_unsent_ms.max(ms);
                }
            }
        }
        for (peer, bytes) in self.replicator.bytes_applied() {
            if let Some(r) = regions.get_mut(topology.region_of(&peer)) {
                r.bytes_sent += bytes;
            }
        }
        regions.into_values().collect()
    }
}

fn member_to_proto(m: &Member, rtt: Option<std::time::Duration>) -> proto::Member {
    proto::Member {
        rtt_us: rtt.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        id: m.id.clone(),
        address: m.address.clone(),
        alive: m.alive,
        region: m.region.clone(),
        state: m.state.as_str().into(),
        peer_address: m.peer_address.clone(),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn members(
        &self,
        _: Request<proto::MembersRequest>,
    ) -> Result<Response<proto::MembersResponse>, Status> {
        let topology = self.coordinator.topology();
        let rtt = |m: &Member| self.coordinator.round_trip(&m.id);
        let mut members: Vec<proto::Member> = topology
            .members()
            .map(|m| member_to_proto(m, rtt(m)))
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(proto::MembersResponse {
            self_id: self.node.id.clone(),
            members,
        }))
    }

    async fn replicas(
        &self,
        request: Request<proto::ReplicasRequest>,
    ) -> Result<Response<proto::ReplicasResponse>, Status> {
        let key = validate::key(&request.get_ref().key)?;
        let topology = self.coordinator.topology();
        let replicas = topology
            .replicas(key)
            .iter()
            .filter_map(|id| topology.member(id))
            .map(|m| member_to_proto(m, self.coordinator.round_trip(&m.id)))
            .collect();
        Ok(Response::new(proto::ReplicasResponse { replicas }))
    }

    async fn stats(
        &self,
        _: Request<proto::StatsRequest>,
    ) -> Result<Response<proto::StatsResponse>, Status> {
        let held = self.store.stats();
        let disk = self
            .durability
            .as_ref()
            .map(|d| d.stats())
            .unwrap_or_default();
        let durability = match &self.durability {
            None => "memory",
            Some(d) if d.mode() == crate::config::DurabilityMode::Sync => "sync",
            Some(_) => "periodic",
        };
        Ok(Response::new(proto::StatsResponse {
            anti_entropy_bytes: self.sync.bytes(),
            durability: durability.into(),
            log_bytes: disk.log_bytes,
            last_fsync_unix_ms: disk.last_fsync_ms,
            last_snapshot_unix_ms: disk.last_snapshot_ms,
            snapshot_bytes: disk.snapshot_bytes,
            log_failure: self
                .store
                .check_journal()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            keys: held.values,
            tombstones: held.tombstones,
            hints_pending: self.replicator.hints_pending() as u64,
            hints_dropped: self.replicator.hints_dropped(),
            clock_drift_events: self.clock.drift_events(),
            versions_refused: self.clock.refused(),
            anti_entropy_rounds: self.sync.rounds(),
            anti_entropy_repaired: self.sync.repaired(),
            merkle_mismatches: self.sync.mismatches(),
            deltas_overflowed: self.replicator.deltas_overflowed(),
            peer_reads_served: self.served.reads(),
            regions: self.regions(),
            anti_entropy_last_completed_ms: self.sync.last_completed_ms(),
            bytes: held.bytes,
        }))
    }

    async fn snapshot(
        &self,
        _: Request<proto::SnapshotRequest>,
    ) -> Result<Response<proto::SnapshotResponse>, Status> {
        let Some(durability) = self.durability.clone() else {
            return Err(Status::failed_precondition(
                "this node keeps its data in memory only; start it with --data-dir to take snapshots",
            ));
        };
        let store = self.store.clone();
        let bytes = tokio::task::spawn_blocking(move || durability.snapshot(&store))
            .await
            .map_err(|e| Status::internal(format!("snapshot task failed: {e}")))?
            .map_err(|e| Status::unavailable(format!("snapshot failed: {e}")))?;
        Ok(Response::new(proto::SnapshotResponse { bytes }))
    }

    async fn digests(
        &self,
        _: Request<proto::DigestsRequest>,
    ) -> Result<Response<proto::DigestsResponse>, Status> {
        let topology = self.coordinator.topology();
        let ring = topology.ring();
        let partitions = ring
            .partitions_held_by(&self.node.id)
            .into_iter()
            .map(|p| proto::PartitionDigest {
                partition: p,
                root: self.store.root(p).to_le_bytes().to_vec(),
                entries: self.store.partition_len(p),
            })
            .collect();
        Ok(Response::new(proto::DigestsResponse { partitions }))
    }
}
