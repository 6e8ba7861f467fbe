//! Real nodes on loopback forming clusters: membership from seeds,
//! placement, replication at every consistency level, hinted handoff, and
//! the partitionable network layer.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{admin, eventually, kv, replicas_of, start_node};
use kilovolt::config::Config;
use kilovolt::node::RunningNode;
use kilovolt::proto::{self, Consistency};
use kilovolt::switch::Degradation;
use tonic::Code;

/// Fast failure detection and short timeouts, and a cluster name of the
/// test's own so that clusters of concurrent tests never meet.
fn tune(c: &mut Config, cluster: &str) {
    c.cluster_id = cluster.to_string();
    c.gossip_interval = Duration::from_millis(50);
    c.request_timeout = Duration::from_millis(1500);
}

/// Starts `regions.len()` nodes, each seeded with the ones started before,
/// and waits until every node sees every other alive.
async fn start_cluster(cluster: &str, regions: &[&str], rf: u32) -> Vec<RunningNode> {
    start_cluster_with(cluster, regions, |c| c.replication_factor = rf).await
}

/// [`start_cluster`] with more settings changed by `configure`.
async fn start_cluster_with(
    cluster: &str,
    regions: &[&str],
    configure: impl Fn(&mut Config),
) -> Vec<RunningNode> {
    let mut nodes: Vec<RunningNode> = Vec::new();
    for region in regions {
        let seeds: Vec<String> = nodes.iter().map(|n| n.info().address.clone()).collect();
        let node = start_node(|c| {
            tune(c, cluster);
            c.cluster = seeds;
            c.region = region.to_string();
            configure(c);
        })
        .await;
        nodes.push(node);
    }
    for node in &nodes {
        wait_alive(node, regions.len()).await;
    }
    nodes
}

/// Waits until `node` sees `n` members alive and ready (a node that joins
/// others is `syncing` until it has filled its partitions from them).
async fn wait_alive(node: &RunningNode, n: usize) {
    let a = admin(node).await;
    eventually(
        Duration::from_secs(15),
        "members to be alive and ready",
        || {
            let mut a = a.clone();
            async move {
                let m = a.members(proto::MembersRequest {}).await.ok()?.into_inner();
                let ready = m.members.iter().filter(|m| m.alive && m.state == "ready");
                (ready.count() == n).then_some(())
            }
        },
    )
    .await;
}

fn set(key: &str, value: &str, level: Consistency) -> proto::SetRequest {
    proto::SetRequest {
        key: key.into(),
        value: value.into(),
        consistency: level.into(),
        ttl_ms: 0,
    }
}

fn get(key: &str, level: Consistency) -> proto::GetRequest {
    proto::GetRequest {
        key: key.into(),
        consistency: level.into(),
    }
}

/// The value `node` holds for `key` in its own store.
async fn local_value(node: &RunningNode, key: &str) -> Option<String> {
    let got = kv(node)
        .await
        .get(get(key, Consistency::Local))
        .await
        .unwrap()
        .into_inner();
    got.found.then_some(got.value)
}

async fn shutdown_all(nodes: Vec<RunningNode>) {
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_and_any_node_serves_any_key() {
    let nodes = start_cluster("form", &["", "", ""], 3).await;
    let members = admin(&nodes[2])
        .await
        .members(proto::MembersRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: BTreeSet<_> = members.members.iter().map(|m| m.id.clone()).collect();
    let expected: BTreeSet<_> = nodes.iter().map(|n| n.info().id.clone()).collect();
    assert_eq!(ids, expected);
    assert!(members.members.iter().all(|m| m.state == "ready"));

    let written = kv(&nodes[0])
        .await
        .set(set("k1", "v1", Consistency::Quorum))
        .await
        .unwrap()
        .into_inner();
    let read = kv(&nodes[1])
        .await
        .get(get("k1", Consistency::Quorum))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((read.found, read.value.as_str()), (true, "v1"));
    assert_eq!(read.version, written.version);

    // A write at ONE reaches every replica within a bounded wait.
    kv(&nodes[2])
        .await
        .set(set("k2", "v2", Consistency::One))
        .await
        .unwrap();
    for node in &nodes {
        eventually(
            Duration::from_secs(5),
            "the write to reach every node",
            || async { (local_value(node, "k2").await.as_deref() == Some("v2")).then_some(()) },
        )
        .await;
        let one = kv(node)
            .await
            .get(get("k2", Consistency::One))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(one.value, "v2");
    }
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_node_down_one_and_quorum_write_all_fails_then_hints_replay() {
    let mut nodes = start_cluster("down", &["", "", ""], 3).await;
    let stopped = nodes.pop().unwrap();
    let (port, stopped_id) = (stopped.local_addr().port(), stopped.info().id.clone());
    stopped.shutdown().await.unwrap();

    let mut c = kv(&nodes[0]).await;
    c.set(set("one", "1", Consistency::One)).await.unwrap();
    c.set(set("quorum", "2", Consistency::Quorum))
        .await
        .unwrap();
    let status = c.set(set("all", "3", Consistency::All)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let message = status.message();
    assert!(
        message.contains("consistency ALL needs 3 of 3 replicas"),
        "{message}"
    );
    assert!(
        message.contains(&format!("{stopped_id}: ")),
        "names the missing replica: {message}"
    );
    let read_all = c.get(get("quorum", Consistency::All)).await.unwrap_err();
    assert_eq!(read_all.code(), Code::Unavailable);
    let stats = admin(&nodes[0])
        .await
        .stats(proto::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(stats.hints_pending >= 2, "{stats:?}");

    // The node comes back (same address, so the same id, empty memory).
    let seeds: Vec<String> = nodes.iter().map(|n| n.info().address.clone()).collect();
    let back = start_node(|c| {
        tune(c, "down");
        c.port = port;
        c.cluster = seeds;
    })
    .await;
    assert_eq!(back.info().id, stopped_id);
    nodes.push(back);
    for node in &nodes {
        wait_alive(node, 3).await;
    }
    for key in ["one", "quorum", "all"] {
        eventually(Duration::from_secs(10), "hints to be replayed", || async {
            local_value(&nodes[2], key).await.is_some().then_some(())
        })
        .await;
    }
    // A member's view can still hold the restarted node's previous life
    // (ready) for a moment before its new one (syncing, then ready): reads
    // at ALL count only ready replicas, so wait until every view agrees.
    for node in &nodes {
        let c = kv(node).await;
        eventually(
            Duration::from_secs(10),
            "ALL reads to find every write on every node",
            || {
                let mut c = c.clone();
                async move {
                    for (key, value) in [("one", "1"), ("quorum", "2"), ("all", "3")] {
                        let read = c.get(get(key, Consistency::All)).await.ok()?.into_inner();
                        assert_eq!(read.value, value, "an ALL read that answers is fresh");
                    }
                    Some(())
                }
            },
        )
        .await;
    }
    eventually(Duration::from_secs(5), "hints to drain", || async {
        let mut total = 0;
        for node in &nodes {
            total += admin(node)
                .await
                .stats(proto::StatsRequest {})
                .await
                .ok()?
                .into_inner()
                .hints_pending;
        }
        (total == 0).then_some(())
    })
    .await;
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_rf3_forward_from_non_replicas() {
    let nodes = start_cluster("five", &["", "", "", "", ""], 3).await;
    let mut a = admin(&nodes[0]).await;
    for i in 0..10 {
        let key = format!("key-{i}");
        let replicas = replicas_of(&mut a, &key).await;
        assert_eq!(replicas.len(), 3);
        let replica_ids: BTreeSet<_> = replicas.iter().map(|m| m.id.clone()).collect();
        let (holders, others): (Vec<_>, Vec<_>) = nodes
            .iter()
            .partition(|n| replica_ids.contains(&n.info().id));
        assert_eq!((holders.len(), others.len()), (3, 2));

        kv(others[0])
            .await
            .set(set(&key, "v", Consistency::Quorum))
            .await
            .unwrap();
        let read = kv(others[1])
            .await
            .get(get(&key, Consistency::Quorum))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.value, "v", "a non-replica reads through the replicas");
        for node in &holders {
            eventually(
                Duration::from_secs(5),
                "every replica to hold the key",
                || async { local_value(node, &key).await.is_some().then_some(()) },
            )
            .await;
        }
        // At ONE any one replica answers: asked once every replica holds
        // the write (a QUORUM write leaves one replica to catch up).
        let one = kv(others[1])
            .await
            .get(get(&key, Consistency::One))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(one.value, "v");
        for node in &others {
            assert_eq!(
                local_value(node, &key).await,
                None,
                "a non-replica keeps no copy"
            );
        }
    }
    shutdown_all(nodes).await;
}

/// `message` as a request the client gives up on after a second.
fn within_a_second<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(1));
    request
}

/// A replica that is silent but not (yet) held dead, as behind a real
/// partition the failure detector has not noticed: ONE must still answer
/// within a second. The request timeout is long here, so a coordinator
/// that waited on the silent replica could not answer in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_answers_within_a_second_while_replicas_are_silent() {
    let nodes = start_cluster_with("silent", &["", "", ""], |c| {
        c.replication_factor = 2;
        c.request_timeout = Duration::from_secs(10);
    })
    .await;
    let coordinator = &nodes[0];
    let mut a = admin(coordinator).await;
    // A key of which the coordinator is not a replica, so ONE goes remote.
    let mut found = None;
    for i in 0.. {
        let key = format!("silent-{i}");
        let replicas: Vec<String> = replicas_of(&mut a, &key)
            .await
            .into_iter()
            .map(|m| m.id)
            .collect();
        if !replicas.contains(&coordinator.info().id) {
            found = Some((key, replicas));
            break;
        }
    }
    let (key, replicas) = found.unwrap();
    let mut client = kv(coordinator).await;
    client.set(set(&key, "v1", Consistency::All)).await.unwrap();

    let silent = Degradation {
        drop: 0.0,
        delay: Duration::from_secs(30),
    };
    // Each replica in turn goes silent, so that whichever a ONE read asks
    // first (the nearer by round-trip time) is silent once.
    for silent_one in &replicas {
        coordinator.handles().switch.heal();
        coordinator
            .handles()
            .switch
            .degrade([silent_one.clone()], silent);
        let read = client
            .get(within_a_second(get(&key, Consistency::One)))
            .await
            .expect("a ONE read asks the next replica when the first is silent")
            .into_inner();
        assert_eq!(read.value, "v1");
    }

    // Both replicas silent: a ONE write is answered, held for delivery.
    coordinator
        .handles()
        .switch
        .degrade(replicas.iter().cloned(), silent);
    client
        .set(within_a_second(set(&key, "v2", Consistency::One)))
        .await
        .expect("a ONE write is answered while every replica is silent");
    coordinator.handles().switch.heal();
    for node in nodes.iter().filter(|n| replicas.contains(&n.info().id)) {
        eventually(
            Duration::from_secs(15),
            "the write held for silent replicas to reach them",
            || async { (local_value(node, &key).await.as_deref() == Some("v2")).then_some(()) },
        )
        .await;
    }
    shutdown_all(nodes).await;
}

/// An expired value waits hours in a cluster for acknowledged collection;
/// its bytes must not: every replica drops them at expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_values_drop_their_bytes_on_every_replica() {
    let nodes = start_cluster_with("expired", &["", ""], |c| {
        c.replication_factor = 2;
        c.expiry_interval = Duration::from_millis(20);
    })
    .await;
    let mut client = kv(&nodes[0]).await;
    let mut request = set("session", &"x".repeat(100_000), Consistency::All);
    request.ttl_ms = 300;
    client.set(request).await.unwrap();
    for node in &nodes {
        let store = node.handles().store.clone();
        eventually(
            Duration::from_secs(10),
            "the expired value's bytes to be dropped",
            || {
                let store = store.clone();
                async move {
                    let held = store.peek("session", |e| e.payload.clone())?;
                    (held == kilovolt::crdt::Payload::Expired).then_some(())
                }
            },
        )
        .await;
    }
    let read = client
        .get(get("session", Consistency::All))
        .await
        .unwrap()
        .into_inner();
    assert!(!read.found, "an expired value reads as not found");
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf3_over_three_regions_puts_one_replica_in_each() {
    let nodes = start_cluster("regions", &["eu", "eu", "us", "ap"], 3).await;
    let mut a = admin(&nodes[1]).await;
    for i in 0..20 {
        let replicas = replicas_of(&mut a, &format!("k{i}")).await;
        let regions: BTreeSet<_> = replicas.iter().map(|m| m.region.as_str()).collect();
        assert_eq!(regions, BTreeSet::from(["ap", "eu", "us"]), "{replicas:?}");
    }
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_and_the_rest_both_take_writes_at_one_then_converge() {
    let nodes = start_cluster("cut", &["", "", ""], 3).await;
    let (lonely, rest) = (&nodes[2], &nodes[..2]);
    let rest_ids: Vec<String> = rest.iter().map(|n| n.info().id.clone()).collect();
    lonely.handles().switch.cut(rest_ids);
    for n in rest {
        n.handles().switch.cut([lonely.info().id.clone()]);
    }

    kv(&rest[0])
        .await
        .set(set("majority-side", "m", Consistency::One))
        .await
        .unwrap();
    kv(lonely)
        .await
        .set(set("minority-side", "n", Consistency::One))
        .await
        .unwrap();
    // QUORUM still works on the majority side, not on the lonely node.
    kv(&rest[1])
        .await
        .set(set("quorum-side", "q", Consistency::Quorum))
        .await
        .unwrap();
    let status = kv(lonely)
        .await
        .set(set("x", "y", Consistency::Quorum))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert_eq!(local_value(lonely, "majority-side").await, None);
    assert_eq!(local_value(&rest[0], "minority-side").await, None);

    for n in &nodes {
        n.handles().switch.heal();
    }
    for node in &nodes {
        for (key, value) in [
            ("majority-side", "m"),
            ("minority-side", "n"),
            ("quorum-side", "q"),
        ] {
            eventually(
                Duration::from_secs(10),
                "hinted writes to arrive",
                || async { (local_value(node, key).await.as_deref() == Some(value)).then_some(()) },
            )
            .await;
        }
    }
    shutdown_all(nodes).await;
}

/// A node refilling after a restart may lack any key: it refuses peer reads
/// of keys rather than answer "not found", which a coordinator whose view
/// still shows the node's previous life (ready) would count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_still_refilling_refuses_peer_reads() {
    use kilovolt::proto::cluster::{peer_client::PeerClient, ClockRequest, Header, ReadRequest};

    let mut nodes = start_cluster("refilling", &["", "", ""], 3).await;
    kv(&nodes[0])
        .await
        .set(set("k", "v", Consistency::All))
        .await
        .unwrap();
    let gone = nodes.pop().unwrap();
    let (port, id) = (gone.local_addr().port(), gone.info().id.clone());
    gone.shutdown().await.unwrap();
    // With another replica down, the restarted node cannot sync every
    // partition with every other replica: it stays syncing.
    nodes.pop().unwrap().shutdown().await.unwrap();
    let seeds = vec![nodes[0].info().address.clone()];
    let back = start_node(|c| {
        tune(c, "refilling");
        c.port = port;
        c.cluster = seeds;
    })
    .await;
    assert_eq!(back.info().id, id);
    let mut peer = PeerClient::new(common::peer_channel(&back).await);
    let header = || {
        Some(Header {
            protocol: kilovolt::net::peer::PROTOCOL,
            from: nodes[0].info().id.clone(),
        })
    };
    let read = ReadRequest {
        header: header(),
        keys: vec!["k".into()],
    };
    let refused = peer.read(read).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused.message().contains("syncing"),
        "{}",
        refused.message()
    );
    // Its clock still answers: a restarted peer seeds its clock from it.
    assert!(
        peer.clock(ClockRequest { header: header() })
            .await
            .unwrap()
            .into_inner()
            .clock
            > 0
    );
    back.shutdown().await.unwrap();
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn a_version_beyond_the_drift_bound_is_merged_but_does_not_drag_the_clock() {
    use kilovolt::proto::cluster::{peer_client::PeerClient, ApplyRequest, Entry, Header};

    let node = start_node(|c| tune(c, "drift")).await;
    let now = kv(&node)
        .await
        .set(set("probe", "p", Consistency::One))
        .await
        .unwrap()
        .into_inner();
    let now = now.version.unwrap().time;
    let hour_ahead = now + (3600u64 << 32);
    let mut peer = PeerClient::new(common::peer_channel(&node).await);
    peer.apply(ApplyRequest {
        relay: false,
        await_mates: Vec::new(),
        await_ms: 0,
        header: Some(Header {
            protocol: kilovolt::net::peer::PROTOCOL,
            from: "a-fast-peer".into(),
        }),
        entries: vec![Entry {
            key: "future".into(),
            time: hour_ahead,
            node: 7,
            value: "from the future".into(),
            ..Default::default()
        }],
    })
    .await
    .unwrap();

    assert_eq!(
        local_value(&node, "future").await.as_deref(),
        Some("from the future"),
        "merged anyway"
    );
    let stats = admin(&node)
        .await
        .stats(proto::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.clock_drift_events, 1);

    // The clock was not dragged an hour ahead...
    let other = kv(&node)
        .await
        .set(set("other", "o", Consistency::One))
        .await
        .unwrap()
        .into_inner();
    assert!(other.version.unwrap().time < hour_ahead);
    // ...yet this node's own write to the key still wins (stored + 1).
    let mine = kv(&node)
        .await
        .set(set("future", "mine", Consistency::One))
        .await
        .unwrap()
        .into_inner();
    assert!(mine.version.unwrap().time > hour_ahead);
    assert_eq!(local_value(&node, "future").await.as_deref(), Some("mine"));

    // A peer speaking another protocol number is refused, not misread.
    let status = peer
        .apply(ApplyRequest {
            relay: false,
            await_mates: Vec::new(),
            await_ms: 0,
            header: Some(Header {
                protocol: 99,
                from: "x".into(),
            }),
            entries: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    node.shutdown().await.unwrap();
}

/// A node of the previous protocol (3, which asked for the clock and the
/// partitions held through `Read`) is refused on every call, each refusal
/// naming both numbers, rather than answered in a shape it would misread
/// (a `ReadResponse` without the clock it expects reads as clock 0).
#[tokio::test]
async fn a_peer_of_the_previous_protocol_is_refused_on_every_call() {
    use kilovolt::net::peer::PROTOCOL;
    use kilovolt::proto::cluster::{
        peer_client::PeerClient, ApplyRequest, ClockRequest, Header, HoldingRequest, ReadRequest,
        SyncRequest,
    };

    let node = start_node(|c| tune(c, "old-protocol")).await;
    kv(&node)
        .await
        .set(set("k", "v", Consistency::One))
        .await
        .unwrap();
    let mut peer = PeerClient::new(common::peer_channel(&node).await);
    let header = |protocol| {
        Some(Header {
            protocol,
            from: "an-older-node".into(),
        })
    };
    let old = PROTOCOL - 1;
    let refusals = [
        peer.apply(ApplyRequest {
            header: header(old),
            entries: vec![],
            relay: false,
            await_mates: Vec::new(),
            await_ms: 0,
        })
        .await
        .map(|_| ()),
        peer.read(ReadRequest {
            header: header(old),
            keys: vec!["k".into()],
        })
        .await
        .map(|_| ()),
        peer.clock(ClockRequest {
            header: header(old),
        })
        .await
        .map(|_| ()),
        peer.holding(HoldingRequest {
            header: header(old),
            partitions: vec![0, 1, 2],
        })
        .await
        .map(|_| ()),
        peer.sync(SyncRequest {
            header: header(old),
            max_reply_bytes: 1 << 20,
            step: None,
        })
        .await
        .map(|_| ()),
    ];
    for refused in refusals {
        let status = refused.expect_err("a call of the previous protocol is refused");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains(&format!(
                "peer protocol {old} is not spoken here; this node speaks {PROTOCOL}"
            )),
            "{}",
            status.message()
        );
    }
    // The same calls at this node's protocol are answered.
    let read = peer
        .read(ReadRequest {
            header: header(PROTOCOL),
            keys: vec!["k".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.entries.len(), 1);
    let clock = peer
        .clock(ClockRequest {
            header: header(PROTOCOL),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(clock.clock > 0);
    node.shutdown().await.unwrap();
}

/// A version at the very end of the clock's range, sent by a peer, must not
/// leave its key unwritable or undeletable.
#[tokio::test]
async fn a_version_at_the_end_of_the_clock_range_does_not_stop_its_key() {
    use kilovolt::proto::cluster::{peer_client::PeerClient, ApplyRequest, Entry, Header};

    let node = start_node(|c| tune(c, "end-of-time")).await;
    let mut peer = PeerClient::new(common::peer_channel(&node).await);
    let header = || {
        Some(Header {
            protocol: kilovolt::net::peer::PROTOCOL,
            from: "a-broken-peer".into(),
        })
    };
    peer.apply(ApplyRequest {
        relay: false,
        await_mates: Vec::new(),
        await_ms: 0,
        header: header(),
        entries: vec![
            Entry {
                key: "end".into(),
                time: u64::MAX,
                node: u64::MAX,
                value: "forever".into(),
                ..Default::default()
            },
            Entry {
                key: "end-tomb".into(),
                time: u64::MAX,
                node: 7,
                tombstone: true,
                ..Default::default()
            },
        ],
    })
    .await
    .unwrap();

    let mut c = kv(&node).await;
    for key in ["end", "end-tomb"] {
        c.set(set(key, "mine", Consistency::One))
            .await
            .unwrap_or_else(|e| panic!("Set {key}: {e}"));
        let got = c
            .get(get(key, Consistency::Local))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.value, "mine", "{key}");
        c.delete(proto::DeleteRequest {
            key: key.into(),
            consistency: Consistency::One as i32,
        })
        .await
        .unwrap_or_else(|e| panic!("Delete {key}: {e}"));
        let got = c
            .get(get(key, Consistency::Local))
            .await
            .unwrap()
            .into_inner();
        assert!(!got.found, "{key} deleted");
    }
    let stats = admin(&node)
        .await
        .stats(proto::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.versions_refused, 2, "both refused and counted");
    node.shutdown().await.unwrap();
}

/// The Merkle roots `node` reports, by partition.
async fn digests(node: &RunningNode) -> Vec<(u32, Vec<u8>)> {
    let d = admin(node)
        .await
        .digests(proto::DigestsRequest {})
        .await
        .unwrap()
        .into_inner();
    d.partitions
        .into_iter()
        .map(|p| (p.partition, p.root))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_what_replication_never_carried() {
    use kilovolt::crdt::{Entry, Version};

    let mut nodes = start_cluster_with("anti-entropy", &["", "", ""], |c| {
        c.anti_entropy_interval = Duration::from_millis(300);
    })
    .await;
    // Entries that only one replica holds, as a lost delta would leave them:
    // newer on one side, older on the other, and a tombstone.
    // Versions of a moment ago: old versions would be settled tombstones,
    // which a replica that lacks the key rightly refuses.
    let now = kilovolt::clock::system_time().0;
    let a = &nodes[0].handles().store;
    let b = &nodes[1].handles().store;
    for i in 0..200u64 {
        a.merge(
            &format!("only-a-{i}"),
            Entry::value(Version::new(now - 1_000 + i, 1), "a", 0),
        );
        b.merge(
            &format!("only-b-{i}"),
            Entry::value(Version::new(now - 1_000 + i, 2), "b", 0),
        );
    }
    a.merge(
        "contested",
        Entry::value(Version::new(now - 500, 1), "older", 0),
    );
    b.merge(
        "contested",
        Entry::value(Version::new(now - 400, 2), "newer", 0),
    );
    b.merge(
        "deleted",
        Entry::value(Version::new(now - 300, 2), "doomed", 0),
    );
    a.merge("deleted", Entry::tombstone(Version::new(now - 200, 1)));

    let converged = eventually(Duration::from_secs(10), "replicas to converge", || async {
        let first = digests(&nodes[0]).await;
        for node in &nodes[1..] {
            if digests(node).await != first {
                return None;
            }
        }
        Some(first)
    })
    .await;
    assert_eq!(
        converged.len(),
        1024,
        "RF 3 over 3 nodes: every node holds every partition"
    );
    for node in &nodes {
        assert_eq!(
            local_value(node, "contested").await.as_deref(),
            Some("newer")
        );
        assert_eq!(
            local_value(node, "deleted").await,
            None,
            "the delete is not undone"
        );
        assert_eq!(local_value(node, "only-a-7").await.as_deref(), Some("a"));
        assert_eq!(local_value(node, "only-b-199").await.as_deref(), Some("b"));
    }
    let stats = admin(&nodes[2])
        .await
        .stats(proto::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        stats.anti_entropy_rounds > 0 && stats.anti_entropy_repaired >= 402,
        "{stats:?}"
    );
    let stopped = nodes.pop().unwrap();
    stopped.shutdown().await.unwrap();
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_that_move_to_a_new_node_are_handed_off_then_dropped() {
    let fast = |c: &mut Config| {
        tune(c, "handoff");
        c.replication_factor = 1;
        c.anti_entropy_interval = Duration::from_millis(300);
    };
    let a = start_node(fast).await;
    for i in 0..200 {
        kv(&a)
            .await
            .set(set(&format!("k{i}"), "v", Consistency::One))
            .await
            .unwrap();
    }
    let seeds = vec![a.info().address.clone()];
    let b = start_node(|c| {
        fast(c);
        c.cluster = seeds;
    })
    .await;
    for node in [&a, &b] {
        wait_alive(node, 2).await;
    }
    // With RF 1 each key now has one home; a keeps only its own share.
    let keys = |n: &RunningNode| n.handles().store.stats().values;
    eventually(
        Duration::from_secs(10),
        "a to hand off and drop what moved",
        || async { (keys(&b) > 0 && keys(&a) + keys(&b) == 200).then_some(()) },
    )
    .await;
    assert!(keys(&a) < 200, "a dropped the partitions it handed off");
    for i in 0..200 {
        let key = format!("k{i}");
        for node in [&a, &b] {
            let got = kv(node)
                .await
                .get(get(&key, Consistency::One))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got.value, "v", "{key} via {}", node.info().id);
        }
    }
    shutdown_all(vec![a, b]).await;
}

/// How far the skewed test node's clock is from the system clock, in
/// NTP64 units (2^32 per second), either way.
static SKEW: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

fn clock_skewed() -> uhlc::NTP64 {
    let now = kilovolt::clock::system_time().0;
    let skew = SKEW.load(std::sync::atomic::Ordering::Relaxed);
    uhlc::NTP64(now.saturating_add_signed(skew))
}

/// Two nodes, so that neither can tell which clock is wrong and both keep
/// writing (with more nodes the odd clock out refuses writes: see the next
/// test): the versions of a clock that jumps an hour either way are merged,
/// do not drag the other clock, and lose no write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_that_jump_past_the_drift_bound_either_way_lose_no_write() {
    use common::start_node_with_clock;
    use std::sync::atomic::Ordering::Relaxed;

    let hour = 3600i64 << 32;
    let fast = |c: &mut Config| {
        tune(c, "skew");
        c.max_clock_drift = Duration::from_millis(500);
    };
    let honest = start_node(fast).await;
    let seeds = vec![honest.info().address.clone()];
    let skewed = start_node_with_clock(
        |c| {
            fast(c);
            c.cluster = seeds;
        },
        clock_skewed,
    )
    .await;
    for node in [&honest, &skewed] {
        wait_alive(node, 2).await;
    }
    let version = |r: proto::SetResponse| r.version.map(|v| v.time).unwrap();

    // The clock jumps an hour ahead; its write reaches the other node, which
    // merges it, counts the event, and is not dragged along.
    SKEW.store(hour, Relaxed);
    let future = version(
        kv(&skewed)
            .await
            .set(set("k", "from the future", Consistency::All))
            .await
            .unwrap()
            .into_inner(),
    );
    let stats = admin(&honest)
        .await
        .stats(proto::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(stats.clock_drift_events >= 1, "{stats:?}");
    let other = version(
        kv(&honest)
            .await
            .set(set("other", "x", Consistency::All))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(
        other < future,
        "the honest clock was not dragged an hour ahead"
    );
    // The honest node's own write to that key still wins: stored + 1.
    let mine = version(
        kv(&honest)
            .await
            .set(set("k", "honest", Consistency::All))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(mine > future);

    // The clock jumps to an hour behind: its writes to keys written since
    // still win (stored + 1), so the client's latest write is kept.
    SKEW.store(-hour, Relaxed);
    let late = version(
        kv(&skewed)
            .await
            .set(set("k", "from the past", Consistency::All))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(late > mine);
    for node in [&honest, &skewed] {
        let got = kv(node)
            .await
            .get(get("k", Consistency::Local))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.value, "from the past", "on {}", node.info().id);
    }
    SKEW.store(0, Relaxed);
    shutdown_all(vec![honest, skewed]).await;
}

/// How far the fast node of the next test runs ahead (NTP64).
static FAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn clock_fast() -> uhlc::NTP64 {
    let now = kilovolt::clock::system_time().0;
    uhlc::NTP64(now + FAST.load(std::sync::atomic::Ordering::Relaxed))
}

/// One node's clock runs 3 s ahead: once it has measured its peers, it
/// refuses to coordinate writes (UNAVAILABLE, naming the offset and the
/// bound), so it stops issuing versions and expiry instants 3 s off; the
/// other nodes' writes keep following their own clocks; and when its clock
/// is corrected it writes again, once its wall clock has caught up with its
/// HLC (which never goes back, and followed the fast clock meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_runs_far_ahead_refuses_to_coordinate_writes() {
    use common::start_node_with_clock;
    use std::sync::atomic::Ordering::Relaxed;

    let bound = |c: &mut Config| {
        tune(c, "fast-node");
        c.max_clock_drift = Duration::from_millis(500);
    };
    let a = start_node(bound).await;
    let seeds = vec![a.info().address.clone()];
    let s1 = seeds.clone();
    let b = start_node(|c| {
        bound(c);
        c.cluster = s1;
    })
    .await;
    let fast = start_node_with_clock(
        |c| {
            bound(c);
            c.cluster = seeds;
        },
        clock_fast,
    )
    .await;
    for node in [&a, &b, &fast] {
        wait_alive(node, 3).await;
    }

    FAST.store(3 << 32, Relaxed);
    let mut leaked = 0;
    let refused = eventually(
        Duration::from_secs(15),
        "the fast node to refuse writes",
        || {
            leaked += 1;
            let key = format!("fast-{leaked}");
            let fast = &fast;
            async move {
                kv(fast)
                    .await
                    .set(set(&key, "x", Consistency::One))
                    .await
                    .err()
            }
        },
    )
    .await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("ahead of")
            && refused.message().contains("--max-clock-drift (500 ms)"),
        "{}",
        refused.message()
    );
    let status = kv(&fast)
        .await
        .delete(proto::DeleteRequest {
            key: "fast-1".into(),
            consistency: Consistency::Quorum as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "every write is refused");

    // The honest nodes still write, stamped by their own clocks.
    let drift = 1u64 << 31; // 500 ms
    for (i, node) in [&a, &b].into_iter().enumerate() {
        for k in 0..8 {
            let before = kilovolt::clock::system_time().0;
            let v = kv(node)
                .await
                .set(set(&format!("honest-{i}-{k}"), "x", Consistency::One))
                .await
                .unwrap()
                .into_inner()
                .version
                .unwrap()
                .time;
            assert!(
                v < before + drift,
                "{} stamped {} ms ahead of its clock",
                node.info().id,
                ((v - before) * 1000) >> 32
            );
        }
    }

    // Corrected, its HLC is still about 3 s ahead: it refuses until its
    // wall clock catches up, then writes again.
    FAST.store(0, Relaxed);
    let status = kv(&fast)
        .await
        .set(set("again", "x", Consistency::One))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("ahead of"),
        "{}",
        status.message()
    );
    eventually(
        Duration::from_secs(15),
        "the corrected node to write",
        || {
            let fast = &fast;
            async move {
                kv(fast)
                    .await
                    .set(set("again", "x", Consistency::One))
                    .await
                    .ok()
            }
        },
    )
    .await;
    shutdown_all(vec![a, b, fast]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_collected_only_once_every_replica_holds_them() {
    collection_waits_for_a_cut_node("tombstones", &["", "", ""]).await;
}

/// With four nodes and three replicas, every partition has a member outside
/// its replica set; collection waits for it too (it could hold a copy to
/// hand off), and proceeds once it says it holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_wait_for_members_outside_the_replicas_too() {
    collection_waits_for_a_cut_node("outsiders", &["", "", "", ""]).await;
}

/// Writes 50 keys at ALL, cuts the last node off, deletes them at QUORUM
/// (the cut-off node keeps the live values), lets the grace pass (nothing
/// may be collected while a member is unreachable), heals, and checks that
/// everything is collected, deletes stay deleted and digests agree. The
/// deletes come after the cut, so no tombstone can be collected before the
/// count is taken, however slow the machine.
async fn collection_waits_for_a_cut_node(cluster: &str, regions: &[&str]) {
    let nodes = start_cluster_with(cluster, regions, |c| {
        c.anti_entropy_interval = Duration::from_millis(200);
        c.request_timeout = Duration::from_millis(500);
        c.max_hint_age = Duration::from_millis(300);
        c.tombstone_grace = Duration::from_secs(1);
    })
    .await;
    let mut c = kv(&nodes[0]).await;
    for i in 0..50 {
        c.set(set(&format!("k{i}"), "v", Consistency::All))
            .await
            .unwrap();
    }

    // Cut the last node off, on every side: with a member unreachable (a
    // replica, or one outside the replicas), nothing may be collected.
    let (rest, last) = nodes.split_at(nodes.len() - 1);
    let lonely = last[0].info().id.clone();
    last[0]
        .handles()
        .switch
        .cut(rest.iter().map(|n| n.info().id.clone()));
    for n in rest {
        n.handles().switch.cut([lonely.clone()]);
    }
    let mut a = admin(&nodes[0]).await;
    let mut copies = 0;
    for i in 0..50 {
        let key = format!("k{i}");
        c.delete(proto::DeleteRequest {
            key: key.clone(),
            consistency: Consistency::Quorum.into(),
        })
        .await
        .unwrap();
        let replicas = replicas_of(&mut a, &key).await;
        copies += replicas.iter().filter(|r| *r.id != *lonely).count() as u64;
    }
    let tombstones = |n: &RunningNode| n.handles().store.stats().tombstones;
    let total = |nodes: &[RunningNode]| nodes.iter().map(tombstones).sum::<u64>();
    eventually(
        Duration::from_secs(10),
        "every reachable replica to hold its tombstones",
        || async { (total(&nodes) == copies).then_some(()) },
    )
    .await;
    assert_eq!(
        tombstones(&last[0]),
        0,
        "the cut-off node missed the deletes"
    );
    let held: Vec<u64> = nodes.iter().map(tombstones).collect();

    // The sleep is the point: time must pass beyond the grace.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        nodes.iter().map(tombstones).collect::<Vec<_>>(),
        held,
        "collection waits for the unreachable member"
    );

    for n in &nodes {
        n.handles().switch.heal();
    }
    for node in &nodes {
        eventually(
            Duration::from_secs(10),
            "tombstones to be collected everywhere",
            || async { (tombstones(node) == 0).then_some(()) },
        )
        .await;
    }
    for node in &nodes {
        for i in 0..50 {
            let got = kv(node)
                .await
                .get(get(&format!("k{i}"), Consistency::All))
                .await
                .unwrap()
                .into_inner();
            assert!(!got.found, "a collected delete stays deleted");
        }
    }
    // Replicas of a partition agree on its digests.
    let first: BTreeMap<u32, Vec<u8>> = digests(&nodes[0]).await.into_iter().collect();
    for node in &nodes[1..] {
        for (p, digest) in digests(node).await {
            if let Some(theirs) = first.get(&p) {
                assert_eq!(&digest, theirs, "partition {p}");
            }
        }
    }
    shutdown_all(nodes).await;
}

fn map_set(key: &str, pairs: &[(&str, &str)], level: Consistency) -> proto::MapSetRequest {
    proto::MapSetRequest {
        key: key.into(),
        fields: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        consistency: level.into(),
    }
}

fn increment(key: &str, delta: i64, level: Consistency) -> proto::IncrementRequest {
    proto::IncrementRequest {
        key: key.into(),
        delta,
        consistency: level.into(),
    }
}

/// The fields of the map `node` holds at `key`, in its own store.
async fn local_fields(node: &RunningNode, key: &str) -> Option<BTreeSet<(String, String)>> {
    let got = kv(node)
        .await
        .map_get(proto::MapGetRequest {
            key: key.into(),
            fields: Vec::new(),
            consistency: Consistency::Local.into(),
        })
        .await
        .ok()?
        .into_inner();
    got.found.then(|| got.fields.into_iter().collect())
}

/// The counter `node` holds at `key`, in its own store.
async fn local_counter(node: &RunningNode, key: &str) -> Option<i64> {
    let got = kv(node)
        .await
        .get_counter(proto::GetCounterRequest {
            key: key.into(),
            consistency: Consistency::Local.into(),
        })
        .await
        .ok()?
        .into_inner();
    got.found.then_some(got.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_and_counters_merge_every_nodes_writes_and_hinted_increments_count_once() {
    let mut nodes = start_cluster("typed", &["", "", ""], 3).await;
    let mut expected_fields = BTreeSet::new();
    let mut expected_sum = 0;
    for (i, node) in nodes.iter().enumerate() {
        let mut c = kv(node).await;
        let field = format!("from-{i}");
        c.map_set(map_set("profile", &[(&field, "v")], Consistency::One))
            .await
            .unwrap();
        expected_fields.insert((field, "v".to_string()));
        for _ in 0..10 {
            c.increment(increment("visits", i as i64 + 1, Consistency::One))
                .await
                .unwrap();
            expected_sum += i as i64 + 1;
        }
    }

    // One node goes away: writes for it are held as hints.
    let stopped = nodes.pop().unwrap();
    let port = stopped.local_addr().port();
    stopped.shutdown().await.unwrap();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = kv(node).await;
        let field = format!("while-down-{i}");
        c.map_set(map_set("profile", &[(&field, "w")], Consistency::Quorum))
            .await
            .unwrap();
        expected_fields.insert((field, "w".to_string()));
        for _ in 0..5 {
            c.increment(increment("visits", -2, Consistency::Quorum))
                .await
                .unwrap();
            expected_sum -= 2;
        }
    }

    // It comes back empty; hints and anti-entropy both deliver what it
    // missed, and every increment still counts once.
    let seeds: Vec<String> = nodes.iter().map(|n| n.info().address.clone()).collect();
    nodes.push(
        start_node(|c| {
            tune(c, "typed");
            c.port = port;
            c.cluster = seeds;
            c.anti_entropy_interval = Duration::from_millis(300);
        })
        .await,
    );
    for node in &nodes {
        wait_alive(node, 3).await;
    }
    for node in &nodes {
        eventually(
            Duration::from_secs(10),
            "every field and increment",
            || async {
                let fields = local_fields(node, "profile").await?;
                let sum = local_counter(node, "visits").await?;
                (fields == expected_fields && sum == expected_sum).then_some(())
            },
        )
        .await;
    }
    eventually(Duration::from_secs(10), "hints to drain", || async {
        let mut total = 0;
        for node in &nodes {
            let stats = admin(node).await.stats(proto::StatsRequest {}).await.ok()?;
            total += stats.into_inner().hints_pending;
        }
        (total == 0).then_some(())
    })
    .await;
    for node in &nodes {
        assert_eq!(local_counter(node, "visits").await, Some(expected_sum));
    }
    let first = digests(&nodes[0]).await;
    for node in &nodes[1..] {
        assert_eq!(digests(node).await, first);
    }
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_replicas_coordinate_maps_and_counters_and_check_kinds() {
    let nodes = start_cluster("five-typed", &["", "", "", "", ""], 3).await;
    let mut a = admin(&nodes[0]).await;
    for i in 0..4 {
        let map_key = format!("typed-{i}-map");
        let counter_key = format!("typed-{i}-counter");
        for (k, is_map) in [(&map_key, true), (&counter_key, false)] {
            let replicas = replicas_of(&mut a, k).await;
            let ids: BTreeSet<_> = replicas.iter().map(|m| m.id.clone()).collect();
            let (holders, others): (Vec<_>, Vec<_>) =
                nodes.iter().partition(|n| ids.contains(&n.info().id));
            assert_eq!((holders.len(), others.len()), (3, 2));
            let mut first = kv(others[0]).await;
            let mut second = kv(others[1]).await;
            if is_map {
                first
                    .map_set(map_set(k, &[("a", "1")], Consistency::One))
                    .await
                    .unwrap();
                second
                    .map_set(map_set(k, &[("b", "2")], Consistency::Quorum))
                    .await
                    .unwrap();
                // The non-replica read the map before writing: a string
                // write there is refused.
                let status = second.set(set(k, "s", Consistency::One)).await.unwrap_err();
                assert_eq!(
                    status.code(),
                    Code::FailedPrecondition,
                    "{}",
                    status.message()
                );
                assert!(status.message().contains("key holds a map"));
                let read = first
                    .map_get(proto::MapGetRequest {
                        key: k.clone(),
                        fields: Vec::new(),
                        consistency: Consistency::Quorum.into(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(read.fields.len(), 2, "{read:?}");
                for node in &holders {
                    eventually(
                        Duration::from_secs(5),
                        "both fields on every replica",
                        || async { (local_fields(node, k).await?.len() == 2).then_some(()) },
                    )
                    .await;
                }
            } else {
                for _ in 0..3 {
                    first
                        .increment(increment(k, 2, Consistency::One))
                        .await
                        .unwrap();
                    second
                        .increment(increment(k, 3, Consistency::Quorum))
                        .await
                        .unwrap();
                }
                let status = first
                    .map_set(map_set(k, &[("a", "1")], Consistency::One))
                    .await
                    .unwrap_err();
                assert!(status.message().contains("key holds a counter"));
                for node in &holders {
                    eventually(
                        Duration::from_secs(5),
                        "the full sum on every replica",
                        || async { (local_counter(node, k).await? == 15).then_some(()) },
                    )
                    .await;
                }
            }
            for node in &others {
                assert_eq!(
                    local_fields(node, k).await,
                    None,
                    "a non-replica keeps no copy"
                );
                assert_eq!(local_counter(node, k).await, None);
            }
        }
    }
    shutdown_all(nodes).await;
}
