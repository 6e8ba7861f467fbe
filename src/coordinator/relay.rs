//! One copy of a write per remote region: which replicas of other regions
//! a write is sent to directly, and which one replica per region relays it
//! to the rest of its region (as Cassandra forwards a write to one node per
//! remote datacenter). Pure: the coordinator applies the plan.

use std::sync::Arc;

use super::{Route, Routes};
use crate::cluster::Topology;

/// A write's routes after relaying: the replicas sent to as before, and
/// the relays, each the one replica of its region the write crosses to.
#[derive(Debug, PartialEq, Eq)]
pub struct Relayed {
    /// Replicas the write goes to directly, with their routes.
    pub direct: Routes,
    /// One replica per remote region, which hands the write on to the key's
    /// other replicas there.
    pub relays: Vec<Arc<str>>,
}

/// Plans how a write coordinated by `me` reaches its remote replicas: in
/// each other region where two or more replicas take the write without the
/// request waiting for them ([`Route::Push`]) and none is awaited, only the
/// first of them (in `routes` order: placement order) is sent the write, to
/// relay. Awaited replicas and hints stay direct (their answers count, or
/// the replica is down), and so does the only replica of a region.
pub fn plan(routes: Routes, topology: &Topology, me: &str) -> Relayed {
    let local = topology.region_of(me);
    let mut direct = Vec::with_capacity(routes.len());
    let mut relays: Vec<Arc<str>> = Vec::new();
    for (replica, route) in &routes {
        let region = topology.region_of(replica);
        let relayable = |region: &str| {
            let (mut push, mut other) = (0, 0);
            for (r, route) in &routes {
                if topology.region_of(r) == region {
                    if *route == Route::Push {
                        push += 1;
                    } else {
                        other += 1;
                    }
                }
            }
            push >= 2 && other == 0
        };
        if region == local || *route != Route::Push || !relayable(region) {
            direct.push((replica.clone(), *route));
        } else if !relays.iter().any(|r| topology.region_of(r) == region) {
            relays.push(replica.clone());
        }
    }
    Relayed { direct, relays }
}

/// The replicas a relay `me` hands `key`'s write on to: the key's replicas
/// in `me`'s region other than itself and `from`.
pub fn region_mates<'a>(
    topology: &'a Topology,
    key: &str,
    me: &'a str,
    from: &'a str,
) -> impl Iterator<Item = &'a Arc<str>> {
    let region = topology.region_of(me);
    topology
        .replicas(key)
        .iter()
        .filter(move |r| ***r != *me && ***r != *from && topology.region_of(r) == region)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Replication;

    fn topology() -> Topology {
        crate::cluster::six_in_three_regions(Replication::PerRegion(2))
    }

    fn routes(list: &[(&str, Route)]) -> Routes {
        list.iter()
            .map(|(r, route)| (Arc::from(*r), *route))
            .collect()
    }

    #[test]
    fn each_remote_region_gets_one_copy_and_the_local_one_all() {
        let t = topology();
        let plan = plan(
            routes(&[
                ("a2", Route::Push),
                ("b1", Route::Push),
                ("b2", Route::Push),
                ("c1", Route::Push),
                ("c2", Route::Push),
            ]),
            &t,
            "a1",
        );
        assert_eq!(plan.direct, routes(&[("a2", Route::Push)]));
        assert_eq!(plan.relays, vec![Arc::from("b1"), Arc::from("c1")]);
    }

    #[test]
    fn awaited_or_down_replicas_are_not_relayed() {
        let t = topology();
        let list = [
            ("a2", Route::Await),
            ("b1", Route::Await),
            ("b2", Route::Push),
            ("c1", Route::Hint),
            ("c2", Route::Push),
        ];
        let plan = plan(routes(&list), &t, "a1");
        assert_eq!(plan.direct, routes(&list));
        assert!(plan.relays.is_empty());
    }

    #[test]
    fn a_relay_hands_on_to_its_region_only() {
        let t = topology();
        let mates: Vec<&str> = region_mates(&t, "k", "b1", "a1").map(|r| &**r).collect();
        assert_eq!(mates, ["b2"]);
        let mates: Vec<&str> = region_mates(&t, "k", "b1", "b2").map(|r| &**r).collect();
        assert!(mates.is_empty(), "never back to the sender");
    }
}
