//! The server side of the peer protocol: merges what peers send and answers
//! their reads, after the fault switch's verdict on the sender.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::peer::{CLOCK_METADATA, PROTOCOL};
use super::switch::{Switch, Verdict};
use super::sync_wire::{reply_to_wire, request_from_wire};
use super::wire::{from_wire, to_wire};
use crate::anti_entropy::AntiEntropy;
use crate::clock::Clock;
use crate::proto::cluster::{self as wire, peer_server::Peer};
use crate::replication::apply_deltas;
use crate::store::Store;

/// Serves the peer protocol over this node's store.
pub struct PeerService {
    store: Arc<Store>,
    clock: Arc<Clock>,
    switch: Arc<Switch>,
    anti_entropy: Arc<AntiEntropy>,
}

impl PeerService {
    /// The service over `store`, observing remote versions with `clock`,
    /// and answering anti-entropy steps through `anti_entropy`.
    pub fn new(
        store: Arc<Store>,
        clock: Arc<Clock>,
        switch: Arc<Switch>,
        anti_entropy: Arc<AntiEntropy>,
    ) -> Self {
        Self {
            store,
            clock,
            switch,
            anti_entropy,
        }
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

    /// Checks the protocol number and asks the switch about the sender.
    async fn admit(&self, header: Option<&wire::Header>) -> Result<(), Status> {
        let header =
            header.ok_or_else(|| Status::invalid_argument("peer request without a header"))?;
        if header.protocol != PROTOCOL {
            return Err(Status::failed_precondition(format!(
                "peer protocol {} is not spoken here; this node speaks {PROTOCOL}",
                header.protocol
            )));
        }
        match self.switch.verdict(&header.from) {
            Verdict::Pass => Ok(()),
            Verdict::Drop => Err(Status::unavailable("link cut by fault injection")),
            Verdict::Delay(d) => {
                tokio::time::sleep(d).await;
                Ok(())
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
        let req = request.into_inner();
        self.admit(req.header.as_ref()).await?;
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
        let changed = apply_deltas(&self.store, &self.clock, entries);
        let changed = u32::try_from(changed).unwrap_or(u32::MAX);
        Ok(self.stamped(wire::ApplyResponse { changed }))
    }

    async fn read(
        &self,
        request: Request<wire::ReadRequest>,
    ) -> Result<Response<wire::ReadResponse>, Status> {
        let req = request.into_inner();
        self.admit(req.header.as_ref()).await?;
        let entries = req
            .keys
            .iter()
            .filter_map(|k| self.store.get(k).map(|e| to_wire(k, &e)))
            .collect();
        let clock = self.clock.latest().time;
        let held = req
            .partitions
            .into_iter()
            .filter(|&p| self.store.partition_len(p) > 0)
            .collect();
        Ok(self.stamped(wire::ReadResponse {
            entries,
            clock,
            held,
        }))
    }

    async fn sync(
        &self,
        request: Request<wire::SyncRequest>,
    ) -> Result<Response<wire::SyncReply>, Status> {
        let req = request.into_inner();
        self.admit(req.header.as_ref()).await?;
        let step = request_from_wire(req).map_err(|e| {
            tracing::warn!(error = %e, "refused an anti-entropy step");
            Status::invalid_argument(e.to_string())
        })?;
        let reply = self.anti_entropy.respond(step).map_err(|e| {
            tracing::warn!(error = %e, "refused an anti-entropy step");
            Status::invalid_argument(e.to_string())
        })?;
        Ok(self.stamped(reply_to_wire(&reply)))
    }
}
