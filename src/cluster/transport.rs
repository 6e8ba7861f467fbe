//! Gossip over UDP, through the fault [`Switch`].
//!
//! chitchat moves its envelopes through a [`Transport`]; this one wraps
//! chitchat's own [`UdpTransport`] and asks the switch for a verdict on every
//! datagram, by the peer's gossip address, in both directions: a cut peer is
//! neither heard nor answered, a degraded one loses and delays datagrams.
//!
//! Delayed datagrams are held inside the socket and released by whichever
//! call comes next (chitchat keeps a `recv` pending all the time), so a delay
//! never blocks the gossip loop and no task or lock is needed.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::{ChitchatEnvelope, ChitchatMessage};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::async_trait;
use tracing::{debug, trace, warn};

use crate::switch::{Switch, Verdict};

/// The most datagrams held back for delay in each direction; beyond it new
/// delayed datagrams are dropped, as a congested link would.
const MAX_HELD: usize = 4096;

/// Counts, per peer gossip address, the datagrams handed to the network
/// that carry state to that peer (SYN-ACK and ACK carry deltas; SYN carries
/// only a digest). `Membership::leave` watches it to know when its
/// "leaving" state has had a chance to reach its peers.
pub(crate) struct DeltaSends {
    per_peer: Mutex<HashMap<SocketAddr, u64>>,
    ticks: watch::Sender<u64>,
}

impl DeltaSends {
    fn new() -> Self {
        Self {
            per_peer: Mutex::new(HashMap::new()),
            ticks: watch::channel(0).0,
        }
    }

    fn record(&self, to: SocketAddr) {
        *self
            .per_peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(to)
            .or_default() += 1;
        self.ticks.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// How many delta-carrying datagrams went to `peer` so far.
    pub(crate) fn count(&self, peer: SocketAddr) -> u64 {
        self.per_peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .copied()
            .unwrap_or(0)
    }

    /// A receiver that changes whenever such a datagram goes out.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.ticks.subscribe()
    }
}

/// A chitchat [`Transport`] over UDP whose every datagram, sent or received,
/// passes through the node's fault [`Switch`]. Why: gossip must obey the
/// same partitions and degradations as peer RPCs, or a "cut" node would
/// still look alive.
pub struct SwitchedTransport {
    switch: Arc<Switch>,
    sends: Arc<DeltaSends>,
    prebound: Mutex<Option<UdpSocket>>,
}

impl SwitchedTransport {
    /// A transport judged by `switch`.
    pub fn new(switch: Arc<Switch>) -> Self {
        Self {
            switch,
            sends: Arc::new(DeltaSends::new()),
            prebound: Mutex::new(None),
        }
    }

    /// Binds the UDP socket now and returns its local address, so that a
    /// caller asking for port 0 learns the port before chitchat starts (its
    /// identity must carry the advertised address). The next
    /// [`Transport::open`] hands out this socket instead of binding again.
    pub async fn bind(&self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        let socket = UdpSocket::open(addr).await?;
        let local = socket.local_addr()?;
        *self.prebound.lock().unwrap_or_else(PoisonError::into_inner) = Some(socket);
        Ok(local)
    }

    pub(crate) fn delta_sends(&self) -> Arc<DeltaSends> {
        self.sends.clone()
    }
}

#[async_trait]
impl Transport for SwitchedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let prebound = self
            .prebound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let inner = match prebound {
            Some(socket) => socket,
            None => UdpSocket::open(listen_addr).await?,
        };
        Ok(Box::new(SwitchedSocket {
            inner,
            switch: self.switch.clone(),
            sends: self.sends.clone(),
            outgoing: BinaryHeap::new(),
            incoming: BinaryHeap::new(),
            seq: 0,
        }))
    }
}

/// One datagram held back until `at`; ordered by release time, then by
/// arrival, so equal delays keep their order.
struct Held<T> {
    at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<T> Eq for Held<T> {}

impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Held<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

type HeldQueue<T> = BinaryHeap<Reverse<Held<T>>>;

struct SwitchedSocket {
    inner: UdpSocket,
    switch: Arc<Switch>,
    sends: Arc<DeltaSends>,
    /// Datagrams to send later: (destination, envelope).
    outgoing: HeldQueue<(SocketAddr, ChitchatEnvelope)>,
    /// Datagrams received, to hand to chitchat later.
    incoming: HeldQueue<RecvOutcome>,
    seq: u64,
}

fn carries_delta(envelope: &ChitchatEnvelope) -> bool {
    matches!(
        envelope.message,
        ChitchatMessage::SynAck { .. } | ChitchatMessage::Ack { .. }
    )
}

fn is_due<T>(queue: &HeldQueue<T>, now: Instant) -> bool {
    queue.peek().is_some_and(|Reverse(h)| h.at <= now)
}

impl SwitchedSocket {
    fn hold<T>(queue: &mut HeldQueue<T>, seq: &mut u64, delay: Duration, item: T) -> bool {
        if queue.len() >= MAX_HELD {
            return false;
        }
        *seq += 1;
        queue.push(Reverse(Held {
            at: Instant::now() + delay,
            seq: *seq,
            item,
        }));
        true
    }

    async fn send_now(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let delta = carries_delta(&envelope);
        let outcome = self.inner.send(to, envelope).await?;
        if delta {
            self.sends.record(to);
        }
        Ok(outcome)
    }

    /// Sends the delayed datagrams whose time has come. A datagram being
    /// sent when the call is cancelled is lost, as UDP may lose it anyway.
    async fn flush_due(&mut self) {
        while is_due(&self.outgoing, Instant::now()) {
            let Some(Reverse(held)) = self.outgoing.pop() else {
                break;
            };
            let (to, envelope) = held.item;
            if let Err(error) = self.send_now(to, envelope).await {
                warn!(peer = %to, error = %error, "delayed gossip datagram not sent");
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let out = self.outgoing.peek().map(|Reverse(h)| h.at);
        let inc = self.incoming.peek().map(|Reverse(h)| h.at);
        match (out, inc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[async_trait]
impl Socket for SwitchedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        self.flush_due().await;
        match self.switch.verdict_for_addr(to) {
            Verdict::Pass => self.send_now(to, envelope).await,
            Verdict::Drop => {
                trace!(peer = %to, "gossip datagram dropped by the switch (send)");
                Ok(SendOutcome { num_bytes_sent: 0 })
            }
            Verdict::Delay(delay) => {
                if !Self::hold(&mut self.outgoing, &mut self.seq, delay, (to, envelope)) {
                    debug!(peer = %to, held = MAX_HELD, "delay queue full; gossip datagram dropped (send)");
                }
                Ok(SendOutcome { num_bytes_sent: 0 })
            }
        }
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            self.flush_due().await;
            if is_due(&self.incoming, Instant::now()) {
                if let Some(Reverse(held)) = self.incoming.pop() {
                    return Ok(held.item);
                }
            }
            let deadline = self.next_deadline();
            let wake = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                received = self.inner.recv() => {
                    let outcome = received?;
                    let from = outcome.from_addr;
                    match self.switch.verdict_for_addr(from) {
                        Verdict::Pass => return Ok(outcome),
                        Verdict::Drop => {
                            trace!(peer = %from, "gossip datagram dropped by the switch (recv)");
                        }
                        Verdict::Delay(delay) => {
                            if !Self::hold(&mut self.incoming, &mut self.seq, delay, outcome) {
                                debug!(peer = %from, held = MAX_HELD, "delay queue full; gossip datagram dropped (recv)");
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake), if deadline.is_some() => {}
            }
        }
    }
}
