//! The client API: the contract's `Kilovolt` service.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use prost::Message;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::validate;
use crate::coordinator::{Consistency, Coordinator};
use crate::crdt::Version;
use crate::error::Error;
use crate::metrics::{Metrics, Rpc};
use crate::proto;
use crate::proto::kilovolt_server::Kilovolt;
use crate::security::auth::{denied, Caller, Role};

/// Serves the contract's `Kilovolt` service through the coordinator:
/// strings (`Set`, `Get`, `Delete`, `Batch`), maps (`MapSet`, `MapGet`,
/// `MapRemove`) and counters (`Increment`, `GetCounter`).
pub struct KilovoltService {
    coordinator: Arc<Coordinator>,
    default_level: Consistency,
    max_value_bytes: usize,
    max_message_bytes: usize,
    metrics: Metrics,
}

impl KilovoltService {
    /// The service over `coordinator`, resolving DEFAULT to `default_level`
    /// refusing values (strings, map field values, whole maps) over
    /// `max_value_bytes`, and stopping a `Batch` whose answer grows past
    /// `max_message_bytes` (the encode limit).
    pub fn new(
        coordinator: Arc<Coordinator>,
        default_level: Consistency,
        max_value_bytes: usize,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            coordinator,
            default_level,
            max_value_bytes,
            max_message_bytes,
            metrics: Metrics::off(),
        }
    }

    /// Counts every request in `metrics` (by RPC, level and status code,
    /// with its latency).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The `level` label of a request asking for consistency `raw`.
    fn level_name(&self, raw: i32) -> &'static str {
        validate::consistency(raw, self.default_level).map_or("invalid", Consistency::name)
    }

    /// Counts one answered request.
    fn count<T>(&self, rpc: Rpc, level: &str, started: Instant, answer: &Result<T, Status>) {
        let code = match answer {
            Ok(_) => 0,
            Err(status) => status.code() as i32,
        };
        self.metrics.request(rpc, level, code, started.elapsed());
    }
}

/// How many gets of one batch may hold their values at once before they are
/// counted: bounds what a batch holds beyond its answer's limit.
const BATCH_READS_AT_ONCE: usize = 16;

/// The bytes a batch's answer may still take. Its operations run
/// concurrently; each one counts its result as it finishes, and once the
/// answer is over the limit no further operation starts, so the work stops
/// with the answer instead of after it.
struct AnswerBudget {
    limit: usize,
    used: AtomicUsize,
    reads: Semaphore,
}

impl AnswerBudget {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
            reads: Semaphore::new(BATCH_READS_AT_ONCE),
        }
    }

    /// Whether the answer is already over the limit.
    fn spent(&self) -> bool {
        self.used.load(Ordering::Relaxed) > self.limit
    }

    /// Counts `result` into the answer; false when that takes it over.
    fn charge(&self, result: &proto::BatchResult) -> bool {
        let len = result.encoded_len();
        // A repeated field: one byte of tag and the length, then the record.
        let cost = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        self.used.fetch_add(cost, Ordering::Relaxed) + cost <= self.limit
    }
}

/// A version as the contract spells it.
pub(super) fn version_to_proto(v: Version) -> proto::Version {
    proto::Version {
        time: v.time,
        node: v.node_hex(),
    }
}

/// A counter's exact value as the contract's 64-bit field carries it:
/// clamped to the signed 64-bit range. Increments refuse to leave the range,
/// but concurrent increments on different nodes can carry the merged sum
/// past it; reads then report the bound until decrements bring it back.
fn counter_value(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

impl KilovoltService {
    /// `Set`, as the single RPC and each set of a batch carry it out.
    async fn do_set(&self, req: proto::SetRequest) -> Result<proto::SetResponse, Status> {
        let key = validate::key(&req.key)?;
        validate::value(&req.value, self.max_value_bytes)?;
        let level = validate::consistency(req.consistency, self.default_level)?;
        // The value moves into the stored entry: no copy.
        let version = self
            .coordinator
            .set(key, req.value, req.ttl_ms, level)
            .await?;
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
    /// failure carried as a `Failure` result; `None` when the answer went
    /// over `budget` before or with it (it did not run, or its result was
    /// dropped).
    async fn do_batch_op(
        &self,
        op: proto::BatchOp,
        budget: &AnswerBudget,
    ) -> Option<proto::BatchResult> {
        use proto::batch_op::Op;
        use proto::batch_result::Result as R;
        let _reading = match op.op {
            Some(Op::Get(_)) => budget.reads.acquire().await.ok(),
            _ => None,
        };
        if budget.spent() {
            return None;
        }
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
        let result = proto::BatchResult {
            result: Some(result),
        };
        budget.charge(&result).then_some(result)
    }
}

#[tonic::async_trait]
impl Kilovolt for KilovoltService {
    async fn set(
        &self,
        request: Request<proto::SetRequest>,
    ) -> Result<Response<proto::SetResponse>, Status> {
        let started = Instant::now();
        let level = self.level_name(request.get_ref().consistency);
        let answer = async { self.do_set(request.into_inner()).await.map(Response::new) }.await;
        self.count(Rpc::Set, level, started, &answer);
        answer
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let started = Instant::now();
        let level = self.level_name(request.get_ref().consistency);
        let answer = async { self.do_get(request.into_inner()).await.map(Response::new) }.await;
        self.count(Rpc::Get, level, started, &answer);
        answer
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let started = Instant::now();
        let level = self.level_name(request.get_ref().consistency);
        let answer = async {
            self.do_delete(request.into_inner())
                .await
                .map(Response::new)
        }
        .await;
        self.count(Rpc::Delete, level, started, &answer);
        answer
    }

    async fn batch(
        &self,
        request: Request<proto::BatchRequest>,
    ) -> Result<Response<proto::BatchResponse>, Status> {
        let started = Instant::now();
        let level = "none";
        let caller = request.extensions().get::<Caller>().cloned();
        let answer = async {
            let ops = request.into_inner().ops;
            validate::batch_size(ops.len())?;
            // A `read` token may send gets only; the auth layer cannot see
            // inside the request.
            if let Some(caller) = caller.filter(|c| c.role < Role::Write) {
                if ops
                    .iter()
                    .any(|op| !matches!(op.op, Some(proto::batch_op::Op::Get(_))))
                {
                    return Err(denied(caller.role, "kilovolt.Kilovolt/Batch with writes"));
                }
            }
            let total = ops.len();
            let budget = AnswerBudget::new(self.max_message_bytes);
            let results = join_all(ops.into_iter().map(|op| self.do_batch_op(op, &budget))).await;
            let Some(results) = results.into_iter().collect::<Option<Vec<_>>>() else {
                let size = budget.used.load(Ordering::Relaxed);
                tracing::warn!(
                    operations = total,
                    size,
                    limit = budget.limit,
                    "refused a batch whose answer is over the message limit"
                );
                return Err(Error::AnswerTooLarge {
                    what: format!("the answer to a batch of {total} operations"),
                    size,
                    limit: budget.limit,
                    why: "the message limit: --max-value-bytes plus 69632",
                }
                .into());
            };
            Ok(Response::new(proto::BatchResponse { results }))
        }
        .await;
        self.count(Rpc::Batch, level, started, &answer);
        answer
    }

    async fn map_set(
        &self,
        request: Request<proto::MapSetRequest>,
    ) -> Result<Response<proto::MapSetResponse>, Status> {
        let started = Instant::now();
        let level = self.level_name(request.get_ref().consistency);
        let answer = async {
            let req = request.into_inner();
            let key = validate::key(&req.key)?;
            let fields = validate::map_fields(&req.fields, self.max_value_bytes)?;
            let level = validate::consistency(req.consistency, self.default_level)?;
            let version = self
                .coordinator
                .map_set(key, &fields, self.max_value_bytes, level)
                .await?;
            Ok(Response::new(proto::MapSetResponse {
                status: "OK".into(),
                version: Some(version_to_proto(version)),
            }))
        }
        .await;
        self.count(Rpc::MapSet, level, started, &answer);
        answer
    }

    async fn map_get(
        &self,
        request: Request<proto::MapGetRequest>,
    ) -> Result<Response<proto::MapGetResponse>, Status> {
        let started = Instant::now();
        let level = self.level_name(request.get_ref().consistency);
        let answer = async {
            let req = request.into_inner();
            let key = validate::key(&req.key)?;
            let names = validate::field_names(&req.fields, None)?;
            let level = validate::consistency(req.consistency, self.default_level)?;
            let map = self.coordinator.map_get(key, &names, level).await?;
            Ok(Response::new(proto::MapGetResponse {
                found: map.is_some(),
                fields: map.unwrap_or_default().into_iter().collect(),
            }))
        }
        .await;
        self.count(Rpc::MapGet, level, started, &answer);
        answer
    }

    async fn map_remove(
        &self,
        request: Request<proto::MapRemoveRequest>,
    ) -> Result<Response<proto::MapRemoveResponse>, Status> {
        let started = Instant::now();
        let level = self.level_name(request.get_ref().consistency);
        let answer = async {
            let req = request.into_inner();
            let key = validate::key(&req.key)?;
            let names = validate::field_names(&req.fields, Some("MapRemove"))?;
            let level = validate::consistency(req.consistency, self.default_level)?;
            self.coordinator.map_remove(key, &names, level).await?;
            Ok(Response::new(proto::MapRemoveResponse {
                status: "OK".into(),
            }))
        }
        .await;
        self.count(Rpc::MapRemove, level, started, &answer);
        answer
    }

    async fn increment(
        &self,
        request: Request<proto::IncrementRequest>,
    ) -> Result<Response<proto::IncrementResponse>, Status> {
        let started = Instant::now();
        let level = self.level_name(request.get_ref().consistency);
        let answer = async {
            let req = request.into_inner();
            let key = validate::key(&req.key)?;
            let level = validate::consistency(req.consistency, self.default_level)?;
            let value = self.coordinator.increment(key, req.delta, level).await?;
            Ok(Response::new(proto::IncrementResponse { value }))
        }
        .await;
        self.count(Rpc::Increment, level, started, &answer);
        answer
    }

    async fn get_counter(
        &self,
        request: Request<proto::GetCounterRequest>,
    ) -> Result<Response<proto::GetCounterResponse>, Status> {
        let started = Instant::now();
        let level = self.level_name(request.get_ref().consistency);
        let answer = async {
            let req = request.into_inner();
            let key = validate::key(&req.key)?;
            let level = validate::consistency(req.consistency, self.default_level)?;
            let value = self.coordinator.get_counter(key, level).await?;
            Ok(Response::new(proto::GetCounterResponse {
                found: value.is_some(),
                value: value.map_or(0, counter_value),
            }))
        }
        .await;
        self.count(Rpc::GetCounter, level, started, &answer);
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_values_past_the_64_bit_range_read_as_its_bounds() {
        assert_eq!(counter_value(5), 5);
        assert_eq!(counter_value(i128::from(i64::MAX) + 1), i64::MAX);
        assert_eq!(counter_value(i128::from(i64::MIN) - 1), i64::MIN);
    }
}
