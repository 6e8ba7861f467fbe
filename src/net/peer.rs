//! The client side of the peer protocol: one lazily connected gRPC channel
//! per peer, every call judged by the fault switch first.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use thiserror::Error;
use tonic::transport::{Channel, Endpoint};

use super::latency::Latencies;
use super::sync_wire::{reply_from_wire, request_to_wire};
use super::wire::{from_wire, to_wire};
use crate::clock::Clock;
use crate::crdt::Entry;
use crate::metrics::Metrics;
use crate::proto::cluster::{self as wire, peer_client::PeerClient};
use crate::security::PeerTls;
use crate::store::Key;
use crate::switch::{Switch, Verdict};
use crate::sync_message::{Reply, Request};

/// The peer protocol's number, sent in every request. A receiver refuses a
/// number it does not speak rather than misread the message. 2: entries
/// carry maps and counters, version lists carry stamps (a node of
/// protocol 1 would read a map as an empty string). 3: entries carry
/// expired strings whose bytes were dropped (a node of protocol 2 would
/// read one as an empty string). 4: `Read` reads keys only; the clock
/// query and the "which partitions do you hold" query are RPCs of their own
/// (`Clock`, `Holding`), where protocol 3 asked them through `Read`; a
/// delta batch may ask its receiver to relay it to its region's other
/// replicas (`ApplyRequest.relay`), and await some of them, naming those
/// that took it in its answer (`ApplyRequest.await_mates`,
/// `ApplyResponse.took`: optional fields; a receiver that ignores them
/// names none, and the sender sends to each itself); and the protocol is served on its own
/// listener (the peer address is gossiped), with mutual TLS when
/// configured, and the sender's id must match its certificate.
pub const PROTOCOL: u32 = 4;

/// Why a call to a peer failed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PeerError {
    /// The fault switch cut the link.
    #[error("unreachable (link cut by fault injection)")]
    Cut,
    /// No address is known for the peer.
    #[error("unreachable (no known address)")]
    NoAddress,
    /// The call did not complete within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The transport failed or the peer refused the call.
    #[error("failed: {0}")]
    Failed(String),
}

/// The response metadata in which a peer answers with its physical clock
/// (NTP64, decimal), so that the caller can measure the two clocks'
/// offset over the round trip (see [`Clock::check_offset`]).
pub const CLOCK_METADATA: &str = "kv-physical-clock";

/// Calls to other nodes.
pub struct Peers {
    me: String,
    clock: Arc<Clock>,
    switch: Arc<Switch>,
    timeout: Duration,
    max_message_bytes: usize,
    addresses: RwLock<HashMap<String, String>>,
    /// By (node id, address): with TLS a channel verifies the node's id.
    channels: RwLock<HashMap<(String, String), Channel>>,
    latencies: Latencies,
    /// When each peer's latency was last measured (by any call): an idle
    /// peer is probed so that its estimate stays current.
    measured: RwLock<HashMap<String, Instant>>,
    /// Bytes of delta batches delivered, per peer.
    applied: RwLock<HashMap<String, u64>>,
    tls: Option<Arc<PeerTls>>,
    metrics: Metrics,
}

impl Peers {
    /// Calls from node `me`, judged by `switch`, each bounded by `timeout`
    /// and by `max_message_bytes` either way (the peer message limit,
    /// [`crate::config::Config::max_peer_message_bytes`]); every answer's
    /// clock is measured against `clock`. With `tls`, every connection is
    /// mutual TLS and accepts only a peer that proves the node id it is
    /// called for.
    pub fn new(
        me: String,
        clock: Arc<Clock>,
        switch: Arc<Switch>,
        timeout: Duration,
        max_message_bytes: usize,
        tls: Option<Arc<PeerTls>>,
    ) -> Self {
        Self {
            me,
            clock,
            switch,
            timeout,
            max_message_bytes,
            addresses: RwLock::new(HashMap::new()),
            channels: RwLock::new(HashMap::new()),
            latencies: Latencies::new(),
            measured: RwLock::new(HashMap::new()),
            applied: RwLock::new(HashMap::new()),
            tls,
            metrics: Metrics::off(),
        }
    }

    /// Counts every call in `metrics` (by peer, region and RPC: calls,
    /// errors, latency).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Measures, with one light call each (`Peer.Clock`), the peers
    /// whose latency no call measured within `idle`, so that reads keep
    /// ordering replicas by a current round-trip time while traffic to a
    /// peer is rare. Returns how many peers were probed.
    pub async fn probe_idle(&self, idle: Duration) -> usize {
        let now = Instant::now();
        let stale: Vec<String> = {
            let addresses = self
                .addresses
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let measured = self.measured.read().unwrap_or_else(PoisonError::into_inner);
            addresses
                .keys()
                .filter(|id| **id != self.me)
                .filter(|id| {
                    measured
                        .get(*id)
                        .is_none_or(|at| now.duration_since(*at) >= idle)
                })
                .cloned()
                .collect()
        };
        let probes = stale.iter().map(|peer| async move {
            if let Err(error) = self.clock(peer).await {
                tracing::debug!(peer = %peer, %error, "latency probe failed");
            }
        });
        futures_util::future::join_all(probes).await;
        stale.len()
    }

    /// Records that a call to `peer` took `took`.
    fn measure(&self, peer: &str, took: Duration) {
        self.latencies.record(peer, took);
        self.measured
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer.to_string(), Instant::now());
    }

    /// Forgets every connection, so that the next call to each peer
    /// connects anew (with certificates just reloaded).
    pub fn reset_connections(&self) {
        self.channels
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Calls node `peer` at `address` once (a clock query), on a
    /// connection of its own: with TLS, succeeds only if the peer proved it
    /// is `peer` and accepted this node's certificate. Membership admits a
    /// member learned by gossip on this proof. Returns the region the peer
    /// answered with.
    pub async fn probe(&self, peer: &str, address: &str) -> Result<String, PeerError> {
        match self.switch.verdict(peer) {
            Verdict::Pass => {}
            Verdict::Drop => return Err(PeerError::Cut),
            Verdict::Delay(d) => tokio::time::sleep(d).await,
        }
        let request = wire::ClockRequest {
            header: Some(self.header()),
        };
        let mut client = PeerClient::new(self.connect(peer, address)?);
        // Not through `call`: a member not proven yet counts in no metric
        // (forged gossip must not grow the label sets) and no clock.
        let mut answer = tokio::time::timeout(self.timeout, client.clock(request))
            .await
            .map_err(|_| PeerError::Timeout(self.timeout))?;
        self.receive(peer, &mut answer).await;
        let reply =
            answer.map_err(|s| PeerError::Failed(format!("{:?}: {}", s.code(), s.message())))?;
        Ok(reply.into_inner().region)
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a read at ONE should wait on its newest request, to
    /// `peer`, before it asks again ([`Latencies::read_hedge_after`]).
    pub fn read_hedge_after(&self, peer: &str) -> Duration {
        self.latencies.read_hedge_after(peer)
    }

    /// The smoothed round-trip time to `peer`, once a call measured it:
    /// reads ask the nearest replica first.
    pub fn rtt(&self, peer: &str) -> Option<Duration> {
        self.latencies.rtt(peer)
    }

    /// How long a ONE write waits on `peers` ([`Latencies::longest_hedge`]).
    pub fn longest_hedge<'a>(&self, peers: impl IntoIterator<Item = &'a str>) -> Duration {
        self.latencies.longest_hedge(peers)
    }

    /// Replaces the known peer addresses (node id -> host:port).
    pub fn set_addresses(&self, addresses: HashMap<String, String>) {
        *self
            .addresses
            .write()
            .unwrap_or_else(PoisonError::into_inner) = addresses;
    }

    /// Merges `entries` into `peer`'s store; returns how many changed it.
    pub async fn apply(&self, peer: &str, entries: &[(Key, Entry)]) -> Result<u32, PeerError> {
        self.apply_as(peer, entries, false).await
    }

    /// [`Peers::apply`], and with `relay` the peer also hands each entry on
    /// to the key's other replicas in its region (one copy of a write
    /// crosses to each region). The encoded bytes of each batch delivered
    /// are counted per peer ([`Peers::bytes_applied`]).
    pub async fn apply_as(
        &self,
        peer: &str,
        entries: &[(Key, Entry)],
        relay: bool,
    ) -> Result<u32, PeerError> {
        let request = wire::ApplyRequest {
            header: Some(self.header()),
            entries: entries.iter().map(|(k, e)| to_wire(k, e)).collect(),
            relay,
            await_mates: Vec::new(),
            await_ms: 0,
        };
        Ok(self.send_apply(peer, request, self.timeout).await?.changed)
    }

    /// Sends `entries` to `peer`, a replica of another region, which hands
    /// them on to its region's replicas of their keys and waits up to
    /// `within` for `mates` among them to acknowledge; the whole call is
    /// bounded by `bound`. Returns the replicas that took every entry, as
    /// the peer names them (itself first); a peer that does not await
    /// mates names none. The encoded bytes count as [`Peers::apply_as`]'s.
    pub async fn apply_awaiting(
        &self,
        peer: &str,
        entries: &[(Key, Entry)],
        mates: &[String],
        within: Duration,
        bound: Duration,
    ) -> Result<Vec<String>, PeerError> {
        let request = wire::ApplyRequest {
            header: Some(self.header()),
            entries: entries.iter().map(|(k, e)| to_wire(k, e)).collect(),
            relay: true,
            await_mates: mates.to_vec(),
            await_ms: u32::try_from(within.as_millis()).unwrap_or(u32::MAX),
        };
        Ok(self.send_apply(peer, request, bound).await?.took)
    }

    /// Sends one `Apply` to `peer` within `bound` and counts its encoded
    /// bytes once delivered.
    async fn send_apply(
        &self,
        peer: &str,
        request: wire::ApplyRequest,
        bound: Duration,
    ) -> Result<wire::ApplyResponse, PeerError> {
        let bytes = prost::Message::encoded_len(&request) as u64;
        let started = Instant::now();
        let mut client = self.client(peer, "apply").await?;
        let reply = self
            .call_within(peer, "apply", Some(started), bound, client.apply(request))
            .await?;
        *self
            .applied
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(peer.to_string())
            .or_default() += bytes;
        Ok(reply)
    }

    /// Bytes of delta batches delivered to each peer since start (encoded
    /// requests): what replication costs per link.
    pub fn bytes_applied(&self) -> HashMap<String, u64> {
        self.applied
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads `keys` from `peer`: the entries it holds.
    pub async fn read(&self, peer: &str, keys: &[&str]) -> Result<Vec<(Key, Entry)>, PeerError> {
        let request = wire::ReadRequest {
            header: Some(self.header()),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        };
        let started = Instant::now();
        let mut client = self.client(peer, "read").await?;
        let reply = self
            .call(peer, "read", Some(started), client.read(request))
            .await?;
        reply
            .entries
            .into_iter()
            .map(|e| from_wire(e).map_err(|err| PeerError::Failed(err.to_string())))
            .collect()
    }

    /// `peer`'s clock now (NTP64 time), to seed this node's clock after a
    /// restart.
    pub async fn clock(&self, peer: &str) -> Result<u64, PeerError> {
        let request = wire::ClockRequest {
            header: Some(self.header()),
        };
        let started = Instant::now();
        let mut client = self.client(peer, "clock").await?;
        Ok(self
            .call(peer, "clock", Some(started), client.clock(request))
            .await?
            .clock)
    }

    /// Which of `partitions` `peer` holds entries of.
    pub async fn holding(&self, peer: &str, partitions: &[u32]) -> Result<Vec<u32>, PeerError> {
        let request = wire::HoldingRequest {
            header: Some(self.header()),
            partitions: partitions.to_vec(),
        };
        let started = Instant::now();
        let mut client = self.client(peer, "holding").await?;
        Ok(self
            .call(peer, "holding", Some(started), client.holding(request))
            .await?
            .held)
    }

    /// Sends one anti-entropy step to `peer` and returns its reply.
    pub async fn sync(&self, peer: &str, request: &Request) -> Result<Reply, PeerError> {
        let request = request_to_wire(self.header(), request);
        let mut client = self.client(peer, "sync").await?;
        let reply = self.call(peer, "sync", None, client.sync(request)).await?;
        reply_from_wire(reply).map_err(|e| PeerError::Failed(e.to_string()))
    }

    fn header(&self) -> wire::Header {
        wire::Header {
            protocol: PROTOCOL,
            from: self.me.clone(),
        }
    }

    /// The switch's verdict on an answer from `peer`: a degraded link
    /// delays (or drops) the answer as it does the request, so that a link
    /// degraded at one end costs its delay in each direction.
    async fn receive<T>(&self, peer: &str, answer: &mut Result<tonic::Response<T>, tonic::Status>) {
        match self.switch.verdict(peer) {
            Verdict::Pass => {}
            Verdict::Drop => {
                *answer = Err(tonic::Status::unavailable(
                    "answer dropped by fault injection (the request was handled)",
                ))
            }
            Verdict::Delay(d) => tokio::time::sleep(d).await,
        }
    }

    /// A client for `peer`, after the switch's verdict on the message; a
    /// call `rpc` that cannot leave is counted failed.
    async fn client(
        &self,
        peer: &str,
        rpc: &'static str,
    ) -> Result<PeerClient<Channel>, PeerError> {
        match self.switch.verdict(peer) {
            Verdict::Pass => {}
            Verdict::Drop => {
                self.metrics.peer_call(peer, rpc, None, true);
                return Err(PeerError::Cut);
            }
            Verdict::Delay(d) => tokio::time::sleep(d).await,
        }
        let channel = self.channel(peer).inspect_err(|_| {
            self.metrics.peer_call(peer, rpc, None, true);
        })?;
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    /// Runs `call` to `peer` within the timeout, and measures the peer's
    /// clock from its answer. For a call that measures the peer's latency
    /// (`started` given, before the switch's verdict so that an injected
    /// delay counts; small requests only: not an anti-entropy step, whose
    /// time is spent on the work it carries), records how long it took,
    /// timeouts included; a refused call says nothing of the latency.
    async fn call<T>(
        &self,
        peer: &str,
        rpc: &'static str,
        started: Option<Instant>,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, PeerError> {
        self.call_within(peer, rpc, started, self.timeout, call)
            .await
    }

    /// [`Peers::call`] bounded by `bound` rather than the request timeout.
    async fn call_within<T>(
        &self,
        peer: &str,
        rpc: &'static str,
        started: Option<Instant>,
        bound: Duration,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, PeerError> {
        let start = self.clock.round_trip();
        let sent = Instant::now();
        let mut result = tokio::time::timeout(bound, call).await;
        if let Ok(answer) = &mut result {
            self.receive(peer, answer).await;
        }
        self.metrics.peer_call(
            peer,
            rpc,
            Some(sent.elapsed()),
            !matches!(result, Ok(Ok(_))),
        );
        match result {
            Ok(Ok(reply)) => {
                if let Some(started) = started {
                    self.measure(peer, started.elapsed());
                }
                let remote = reply
                    .metadata()
                    .get(CLOCK_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if let Some(remote) = remote {
                    self.clock.record_round_trip(peer, start, remote);
                }
                Ok(reply.into_inner())
            }
            Ok(Err(status)) => Err(PeerError::Failed(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ))),
            Err(_) => {
                if let Some(started) = started {
                    self.measure(peer, started.elapsed());
                }
                Err(PeerError::Timeout(bound))
            }
        }
    }

    fn channel(&self, peer: &str) -> Result<Channel, PeerError> {
        let address = self
            .addresses
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(peer)
            .cloned()
            .ok_or(PeerError::NoAddress)?;
        let key = (peer.to_string(), address);
        if let Some(c) = self
            .channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(c.clone());
        }
        let channel = self.connect(peer, &key.1)?;
        self.channels
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, channel.clone());
        Ok(channel)
    }

    /// A new lazily connected channel to node `peer` at `address`.
    fn connect(&self, peer: &str, address: &str) -> Result<Channel, PeerError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        // Keepalive, because after a partition heals an idle HTTP/2
        // connection can stay stalled until it is probed; no-delay, because
        // small batches would otherwise wait for delayed ACKs.
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| PeerError::Failed(format!("bad address {address:?}: {e}")))?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.client_for(peer))
                .map_err(|e| PeerError::Failed(format!("TLS to {peer}: {e}")))?;
        }
        Ok(endpoint.connect_lazy())
    }
}
