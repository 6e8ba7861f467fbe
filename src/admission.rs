//! Which members gossip may place. Gossip datagrams are not authenticated
//! (see docs/security.md), so with mutual TLS between nodes a member learned
//! from gossip enters placement only once this node has called it at the
//! peer address gossip gave and the peer proved, with a certificate from
//! the cluster's CA, that it is the node id gossip named. A forged member
//! is never placed, and a forged address for a known node id is never
//! used: traffic stays on the address last proven until the new one is.
//! A member's region, which placement depends on, is taken from the peer's
//! authenticated answer, not from gossip; a new generation in gossip is
//! proven again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tracing::{debug, info};

use crate::cluster::Member;
use crate::net::Peers;

/// What a member proved over mutual TLS.
#[derive(Clone, Debug)]
struct Proof {
    /// The peer address it answered at.
    address: String,
    /// The generation gossip showed when it was probed.
    generation: u64,
    /// The region it answered with.
    region: String,
}

/// A probe: node id, peer address, generation.
type Probe = (String, String, u64);

/// Admits members to placement by a handshake (see the module docs).
pub struct Admission {
    me: String,
    peers: Arc<Peers>,
    enabled: bool,
    /// Node id -> what its last proof established.
    proven: Mutex<HashMap<String, Proof>>,
    /// (node id, address, generation) being probed now.
    probing: Mutex<HashSet<Probe>>,
    proved: Notify,
}

impl Admission {
    /// Admission for node `me`, probing through `peers`. Without
    /// `enabled` (no peer TLS) every member is admitted as gossip shows it.
    pub fn new(me: String, peers: Arc<Peers>, enabled: bool) -> Arc<Self> {
        Arc::new(Self {
            me,
            peers,
            enabled,
            proven: Mutex::new(HashMap::new()),
            probing: Mutex::new(HashSet::new()),
            proved: Notify::new(),
        })
    }

    /// The members that may be placed: this node, and every other whose
    /// identity was proven, at the address and with the region it was
    /// proven with. Starts a probe of each member (or new address or
    /// generation) not proven yet; [`Admission::proved`] wakes when one
    /// succeeds.
    pub fn admit(self: &Arc<Self>, members: Vec<Member>) -> Vec<Member> {
        if !self.enabled {
            return members;
        }
        let proven = self
            .proven
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut admitted = Vec::with_capacity(members.len());
        for mut member in members {
            if member.id == self.me {
                admitted.push(member);
                continue;
            }
            let known = proven.get(&member.id);
            let current = known.is_some_and(|p| {
                p.address == member.peer_address && p.generation == member.generation
            });
            if !current && !member.peer_address.is_empty() {
                self.probe((
                    member.id.clone(),
                    member.peer_address.clone(),
                    member.generation,
                ));
            }
            if let Some(proof) = known {
                member.peer_address = proof.address.clone();
                member.region = proof.region.clone();
                admitted.push(member);
            }
        }
        admitted
    }

    /// Whether members must prove their identity (peer TLS is on).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Resolves when a member proved its identity since the last call.
    pub async fn proved(&self) {
        self.proved.notified().await
    }

    fn probe(self: &Arc<Self>, key: Probe) {
        if !self
            .probing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone())
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let (id, address, generation) = &key;
            match this.peers.probe(id, address).await {
                Ok(region) => {
                    info!(member = %id, peer_address = %address, generation, region = %region, "member proved its identity; admitted to placement");
                    let proof = Proof {
                        address: address.clone(),
                        generation: *generation,
                        region,
                    };
                    this.proven
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id.clone(), proof);
                    this.proved.notify_one();
                }
                Err(error) => {
                    debug!(member = %id, peer_address = %address, error = %error, "member did not prove its identity; not placed");
                }
            }
            this.probing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        });
    }
}
