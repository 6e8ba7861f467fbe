//! The simulated node's own logic, where it is not production's: its delta
//! queues and their linger timers, hints replayed on the hint tick, the
//! peer service's answers, what the checker reads of a node's copies, and
//! an anti-entropy round driven by messages alone.

use std::collections::VecDeque;
use std::time::Instant;

use super::*;
use crate::cluster::{Member, NodeState};
use crate::sim::{time, Config};

const IDS: [&str; 3] = ["n1", "n2", "n3"];

fn settings() -> Settings {
    Config::default().settings
}

/// Every node of `IDS`, alive and ready.
fn topology() -> Topology {
    let members = IDS
        .iter()
        .map(|id| Member {
            id: id.to_string(),
            address: String::new(),
            peer_address: String::new(),
            region: String::new(),
            state: NodeState::Ready,
            alive: true,
            generation: 1,
        })
        .collect();
    Topology::new(
        members,
        settings().partitions,
        settings().replication_factor,
    )
}

/// Virtual time one second into a run, every clock true.
fn start_time() -> Instant {
    time::reset(IDS.len());
    time::advance_to(1_000_000);
    time::run_as(0);
    Instant::now()
}

/// Node `id` started at `now`, its start-up messages and timers drained.
fn node(id: &str, ready: bool, now: Instant) -> SimNode {
    let mut node = SimNode::start(id, settings(), topology(), ready, now, 0, Vec::new());
    node.out.clear();
    node
}

fn entry(time: u64) -> Entry {
    Entry::value(Version::new(time << 32, 1), "v", 0)
}

/// The peer calls `node` asked for since it was last drained: (to, call
/// number, request).
fn requests(node: &mut SimNode) -> Vec<(String, u64, Req)> {
    node.out
        .drain(..)
        .filter_map(|out| match out {
            Out::Send {
                to,
                msg: Msg::Request { rpc, req },
            } => Some((to, rpc, req)),
            _ => None,
        })
        .collect()
}

/// The keys of an `Apply` (or a `Relay`).
fn applied(req: &Req) -> Vec<String> {
    match req {
        Req::Apply(entries) | Req::Relay(entries) => {
            entries.iter().map(|(k, _)| k.to_string()).collect()
        }
        other => panic!("expected an Apply, got {other:?}"),
    }
}

/// What `node` answers to `req` from `n2`.
fn answer(node: &mut SimNode, req: Req) -> Resp {
    node.receive("n2", Msg::Request { rpc: 1, req });
    match node.out.pop() {
        Some(Out::Send {
            msg: Msg::Response { resp, .. },
            ..
        }) => resp,
        other => panic!("expected a response, got {other:?}"),
    }
}

#[test]
fn deltas_linger_then_go_in_one_batch_with_up_to_four_batches_in_flight_per_peer() {
    let now = start_time();
    let mut n1 = node("n1", true, now);
    let queue = ("n2".to_string(), false);
    n1.push("n2", "a".into(), entry(1), None);
    n1.push("n2", "b".into(), entry(1), None);
    let linger = settings().batch.linger;
    let timers: Vec<_> = n1.out.drain(..).collect();
    assert!(
        matches!(&timers[..], [Out::Timer { after, timer: Timer::Linger(q) }] if *after == linger && *q == queue),
        "one linger timer for both deltas, nothing sent: {timers:?}"
    );

    n1.set_now(now + linger);
    n1.fire(Timer::Linger(queue.clone()));
    let sent = requests(&mut n1);
    assert_eq!(sent.len(), 1);
    assert_eq!(applied(&sent[0].2), ["a", "b"]);
    let first = sent[0].1;

    // While that batch is in flight, the next ones go after their linger,
    // as production's queue sends them, until MAX_IN_FLIGHT are out.
    for (i, key) in ["c", "d", "e"].iter().enumerate() {
        n1.push("n2", (*key).into(), entry(1), None);
        n1.set_now(now + (i as u32 + 2) * linger);
        n1.fire(Timer::Linger(queue.clone()));
        let sent = requests(&mut n1);
        assert_eq!(sent.len(), 1, "batch {} goes out: {sent:?}", i + 2);
        assert_eq!(applied(&sent[0].2), [*key]);
    }
    assert_eq!(crate::replication::MAX_IN_FLIGHT, 4);
    n1.push("n2", "f".into(), entry(1), None);
    n1.set_now(now + 9 * linger);
    n1.fire(Timer::Linger(queue.clone()));
    assert!(
        requests(&mut n1).is_empty(),
        "four batches in flight per peer at most"
    );

    // An answer frees a place: the waiting delta goes at once.
    n1.receive(
        "n2",
        Msg::Response {
            rpc: first,
            resp: Resp::Applied,
            clock: 0,
        },
    );
    let sent = requests(&mut n1);
    assert_eq!(sent.len(), 1);
    assert_eq!(applied(&sent[0].2), ["f"]);
}

#[test]
fn an_unanswered_batch_becomes_hints_replayed_on_the_hint_tick() {
    let now = start_time();
    let mut n1 = node("n1", true, now);
    n1.push("n2", "a".into(), entry(1), None);
    n1.set_now(now + settings().batch.linger);
    n1.fire(Timer::Linger(("n2".into(), false)));
    let (_, rpc, _) = requests(&mut n1).pop().expect("a batch");
    n1.fire(Timer::Rpc(rpc));
    assert!(requests(&mut n1).is_empty());
    assert_eq!(
        n1.greatest_copy("a"),
        Some(entry(1).version),
        "held as a hint"
    );

    n1.fire(Timer::Hints);
    let sent = requests(&mut n1);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, "n2");
    assert_eq!(applied(&sent[0].2), ["a"]);
}

#[test]
fn a_refilling_node_refuses_reads_but_tells_its_clock_and_what_it_holds() {
    let now = start_time();
    let mut n1 = node("n1", false, now);
    n1.store.merge("k", entry(1));
    let held = n1.store.partition_of("k");

    assert!(matches!(
        answer(&mut n1, Req::Read("k".into())),
        Resp::NotReady
    ));
    assert!(matches!(answer(&mut n1, Req::Clock), Resp::Clock(t) if t > 0));
    let all = (0..settings().partitions).collect();
    assert!(matches!(answer(&mut n1, Req::Holding(all)), Resp::Holding(p) if p == [held]));

    n1.ready = true;
    assert!(matches!(
        answer(&mut n1, Req::Read("k".into())),
        Resp::Read(Some(e)) if e == entry(1)
    ));
}

#[test]
fn the_checker_sees_every_copy_a_node_holds() {
    let now = start_time();
    let mut n1 = node("n1", true, now);
    n1.store.merge("k", entry(1));
    // In flight to n2...
    n1.push("n2", "k".into(), entry(2), None);
    n1.set_now(now + settings().batch.linger);
    n1.fire(Timer::Linger(("n2".into(), false)));
    // ...queued for n3, behind its linger...
    n1.push("n3", "k".into(), entry(3), None);
    // ...and held as a hint for n2.
    n1.hint("n2", "k".into(), entry(4));

    let mut seen = Vec::new();
    n1.each_copy("k", |e| seen.push(e.version.time >> 32));
    seen.sort_unstable();
    assert_eq!(seen, [1, 2, 3, 4]);
    assert_eq!(n1.greatest_copy("k"), Some(entry(4).version));
    assert_eq!(n1.greatest_copy("other"), None);
}

#[test]
fn a_restarted_node_fills_from_every_peer_in_one_round_then_turns_ready() {
    let now = start_time();
    let mut nodes: BTreeMap<String, SimNode> = IDS
        .iter()
        .map(|id| (id.to_string(), node(id, *id != "n1", now)))
        .collect();
    for (i, key) in ["x", "y", "z"].iter().enumerate() {
        nodes
            .get_mut("n2")
            .unwrap()
            .store
            .merge(key, entry(i as u64 + 1));
    }
    nodes.get_mut("n3").unwrap().store.merge("w", entry(9));

    let n1 = nodes.get_mut("n1").unwrap();
    n1.fire(Timer::AntiEntropy(n1.ae_timer));
    // Deliver every message at once, in order, until none is left.
    let mut wire: VecDeque<(String, Out)> = VecDeque::new();
    let mut ready = false;
    for _ in 0..1000 {
        for (id, node) in nodes.iter_mut() {
            for out in node.out.drain(..) {
                wire.push_back((id.clone(), out));
            }
        }
        let Some((from, out)) = wire.pop_front() else {
            break;
        };
        match out {
            Out::Send { to, msg } => nodes.get_mut(&to).unwrap().receive(&from, msg),
            Out::Ready => ready = from == "n1",
            _ => {}
        }
    }
    assert!(ready, "n1 synced every partition with n2 and n3");
    let n1 = &nodes["n1"];
    assert!(n1.ready);
    for key in ["x", "y", "z", "w"] {
        assert!(n1.store.get(key).is_some(), "{key} was filled");
    }
}

/// The six nodes of [`crate::cluster::SIX_IN_THREE_REGIONS`] with two
/// replicas of every key in each region (every node holds every key), all
/// alive but `down`.
fn regions_topology(down: &str) -> Topology {
    let members: Vec<Member> = crate::cluster::SIX_IN_THREE_REGIONS
        .iter()
        .map(|(id, region)| Member {
            id: id.to_string(),
            address: String::new(),
            peer_address: String::new(),
            region: region.to_string(),
            state: NodeState::Ready,
            alive: *id != down,
            generation: 1,
        })
        .collect();
    Topology::new(
        members,
        settings().partitions,
        regions_settings().replication(),
    )
}

fn regions_settings() -> Settings {
    Settings {
        replicas_per_region: Some(2),
        ..settings()
    }
}

/// The nodes of [`regions_topology`], every one alive and ready.
fn six_in_three_regions(now: Instant) -> BTreeMap<String, SimNode> {
    time::reset(6);
    time::advance_to(1_000_000);
    time::run_as(0);
    crate::cluster::SIX_IN_THREE_REGIONS
        .iter()
        .map(|(id, _)| {
            let mut node = SimNode::start(
                id,
                regions_settings(),
                regions_topology(""),
                true,
                now,
                0,
                Vec::new(),
            );
            node.out.clear();
            (id.to_string(), node)
        })
        .collect()
}

/// Delivers every message the nodes send, firing linger timers when they
/// are set, until nothing is left; returns every peer call delivered:
/// (from, to, request).
fn deliver(nodes: &mut BTreeMap<String, SimNode>) -> Vec<(String, String, Req)> {
    let mut wire: VecDeque<(String, Out)> = VecDeque::new();
    let mut calls = Vec::new();
    for _ in 0..1000 {
        for (id, node) in nodes.iter_mut() {
            for out in node.out.drain(..) {
                wire.push_back((id.clone(), out));
            }
        }
        let Some((from, out)) = wire.pop_front() else {
            return calls;
        };
        match out {
            Out::Send { to, msg } => {
                if let Msg::Request { req, .. } = &msg {
                    calls.push((from.clone(), to.clone(), req.clone()));
                }
                if let Some(node) = nodes.get_mut(&to) {
                    node.receive(&from, msg);
                }
            }
            Out::Timer {
                timer: Timer::Linger(queue),
                after,
            } => {
                let node = nodes.get_mut(&from).unwrap();
                node.set_now(node.now + after);
                node.fire(Timer::Linger(queue));
            }
            _ => {}
        }
    }
    panic!("messages still flowing after 1000 steps");
}

/// A LOCAL_ONE Set at `a1`.
fn set_at_a1(nodes: &mut BTreeMap<String, SimNode>) {
    nodes.get_mut("a1").unwrap().invoke(ClientOp {
        id: 0,
        key: "k".into(),
        kind: OpKind::Set {
            value: "v0".into(),
            ttl_ms: 0,
        },
        level: crate::coordinator::Consistency::LocalOne,
    });
}

#[test]
fn a_relayed_write_crosses_to_each_remote_region_once_and_reaches_the_other_replica_there() {
    let now = start_time();
    let mut nodes = six_in_three_regions(now);
    set_at_a1(&mut nodes);
    let calls = deliver(&mut nodes);

    // The coordinator sent the write to its region-mate, and to one
    // replica of each other region, to relay.
    let from_a1: Vec<(&str, bool)> = calls
        .iter()
        .filter(|(from, _, _)| from == "a1")
        .map(|(_, to, req)| (to.as_str(), matches!(req, Req::Relay(_))))
        .collect();
    assert_eq!(from_a1.len(), 3, "{from_a1:?}");
    assert!(from_a1.contains(&("a2", false)), "{from_a1:?}");
    for region in ['b', 'c'] {
        let to: Vec<_> = from_a1
            .iter()
            .filter(|(to, _)| to.starts_with(region))
            .collect();
        assert!(
            matches!(to[..], [(_, true)]),
            "one copy, to relay, to region {region}: {from_a1:?}"
        );
    }
    // Each relay handed it on to the other replica of its region.
    for (relay, _) in from_a1.iter().filter(|(_, relayed)| *relayed) {
        let mate = if relay.ends_with('1') {
            relay.replace('1', "2")
        } else {
            relay.replace('2', "1")
        };
        assert!(
            calls.iter().any(|(from, to, req)| from == relay
                && *to == mate
                && matches!(req, Req::Apply(e) if e.iter().any(|(k, _)| &**k == "k"))),
            "{relay} handed the write on to {mate}: {calls:?}"
        );
    }
    for (id, node) in &nodes {
        let value = node
            .store
            .get("k")
            .and_then(|e| e.live_value(0).map(str::to_string));
        assert_eq!(value.as_deref(), Some("v0"), "{id} holds the write");
    }
}

#[test]
fn a_relay_holds_a_hint_for_a_region_mate_it_holds_down() {
    let now = start_time();
    let mut nodes = six_in_three_regions(now);
    // Region b's relay of "k" is its first replica there; its view (not
    // the coordinator's) holds the other one down.
    let topology = regions_topology("");
    let in_b: Vec<String> = topology
        .replicas("k")
        .iter()
        .filter(|r| r.starts_with('b'))
        .map(|r| r.to_string())
        .collect();
    let [relay, mate] = &in_b[..] else {
        panic!("two replicas in region b: {in_b:?}");
    };
    let node = nodes.get_mut(relay).unwrap();
    node.set_topology(regions_topology(mate));
    node.out.clear();

    set_at_a1(&mut nodes);
    let calls = deliver(&mut nodes);
    assert!(
        calls
            .iter()
            .any(|(from, to, req)| from == "a1" && to == relay && matches!(req, Req::Relay(_))),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|(_, to, _)| to == mate),
        "nothing reaches {mate}: {calls:?}"
    );
    assert!(nodes[mate].store.get("k").is_none());
    assert!(nodes[relay].store.get("k").is_some());
    assert_eq!(
        nodes[relay].hints.peers(),
        std::slice::from_ref(mate),
        "held for {mate}"
    );
}
