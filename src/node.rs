//! One running node: builds the pieces from the configuration, joins the
//! cluster, serves gRPC, runs the background work, and shuts all of it down
//! gracefully.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::admission::Admission;
use crate::anti_entropy::{AntiEntropy, AntiEntropyConfig, Limits};
use crate::api::{AdminService, FaultsService, KilovoltService};
use crate::clock::{self, Clock, PhysicalClock};
use crate::cluster::Topology;
use crate::cluster::{ClusterError, Member, Membership, MembershipConfig, NodeInfo, NodeState};
use crate::config::{Config, ConfigError, DefaultConsistency};
use crate::coordinator::{Consistency, Coordinator};
use crate::durability::rejoin::{self, Verdict};
use crate::durability::{Durability, DurabilityConfig, DurabilityError};
use crate::metrics::process::OpenConnections;
use crate::metrics::Metrics;
use crate::net::{Peers, Served};
use crate::proto;
use crate::replication::{BatchLimits, HintLimits, Replicator};
use crate::ring::Replication;
use crate::scrape::Parts;
use crate::security::auth::AuthError;
use crate::security::{tls_incoming, AuthFile, AuthLayer, PeerTls, ServerTls, TlsError};
use crate::server::PeerService;
use crate::store::Store;
use crate::switch::Switch;

/// How long shutdown waits for in-flight requests before it stops anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often hints are expired and replayed to peers that are alive.
const HINT_TICK: Duration = Duration::from_secs(1);

/// How often members not yet admitted to placement are probed again.
const ADMISSION_RETRY: Duration = Duration::from_secs(1);

/// Why a node could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum NodeError {
    /// A setting is out of the range the node can run with.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound (in use, not permitted...).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Gossip could not start.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The auth file could not be loaded.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The node id cannot be named in a certificate.
    #[error("--node-id: {0}")]
    NodeId(String),
    /// The descriptors for gRPC reflection did not load.
    #[error("cannot serve reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed while serving.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The data directory could not be recovered or opened.
    #[error(transparent)]
    Durability(#[from] DurabilityError),
    /// The server task panicked or was cancelled.
    #[error("server task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The parts of a node that tests and the binary reach into.
#[derive(Clone)]
pub struct Handles {
    /// The fault switch all peer traffic passes through.
    pub switch: Arc<Switch>,
    /// The local replica.
    pub store: Arc<Store>,
    /// The request coordinator.
    pub coordinator: Arc<Coordinator>,
    /// Outbound replication and hints.
    pub replicator: Arc<Replicator>,
    /// Anti-entropy sessions with replica peers.
    pub anti_entropy: Arc<AntiEntropy>,
    /// The write-ahead log and snapshots, with `--data-dir`.
    pub durability: Option<Arc<Durability>>,
}

/// A node that is serving. Dropping it does not stop it; call
/// [`RunningNode::shutdown`].
pub struct RunningNode {
    info: NodeInfo,
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
    handles: Handles,
    membership: Membership,
    security: Security,
    peers: Arc<Peers>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    peer_stop: oneshot::Sender<()>,
    peer_server: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<JoinHandle<()>>,
    /// Set when shutdown begins: `/ready` and gRPC health then say so.
    leaving: Arc<AtomicBool>,
    /// The metrics listener's address, when `--metrics-addr` is set.
    metrics_addr: Option<SocketAddr>,
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

    /// The address the peer listener is bound to.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The address the metrics listener is bound to, when
    /// `--metrics-addr` is set (with the real port when port 0 was asked).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The node's inner parts.
    pub fn handles(&self) -> &Handles {
        &self.handles
    }

    /// Re-reads the auth file and every certificate and key (on SIGHUP):
    /// requests and connections from now on use them, connections already
    /// made keep theirs. A file that fails to load leaves what it would
    /// have replaced in force; every failure is returned.
    pub fn reload(&self) -> Vec<String> {
        let mut failed = Vec::new();
        if let Some(auth) = &self.security.auth {
            match auth.reload() {
                Ok(tokens) => info!(tokens, "auth file reloaded"),
                Err(e) => failed.push(e.to_string()),
            }
        }
        if let Some(tls) = &self.security.client_tls {
            match tls.reload() {
                Ok(()) => info!("client TLS certificate reloaded"),
                Err(e) => failed.push(e.to_string()),
            }
        }
        if let Some(tls) = &self.security.peer_tls {
            match tls.reload() {
                Ok(()) => {
                    self.peers.reset_connections();
                    info!("peer TLS certificates reloaded");
                }
                Err(e) => failed.push(e.to_string()),
            }
        }
        failed
    }

    /// Leaves gracefully: stops taking requests and lets in-flight ones
    /// finish (up to a bound), sends every queued delta, hands hints to the
    /// peers that are alive, announces that it leaves, then stops.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        info!(node = %self.info.id, "shutting down");
        self.leaving.store(true, Ordering::Relaxed);
        let _ = self.stop.send(());
        // The peer listener serves on while in-flight client requests
        // finish and hints are handed off: peers are still sending.
        let served = match tokio::time::timeout(DRAIN_TIMEOUT, self.server).await {
            Ok(joined) => joined?.map_err(NodeError::from),
            Err(_) => {
                warn!(timeout = ?DRAIN_TIMEOUT, "in-flight requests did not finish; stopping anyway");
                Ok(())
            }
        };
        for task in &self.background {
            task.abort();
        }
        let replicator = &self.handles.replicator;
        replicator.flush().await;
        let hints_dropped =
            hand_off_hints(&self.handles.coordinator, replicator, &self.info.id).await;
        if let Some(d) = &self.handles.durability {
            let d = d.clone();
            let _ = tokio::task::spawn_blocking(move || d.close()).await;
        }
        let left = self.membership.leave().await;
        let _ = self.peer_stop.send(());
        if tokio::time::timeout(DRAIN_TIMEOUT, self.peer_server)
            .await
            .is_err()
        {
            warn!(timeout = ?DRAIN_TIMEOUT, "in-flight peer requests did not finish; stopping anyway");
        }
        info!(node = %self.info.id, hints_dropped, "stopped");
        served?;
        left.map_err(NodeError::from)
    }
}

/// Binds the configured address, joins the cluster and starts serving.
pub async fn start(config: Config) -> Result<RunningNode, NodeError> {
    start_with_clock(config, clock::system_time).await
}

/// [`start`], with physical time read from `physical` instead of the
/// system clock: tests give nodes skewed or jumping clocks this way.
pub async fn start_with_clock(
    config: Config,
    physical: PhysicalClock,
) -> Result<RunningNode, NodeError> {
    config.validate()?;
    let security = Security::load(&config)?;
    let addr = config.bind_addr();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| NodeError::Bind { addr, source })?;
    let peer_bind = config.peer_bind_addr()?;
    let peer_listener = TcpListener::bind(peer_bind)
        .await
        .map_err(|source| NodeError::Bind {
            addr: peer_bind,
            source,
        })?;
    let peer_addr = peer_listener
        .local_addr()
        .map_err(|source| NodeError::Bind {
            addr: peer_bind,
            source,
        })?;
    // The metrics listener, bound before anything starts, so that a port in
    // use stops the node at once.
    let (metrics_listener, metrics_addr) = match config.metrics_addr {
        Some(addr) => {
            let bound = TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Bind { addr, source })?;
            let local = bound
                .local_addr()
                .map_err(|source| NodeError::Bind { addr, source })?;
            (Some(bound), Some(local))
        }
        None => (None, None),
    };
    let metrics = if metrics_listener.is_some() {
        Metrics::on()
    } else {
        Metrics::off()
    };
    let address = config.advertised(local_addr.port());
    let info = NodeInfo {
        id: config.node_id(&address),
        peer_address: config.peer_advertised(&address, peer_addr.port()),
        address,
        region: config.region.clone(),
    };
    if security.peer_tls.is_some() {
        crate::security::identity::check_node_id(&info.id).map_err(NodeError::NodeId)?;
    }
    warn_if_exposed(local_addr, &security);

    // Recovery first: a node whose data directory is damaged stops here,
    // before it announces itself to the cluster.
    let store = Arc::new(Store::new(config.partitions));
    let clock = Arc::new(Clock::new(&info.id, physical, config.max_clock_drift));
    let recovering = match &config.data_dir {
        Some(dir) => {
            let settings = DurabilityConfig {
                dir: dir.clone(),
                mode: config.durability,
                fsync_interval: config.fsync_interval,
                segment_bytes: config.log_segment_bytes,
                snapshot_log_bytes: config.snapshot_log_bytes,
                stale_after: config.dead_node_grace,
            };
            let into = store.clone();
            Some(tokio::task::spawn_blocking(move || Durability::recover(settings, &into)).await??)
        }
        None => None,
    };
    let previous_alive_ms = recovering
        .as_ref()
        .map(|r| r.alive_ms())
        .filter(|&ms| ms != 0);

    let switch = Arc::new(Switch::new());
    let membership = Membership::start(
        MembershipConfig {
            node_id: info.id.clone(),
            advertise: info.address.clone(),
            listen: local_addr,
            peer_advertise: info.peer_address.clone(),
            region: info.region.clone(),
            seeds: config.cluster.clone(),
            gossip_interval: config.gossip_interval,
            phi_threshold: config.phi_threshold,
            dead_node_grace: config.dead_node_grace,
            cluster_id: config.cluster_id.clone(),
            // A node that joins others starts empty: it is syncing until it
            // has filled its partitions from them.
            initial_state: if config.cluster.is_empty() {
                NodeState::Ready
            } else {
                NodeState::Syncing
            },
            previous_alive_ms,
        },
        switch.clone(),
    )
    .await?;

    // A node back from disk after longer than the dead-node grace keeps
    // its data only if its live peers were down with it; it serves and
    // sends nothing until it has decided. A node restarted from disk
    // collects no tombstones for the grace: a member that was down when
    // it stopped may be known to no live peer (docs/durability.md).
    let hold_collection = previous_alive_ms.is_some() && !config.cluster.is_empty();
    let durability = match recovering {
        Some(recovering) => {
            let keep = match recovering.stale() {
                Some(away) if !config.cluster.is_empty() => {
                    tracing::warn!(
                        away = %humantime::format_duration(away),
                        dead_node_grace = %humantime::format_duration(config.dead_node_grace),
                        "this node was away longer than the dead-node grace: it asks its live peers whether they ran without it before it keeps or discards its data"
                    );
                    let verdict = rejoin::await_verdict(
                        &membership,
                        recovering.alive_ms(),
                        config.dead_node_grace,
                    )
                    .await;
                    match verdict {
                        Verdict::Keep => {
                            tracing::info!(
                                "every live peer was down with this node: it keeps its data"
                            );
                            true
                        }
                        Verdict::Discard { reason } => {
                            tracing::warn!(%reason, "a peer may have collected deletes without this node");
                            false
                        }
                    }
                }
                _ => true,
            };
            let into = store.clone();
            let (durability, found) =
                tokio::task::spawn_blocking(move || recovering.open(&into, keep)).await??;
            if let Some(latest) = found.latest {
                clock.observe(latest);
            }
            Some((durability, found.hints))
        }
        None => None,
    };
    let (durability, recovered_hints) = match durability {
        Some((d, hints)) => (Some(d), hints),
        None => (None, Vec::new()),
    };

    let peers = Arc::new(
        Peers::new(
            info.id.clone(),
            clock.clone(),
            switch.clone(),
            config.request_timeout,
            config.max_peer_message_bytes(),
            security.peer_tls.clone(),
        )
        .with_metrics(metrics.clone()),
    );
    let replicator = Replicator::new(
        peers.clone(),
        BatchLimits {
            max_bytes: config.replication_batch_bytes,
            linger: config.replication_linger,
            max_queued_bytes: config.replication_queue_bytes,
        },
        HintLimits {
            max_hints: config.max_hints,
            max_bytes: config.max_hint_bytes,
            max_age: config.max_hint_age,
        },
    );
    if let Some(d) = &durability {
        d.attach_replicator(&replicator, recovered_hints, config.max_hint_age);
    }
    let rf = replication(&config);
    let members = membership.subscribe();
    let admission = Admission::new(info.id.clone(), peers.clone(), security.peer_tls.is_some());
    let admitted = admission.admit(members.borrow().clone());
    let topology = Topology::new(admitted.clone(), config.partitions, rf);
    peers.set_addresses(addresses(admitted.iter()));
    let coordinator = Arc::new(
        Coordinator::new(
            info.id.clone(),
            store.clone(),
            clock.clone(),
            peers.clone(),
            replicator.clone(),
            topology,
            clock::ntp64(config.settle_grace()),
        )
        .with_slow_request(config.slow_request),
    );
    let anti_entropy = Arc::new(
        AntiEntropy::new(
            info.id.clone(),
            store.clone(),
            clock.clone(),
            peers.clone(),
            coordinator.clone(),
            AntiEntropyConfig {
                interval: config.anti_entropy_interval,
                max_bytes_per_sec: config.anti_entropy_bytes_per_sec,
                limits: Limits::default(),
                settle_grace: config.settle_grace(),
                start_ready: config.cluster.is_empty(),
            },
            membership.announcer(),
        )
        .with_metrics(metrics.clone()),
    );
    if hold_collection {
        anti_entropy.hold_collection(config.dead_node_grace);
    }
    let sync_stats = anti_entropy.stats();
    let handles = Handles {
        switch: switch.clone(),
        store: store.clone(),
        coordinator: coordinator.clone(),
        replicator: replicator.clone(),
        anti_entropy: anti_entropy.clone(),
        durability: durability.clone(),
    };

    let leaving = Arc::new(AtomicBool::new(false));
    let connections = OpenConnections::default();
    let peer_connections = connections.clone();
    let parts = Parts {
        me: info.id.clone(),
        store: store.clone(),
        coordinator: coordinator.clone(),
        replicator: replicator.clone(),
        clock: clock.clone(),
        sync: sync_stats.clone(),
        leaving: leaving.clone(),
        connections: connections.clone(),
        members: membership.subscribe(),
        durability: durability.clone(),
    };
    parts.clone().register(&metrics);
    metrics.set_regions(regions(members.borrow().iter()));

    let mut background = vec![
        tokio::spawn(collect_expired(
            coordinator.clone(),
            store.clone(),
            clock.clone(),
            config.expiry_interval,
            config.expiry_batch,
        )),
        tokio::spawn(follow_membership(
            members,
            admission,
            metrics.clone(),
            coordinator.clone(),
            peers.clone(),
            replicator.clone(),
            anti_entropy.clone(),
            config.partitions,
            rf,
        )),
        tokio::spawn(tend_hints(coordinator.clone(), replicator.clone())),
        tokio::spawn(probe_peers(peers.clone())),
        tokio::spawn(anti_entropy.clone().run()),
    ];
    if let Some(d) = &durability {
        background.push(tokio::spawn(d.clone().run(store.clone())));
    }

    let max_message = config.max_message_bytes();
    let kilovolt = proto::kilovolt_server::KilovoltServer::new(
        KilovoltService::new(
            coordinator.clone(),
            default_level(config.default_consistency),
            config.max_value_bytes,
            max_message,
        )
        .with_metrics(metrics.clone()),
    )
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let served = Arc::new(Served::new());
    let admin = proto::admin_server::AdminServer::new(
        AdminService::new(
            info.clone(),
            store.clone(),
            coordinator.clone(),
            replicator.clone(),
            clock.clone(),
            sync_stats.clone(),
            durability,
        )
        .counting(served.clone()),
    );
    let faults = proto::faults_server::FaultsServer::new(FaultsService::new(
        switch.clone(),
        config.fault_injection,
    ));
    let peer = proto::cluster::peer_server::PeerServer::new(
        PeerService::new(
            store,
            clock,
            switch,
            anti_entropy,
            config.max_peer_message_bytes(),
            security.peer_tls.is_some(),
            info.region.clone(),
        )
        .counting(served)
        .relaying(coordinator.clone()),
    )
    .max_decoding_message_size(config.max_peer_message_bytes())
    .max_encoding_message_size(config.max_peer_message_bytes());

    let (health, health_service) = tonic_health::server::health_reporter();
    // Before the server answers: a node that starts syncing must not be
    // SERVING for a moment.
    set_health(&health, parts.state() == NodeState::Ready).await;
    background.push(tokio::spawn(report_health(health.clone(), parts.clone())));
    if let Some(listener) = metrics_listener {
        let parts = parts.clone();
        let state = Arc::new(move || parts.state().as_str());
        // A background task: it answers (`/ready` says `leaving`) until
        // shutdown has drained the gRPC server, then stops with the rest.
        background.push(tokio::spawn(async move {
            if let Err(e) = crate::metrics::http::serve(listener, metrics, state).await {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        }));
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // The client port: the public services only, each call checked
    // against the auth file when there is one.
    let (stop, stopped) = oneshot::channel::<()>();
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(AuthLayer::new(security.auth.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(kilovolt)
        .add_service(admin)
        .add_service(faults);
    let stopped = async move {
        let _ = stopped.await;
        set_health(&health, false).await;
    };
    let server = match &security.client_tls {
        Some(tls) => tokio::spawn(
            router.serve_with_incoming_shutdown(
                tls_incoming(listener, tls.clone(), "client")
                    .map(move |accepted| accepted.map(|stream| connections.count(stream))),
                stopped,
            ),
        ),
        // Set TCP_NODELAY on the incoming stream itself: the builder's
        // `tcp_nodelay` does not reach a listener bound by the caller, and
        // without it small responses wait ~40 ms for delayed ACKs.
        None => tokio::spawn(
            router.serve_with_incoming_shutdown(
                TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .map(move |accepted| accepted.map(|stream| connections.count(stream))),
                stopped,
            ),
        ),
    };

    // The peer listener: the node-to-node protocol only, with mutual TLS
    // when configured.
    let (peer_stop, peer_stopped) = oneshot::channel::<()>();
    let peer_router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(peer);
    let peer_stopped = async move {
        let _ = peer_stopped.await;
    };
    // Its connections count in the same figure as the client port's.
    let peer_server = match &security.peer_tls {
        Some(tls) => tokio::spawn(
            peer_router.serve_with_incoming_shutdown(
                tls_incoming(peer_listener, tls.server(), "peer")
                    .map(move |accepted| accepted.map(|stream| peer_connections.count(stream))),
                peer_stopped,
            ),
        ),
        None => tokio::spawn(
            peer_router.serve_with_incoming_shutdown(
                TcpIncoming::from(peer_listener)
                    .with_nodelay(Some(true))
                    .map(move |accepted| accepted.map(|stream| peer_connections.count(stream))),
                peer_stopped,
            ),
        ),
    };

    Ok(RunningNode {
        info,
        local_addr,
        peer_addr,
        handles,
        membership,
        security,
        peers,
        stop,
        server,
        peer_stop,
        peer_server,
        background,
        leaving,
        metrics_addr,
    })
}

/// What the node authenticates with, loaded at start and re-read by
/// [`RunningNode::reload`].
struct Security {
    client_tls: Option<Arc<ServerTls>>,
    peer_tls: Option<Arc<PeerTls>>,
    auth: Option<Arc<AuthFile>>,
}

impl Security {
    fn load(config: &Config) -> Result<Self, NodeError> {
        let client_tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(ServerTls::load(
                cert.clone(),
                key.clone(),
                config.tls_client_ca.clone(),
            )?)),
            _ => None,
        };
        let peer_tls = match (&config.peer_tls_cert, &config.peer_tls_key, &config.peer_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(Arc::new(PeerTls::load(
                cert.clone(),
                key.clone(),
                ca.clone(),
            )?)),
            _ => None,
        };
        let auth = match &config.auth_file {
            Some(path) => Some(Arc::new(AuthFile::load(path.clone())?)),
            None => None,
        };
        Ok(Self {
            client_tls,
            peer_tls,
            auth,
        })
    }
}

/// Logs one warning at start when the node binds a non-loopback address
/// without client TLS, tokens or mutual TLS between nodes: whoever reaches
/// the ports can then read or write in the clear, call every service, or
/// speak the peer protocol (write any version, read any partition).
fn warn_if_exposed(bound: SocketAddr, security: &Security) {
    if bound.ip().is_loopback() {
        return;
    }
    let mut missing = Vec::new();
    if security.client_tls.is_none() {
        missing.push("client TLS (--tls-cert)");
    }
    if security.auth.is_none() {
        missing.push("tokens (--auth-file)");
    }
    if security.peer_tls.is_none() {
        missing.push("mutual TLS between nodes (--peer-tls-cert)");
    }
    if !missing.is_empty() {
        warn!(
            listen = %bound,
            missing = %missing.join(", "),
            "serving a non-loopback address without {}: whoever reaches this node's ports can use what is missing (see docs/security.md)",
            missing.join(", ")
        );
    }
}

/// Sets the gRPC health of the whole server ("") and of the `Kilovolt`
/// service.
async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    use tonic_health::ServingStatus;
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    if serving {
        health
            .set_serving::<proto::kilovolt_server::KilovoltServer<KilovoltService>>()
            .await;
    } else {
        health
            .set_not_serving::<proto::kilovolt_server::KilovoltServer<KilovoltService>>()
            .await;
    }
}

/// Keeps the gRPC health service in step with this node's state: SERVING
/// only while `ready`, NOT_SERVING while it syncs or leaves.
async fn report_health(health: tonic_health::server::HealthReporter, parts: Parts) {
    let mut members = parts.members.clone();
    let mut serving = None;
    loop {
        members.borrow_and_update();
        let ready = parts.state() == NodeState::Ready;
        if serving != Some(ready) {
            set_health(&health, ready).await;
            serving = Some(ready);
        }
        if members.changed().await.is_err() {
            return;
        }
    }
}

fn default_level(level: DefaultConsistency) -> Consistency {
    match level {
        DefaultConsistency::One => Consistency::One,
        DefaultConsistency::Quorum => Consistency::Quorum,
        DefaultConsistency::All => Consistency::All,
        DefaultConsistency::LocalOne => Consistency::LocalOne,
        DefaultConsistency::LocalQuorum => Consistency::LocalQuorum,
        DefaultConsistency::EachQuorum => Consistency::EachQuorum,
    }
}

/// Node id -> peer address, for the peer protocol's client.
fn addresses<'a>(members: impl Iterator<Item = &'a Member>) -> HashMap<String, String> {
    members
        .filter(|m| !m.peer_address.is_empty())
        .map(|m| (m.id.clone(), m.peer_address.clone()))
        .collect()
}

fn regions<'a>(members: impl Iterator<Item = &'a Member>) -> HashMap<String, String> {
    members.map(|m| (m.id.clone(), m.region.clone())).collect()
}

/// Rebuilds placement on every membership change (of the members
/// admitted: see [`Admission`]), and hands hints to peers the moment they
/// come back alive; wakes anti-entropy when a peer comes back or placement
/// changes.
#[allow(clippy::too_many_arguments)]
async fn follow_membership(
    mut members: watch::Receiver<Vec<Member>>,
    admission: Arc<Admission>,
    metrics: Metrics,
    coordinator: Arc<Coordinator>,
    peers: Arc<Peers>,
    replicator: Arc<Replicator>,
    anti_entropy: Arc<AntiEntropy>,
    partitions: u32,
    rf: Replication,
) {
    let mut retry = tokio::time::interval(ADMISSION_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Vec<Member>> = None;
    loop {
        tokio::select! {
            changed = members.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = admission.proved() => {}
            _ = retry.tick(), if admission.enabled() => {}
        }
        let list = admission.admit(members.borrow_and_update().clone());
        if last.as_ref() == Some(&list) {
            continue;
        }
        last = Some(list.clone());
        peers.set_addresses(addresses(list.iter()));
        metrics.set_regions(regions(list.iter()));
        let before = coordinator.topology();
        let back: Vec<String> = list
            .iter()
            .filter(|m| m.alive && !before.is_alive(&m.id))
            .map(|m| m.id.clone())
            .collect();
        let topology = Topology::new(list, partitions, rf);
        let moved = topology.ring() != before.ring();
        coordinator.set_topology(topology);
        if moved || !back.is_empty() {
            anti_entropy.wake();
        }
        for peer in back {
            info!(peer = %peer, "peer is alive");
            let replicator = replicator.clone();
            tokio::spawn(async move {
                let delivered = replicator.replay(&peer).await;
                if delivered > 0 {
                    info!(peer = %peer, delivered, "replayed hints");
                }
            });
        }
    }
}

/// Expires old hints and retries the rest for peers that are alive.
async fn tend_hints(coordinator: Arc<Coordinator>, replicator: Arc<Replicator>) {
    let mut ticker = tokio::time::interval(HINT_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        replicator.expire_hints();
        let topology = coordinator.topology();
        for peer in replicator.hinted_peers() {
            if topology.is_alive(&peer) {
                replicator.replay(&peer).await;
            }
        }
    }
}

/// How many replicas hold each key: `--replicas-per-region` when given,
/// the total `--replication-factor` otherwise.
fn replication(config: &Config) -> Replication {
    match config.replicas_per_region {
        Some(k) => Replication::PerRegion(k as usize),
        None => Replication::Total(config.replication_factor as usize),
    }
}

/// How often idle peers' round-trip times are probed, and how long without
/// a measured call makes a peer idle: reads order replicas by these times.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps every peer's smoothed round-trip time current: each
/// [`PROBE_INTERVAL`], probes the peers no call measured meanwhile.
async fn probe_peers(peers: Arc<Peers>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        peers.probe_idle(PROBE_INTERVAL).await;
    }
}

/// On shutdown: hints that cannot reach their own replica now are given to
/// the key's other live replicas, so the write outlives this node;
/// anti-entropy later carries it to the replica that missed it. A hint with
/// no live replica to take it, and whatever could not be delivered in the
/// end, dies with this node: counted in `hints_dropped` and logged with the
/// reason. Returns how many hints were dropped so.
async fn hand_off_hints(
    coordinator: &Coordinator,
    replicator: &Arc<Replicator>,
    me: &str,
) -> usize {
    let topology = coordinator.topology();
    let mut dropped = 0;
    for peer in replicator.hinted_peers() {
        if topology.is_alive(&peer) && replicator.replay(&peer).await > 0 {
            continue;
        }
        let mut stranded = 0;
        for hint in replicator.take_hints(&peer) {
            let mut handed = false;
            for other in topology.replicas(&hint.key) {
                if **other != *peer && **other != *me && topology.is_alive(other) {
                    replicator.push(other, hint.key.clone(), hint.entry.clone(), None);
                    handed = true;
                }
            }
            stranded += usize::from(!handed);
        }
        replicator.hints_abandoned(
            stranded,
            "shutting down with no live replica to hand them to",
        );
        dropped += stranded;
    }
    replicator.flush().await;
    dropped + replicator.drop_hints("shutting down; their replicas could not take them")
}

/// Every `interval`, at most `batch` per tick: removes expired values while
/// this node is alone; with peers, drops only their bytes. An expired value
/// is kept with peers (it reads as absent): removing it before every replica
/// holds it could let a lagging replica's older value win the next
/// anti-entropy session, so acknowledged collection removes it later; its
/// bytes need not wait that long.
async fn collect_expired(
    coordinator: Arc<Coordinator>,
    store: Arc<Store>,
    clock: Arc<Clock>,
    interval: Duration,
    batch: usize,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if coordinator.topology().members().count() > 1 {
            let dropped = store.drop_expired_bytes(clock.now(), batch);
            if dropped > 0 {
                tracing::debug!(dropped, "dropped the bytes of expired values");
            }
            continue;
        }
        let removed = store.collect_expired(clock.now(), batch);
        if removed > 0 {
            tracing::debug!(removed, "collected expired values");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{Entry, Version};

    fn member(id: &str, alive: bool) -> Member {
        Member {
            id: id.into(),
            address: String::new(),
            peer_address: String::new(),
            region: String::new(),
            state: NodeState::Ready,
            alive,
            generation: 1,
        }
    }

    #[tokio::test]
    async fn hints_that_die_at_shutdown_are_counted() {
        // Three nodes, so every key's replicas are n1 (this one), n2 (down)
        // and n3 (alive but unreachable: no address is known).
        let members = vec![member("n1", true), member("n2", false), member("n3", true)];
        let (coordinator, replicator) = crate::coordinator::test_coordinator(members);
        let entry = Entry::value(Version::new(1, 1), "v", 0);
        // Held for n3, whose only other replica (n2) is down: no one can
        // take it. Held for n2: handed to n3, which cannot take it either.
        replicator.hint("n3", "a".into(), entry.clone());
        replicator.hint("n2", "b".into(), entry);
        let dropped = hand_off_hints(&coordinator, &replicator, "n1").await;
        assert_eq!(dropped, 2);
        assert_eq!(replicator.hints_dropped(), 2);
        assert_eq!(replicator.hints_pending(), 0);
    }
}
