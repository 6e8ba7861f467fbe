//! The client API: the contract's `Kilovolt` service.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::status::not_yet;
use super::validate;
use crate::coordinator::{Consistency, Coordinator};
use crate::crdt::Version;
use crate::proto;
use crate::proto::kilovolt_server::Kilovolt;

/// Serves `Set`, `Get` and `Delete` through the coordinator.
pub struct KilovoltService {
    coordinator: Arc<Coordinator>,
    default_level: Consistency,
    max_value_bytes: usize,
}

impl KilovoltService {
    /// The service over `coordinator`, resolving DEFAULT to `default_level`
    /// and refusing values over `max_value_bytes`.
    pub fn new(
        coordinator: Arc<Coordinator>,
        default_level: Consistency,
        max_value_bytes: usize,
    ) -> Self {
        Self {
            coordinator,
            default_level,
            max_value_bytes,
        }
    }
}

/// A version as the contract spells it.
pub(super) fn version_to_proto(v: Version) -> proto::Version {
    proto::Version {
        time: v.time,
        node: v.node_hex(),
    }
}

const STRUCTURED: &str = "structured values (maps and counters)";

#[tonic::async_trait]
impl Kilovolt for KilovoltService {
    async fn set(
        &self,
        request: Request<proto::SetRequest>,
    ) -> Result<Response<proto::SetResponse>, Status> {
        let req = request.into_inner();
        let key = validate::key(&req.key)?;
        let value = validate::value(&req.value, self.max_value_bytes)?;
        let level = validate::consistency(req.consistency, self.default_level)?;
        let version = self.coordinator.set(key, value, req.ttl_ms, level).await?;
        Ok(Response::new(proto::SetResponse {
            status: "OK".into(),
            version: Some(version_to_proto(version)),
        }))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let req = request.into_inner();
        let key = validate::key(&req.key)?;
        let level = validate::consistency(req.consistency, self.default_level)?;
        let read = self.coordinator.get(key, level).await?;
        Ok(Response::new(proto::GetResponse {
            found: read.value.is_some(),
            value: read.value.map(String::from).unwrap_or_default(),
            version: read.version.map(version_to_proto),
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let req = request.into_inner();
        let key = validate::key(&req.key)?;
        let level = validate::consistency(req.consistency, self.default_level)?;
        let version = self.coordinator.delete(key, level).await?;
        Ok(Response::new(proto::DeleteResponse {
            status: "OK".into(),
            version: Some(version_to_proto(version)),
        }))
    }

    async fn map_set(
        &self,
        _: Request<proto::MapSetRequest>,
    ) -> Result<Response<proto::MapSetResponse>, Status> {
        Err(not_yet("MapSet", STRUCTURED))
    }

    async fn map_get(
        &self,
        _: Request<proto::MapGetRequest>,
    ) -> Result<Response<proto::MapGetResponse>, Status> {
        Err(not_yet("MapGet", STRUCTURED))
    }

    async fn map_remove(
        &self,
        _: Request<proto::MapRemoveRequest>,
    ) -> Result<Response<proto::MapRemoveResponse>, Status> {
        Err(not_yet("MapRemove", STRUCTURED))
    }

    async fn increment(
        &self,
        _: Request<proto::IncrementRequest>,
    ) -> Result<Response<proto::IncrementResponse>, Status> {
        Err(not_yet("Increment", STRUCTURED))
    }

    async fn get_counter(
        &self,
        _: Request<proto::GetCounterRequest>,
    ) -> Result<Response<proto::GetCounterResponse>, Status> {
        Err(not_yet("GetCounter", STRUCTURED))
    }
}
