//! Which members gossip may place. Gossip datagrams are not authenticated
//! (see docs/security.md), so with mutual TLS between nodes a member learned
//! from gossip enters placement only once this node has called it at the
//! peer address gossip gave and the peer proved, with a certificate from
//! the cluster's CA, that it is the node id gossip named. A forged member
//! is never placed, and a forged address for a known node id is never
//! used: traffic stays on the address last proven until the new one is.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tracing::{debug, info};

use crate::cluster::Member;
use crate::net::Peers;

/// Admits members to placement by a handshake (see the module docs).
pub struct Admission {
    me: String,
    peers: Arc<Peers>,
    enabled: bool,
    /// Node id -> the peer address it proved itself at.
    proven: Mutex<HashMap<String, String>>,
    /// (node id, address) pairs being probed now.
    probing: Mutex<HashSet<(String, String)>>,
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
    /// identity was proven, at the address it was proven at. Starts a probe
    /// of each member (or new address) not proven yet; [`Admission::proved`]
    /// wakes when one succeeds.
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
            if known != Some(&member.peer_address) && !member.peer_address.is_empty() {
                self.probe(&member.id, &member.peer_address);
            }
            if let Some(address) = known {
                member.peer_address = address.clone();
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

    fn probe(self: &Arc<Self>, id: &str, address: &str) {
        let key = (id.to_string(), address.to_string());
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
            let (id, address) = &key;
            match this.peers.probe(id, address).await {
                Ok(()) => {
                    info!(member = %id, peer_address = %address, "member proved its identity; admitted to placement");
                    this.proven
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id.clone(), address.clone());
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
