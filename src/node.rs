//! One running node: builds the pieces from the configuration, serves gRPC,
//! runs the background work, and shuts all of it down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::api::{AdminService, FaultsService, KilovoltService};
use crate::clock::{self, Clock};
use crate::config::{Config, DefaultConsistency};
use crate::coordinator::{Consistency, Coordinator};
use crate::proto;
use crate::store::Store;

/// How long shutdown waits for in-flight requests before it stops anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Who this node is, as peers and clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node id.
    pub id: String,
    /// The host:port its gRPC server is reached at.
    pub address: String,
    /// Its region label; empty when unset.
    pub region: String,
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The listen address could not be bound (in use, not permitted...).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The gRPC server failed while serving.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The server task panicked or was cancelled.
    #[error("server task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A node that is serving. Dropping it does not stop it; call
/// [`RunningNode::shutdown`].
pub struct RunningNode {
    info: NodeInfo,
    local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    collector: JoinHandle<()>,
}

impl RunningNode {
    /// Who the node is.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// The address the gRPC server is bound to (with the real port when
    /// `--port 0` was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, lets in-flight requests finish (up to a
    /// bound), then stops the background work.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        info!(node = %self.info.id, "shutting down");
        let _ = self.stop.send(());
        let result = match tokio::time::timeout(DRAIN_TIMEOUT, self.server).await {
            Ok(joined) => joined?.map_err(NodeError::from),
            Err(_) => {
                warn!(timeout = ?DRAIN_TIMEOUT, "in-flight requests did not finish; stopping anyway");
                Ok(())
            }
        };
        self.collector.abort();
        info!(node = %self.info.id, "stopped");
        result
    }
}

/// Binds the configured address and starts serving.
pub async fn start(config: Config) -> Result<RunningNode, NodeError> {
    let addr = config.bind_addr();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| NodeError::Bind { addr, source })?;
    let address = config.advertised(local_addr.port());
    let info = NodeInfo {
        id: config.node_id(&address),
        address,
        region: config.region.clone(),
    };

    let store = Arc::new(Store::new());
    let clock = Arc::new(Clock::new(
        &info.id,
        clock::system_time,
        config.max_clock_drift,
    ));
    let coordinator = Arc::new(Coordinator::new(store.clone(), clock.clone()));
    let collector = tokio::spawn(collect_expired(
        store.clone(),
        clock,
        config.expiry_interval,
        config.expiry_batch,
    ));

    let max_message = config.max_message_bytes();
    let kilovolt = proto::kilovolt_server::KilovoltServer::new(KilovoltService::new(
        coordinator,
        default_level(config.default_consistency),
        config.max_value_bytes,
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let admin = proto::admin_server::AdminServer::new(AdminService::new(info.clone(), store));
    let faults = proto::faults_server::FaultsServer::new(FaultsService);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<proto::kilovolt_server::KilovoltServer<KilovoltService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| std::io::Error::other(e.to_string()))
        .map_err(|source| NodeError::Bind { addr, source })?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| std::io::Error::other(e.to_string()))
        .map_err(|source| NodeError::Bind { addr, source })?;

    // Set TCP_NODELAY on the incoming stream itself: the builder's
    // `tcp_nodelay` does not reach a listener bound by the caller, and
    // without it small responses wait ~40 ms for delayed ACKs.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop, stopped) = oneshot::channel::<()>();
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(kilovolt)
        .add_service(admin)
        .add_service(faults);
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stopped.await;
        health
            .set_not_serving::<proto::kilovolt_server::KilovoltServer<KilovoltService>>()
            .await;
    }));

    Ok(RunningNode {
        info,
        local_addr,
        stop,
        server,
        collector,
    })
}

fn default_level(level: DefaultConsistency) -> Consistency {
    match level {
        DefaultConsistency::One => Consistency::One,
        DefaultConsistency::Quorum => Consistency::Quorum,
        DefaultConsistency::All => Consistency::All,
    }
}

/// Removes expired values every `interval`, at most `batch` per tick.
async fn collect_expired(store: Arc<Store>, clock: Arc<Clock>, interval: Duration, batch: usize) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let removed = store.collect_expired(clock.now(), batch);
        if removed > 0 {
            tracing::debug!(removed, "collected expired values");
        }
    }
}
