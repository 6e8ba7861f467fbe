//! What a round of anti-entropy covers, as pure functions of the topology:
//! which peers, which partitions with each, which partitions to hand off,
//! and when a restarted node has filled what it holds. The shell and the
//! simulator plan their rounds with the same functions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::PartitionSet;
use crate::cluster::NodeState;
use crate::cluster::Topology;
use crate::ring::Ring;
use crate::store::Store;

/// The other members the failure detector holds alive: those of `me`'s
/// region first, then the others, each by id. A round compares with its
/// own region first, over the cheap links, and reaches the other regions
/// after.
pub fn live_peers(topology: &Topology, me: &str) -> Vec<String> {
    let region = topology.region_of(me);
    let mut peers: Vec<(bool, String)> = topology
        .members()
        .filter(|m| m.alive && m.id != me)
        .map(|m| (m.region != region, m.id.clone()))
        .collect();
    peers.sort();
    peers.into_iter().map(|(_, id)| id).collect()
}

/// The partitions `me` and `peer` both replicate: what a session between
/// them compares.
pub fn shared_partitions(ring: &Ring, me: &str, peer: &str) -> PartitionSet {
    PartitionSet::new(
        (0..ring.partitions()).filter(|&p| ring.is_replica(p, me) && ring.is_replica(p, peer)),
    )
}

/// The partitions `me` holds entries of but no longer replicates (placement
/// moved them), each with the replicas to hand it to, by replica. A
/// partition waits while any of its replicas is down, so that it is dropped
/// only once all of them took it.
pub fn hand_offs(topology: &Topology, me: &str, store: &Store) -> BTreeMap<Arc<str>, Vec<u32>> {
    let ring = topology.ring();
    let mut targets: BTreeMap<Arc<str>, Vec<u32>> = BTreeMap::new();
    for p in 0..ring.partitions() {
        if ring.is_replica(p, me) || store.partition_len(p) == 0 {
            continue;
        }
        if !ring.replicas(p).iter().all(|r| topology.is_alive(r)) {
            continue;
        }
        for replica in ring.replicas(p) {
            targets.entry(replica.clone()).or_default().push(p);
        }
    }
    targets
}

/// Whether every partition `me` holds has been synced (`synced`: pairs of
/// partition and peer) with each of its other replicas: a node that started
/// empty is ready then. Any one of them may hold a write that a quorum
/// including this node's lost copy acknowledged, and one the failure
/// detector holds dead may only be cut off, still holding it: so the node
/// waits for every one rather than turn ready without what it lost. Only a
/// replica that left gracefully and stopped is not waited for: it holds
/// nothing any more (memory is not durable).
pub fn filled(topology: &Topology, me: &str, synced: &BTreeSet<(u32, String)>) -> bool {
    let ring = topology.ring();
    let gone = |id: &str| {
        topology
            .member(id)
            .is_some_and(|m| !m.alive && m.state == NodeState::Leaving)
    };
    ring.partitions_held_by(me).into_iter().all(|p| {
        ring.replicas(p)
            .iter()
            .filter(|r| ***r != *me && !gone(r))
            .all(|r| synced.contains(&(p, r.to_string())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Member;

    fn member(id: &str, state: NodeState, alive: bool) -> Member {
        Member {
            id: id.into(),
            address: String::new(),
            peer_address: String::new(),
            region: String::new(),
            state,
            alive,
            generation: 1,
        }
    }

    #[test]
    fn a_restarted_node_is_filled_once_synced_with_every_other_replica() {
        // Three nodes, rf 3: every partition is on all of them. n3 is held
        // dead, but may only be cut off, holding writes n1 lost.
        let topology = |n3: NodeState| {
            Topology::new(
                vec![
                    member("n1", NodeState::Syncing, true),
                    member("n2", NodeState::Ready, true),
                    member("n3", n3, false),
                ],
                4,
                3,
            )
        };
        let with = |peers: &[&str]| -> BTreeSet<(u32, String)> {
            (0..4)
                .flat_map(|p| peers.iter().map(move |r| (p, r.to_string())))
                .collect()
        };
        let t = topology(NodeState::Ready);
        assert!(!filled(&t, "n1", &with(&[])));
        assert!(!filled(&t, "n1", &with(&["n2"])), "n3 was not synced");
        assert!(filled(&t, "n1", &with(&["n2", "n3"])));
        // A replica that left gracefully holds nothing: no need to wait.
        assert!(filled(&topology(NodeState::Leaving), "n1", &with(&["n2"])));
    }

    #[test]
    fn a_round_visits_its_own_region_first() {
        let member = |id: &str, region: &str| Member {
            id: id.into(),
            address: String::new(),
            peer_address: String::new(),
            region: region.into(),
            state: NodeState::Ready,
            alive: true,
            generation: 1,
        };
        let t = Topology::new(
            vec![
                member("a", "far"),
                member("b", "near"),
                member("c", "far"),
                member("d", "near"),
                member("e", "near"),
            ],
            4,
            3,
        );
        assert_eq!(live_peers(&t, "e"), ["b", "d", "a", "c"]);
    }
}
