//! The contract's `Faults` service: cuts, degrades and heals this node's
//! links to chosen peers, for users' own partition tests of a real cluster.
//! It acts on the one switch all peer traffic and gossip pass through;
//! client traffic is never affected. Off unless the node was started with
//! `--fault-injection`.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::proto;
use crate::proto::faults_server::Faults;
use crate::switch::{Degradation, Switch};

/// Serves `Faults` over the node's switch.
pub struct FaultsService {
    switch: Arc<Switch>,
    enabled: bool,
}

impl FaultsService {
    /// The service over `switch`; every call fails unless `enabled`.
    pub fn new(switch: Arc<Switch>, enabled: bool) -> Self {
        Self { switch, enabled }
    }

    fn check_enabled(&self) -> Result<(), Status> {
        if self.enabled {
            Ok(())
        } else {
            Err(Status::failed_precondition(
                "fault injection is off on this node; start it with --fault-injection to use the Faults service",
            ))
        }
    }

    fn state(&self) -> Response<proto::FaultState> {
        let (cut, degraded) = self.switch.state();
        Response::new(proto::FaultState { cut, degraded })
    }
}

/// Peer ids from a request: at least one, none empty.
fn peers(peers: Vec<String>) -> Result<Vec<String>, Status> {
    if peers.is_empty() {
        return Err(Status::invalid_argument(
            "peers is empty; name at least one node id",
        ));
    }
    if peers.iter().any(String::is_empty) {
        return Err(Status::invalid_argument("peers holds an empty node id"));
    }
    Ok(peers)
}

#[tonic::async_trait]
impl Faults for FaultsService {
    async fn cut(
        &self,
        request: Request<proto::CutRequest>,
    ) -> Result<Response<proto::FaultState>, Status> {
        self.check_enabled()?;
        let peers = peers(request.into_inner().peers)?;
        tracing::warn!(peers = ?peers, "fault injection: links cut");
        self.switch.cut(peers);
        Ok(self.state())
    }

    async fn degrade(
        &self,
        request: Request<proto::DegradeRequest>,
    ) -> Result<Response<proto::FaultState>, Status> {
        self.check_enabled()?;
        let req = request.into_inner();
        if !(0.0..=1.0).contains(&req.drop) {
            return Err(Status::invalid_argument(format!(
                "drop is {}; the limit is 0.0 to 1.0",
                req.drop
            )));
        }
        let peers = peers(req.peers)?;
        let how = Degradation {
            drop: req.drop,
            delay: Duration::from_millis(u64::from(req.delay_ms)),
        };
        tracing::warn!(peers = ?peers, drop = req.drop, delay_ms = req.delay_ms, "fault injection: links degraded");
        self.switch.degrade(peers, how);
        Ok(self.state())
    }

    async fn heal(
        &self,
        _: Request<proto::HealRequest>,
    ) -> Result<Response<proto::FaultState>, Status> {
        self.check_enabled()?;
        tracing::warn!("fault injection: every fault healed");
        self.switch.heal();
        Ok(self.state())
    }
}
