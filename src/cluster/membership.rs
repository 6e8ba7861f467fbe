//! Who is in the cluster, from chitchat gossip.
//!
//! Each node gossips three small keys about itself: `address` (its gRPC
//! host:port), `region` and `state`. chitchat's phi-accrual failure detector
//! says which nodes are alive. [`Membership`] turns chitchat's view into a
//! sorted list of [`Member`]s, one per node id, and publishes it on a watch
//! channel whenever it changes, liveness changes included.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion,
};
use thiserror::Error;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::transport::{DeltaSends, SwitchedTransport};
use super::{Member, NodeState};
use crate::switch::Switch;

/// Gossip key: the node's advertised gRPC host:port.
const KEY_ADDRESS: &str = "address";
/// Gossip key: the host:port of the node's peer listener (the peer
/// protocol is not served on the client port).
const KEY_PEER_ADDRESS: &str = "peer_address";
/// Gossip key: the node's region label.
const KEY_REGION: &str = "region";
/// Gossip key: the node's [`NodeState`], as [`NodeState::as_str`] spells it.
const KEY_STATE: &str = "state";
/// Gossip key: unix milliseconds the node was last running before this
/// start, from its data directory (absent: it recovered none). A node back
/// from disk after longer than the dead-node grace reads it from its peers
/// to tell whether they ran long without it (docs/durability.md).
const KEY_PREVIOUS_ALIVE: &str = "previous_alive_ms";

/// How many peers `leave` waits to have sent its "leaving" state to; gossip
/// spreads it from them to the rest.
const LEAVE_FANOUT: usize = 3;

/// Why membership could not start or stop cleanly.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The advertised address does not resolve to a usable socket address.
    #[error("cannot resolve advertised address {address:?}: {reason}")]
    Advertise {
        /// The address as configured (host:port).
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// The UDP gossip socket could not be bound.
    #[error("cannot bind gossip socket on {addr}/UDP: {reason}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        reason: String,
    },
    /// chitchat failed to start.
    #[error("gossip failed to start: {0}")]
    Start(String),
    /// The gossip server stopped with an error.
    #[error("gossip stopped with an error: {0}")]
    Shutdown(String),
}

/// What [`Membership::start`] needs. Every field is explicit: chitchat has
/// no sensible defaults for a fast-failing cluster (see the field docs).
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// This node's id, unique in the cluster and kept across restarts.
    pub node_id: String,
    /// host:port peers and clients use to reach this node over gRPC (TCP);
    /// gossip uses the same host and port over UDP. The host may be a name
    /// ("localhost"); it is resolved once, at start. Port 0 means "the port
    /// the gossip socket was bound to" (useful with `listen` on port 0).
    pub advertise: String,
    /// Address the UDP gossip socket binds (the gRPC port number). Port 0
    /// picks a free port; see [`Membership::gossip_addr`].
    pub listen: SocketAddr,
    /// host:port of this node's peer listener, as other nodes reach it.
    pub peer_advertise: String,
    /// This node's region label; empty when unset.
    pub region: String,
    /// host:port of seed nodes to join through. Names are resolved at start
    /// (a name that does not resolve yet is left to chitchat, which retries
    /// every minute).
    pub seeds: Vec<String>,
    /// How often the node gossips; failure detection scales with it.
    pub gossip_interval: Duration,
    /// Phi threshold of chitchat's failure detector: a peer is dead once it
    /// has been silent for about `phi_threshold` mean heartbeat intervals.
    pub phi_threshold: f64,
    /// How long a dead node stays listed (so placement can keep it and hold
    /// hints for it) before it is forgotten.
    pub dead_node_grace: Duration,
    /// Name of the cluster; nodes only gossip with nodes of the same name.
    pub cluster_id: String,
    /// The state this node announces when it starts.
    pub initial_state: NodeState,
    /// Unix milliseconds this node was last running before this start, as
    /// its data directory recorded it; `None` without one (or a new one).
    pub previous_alive_ms: Option<u64>,
}

/// What a live peer's gossip says about its runs: when its current run
/// started and when its previous one was last alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRun {
    /// The peer's node id.
    pub id: String,
    /// Unix milliseconds its current process started (its generation).
    pub started_ms: u64,
    /// Unix milliseconds it was last running before that, from its data
    /// directory; `None` when it recovered none.
    pub previous_alive_ms: Option<u64>,
}

/// This node's membership in the cluster: gossips its own metadata, tracks
/// every other node's, and tells which are alive. Dropping it stops gossip
/// at once without announcing anything (peers see a crash); call
/// [`Membership::leave`] to leave gracefully.
pub struct Membership {
    self_id: String,
    advertise: String,
    gossip_addr: SocketAddr,
    gossip_interval: Duration,
    handle: Option<ChitchatHandle>,
    chitchat: Arc<Mutex<Chitchat>>,
    view: Arc<View>,
    sends: Arc<DeltaSends>,
    refresher: JoinHandle<()>,
}

impl Membership {
    /// Binds the gossip socket, starts chitchat and joins the cluster
    /// through the seeds. Returns as soon as gossip runs; peers appear in
    /// [`Membership::members`] over the next few gossip rounds. All gossip
    /// passes through `switch`.
    pub async fn start(
        config: MembershipConfig,
        switch: Arc<Switch>,
    ) -> Result<Membership, ClusterError> {
        let advertised = resolve_advertise(&config.advertise, config.listen).await?;
        let transport = SwitchedTransport::new(switch.clone());
        let bound = transport
            .bind(config.listen)
            .await
            .map_err(|error| ClusterError::Bind {
                addr: config.listen,
                reason: format!("{error:#}"),
            })?;
        let mut gossip_addr = advertised;
        let mut advertise = config.advertise.clone();
        if gossip_addr.port() == 0 {
            gossip_addr.set_port(bound.port());
            advertise = with_port(&config.advertise, bound.port());
        }
        let generation = next_generation();
        let chitchat_id = ChitchatId::new(config.node_id.clone(), generation, gossip_addr);
        let seeds = resolve_seeds(&config.seeds, bound, gossip_addr).await;
        let gossip_interval = config.gossip_interval.max(Duration::from_millis(1));
        let chitchat_config = ChitchatConfig {
            chitchat_id: chitchat_id.clone(),
            cluster_id: config.cluster_id.clone(),
            gossip_interval,
            listen_addr: bound,
            seed_nodes: seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                sampling_window_size: 1_000,
                // Intervals longer than this are not sampled (a node back
                // from a long pause must not inflate the mean).
                max_interval: (gossip_interval * 20).max(Duration::from_secs(10)),
                // The prior counts as 5 samples: it must be the gossip
                // interval, or detection takes seconds (default 5 s).
                initial_interval: gossip_interval,
                dead_node_grace_period: config.dead_node_grace,
            },
            // Only our three keys live in chitchat and none is ever deleted.
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let mut initial = vec![
            (KEY_ADDRESS.to_string(), advertise.clone()),
            (KEY_PEER_ADDRESS.to_string(), config.peer_advertise.clone()),
            (KEY_REGION.to_string(), config.region.clone()),
            (
                KEY_STATE.to_string(),
                config.initial_state.as_str().to_string(),
            ),
        ];
        if let Some(ms) = config.previous_alive_ms {
            initial.push((KEY_PREVIOUS_ALIVE.to_string(), ms.to_string()));
        }
        let sends = transport.delta_sends();
        let handle = spawn_chitchat(chitchat_config, initial, &transport)
            .await
            .map_err(|error| ClusterError::Start(format!("{error:#}")))?;
        let chitchat = handle.chitchat();

        let (live_nodes, first) = {
            let guard = chitchat.lock().await;
            let first = compute_members(&guard);
            (guard.live_nodes_watcher(), first)
        };
        let view = Arc::new(View {
            self_chitchat_id: chitchat_id,
            switch,
            learned: StdMutex::new(HashMap::new()),
            tx: watch::channel(Vec::new()).0,
        });
        view.publish(first);
        let refresher = tokio::spawn(refresh_loop(
            chitchat.clone(),
            view.clone(),
            live_nodes,
            gossip_interval,
        ));
        info!(
            node = %config.node_id,
            generation,
            gossip_addr = %gossip_addr,
            advertise = %advertise,
            region = %config.region,
            seeds = ?seeds,
            state = %config.initial_state,
            "gossip started"
        );
        Ok(Membership {
            self_id: config.node_id,
            advertise,
            gossip_addr,
            gossip_interval,
            handle: Some(handle),
            chitchat,
            view,
            sends,
            refresher,
        })
    }

    /// This node's id.
    pub fn self_id(&self) -> &str {
        &self.self_id
    }

    /// The advertised host:port, with the bound port filled in when the
    /// configuration asked for port 0; what peers see as our `address`.
    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    /// The socket address peers gossip to (the advertised address,
    /// resolved); give it to other nodes as a seed.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// This node's generation (its start time in milliseconds).
    pub fn generation(&self) -> u64 {
        self.view.self_chitchat_id.generation_id
    }

    /// Every node known, self included (always alive): live ones and dead
    /// ones not yet past the dead-node grace, one per node id (the newest
    /// live generation, else the newest), sorted by id. Fresh when gossip is
    /// idle, else the list published at most half a gossip interval ago.
    pub fn members(&self) -> Vec<Member> {
        match self.chitchat.try_lock() {
            Ok(guard) => {
                let computed = compute_members(&guard);
                drop(guard);
                let members = computed.members.clone();
                self.view.publish(computed);
                members
            }
            Err(_) => self.view.tx.borrow().clone(),
        }
    }

    /// The live peers (this node excluded), each with what its gossip says
    /// of its runs ([`PeerRun`]); one per node id, the newest generation.
    pub async fn live_peer_runs(&self) -> Vec<PeerRun> {
        let guard = self.chitchat.lock().await;
        let me = &self.view.self_chitchat_id.node_id;
        let mut runs: BTreeMap<String, PeerRun> = BTreeMap::new();
        for id in guard.live_nodes() {
            if id.node_id == *me {
                continue;
            }
            let Some(state) = guard.node_state(id) else {
                continue;
            };
            if state.get(KEY_ADDRESS).is_none() {
                continue;
            }
            let run = PeerRun {
                id: id.node_id.to_string(),
                started_ms: id.generation_id,
                previous_alive_ms: state.get(KEY_PREVIOUS_ALIVE).and_then(|v| v.parse().ok()),
            };
            match runs.get(&run.id) {
                Some(seen) if seen.started_ms >= run.started_ms => {}
                _ => {
                    runs.insert(run.id.clone(), run);
                }
            }
        }
        runs.into_values().collect()
    }

    /// A watch on [`Membership::members`]: it changes when a node joins or
    /// is forgotten, becomes alive or dead, or changes its state, address
    /// or region. It closes when this membership stops.
    pub fn subscribe(&self) -> watch::Receiver<Vec<Member>> {
        self.view.tx.subscribe()
    }

    /// Announces a new state for this node; peers learn it by gossip.
    pub async fn set_state(&self, state: NodeState) {
        self.announcer().announce(state).await;
    }

    /// A handle that announces this node's state, for tasks that do not own
    /// the membership (anti-entropy turns a syncing node ready).
    pub fn announcer(&self) -> StateAnnouncer {
        StateAnnouncer {
            self_id: self.self_id.clone(),
            chitchat: self.chitchat.clone(),
            view: self.view.clone(),
        }
    }

    /// Leaves gracefully: announces the state `leaving`, waits until it has
    /// gone out to the live peers (up to [`LEAVE_FANOUT`] of them; a short
    /// bound of a few gossip rounds caps the wait), then stops gossip. Peers
    /// then see this node as `leaving`, and dead once their failure detector
    /// notices the silence.
    pub async fn leave(mut self) -> Result<(), ClusterError> {
        let (peers, before) = {
            let mut guard = self.chitchat.lock().await;
            guard
                .self_node_state()
                .set(KEY_STATE, NodeState::Leaving.as_str());
            let me = self.view.self_chitchat_id.clone();
            let peers: Vec<SocketAddr> = guard
                .live_nodes()
                .filter(|id| id.node_id != me.node_id)
                .map(|id| id.gossip_advertise_addr)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let before: Vec<u64> = peers.iter().map(|p| self.sends.count(*p)).collect();
            let members = compute_members(&guard);
            drop(guard);
            self.view.publish(members);
            (peers, before)
        };
        let started = Instant::now();
        let bound =
            (self.gossip_interval * 5).clamp(Duration::from_millis(250), Duration::from_secs(5));
        let deadline = started + bound;
        let wanted = peers.len().min(LEAVE_FANOUT);
        let mut ticks = self.sends.subscribe();
        // Two deltas per peer: the first may have been computed before the
        // state changed; the second was computed after it (chitchat handles
        // one message at a time).
        let informed = |sends: &DeltaSends| {
            peers
                .iter()
                .zip(&before)
                .filter(|(p, b)| sends.count(**p) >= **b + 2)
                .count()
        };
        let mut reached = informed(&self.sends);
        while reached < wanted {
            match tokio::time::timeout_at(deadline, ticks.changed()).await {
                Ok(Ok(())) => reached = informed(&self.sends),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        if reached < wanted {
            warn!(node = %self.self_id, reached, wanted, waited = ?started.elapsed(), "leaving before every peer heard of it");
        } else {
            info!(node = %self.self_id, reached, waited = ?started.elapsed(), "peers told that this node leaves");
        }
        self.stop().await
    }

    /// Stops gossip without announcing anything, as a crash would look to
    /// peers, and waits until the socket is released (so the same address
    /// can be bound again at once).
    pub async fn shutdown(mut self) -> Result<(), ClusterError> {
        info!(node = %self.self_id, "gossip stopping without leave");
        self.stop().await
    }

    async fn stop(&mut self) -> Result<(), ClusterError> {
        self.refresher.abort();
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        handle
            .shutdown()
            .await
            .map_err(|error| ClusterError::Shutdown(format!("{error:#}")))?;
        info!(node = %self.self_id, "gossip stopped");
        Ok(())
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.refresher.abort();
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// Announces this node's state on gossip; cheap to clone.
#[derive(Clone)]
pub struct StateAnnouncer {
    self_id: String,
    chitchat: Arc<Mutex<Chitchat>>,
    view: Arc<View>,
}

impl StateAnnouncer {
    /// Announces `state` for this node; peers learn it by gossip.
    pub async fn announce(&self, state: NodeState) {
        let members = {
            let mut guard = self.chitchat.lock().await;
            guard.self_node_state().set(KEY_STATE, state.as_str());
            compute_members(&guard)
        };
        info!(node = %self.self_id, state = %state, "state announced");
        self.view.publish(members);
    }
}

/// The published member list and what it takes to publish it.
struct View {
    self_chitchat_id: ChitchatId,
    switch: Arc<Switch>,
    /// Gossip addresses already taught to the switch (its `learn_address`
    /// takes a write lock, so only changes are passed on).
    learned: StdMutex<HashMap<SocketAddr, String>>,
    tx: watch::Sender<Vec<Member>>,
}

impl View {
    /// Teaches the switch the peers' gossip addresses and publishes the
    /// list if it changed, logging what changed.
    fn publish(&self, computed: Computed) {
        let Computed { members, addresses } = computed;
        {
            let mut learned = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, addr) in addresses {
                if *id == *self.self_chitchat_id.node_id {
                    continue;
                }
                if learned.get(&addr) != Some(&id) {
                    self.switch.learn_address(&id, addr);
                    learned.insert(addr, id);
                }
            }
        }
        self.tx.send_if_modified(|current| {
            if *current == members {
                return false;
            }
            log_changes(&self.self_chitchat_id.node_id, current, &members);
            *current = members.clone();
            true
        });
    }
}

/// A member list and the gossip addresses seen while computing it.
#[derive(Clone)]
struct Computed {
    members: Vec<Member>,
    addresses: Vec<(String, SocketAddr)>,
}

/// Recomputes the member list every half gossip interval (liveness changes
/// by failure detection, which chitchat's watcher does not report) and at
/// once when chitchat's live-node watcher fires (joins, leaves, key
/// changes). Aborted when the [`Membership`] stops.
async fn refresh_loop(
    chitchat: Arc<Mutex<Chitchat>>,
    view: Arc<View>,
    mut live_nodes: watch::Receiver<BTreeMap<ChitchatId, chitchat::NodeState>>,
    gossip_interval: Duration,
) {
    let mut tick = tokio::time::interval((gossip_interval / 2).max(Duration::from_millis(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watching = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = live_nodes.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                }
            }
        }
        let computed = {
            let guard = chitchat.lock().await;
            compute_members(&guard)
        };
        view.publish(computed);
    }
}

/// One node as one chitchat generation shows it, before deduplication.
#[derive(Clone, Debug)]
struct Candidate {
    member: Member,
    is_self: bool,
}

/// The member list as chitchat shows it now.
fn compute_members(chitchat: &Chitchat) -> Computed {
    let me = chitchat.self_chitchat_id();
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    // Gossip address -> (generation, node id), the newest generation winning
    // when a node restarted under another id at the same address.
    let mut by_addr: HashMap<SocketAddr, (u64, &str)> = HashMap::new();
    let mut candidates = Vec::new();
    for (id, state) in chitchat.node_states() {
        let seen = by_addr
            .entry(id.gossip_advertise_addr)
            .or_insert((id.generation_id, &id.node_id));
        if id.generation_id >= seen.0 {
            *seen = (id.generation_id, &id.node_id);
        }
        // A node known only from a digest has no keys yet: not a member
        // until its state arrives.
        let Some(address) = state.get(KEY_ADDRESS) else {
            continue;
        };
        let is_self = id == me;
        let announced = state.get(KEY_STATE);
        let node_state = announced.and_then(NodeState::parse).unwrap_or_else(|| {
            debug!(node = %id.node_id, state = ?announced, "unknown node state; taken as joining");
            NodeState::Joining
        });
        candidates.push(Candidate {
            member: Member {
                id: id.node_id.to_string(),
                address: address.to_string(),
                peer_address: state.get(KEY_PEER_ADDRESS).unwrap_or_default().to_string(),
                region: state.get(KEY_REGION).unwrap_or_default().to_string(),
                state: node_state,
                alive: is_self || live.contains(id),
                generation: id.generation_id,
            },
            is_self,
        });
    }
    Computed {
        members: dedupe(candidates),
        addresses: by_addr
            .into_iter()
            .map(|(addr, (_, id))| (id.to_string(), addr))
            .collect(),
    }
}

/// One member per node id, sorted by id: this node's own generation over
/// any other, then a live generation over a dead one, then the newest.
fn dedupe(candidates: Vec<Candidate>) -> Vec<Member> {
    let mut best: BTreeMap<String, Candidate> = BTreeMap::new();
    for candidate in candidates {
        let rank = |c: &Candidate| (c.is_self, c.member.alive, c.member.generation);
        match best.get(&candidate.member.id) {
            Some(current) if rank(current) >= rank(&candidate) => {}
            _ => {
                best.insert(candidate.member.id.clone(), candidate);
            }
        }
    }
    best.into_values().map(|c| c.member).collect()
}

fn log_changes(me: &str, old: &[Member], new: &[Member]) {
    let old: HashMap<&str, &Member> = old.iter().map(|m| (m.id.as_str(), m)).collect();
    let new_ids: HashSet<&str> = new.iter().map(|m| m.id.as_str()).collect();
    for m in new {
        match old.get(m.id.as_str()) {
            None => {
                info!(node = %me, member = %m.id, address = %m.address, peer_address = %m.peer_address, region = %m.region, state = %m.state, alive = m.alive, generation = m.generation, "member joined")
            }
            Some(o) if o.alive != m.alive || o.generation != m.generation => {
                info!(node = %me, member = %m.id, alive = m.alive, state = %m.state, generation = m.generation, "member liveness changed")
            }
            Some(o) if *o != m => {
                info!(node = %me, member = %m.id, address = %m.address, peer_address = %m.peer_address, region = %m.region, state = %m.state, "member changed")
            }
            Some(_) => {}
        }
    }
    for id in old.keys().filter(|id| !new_ids.contains(*id)) {
        info!(node = %me, member = %id, "member forgotten");
    }
}

/// A generation for a node starting now: the wall-clock time in
/// milliseconds, strictly increasing within this process (two starts in
/// the same millisecond still differ).
fn next_generation() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last.saturating_add(1));
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// Resolves host:port, preferring an address of the same family as the
/// socket it will be used with (a v4 socket cannot reach "localhost" as
/// `::1`).
async fn resolve_preferring(
    host_port: &str,
    family_of: SocketAddr,
) -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port).await?.collect();
    addrs.sort_by_key(|a| a.is_ipv4() != family_of.is_ipv4());
    addrs.dedup();
    Ok(addrs)
}

async fn resolve_advertise(
    advertise: &str,
    listen: SocketAddr,
) -> Result<SocketAddr, ClusterError> {
    let addrs =
        resolve_preferring(advertise, listen)
            .await
            .map_err(|e| ClusterError::Advertise {
                address: advertise.to_string(),
                reason: e.to_string(),
            })?;
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| ClusterError::Advertise {
            address: advertise.to_string(),
            reason: "resolves to no address".to_string(),
        })
}

/// Seeds as socket addresses chitchat can reach from `bound`, without this
/// node itself. A name that does not resolve is passed on as is: chitchat
/// resolves names again every minute.
async fn resolve_seeds(seeds: &[String], bound: SocketAddr, me: SocketAddr) -> Vec<String> {
    let mut out = Vec::new();
    for seed in seeds {
        match resolve_preferring(seed, bound).await {
            Ok(addrs) => {
                let usable: Vec<SocketAddr> = addrs
                    .into_iter()
                    .filter(|a| a.is_ipv4() == bound.is_ipv4())
                    .filter(|a| *a != me)
                    .collect();
                if usable.is_empty() {
                    debug!(seed = %seed, "seed resolves to no reachable address besides this node");
                }
                out.extend(usable.iter().map(SocketAddr::to_string));
            }
            Err(error) => {
                warn!(seed = %seed, error = %error, "seed does not resolve yet; chitchat will retry");
                out.push(seed.clone());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `host:port` with the port replaced.
fn with_port(host_port: &str, port: u16) -> String {
    match host_port.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{port}"),
        None => format!("{host_port}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str, generation: u64, alive: bool, is_self: bool) -> Candidate {
        Candidate {
            member: Member {
                id: id.to_string(),
                address: format!("{id}:1"),
                peer_address: format!("{id}:2"),
                region: String::new(),
                state: NodeState::Ready,
                alive,
                generation,
            },
            is_self,
        }
    }

    #[test]
    fn dedupe_prefers_self_then_live_then_newest() {
        let members = dedupe(vec![
            candidate("b", 2, false, false),
            candidate("b", 3, false, false),
            candidate("a", 5, true, true),
            candidate("a", 9, true, false),
            candidate("c", 7, false, false),
            candidate("c", 4, true, false),
            candidate("d", 1, true, false),
            candidate("d", 2, true, false),
        ]);
        let got: Vec<(&str, u64, bool)> = members
            .iter()
            .map(|m| (m.id.as_str(), m.generation, m.alive))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", 5, true),
                ("b", 3, false),
                ("c", 4, true),
                ("d", 2, true)
            ]
        );
    }

    #[test]
    fn generations_increase_strictly() {
        let a = next_generation();
        let b = next_generation();
        assert!(b > a);
        assert!(a > 1_600_000_000_000);
    }

    #[test]
    fn with_port_replaces_the_port() {
        assert_eq!(with_port("localhost:0", 7), "localhost:7");
        assert_eq!(with_port("[::1]:0", 7), "[::1]:7");
    }
}
