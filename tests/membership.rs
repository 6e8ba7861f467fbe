//! Membership over real UDP gossip on loopback: joining through seeds,
//! graceful leave, crash detection, restarts with a new generation, and
//! partitions through the fault switch. Gossip runs every 50 ms so that each
//! test takes a few seconds at most.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kilovolt::cluster::{ClusterError, Member, Membership, MembershipConfig, NodeState};
use kilovolt::switch::Degradation;
use kilovolt::switch::Switch;
use tokio::time::Instant;

const GOSSIP: Duration = Duration::from_millis(50);
/// Generous: the machine may be busy; success usually comes much sooner.
const DEADLINE: Duration = Duration::from_secs(10);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

struct Node {
    membership: Membership,
    switch: Arc<Switch>,
}

fn config(id: &str, listen: SocketAddr, advertise: String, seeds: &[String]) -> MembershipConfig {
    MembershipConfig {
        node_id: id.to_string(),
        advertise,
        listen,
        peer_advertise: format!("{id}-peer:1"),
        region: format!("region-of-{id}"),
        seeds: seeds.to_vec(),
        gossip_interval: GOSSIP,
        phi_threshold: 8.0,
        dead_node_grace: Duration::from_secs(60),
        cluster_id: "kilovolt".to_string(),
        initial_state: NodeState::Ready,
        previous_alive_ms: None,
    }
}

/// A node on a free loopback port, advertised as 127.0.0.1.
async fn start(id: &str, seeds: &[String]) -> Node {
    start_with(config(
        id,
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".to_string(),
        seeds,
    ))
    .await
}

async fn start_with(config: MembershipConfig) -> Node {
    let switch = Arc::new(Switch::new());
    let membership = Membership::start(config, switch.clone())
        .await
        .expect("membership starts");
    Node { membership, switch }
}

/// n1, then n2 and n3 seeded with it, once each sees all three alive.
async fn three_alive() -> (Node, Node, Node) {
    let n1 = start("n1", &[]).await;
    let n2 = start("n2", &seed(&n1)).await;
    let n3 = start("n3", &seed(&n1)).await;
    for node in [&n1, &n2, &n3] {
        eventually("3 live members", node, |ms| {
            ms.len() == 3 && ms.iter().all(|m| m.alive)
        })
        .await;
    }
    (n1, n2, n3)
}

fn seed(node: &Node) -> Vec<String> {
    vec![node.membership.advertise().to_string()]
}

fn find<'a>(members: &'a [Member], id: &str) -> Option<&'a Member> {
    members.iter().find(|m| m.id == id)
}

/// Polls `check` every 10 ms until it holds; returns how long it took.
/// Panics after `DEADLINE` with the last member list seen.
async fn eventually(what: &str, node: &Node, check: impl Fn(&[Member]) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let members = node.membership.members();
        if check(&members) {
            return started.elapsed();
        }
        if started.elapsed() > DEADLINE {
            panic!(
                "{} never saw: {what}; members: {members:#?}",
                node.membership.self_id()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn alive(members: &[Member], id: &str) -> bool {
    find(members, id).is_some_and(|m| m.alive)
}

fn dead(members: &[Member], id: &str) -> bool {
    find(members, id).is_some_and(|m| !m.alive)
}

#[tokio::test]
async fn three_nodes_form_a_cluster_from_seeds() {
    init_tracing();
    let n1 = start("n1", &[]).await;
    let n2 = start("n2", &seed(&n1)).await;
    // n3 names everything by "localhost": its own address and its seed.
    let port1 = n1.membership.gossip_addr().port();
    let n3 = start_with(config(
        "n3",
        "127.0.0.1:0".parse().expect("addr"),
        "localhost:0".to_string(),
        &[format!("localhost:{port1}")],
    ))
    .await;
    assert!(n3.membership.advertise().starts_with("localhost:"));

    let nodes = [&n1, &n2, &n3];
    let expected: Vec<(String, String, String)> = nodes
        .iter()
        .map(|n| {
            let id = n.membership.self_id().to_string();
            let region = format!("region-of-{id}");
            (id, n.membership.advertise().to_string(), region)
        })
        .collect();
    let started = Instant::now();
    for node in nodes {
        eventually("3 live members", node, |ms| {
            ms.len() == 3 && ms.iter().all(|m| m.alive && m.state == NodeState::Ready)
        })
        .await;
        let got: Vec<(String, String, String)> = node
            .membership
            .members()
            .into_iter()
            .map(|m| (m.id, m.address, m.region))
            .collect();
        assert_eq!(got, expected, "sorted by id, with address and region");
        // The watch carries the same list.
        let mut rx = node.membership.subscribe();
        tokio::time::timeout(
            DEADLINE,
            rx.wait_for(|ms| ms.len() == 3 && ms.iter().all(|m| m.alive)),
        )
        .await
        .expect("watch shows the cluster in time")
        .expect("watch open");
    }
    eprintln!("3 nodes formed in {:?}", started.elapsed());

    // A state change travels by gossip, and the watch fires for it.
    let mut rx = n1.membership.subscribe();
    n2.membership.set_state(NodeState::Syncing).await;
    let took = tokio::time::timeout(
        DEADLINE,
        rx.wait_for(|ms| find(ms, "n2").is_some_and(|m| m.state == NodeState::Syncing)),
    )
    .await
    .map(|_| started.elapsed());
    assert!(took.is_ok(), "n1 never saw n2 syncing");
    eventually("n2 syncing", &n3, |ms| {
        find(ms, "n2").is_some_and(|m| m.state == NodeState::Syncing)
    })
    .await;
    assert_eq!(
        find(&n2.membership.members(), "n2").map(|m| m.state),
        Some(NodeState::Syncing)
    );
}

#[tokio::test]
async fn leave_is_announced_and_a_crash_is_detected() {
    init_tracing();
    let (n1, n2, n3) = three_alive().await;

    // Graceful leave: peers hear "leaving" before n3 goes silent.
    let leave_started = Instant::now();
    n3.membership.leave().await.expect("leave");
    let leave_took = leave_started.elapsed();
    let to_leaving = eventually("n3 leaving", &n1, |ms| {
        find(ms, "n3").is_some_and(|m| m.state == NodeState::Leaving)
    })
    .await;
    let to_dead = eventually("n3 leaving and dead", &n2, |ms| {
        find(ms, "n3").is_some_and(|m| m.state == NodeState::Leaving && !m.alive)
    })
    .await;
    eprintln!(
        "leave() took {leave_took:?}; n1 saw n3 leaving {to_leaving:?} after it returned, \
         n2 saw it dead {to_dead:?} after"
    );
    assert!(to_leaving < Duration::from_millis(500), "{to_leaving:?}");

    // Crash: dropped without leave; the watch reports the death.
    let mut rx = n1.membership.subscribe();
    let crashed = Instant::now();
    drop(n2);
    tokio::time::timeout(
        DEADLINE,
        rx.wait_for(|ms| find(ms, "n2").is_some_and(|m| !m.alive && m.state == NodeState::Ready)),
    )
    .await
    .expect("crash detected in time")
    .expect("watch open");
    eprintln!("crash detected in {:?}", crashed.elapsed());
    // Dead nodes stay listed within the grace period; self stays alive.
    let members = n1.membership.members();
    assert_eq!(members.len(), 3);
    assert!(alive(&members, "n1"));
}

#[tokio::test]
async fn dead_nodes_are_forgotten_after_the_grace() {
    init_tracing();
    let mut c1 = config(
        "n1",
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".to_string(),
        &[],
    );
    c1.dead_node_grace = Duration::from_millis(1500);
    let n1 = start_with(c1).await;
    let n2 = start("n2", &seed(&n1)).await;
    eventually("n2 alive", &n1, |ms| alive(ms, "n2")).await;
    n2.membership.shutdown().await.expect("shutdown");
    let stopped = Instant::now();
    let to_dead = eventually("n2 dead", &n1, |ms| dead(ms, "n2")).await;
    let to_gone = eventually("n2 forgotten", &n1, |ms| find(ms, "n2").is_none()).await;
    eprintln!(
        "n2 dead after {to_dead:?}, forgotten {to_gone:?} later ({:?} in all)",
        stopped.elapsed()
    );
    assert!(to_gone >= Duration::from_millis(1000), "kept for the grace");
}

#[tokio::test]
async fn a_restarted_node_shows_once_with_its_new_generation() {
    init_tracing();
    let n1 = start("n1", &[]).await;
    let n2 = start("n2", &seed(&n1)).await;
    eventually("n2 alive", &n1, |ms| alive(ms, "n2")).await;
    let old_generation = n2.membership.generation();
    let addr = n2.membership.gossip_addr();
    n2.membership.shutdown().await.expect("shutdown");

    // Same id, same address, new process (generation).
    let n2 = start_with(config(
        "n2",
        addr,
        addr.to_string(),
        &[n1.membership.advertise().to_string()],
    ))
    .await;
    let new_generation = n2.membership.generation();
    assert!(new_generation > old_generation);
    let restarted = Instant::now();
    eventually("n2 back alive with its new generation", &n1, |ms| {
        ms.len() == 2 && find(ms, "n2").is_some_and(|m| m.alive && m.generation == new_generation)
    })
    .await;
    eventually("n1 alive, self once", &n2, |ms| {
        ms.len() == 2
            && alive(ms, "n1")
            && find(ms, "n2").is_some_and(|m| m.generation == new_generation)
    })
    .await;
    eprintln!("restart seen in {:?}", restarted.elapsed());
    // Stays once and alive while the old generation is declared dead.
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        let ms = n1.membership.members();
        assert_eq!(ms.len(), 2, "{ms:#?}");
        let n2_seen = find(&ms, "n2").expect("n2 listed");
        assert_eq!(n2_seen.generation, new_generation);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_switch_partitions_and_heals_gossip() {
    init_tracing();
    let (n1, n2, n3) = three_alive().await;

    // Delayed gossip still flows: a state change crosses a slow link.
    n1.switch.degrade(
        ["n3".to_string()],
        Degradation {
            drop: 0.0,
            delay: Duration::from_millis(30),
        },
    );
    n3.membership.set_state(NodeState::Syncing).await;
    eventually("n3 syncing across the delay", &n1, |ms| {
        find(ms, "n3").is_some_and(|m| m.alive && m.state == NodeState::Syncing)
    })
    .await;
    n1.switch.heal();

    // Cut n3 off on n1 and n2: both see it dead, and it sees them dead.
    let cut = Instant::now();
    n1.switch.cut(["n3".to_string()]);
    n2.switch.cut(["n3".to_string()]);
    let n1_saw = eventually("n3 dead", &n1, |ms| dead(ms, "n3")).await;
    eventually("n3 dead", &n2, |ms| dead(ms, "n3")).await;
    eventually("n1 and n2 dead", &n3, |ms| dead(ms, "n1") && dead(ms, "n2")).await;
    eprintln!(
        "cut detected by n1 in {n1_saw:?}, everywhere in {:?}",
        cut.elapsed()
    );
    // n1 and n2 still see each other.
    assert!(alive(&n1.membership.members(), "n2"));

    let healed = Instant::now();
    n1.switch.heal();
    n2.switch.heal();
    for node in [&n1, &n2, &n3] {
        eventually("all alive after heal", node, |ms| {
            ms.len() == 3 && ms.iter().all(|m| m.alive)
        })
        .await;
    }
    eprintln!("heal seen everywhere in {:?}", healed.elapsed());
}

#[tokio::test]
async fn a_one_sided_cut_is_bridged_by_a_third_node() {
    init_tracing();
    let (n1, _n2, _n3) = three_alive().await; // all three gossip until the end
                                              // Only n1 cuts n3: n3's heartbeats still reach n1 inside n2's gossip,
                                              // so gossip liveness is transitive and n1 keeps n3 alive. Direct
                                              // reachability is the peer RPC layer's business (request timeouts).
    n1.switch.cut(["n3".to_string()]);
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert!(
            alive(&n1.membership.members(), "n3"),
            "n1 lost n3 although n2 relays it"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_taken_port_fails_with_its_address() {
    init_tracing();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = Membership::start(
        config("n1", addr, addr.to_string(), &[]),
        Arc::new(Switch::new()),
    )
    .await
    .err()
    .expect("the port is taken");
    assert!(matches!(err, ClusterError::Bind { addr: a, .. } if a == addr));
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
