//! The cluster as the coordinator routes by: placement and liveness, from
//! one membership snapshot. Rebuilt whole on every membership change and
//! swapped in, so a request sees one consistent view.

use std::collections::HashMap;
use std::sync::Arc;

use super::Member;
use crate::ring::{Ring, RingNode};

/// Placement and liveness at one moment.
pub struct Topology {
    ring: Ring,
    members: HashMap<String, Member>,
}

impl Topology {
    /// The topology of `members`: every member known (alive or dead within
    /// the grace period) holds partitions.
    pub fn new(members: Vec<Member>, partitions: u32, replication_factor: usize) -> Self {
        let nodes = members.iter().map(RingNode::from).collect();
        Self {
            ring: Ring::new(nodes, partitions, replication_factor),
            members: members.into_iter().map(|m| (m.id.clone(), m)).collect(),
        }
    }

    /// The replicas of `key`, in preference order.
    pub fn replicas(&self, key: &str) -> &[Arc<str>] {
        self.ring.replicas_for_key(key)
    }

    /// Whether the failure detector holds `id` alive.
    pub fn is_alive(&self, id: &str) -> bool {
        self.members.get(id).is_some_and(|m| m.alive)
    }

    /// The member `id`, if known.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.get(id)
    }

    /// Every member known.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The placement.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }
}

impl From<&Member> for RingNode {
    /// The placement input of a cluster member: its id and region.
    fn from(member: &Member) -> Self {
        Self::new(member.id.clone(), member.region.clone())
    }
}
