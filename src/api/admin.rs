//! The contract's `Admin` service: the cluster as this node sees it.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::validate;
use crate::anti_entropy::AntiEntropyStats;
use crate::clock::Clock;
use crate::cluster::{Member, NodeInfo};
use crate::coordinator::Coordinator;
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
    ) -> Self {
        Self {
            node,
            store,
            coordinator,
            replicator,
            clock,
            sync,
        }
    }
}

fn member_to_proto(m: &Member) -> proto::Member {
    proto::Member {
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
        let mut members: Vec<proto::Member> = topology.members().map(member_to_proto).collect();
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
            .map(member_to_proto)
            .collect();
        Ok(Response::new(proto::ReplicasResponse { replicas }))
    }

    async fn stats(
        &self,
        _: Request<proto::StatsRequest>,
    ) -> Result<Response<proto::StatsResponse>, Status> {
        let held = self.store.stats();
        Ok(Response::new(proto::StatsResponse {
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
            anti_entropy_last_completed_ms: self.sync.last_completed_ms(),
            bytes: held.bytes,
        }))
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
