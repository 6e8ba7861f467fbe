//! The server side of the peer protocol: merges what peers send and answers
//! their reads, after the fault switch's verdict on the sender. It sits above
//! the subsystems it serves (the store, replication's delta merge,
//! anti-entropy's responder) and below `node`, which mounts it; the client
//! side and the wire format stay in `net`.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tonic::{Request, Response, Status};

use crate::anti_entropy::AntiEntropy;
use crate::clock::Clock;
use crate::error::Error;
use crate::net::peer::{CLOCK_METADATA, PROTOCOL};
use crate::net::sync_wire::{reply_to_wire, request_from_wire};
use crate::net::wire::{from_wire, to_wire};
use crate::net::{Relay, Served};
use crate::proto::cluster::{self as wire, peer_server::Peer};
use crate::replication::apply_deltas;
use crate::security::identity::certifies;
use crate::store::Store;
use crate::switch::{Switch, Verdict};

/// What a node still refilling after a restart answers a read of keys.
pub const NOT_READY: &str = "syncing (refilling after a restart; answers no reads)";

/// The status a peer gets from a node whose log cannot take changes.
fn unlogged(e: crate::store::JournalError) -> Status {
    Status::unavailable(format!("this node cannot log to disk: {e}"))
}

/// Serves the peer protocol over this node's store.
pub struct PeerService {
    store: Arc<Store>,
    clock: Arc<Clock>,
    switch: Arc<Switch>,
    anti_entropy: Arc<AntiEntropy>,
    max_message_bytes: usize,
    served: Arc<Served>,
    relay: Option<Arc<dyn Relay>>,
    verify_identity: bool,
    region: String,
}

/// The peer's certificate chain, as the TLS handshake verified it; `None`
/// on a plaintext connection.
type PeerCerts = Option<Arc<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>>>;

impl PeerService {
    /// The service over `store`, observing remote versions with `clock`,
    /// answering anti-entropy steps through `anti_entropy`, and stopping a
    /// read whose answer grows past `max_message_bytes` (the peer message
    /// limit). With `verify_identity` (mutual TLS between nodes), a request
    /// is served only if the caller's certificate names the node id its
    /// header claims.
    pub fn new(
        store: Arc<Store>,
        clock: Arc<Clock>,
        switch: Arc<Switch>,
        anti_entropy: Arc<AntiEntropy>,
        max_message_bytes: usize,
        verify_identity: bool,
        region: String,
    ) -> Self {
        Self {
            store,
            clock,
            switch,
            anti_entropy,
            max_message_bytes,
            served: Arc::new(Served::new()),
            relay: None,
            verify_identity,
            region,
        }
    }

    /// Hands relayed batches to `relay`; without it a relayed batch is only
    /// merged here.
    pub fn relaying(mut self, relay: Arc<dyn Relay>) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Counts what this service answers in `served` (shown by
    /// `Admin.Stats`).
    pub fn counting(mut self, served: Arc<Served>) -> Self {
        self.served = served;
        self
    }

    /// The entries held for `keys`, each key answered once, counted as the
    /// answer is built: the read stops as soon as the answer passes the
    /// message limit.
    fn entries(&self, mut keys: Vec<String>) -> Result<Vec<wire::Entry>, Error> {
        keys.sort_unstable();
        keys.dedup();
        let mut entries = Vec::new();
        let mut size = 0usize;
        for key in &keys {
            let Some(entry) = self.store.get(key).map(|e| to_wire(key, &e)) else {
                continue;
            };
            let len = entry.encoded_len();
            size += 1 + prost::encoding::encoded_len_varint(len as u64) + len;
            if size > self.max_message_bytes {
                return Err(Error::AnswerTooLarge {
                    what: format!("the answer to a peer read of {} keys", keys.len()),
                    size,
                    limit: self.max_message_bytes,
                    why: "the peer message limit",
                });
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// `message` as a response that carries this node's physical clock, so
    /// that the caller can measure its offset from this one.
    fn stamped<T>(&self, message: T) -> Response<T> {
        let mut response = Response::new(message);
        if let Ok(value) = self.clock.now().to_string().parse() {
            response.metadata_mut().insert(CLOCK_METADATA, value);
        }
        response
    }

    /// Checks the protocol number and the sender's certificate, and asks
    /// the switch about the request from the sender; returns the sender's
    /// id, for the verdict on the answer ([`PeerService::answer`]).
    async fn admit(
        &self,
        header: Option<&wire::Header>,
        certs: PeerCerts,
    ) -> Result<String, Status> {
        let header =
            header.ok_or_else(|| Status::invalid_argument("peer request without a header"))?;
        if header.protocol != PROTOCOL {
            return Err(Status::failed_precondition(format!(
                "peer protocol {} is not spoken here; this node speaks {PROTOCOL}",
                header.protocol
            )));
        }
        if self.verify_identity {
            let proven = certs
                .as_deref()
                .and_then(|chain| chain.first())
                .is_some_and(|cert| certifies(cert, &header.from));
            if !proven {
                tracing::warn!(claimed = %header.from, "refused a peer request whose certificate does not name the node it claims");
                return Err(Status::unauthenticated(format!(
                    "the certificate does not name node {:?}",
                    header.from
                )));
            }
        }
        match self.switch.verdict(&header.from) {
            Verdict::Pass => {}
            Verdict::Drop => return Err(Status::unavailable("link cut by fault injection")),
            Verdict::Delay(d) => tokio::time::sleep(d).await,
        }
        Ok(header.from.clone())
    }

    /// Sends `answer` back to `from` after the switch's verdict on it: a
    /// degraded link delays (or drops) the answer as it does the request, so
    /// that a link degraded at one end costs its delay in each direction.
    async fn answer<T>(
        &self,
        from: &str,
        answer: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        match self.switch.verdict(from) {
            Verdict::Pass => answer,
            Verdict::Drop => Err(Status::unavailable(
                "answer dropped by fault injection (the request was handled)",
            )),
            Verdict::Delay(d) => {
                tokio::time::sleep(d).await;
                answer
            }
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn apply(
        &self,
        request: Request<wire::ApplyRequest>,
    ) -> Result<Response<wire::ApplyResponse>, Status> {
        let certs = request.peer_certs();
        let req = request.into_inner();
        let from = self.admit(req.header.as_ref(), certs).await?;
        let answer: Result<Response<wire::ApplyResponse>, Status> = async move {
            // Check the whole batch before merging any of it, so a bad entry
            // refuses the batch without applying half of it.
            let entries = req
                .entries
                .into_iter()
                .map(from_wire)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| {
                    tracing::warn!(error = %err, "refused a peer batch");
                    Status::invalid_argument(err.to_string())
                })?;
            // A node that cannot log refuses the batch (the sender holds it as
            // hints) rather than acknowledge what a restart would lose.
            self.store.check_journal().map_err(unlogged)?;
            // Mates awaited by the sender are handed the batch before it is
            // merged here, and waited on after.
            let mut awaited = None;
            if let (Some(relay), Some(header)) = (&self.relay, &req.header) {
                if !req.await_mates.is_empty() {
                    let within = Duration::from_millis(u64::from(req.await_ms));
                    awaited = Some(relay.relay_awaited(
                        &header.from,
                        entries.clone(),
                        req.await_mates,
                        within,
                    ));
                } else if req.relay {
                    relay.relay(&header.from, entries.clone());
                }
            }
            let changed =
                apply_deltas(&self.store, &self.clock, entries, self.anti_entropy.grace());
            self.store.durable().await.map_err(unlogged)?;
            let changed = u32::try_from(changed).unwrap_or(u32::MAX);
            let took = match awaited {
                Some(awaited) => awaited.await,
                None => Vec::new(),
            };
            Ok(self.stamped(wire::ApplyResponse { changed, took }))
        }
        .await;
        self.answer(&from, answer).await
    }

    async fn read(
        &self,
        request: Request<wire::ReadRequest>,
    ) -> Result<Response<wire::ReadResponse>, Status> {
        let certs = request.peer_certs();
        let req = request.into_inner();
        let from = self.admit(req.header.as_ref(), certs).await?;
        let answer: Result<Response<wire::ReadResponse>, Status> = async move {
            // A node refilling after a restart may lack what it is asked for:
            // "not found" from it would count as an answer. The asker's view of
            // this node's state can lag (a member may still see its previous
            // life, ready), so the node itself refuses.
            if !req.keys.is_empty() && !self.anti_entropy.is_ready() {
                return Err(Status::unavailable(NOT_READY));
            }
            let asked = !req.keys.is_empty();
            let entries = self.entries(req.keys).map_err(|err| {
                tracing::warn!(error = %err, "refused a peer read");
                Status::from(err)
            })?;
            if asked {
                self.served.read();
            }
            Ok(self.stamped(wire::ReadResponse { entries }))
        }
        .await;
        self.answer(&from, answer).await
    }

    async fn clock(
        &self,
        request: Request<wire::ClockRequest>,
    ) -> Result<Response<wire::ClockResponse>, Status> {
        let certs = request.peer_certs();
        let req = request.into_inner();
        let from = self.admit(req.header.as_ref(), certs).await?;
        let answer: Result<Response<wire::ClockResponse>, Status> = async move {
            // Answered while refilling too: a restarted peer seeds its clock
            // from it.
            let clock = self.clock.latest().time;
            Ok(self.stamped(wire::ClockResponse {
                clock,
                region: self.region.clone(),
            }))
        }
        .await;
        self.answer(&from, answer).await
    }

    async fn holding(
        &self,
        request: Request<wire::HoldingRequest>,
    ) -> Result<Response<wire::HoldingResponse>, Status> {
        let certs = request.peer_certs();
        let req = request.into_inner();
        let from = self.admit(req.header.as_ref(), certs).await?;
        let answer: Result<Response<wire::HoldingResponse>, Status> = async move {
            let mut held = req.partitions;
            held.sort_unstable();
            held.dedup();
            held.retain(|&p| self.store.partition_len(p) > 0);
            Ok(self.stamped(wire::HoldingResponse { held }))
        }
        .await;
        self.answer(&from, answer).await
    }

    async fn sync(
        &self,
        request: Request<wire::SyncRequest>,
    ) -> Result<Response<wire::SyncReply>, Status> {
        let certs = request.peer_certs();
        let req = request.into_inner();
        let from = self.admit(req.header.as_ref(), certs).await?;
        let answer: Result<Response<wire::SyncReply>, Status> = async move {
            let step = request_from_wire(req).map_err(|e| {
                tracing::warn!(error = %e, "refused an anti-entropy step");
                Status::invalid_argument(e.to_string())
            })?;
            // A step may list the versions of whole partitions: on a blocking
            // thread, so that client requests do not queue behind the scan.
            self.store.check_journal().map_err(unlogged)?;
            let request_bytes = step.wire_size() as u64;
            let anti_entropy = self.anti_entropy.clone();
            let (reply, changed) = tokio::task::spawn_blocking(move || anti_entropy.respond(step))
                .await
                .map_err(|e| Status::internal(format!("anti-entropy step failed: {e}")))?
                .map_err(|e| {
                    tracing::warn!(error = %e, "refused an anti-entropy step");
                    Status::invalid_argument(e.to_string())
                })?;
            self.anti_entropy
                .stats()
                .add_bytes(request_bytes + reply.wire_size() as u64);
            // The reply acknowledges what the step merged (collection counts
            // on it): fsynced first, whatever the mode.
            if changed > 0 {
                self.store.synced().await.map_err(unlogged)?;
            }
            Ok(self.stamped(reply_to_wire(&reply)))
        }
        .await;
        self.answer(&from, answer).await
    }
}
