//! The cluster as the coordinator routes by: placement and liveness, from
//! one membership snapshot. Rebuilt whole on every membership change and
//! swapped in, so a request sees one consistent view.

use std::collections::HashMap;
use std::sync::Arc;

use super::Member;
use crate::ring::{Replication, Ring, RingNode};

/// Placement and liveness at one moment.
pub struct Topology {
    ring: Ring,
    /// Looked up by id several times per request (liveness, region), so
    /// hashed with foldhash rather than SipHash: ids come from admitted
    /// members, not from clients.
    members: HashMap<String, Member, foldhash::fast::RandomState>,
    /// Whether the members carry two or more region labels.
    spans_regions: bool,
}

impl Topology {
    /// The topology of `members`: every member known (alive or dead within
    /// the grace period) holds partitions, `replication` replicas per key
    /// (a total, or a count per region).
    pub fn new(members: Vec<Member>, partitions: u32, replication: impl Into<Replication>) -> Self {
        let nodes = members.iter().map(RingNode::from).collect();
        let spans_regions = members
            .first()
            .is_some_and(|first| members.iter().any(|m| m.region != first.region));
        Self {
            ring: Ring::with(nodes, partitions, replication.into()),
            members: members.into_iter().map(|m| (m.id.clone(), m)).collect(),
            spans_regions,
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

    /// The region label of member `id` (empty when unset or unknown).
    pub fn region_of(&self, id: &str) -> &str {
        self.members.get(id).map_or("", |m| m.region.as_str())
    }

    /// Whether the members carry two or more region labels: with one, no
    /// write has a remote region to cross to.
    pub fn spans_regions(&self) -> bool {
        self.spans_regions
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

/// Six nodes in three regions, two in each (`a1`, `a2` in r1; `b1`, `b2`
/// in r2; `c1`, `c2` in r3): the cluster the regional tests share.
#[cfg(test)]
pub(crate) const SIX_IN_THREE_REGIONS: [(&str, &str); 6] = [
    ("a1", "r1"),
    ("a2", "r1"),
    ("b1", "r2"),
    ("b2", "r2"),
    ("c1", "r3"),
    ("c2", "r3"),
];

/// [`SIX_IN_THREE_REGIONS`], every node ready and alive, with
/// `replication` replicas per key.
#[cfg(test)]
pub(crate) fn six_in_three_regions(replication: Replication) -> Topology {
    let members = SIX_IN_THREE_REGIONS
        .iter()
        .map(|(id, region)| Member {
            id: (*id).into(),
            address: String::new(),
            peer_address: String::new(),
            region: (*region).into(),
            state: super::NodeState::Ready,
            alive: true,
            generation: 1,
        })
        .collect();
    Topology::new(members, 16, replication)
}
