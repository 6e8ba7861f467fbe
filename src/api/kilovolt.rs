//! The client API: the contract's `Kilovolt` service.

use std::sync::Arc;

use futures_util::future::join_all;
use tonic::{Request, Response, Status};

use super::status::not_yet;
use super::validate;
use crate::coordinator::{Consistency, Coordinator};
use crate::crdt::Version;
use crate::error::Error;
use crate::proto;
use crate::proto::kilovolt_server::Kilovolt;

/// Serves `Set`, `Get`, `Delete` and `Batch` through the coordinator.
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

impl KilovoltService {
    /// `Set`, as the single RPC and each set of a batch carry it out.
    async fn do_set(&self, req: proto::SetRequest) -> Result<proto::SetResponse, Status> {
        let key = validate::key(&req.key)?;
        let value = validate::value(&req.value, self.max_value_bytes)?;
        let level = validate::consistency(req.consistency, self.default_level)?;
        let version = self.coordinator.set(key, value, req.ttl_ms, level).await?;
        Ok(proto::SetResponse {
            status: "OK".into(),
            version: Some(version_to_proto(version)),
        })
    }

    /// `Get`, as the single RPC and each get of a batch carry it out.
    async fn do_get(&self, req: proto::GetRequest) -> Result<proto::GetResponse, Status> {
        let key = validate::key(&req.key)?;
        let level = validate::consistency(req.consistency, self.default_level)?;
        let read = self.coordinator.get(key, level).await?;
        Ok(proto::GetResponse {
            found: read.value.is_some(),
            value: read.value.map(String::from).unwrap_or_default(),
            version: read.version.map(version_to_proto),
        })
    }

    /// `Delete`, as the single RPC and each delete of a batch carry it out.
    async fn do_delete(&self, req: proto::DeleteRequest) -> Result<proto::DeleteResponse, Status> {
        let key = validate::key(&req.key)?;
        let level = validate::consistency(req.consistency, self.default_level)?;
        let version = self.coordinator.delete(key, level).await?;
        Ok(proto::DeleteResponse {
            status: "OK".into(),
            version: Some(version_to_proto(version)),
        })
    }

    /// One operation of a batch, answered as its single RPC would be, a
    /// failure carried as a `Failure` result.
    async fn do_batch_op(&self, op: proto::BatchOp) -> proto::BatchResult {
        use proto::batch_op::Op;
        use proto::batch_result::Result as R;
        let result = match op.op {
            Some(Op::Set(req)) => self.do_set(req).await.map(R::Set),
            Some(Op::Get(req)) => self.do_get(req).await.map(R::Get),
            Some(Op::Delete(req)) => self.do_delete(req).await.map(R::Delete),
            None => Err(Status::from(Error::EmptyBatchOp)),
        };
        let result = result.unwrap_or_else(|status| {
            R::Error(proto::Failure {
                code: status.code() as i32,
                message: status.message().to_string(),
            })
        });
        proto::BatchResult {
            result: Some(result),
        }
    }
}

#[tonic::async_trait]
impl Kilovolt for KilovoltService {
    async fn set(
        &self,
        request: Request<proto::SetRequest>,
    ) -> Result<Response<proto::SetResponse>, Status> {
        self.do_set(request.into_inner()).await.map(Response::new)
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        self.do_get(request.into_inner()).await.map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        self.do_delete(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn batch(
        &self,
        request: Request<proto::BatchRequest>,
    ) -> Result<Response<proto::BatchResponse>, Status> {
        let ops = request.into_inner().ops;
        validate::batch_size(ops.len())?;
        let results = join_all(ops.into_iter().map(|op| self.do_batch_op(op))).await;
        Ok(Response::new(proto::BatchResponse { results }))
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
