//! The contract's `Faults` service. Fault injection needs the peer network
//! layer of a cluster, which this release does not have yet.

use tonic::{Request, Response, Status};

use super::status::not_yet;
use crate::proto;
use crate::proto::faults_server::Faults;

/// Answers every `Faults` call as not implemented yet.
pub struct FaultsService;

const FAULTS: &str = "fault injection and the peer network it acts on";

#[tonic::async_trait]
impl Faults for FaultsService {
    async fn cut(
        &self,
        _: Request<proto::CutRequest>,
    ) -> Result<Response<proto::FaultState>, Status> {
        Err(not_yet("Faults.Cut", FAULTS))
    }

    async fn degrade(
        &self,
        _: Request<proto::DegradeRequest>,
    ) -> Result<Response<proto::FaultState>, Status> {
        Err(not_yet("Faults.Degrade", FAULTS))
    }

    async fn heal(
        &self,
        _: Request<proto::HealRequest>,
    ) -> Result<Response<proto::FaultState>, Status> {
        Err(not_yet("Faults.Heal", FAULTS))
    }
}
