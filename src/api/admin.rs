//! The contract's `Admin` service: the cluster as this node sees it.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::status::not_yet;
use super::validate;
use crate::node::NodeInfo;
use crate::proto;
use crate::proto::admin_server::Admin;
use crate::store::Store;

/// Serves membership, placement and counters of one node.
pub struct AdminService {
    node: NodeInfo,
    store: Arc<Store>,
}

impl AdminService {
    /// The service for the node `node` holding `store`.
    pub fn new(node: NodeInfo, store: Arc<Store>) -> Self {
        Self { node, store }
    }

    fn member(&self) -> proto::Member {
        proto::Member {
            id: self.node.id.clone(),
            address: self.node.address.clone(),
            alive: true,
            region: self.node.region.clone(),
            state: "ready".into(),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn members(
        &self,
        _: Request<proto::MembersRequest>,
    ) -> Result<Response<proto::MembersResponse>, Status> {
        Ok(Response::new(proto::MembersResponse {
            self_id: self.node.id.clone(),
            members: vec![self.member()],
        }))
    }

    async fn replicas(
        &self,
        request: Request<proto::ReplicasRequest>,
    ) -> Result<Response<proto::ReplicasResponse>, Status> {
        validate::key(&request.get_ref().key)?;
        Ok(Response::new(proto::ReplicasResponse {
            replicas: vec![self.member()],
        }))
    }

    async fn stats(
        &self,
        _: Request<proto::StatsRequest>,
    ) -> Result<Response<proto::StatsResponse>, Status> {
        let held = self.store.stats();
        Ok(Response::new(proto::StatsResponse {
            keys: held.values,
            tombstones: held.tombstones,
            ..Default::default()
        }))
    }

    async fn digests(
        &self,
        _: Request<proto::DigestsRequest>,
    ) -> Result<Response<proto::DigestsResponse>, Status> {
        Err(not_yet("Admin.Digests", "Merkle anti-entropy digests"))
    }
}
