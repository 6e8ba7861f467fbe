//! One copy of a write per remote region: which replicas of other regions
//! a write is sent to directly, and which one replica per region relays it
//! to the rest of its region (as Cassandra forwards a write to one node per
//! remote datacenter). Pure: the coordinator applies the plan.

use std::sync::Arc;
use std::time::Duration;

use super::{Route, Routes};
use crate::cluster::Topology;

/// A write's routes after relaying: the replicas sent to as before, and
/// the relays, each the one replica of its region the write crosses to.
#[derive(Debug, PartialEq, Eq)]
pub struct Relayed {
    /// Replicas the write goes to directly, with their routes.
    pub direct: Routes,
    /// One replica per remote region, which hands the write on to the key's
    /// other replicas there; the write waits on none of them.
    pub relays: Vec<Arc<str>>,
    /// One replica per remote region where the write awaits replicas, which
    /// hands the write on to the others there and answers for the awaited.
    pub awaited: Vec<AwaitedPlan>,
}

/// The copy of a write for one remote region where it awaits replicas.
#[derive(Debug, PartialEq, Eq)]
pub struct AwaitedPlan {
    /// The nearest live replica of the region: the copy crosses to it.
    pub relay: Arc<str>,
    /// Whether the relay's own answer counts ([`Route::Await`]).
    pub relay_counts: bool,
    /// The region's other awaited replicas, which the relay answers for.
    pub mates: Vec<Arc<str>>,
}

/// Plans how a write coordinated by `me` reaches its remote replicas, so
/// that it crosses to each other region once:
///
/// - in a region where two or more replicas take the write without the
///   request waiting for them ([`Route::Push`]) and none is awaited or
///   down, only the first of them (in `routes` order: placement order) is
///   sent the write, to relay;
/// - in a region where some live replica is awaited and another is live,
///   the nearest live one (by `rtt`, placement order among equals) is sent
///   the write, naming the awaited others ([`AwaitedPlan`]);
/// - hints, and the only live replica of a region, stay direct;
/// - in a cluster whose members all share one region, every route stays
///   direct.
pub fn plan(
    routes: Routes,
    topology: &Topology,
    me: &str,
    rtt: impl Fn(&str) -> Option<Duration>,
) -> Relayed {
    if routes.is_empty() || !topology.spans_regions() {
        // Nothing to cross to: every route stays as it is.
        return Relayed {
            direct: routes,
            relays: Vec::new(),
            awaited: Vec::new(),
        };
    }
    let local = topology.region_of(me);
    let mut direct = Vec::with_capacity(routes.len());
    let mut relays: Vec<Arc<str>> = Vec::new();
    let mut awaited: Vec<AwaitedPlan> = Vec::new();
    let mut planned: Vec<&str> = Vec::new();
    for (replica, route) in &routes {
        let region = topology.region_of(replica);
        if region == local || *route == Route::Hint {
            direct.push((replica.clone(), *route));
            continue;
        }
        if planned.contains(&region) {
            continue;
        }
        planned.push(region);
        let members: Vec<&(Arc<str>, Route)> = routes
            .iter()
            .filter(|(r, _)| topology.region_of(r) == region)
            .collect();
        let live: Vec<&(Arc<str>, Route)> = members
            .iter()
            .copied()
            .filter(|(_, route)| *route != Route::Hint)
            .collect();
        let hinted = live.len() < members.len();
        if live.len() < 2 {
            direct.extend(live.into_iter().cloned());
        } else if live.iter().all(|(_, route)| *route == Route::Push) {
            if hinted {
                direct.extend(live.into_iter().cloned());
            } else {
                relays.push(live[0].0.clone());
            }
        } else {
            let nearest = live
                .iter()
                .min_by_key(|(r, _)| rtt(r).unwrap_or(Duration::MAX))
                .map(|(r, route)| (r.clone(), *route));
            if let Some((relay, relay_route)) = nearest {
                let mates = live
                    .iter()
                    .filter(|(r, route)| *r != relay && *route == Route::Await)
                    .map(|(r, _)| r.clone())
                    .collect();
                awaited.push(AwaitedPlan {
                    relay,
                    relay_counts: relay_route == Route::Await,
                    mates,
                });
            }
        }
    }
    Relayed {
        direct,
        relays,
        awaited,
    }
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
            |_| None,
        );
        assert_eq!(plan.direct, routes(&[("a2", Route::Push)]));
        assert_eq!(plan.relays, vec![Arc::from("b1"), Arc::from("c1")]);
        assert!(plan.awaited.is_empty());
    }

    #[test]
    fn in_one_region_every_route_stays_direct() {
        let members = ["a1", "a2", "a3"]
            .map(|id| crate::cluster::Member {
                id: id.into(),
                address: String::new(),
                peer_address: String::new(),
                region: "r1".into(),
                state: crate::cluster::NodeState::Ready,
                alive: true,
                generation: 1,
            })
            .to_vec();
        let t = Topology::new(members, 16, 3);
        assert!(!t.spans_regions());
        assert!(topology().spans_regions());
        let list = routes(&[("a2", Route::Await), ("a3", Route::Push)]);
        let plan = plan(list.clone(), &t, "a1", |_| None);
        assert_eq!(plan.direct, list);
        assert!(plan.relays.is_empty() && plan.awaited.is_empty());
    }

    #[test]
    fn an_awaited_region_gets_one_copy_at_its_nearest_live_replica() {
        let t = topology();
        let list = [
            ("a2", Route::Await),
            ("b1", Route::Await),
            ("b2", Route::Await),
            ("c1", Route::Await),
            ("c2", Route::Push),
        ];
        // c2 answers faster than c1; b's are unmeasured (placement order).
        let rtt = |r: &str| match r {
            "c1" => Some(Duration::from_millis(80)),
            "c2" => Some(Duration::from_millis(40)),
            _ => None,
        };
        let plan = plan(routes(&list), &t, "a1", rtt);
        assert_eq!(plan.direct, routes(&[("a2", Route::Await)]));
        assert!(plan.relays.is_empty());
        assert_eq!(
            plan.awaited,
            [
                AwaitedPlan {
                    relay: "b1".into(),
                    relay_counts: true,
                    mates: vec!["b2".into()],
                },
                AwaitedPlan {
                    relay: "c2".into(),
                    relay_counts: false,
                    mates: vec!["c1".into()],
                },
            ]
        );
    }

    #[test]
    fn down_replicas_are_hinted_and_a_lone_live_one_is_sent_directly() {
        let t = topology();
        let list = [
            ("a2", Route::Await),
            ("b1", Route::Hint),
            ("b2", Route::Await),
            ("c1", Route::Hint),
            ("c2", Route::Push),
        ];
        let plan = plan(routes(&list), &t, "a1", |_| None);
        assert_eq!(plan.direct, routes(&list));
        assert!(plan.relays.is_empty());
        assert!(plan.awaited.is_empty());
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
