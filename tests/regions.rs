//! Real processes in three regions: six `kilovolt-db` binaries on loopback,
//! two per region (`--region`), the links between regions delayed through
//! the Faults API. Which replica answered is read from each node's
//! `Stats.peer_reads_served`, never from timings.

mod common;

use std::process::Command;
use std::time::Duration;

use common::eventually;
use common::process::{wait_ready, Server, SERVER};
use kilovolt::proto::{
    self, admin_client::AdminClient, faults_client::FaultsClient, kilovolt_client::KilovoltClient,
    Consistency,
};
use tonic::transport::Channel;
use tonic::Code;

/// The delay added to every message between regions, each way.
const WAN_DELAY_MS: u32 = 20;

/// Six nodes: `a1 a2` in r1, `b1 b2` in r2, `c1 c2` in r3.
struct Regions {
    nodes: Vec<(Server, &'static str)>,
}

impl Regions {
    /// Starts the six nodes with `placement` (e.g. `--replicas-per-region
    /// 2`) and waits until each sees all six alive and ready.
    async fn start(cluster: &str, placement: &[&str]) -> Regions {
        Self::start_in(cluster, &["r1", "r1", "r2", "r2", "r3", "r3"], placement).await
    }

    /// Starts one node per entry of `regions`, in that region, with
    /// `placement`, and waits until each sees all alive and ready.
    async fn start_in(cluster: &str, regions: &[&'static str], placement: &[&str]) -> Regions {
        let mut nodes: Vec<(Server, &'static str)> = Vec::new();
        for &region in regions {
            let seeds: Vec<&str> = nodes.iter().map(|(s, _)| s.addr.as_str()).collect();
            let mut cmd = Command::new(SERVER);
            cmd.args(["--host", "127.0.0.1", "--port", "0", "--fault-injection"])
                .args(["--cluster-id", cluster, "--gossip-interval", "50ms"])
                .args(["--anti-entropy-interval", "1s", "--request-timeout", "1s"])
                .args(["--region", region])
                .args(placement);
            if !seeds.is_empty() {
                cmd.args(["--cluster", &seeds.join(",")]);
            }
            nodes.push((Server::launch(cmd), region));
        }
        let regions = Regions { nodes };
        for (s, _) in &regions.nodes {
            wait_ready(&s.addr, regions.nodes.len()).await;
        }
        regions
    }

    fn node(&self, i: usize) -> &Server {
        &self.nodes[i].0
    }

    /// The nodes outside `region`.
    fn outside(&self, region: &str) -> Vec<&Server> {
        self.nodes
            .iter()
            .filter(|(_, r)| *r != region)
            .map(|(s, _)| s)
            .collect()
    }

    /// Each node's `peer_reads_served`, in node order.
    async fn served(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (s, _) in &self.nodes {
            out.push(stats(s).await.peer_reads_served);
        }
        out
    }

    /// Delays every message between regions by [`WAN_DELAY_MS`]: each link
    /// degraded at one end (the node of the lower region), which delays its
    /// messages both ways once.
    async fn wan(&self) {
        for (s, region) in &self.nodes {
            let peers = self
                .nodes
                .iter()
                .filter(|(_, r)| *r > *region)
                .map(|(p, _)| p.addr.clone())
                .collect::<Vec<_>>();
            if peers.is_empty() {
                continue;
            }
            FaultsClient::new(channel(s).await)
                .degrade(proto::DegradeRequest {
                    peers,
                    drop: 0.0,
                    delay_ms: WAN_DELAY_MS,
                })
                .await
                .unwrap();
        }
    }

    /// Cuts `region` off from the others, on both sides.
    async fn cut_off(&self, region: &str) {
        for (s, r) in &self.nodes {
            let peers = if *r == region {
                self.outside(region)
                    .iter()
                    .map(|p| p.addr.clone())
                    .collect()
            } else {
                self.nodes
                    .iter()
                    .filter(|(_, r)| *r == region)
                    .map(|(p, _)| p.addr.clone())
                    .collect()
            };
            FaultsClient::new(channel(s).await)
                .cut(proto::CutRequest { peers })
                .await
                .unwrap();
        }
    }

    /// Lifts every fault and waits until all six are alive and ready again.
    async fn heal(&self) {
        for (s, _) in &self.nodes {
            FaultsClient::new(channel(s).await)
                .heal(proto::HealRequest {})
                .await
                .unwrap();
        }
        for (s, _) in &self.nodes {
            wait_ready(&s.addr, self.nodes.len()).await;
        }
    }
}

async fn channel(s: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn stats(s: &Server) -> proto::StatsResponse {
    AdminClient::new(channel(s).await)
        .stats(proto::StatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn set(s: &Server, key: &str, value: &str, level: Consistency) -> Result<(), tonic::Status> {
    KilovoltClient::new(channel(s).await)
        .set(proto::SetRequest {
            key: key.into(),
            value: value.into(),
            ttl_ms: 0,
            consistency: level.into(),
        })
        .await
        .map(|_| ())
}

async fn get(s: &Server, key: &str, level: Consistency) -> Result<Option<String>, tonic::Status> {
    KilovoltClient::new(channel(s).await)
        .get(proto::GetRequest {
            key: key.into(),
            consistency: level.into(),
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            r.found.then_some(r.value)
        })
}

async fn replicas(s: &Server, key: &str) -> Vec<proto::Member> {
    common::replicas_of(&mut AdminClient::new(channel(s).await), key).await
}

/// The change of each counter from `before` to `after`.
fn diff(before: &[u64], after: &[u64]) -> Vec<u64> {
    before.iter().zip(after).map(|(b, a)| a - b).collect()
}

/// Two replicas per region: each region holds every key twice, the local
/// levels are served by the region alone (no read reaches another region),
/// a region cut off keeps serving LOCAL_* and ONE on both sides, and after
/// the heal every node converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_levels_stay_in_their_region_and_survive_a_cut() {
    let regions = Regions::start("regions-k2", &["--replicas-per-region", "2"]).await;
    let (a1, b1) = (regions.node(0), regions.node(2));

    // Admin.Replicas: six replicas, two in each region, regions shown.
    for key in ["alpha", "beta", "gamma"] {
        let mut seen: Vec<String> = replicas(a1, key)
            .await
            .into_iter()
            .map(|m| m.region)
            .collect();
        seen.sort();
        assert_eq!(seen, ["r1", "r1", "r2", "r2", "r3", "r3"], "{key}");
    }
    regions.wan().await;

    // One copy of each write crosses to each remote region, at ONE and at
    // the levels that await remote replicas: a replica there relays it to
    // the other (and, awaited, answers for it). Every node ends up with
    // every write.
    let sent = |stats: &proto::StatsResponse| -> Vec<(String, u64)> {
        stats
            .regions
            .iter()
            .map(|r| (r.region.clone(), r.bytes_sent))
            .collect()
    };
    let value = "x".repeat(1000);
    const WRITES: u64 = 20;
    for level in [
        Consistency::One,
        Consistency::Quorum,
        Consistency::EachQuorum,
    ] {
        let key = |i: u64| format!("wan-{}-{i}", level.as_str_name());
        let before = sent(&stats(a1).await);
        for i in 0..WRITES {
            set(a1, &key(i), &value, level).await.unwrap();
        }
        for (s, _) in &regions.nodes {
            eventually(
                Duration::from_secs(10),
                "every node to hold the writes",
                || async {
                    for i in 0..WRITES {
                        get(s, &key(i), Consistency::Local).await.ok()??;
                    }
                    Some(())
                },
            )
            .await;
        }
        let after = sent(&stats(a1).await);
        assert_eq!(
            after.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
            ["r2", "r3"],
            "replication is reported for the other regions"
        );
        for ((region, b), (_, a)) in before.iter().zip(&after) {
            let per_write = (a - b) / WRITES;
            println!("WAN bytes per 1000-byte write at {level:?} to {region}: {per_write}");
            assert!(
                (1000..1500).contains(&per_write),
                "{per_write} bytes per write at {level:?} to {region}: one copy, not two"
            );
        }
    }

    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    for key in &keys {
        set(a1, key, "v1", Consistency::LocalQuorum).await.unwrap();
        // Acknowledged at LOCAL_QUORUM: the region's other replica has it.
        assert_eq!(
            get(regions.node(1), key, Consistency::Local)
                .await
                .unwrap()
                .as_deref(),
            Some("v1")
        );
    }

    // LOCAL_ONE and ONE are answered by a1 itself; LOCAL_QUORUM asks a2,
    // once per read; no read reaches r2 or r3.
    let before = regions.served().await;
    for key in &keys {
        for level in [
            Consistency::LocalOne,
            Consistency::One,
            Consistency::LocalQuorum,
        ] {
            assert_eq!(get(a1, key, level).await.unwrap().as_deref(), Some("v1"));
        }
    }
    let served = diff(&before, &regions.served().await);
    assert_eq!(
        served,
        [0, keys.len() as u64, 0, 0, 0, 0],
        "reads served per node"
    );

    // QUORUM and EACH_QUORUM do reach the other regions (the counters see
    // them).
    let before = regions.served().await;
    for key in &keys {
        assert_eq!(
            get(a1, key, Consistency::EachQuorum)
                .await
                .unwrap()
                .as_deref(),
            Some("v1")
        );
    }
    let served = diff(&before, &regions.served().await);
    for (i, n) in served.iter().enumerate().skip(2) {
        assert_eq!(*n, keys.len() as u64, "EACH_QUORUM asks node {i}");
    }

    // r1 cut off: both sides keep serving LOCAL_* and ONE.
    regions.cut_off("r1").await;
    for (side, node) in [("r1", a1), ("r2", b1)] {
        for level in [
            Consistency::LocalOne,
            Consistency::LocalQuorum,
            Consistency::One,
        ] {
            let key = format!("cut-{side}-{}", level.as_str_name());
            set(node, &key, side, level).await.unwrap();
            assert_eq!(get(node, &key, level).await.unwrap().as_deref(), Some(side));
        }
    }
    // What r1 writes meanwhile waits for r2 and r3, and Stats says how much
    // and for how long.
    eventually(Duration::from_secs(10), "a backlog toward r2", || async {
        set(a1, "backlog", "b", Consistency::One).await.ok()?;
        let r2 = stats(a1)
            .await
            .regions
            .into_iter()
            .find(|r| r.region == "r2")?;
        (r2.queued_bytes + r2.hints > 0 && r2.oldest_unsent_ms > 0).then_some(())
    })
    .await;
    // EACH_QUORUM cannot be met, and says which region was missing.
    let err = set(a1, "each", "x", Consistency::EachQuorum)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("in region \"r2\" (0 answered)"),
        "{}",
        err.message()
    );

    // After the heal every node holds every key: all digests agree, and
    // what each side wrote during the cut reads everywhere.
    regions.heal().await;
    eventually(Duration::from_secs(30), "six nodes to converge", || async {
        let mut roots = Vec::new();
        for (s, _) in &regions.nodes {
            let d = AdminClient::new(channel(s).await)
                .digests(proto::DigestsRequest {})
                .await
                .unwrap()
                .into_inner();
            roots.push(d.partitions.into_iter().map(|p| p.root).collect::<Vec<_>>());
        }
        roots.windows(2).all(|w| w[0] == w[1]).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "the backlog delivered", || async {
        let regions = stats(a1).await.regions;
        let backlog: u64 = regions.iter().map(|r| r.queued_bytes + r.hints).sum();
        (backlog == 0).then_some(())
    })
    .await;
    for (side, level) in [
        ("r1", Consistency::LocalQuorum),
        ("r2", Consistency::LocalOne),
    ] {
        let key = format!("cut-{side}-{}", level.as_str_name());
        for (s, _) in &regions.nodes {
            assert_eq!(
                get(s, &key, Consistency::Local).await.unwrap().as_deref(),
                Some(side)
            );
        }
    }
}

/// One replica per region (three in all): a node that holds no replica of a
/// key reads it from its own region's replica first, and a write's kind
/// check at LOCAL_ONE or LOCAL_QUORUM reads nothing outside the region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_replica_reads_its_regions_replica_first() {
    let regions = Regions::start("regions-k1", &["--replicas-per-region", "1"]).await;
    regions.wan().await;
    let (a1, a2) = (regions.node(0), regions.node(1));
    let a2_id = a2.addr.clone();
    // Keys whose r1 replica is a2: a1 coordinates them without a copy.
    let mut keys = Vec::new();
    for i in 0.. {
        let key = format!("far-{i}");
        let held = replicas(a1, &key).await;
        let mut seen: Vec<&str> = held.iter().map(|m| m.region.as_str()).collect();
        seen.sort_unstable();
        assert_eq!(seen, ["r1", "r2", "r3"], "one replica per region");
        if held.iter().any(|m| m.id == a2_id) {
            keys.push(key);
        }
        if keys.len() == 8 {
            break;
        }
    }

    // Writes at the local levels read the key's kind from a2 only.
    let before = regions.served().await;
    for key in &keys {
        set(a1, key, "v", Consistency::LocalOne).await.unwrap();
        set(a1, key, "w", Consistency::LocalQuorum).await.unwrap();
    }
    let served = diff(&before, &regions.served().await);
    assert_eq!(served, [0, 2 * keys.len() as u64, 0, 0, 0, 0]);

    // ONE reads ask a2 first, every time (a slow answer may also be hedged
    // to another region, so only a2's count is exact).
    let before = regions.served().await;
    for key in &keys {
        assert_eq!(
            get(a1, key, Consistency::One).await.unwrap().as_deref(),
            Some("w")
        );
        assert_eq!(
            get(a1, key, Consistency::LocalOne)
                .await
                .unwrap()
                .as_deref(),
            Some("w")
        );
    }
    let served = diff(&before, &regions.served().await);
    assert_eq!(
        served[1],
        2 * keys.len() as u64,
        "a2 asked first: {served:?}"
    );

    // With r1's replica of the key cut off from a1, LOCAL_ONE fails naming
    // the region rather than ask another.
    FaultsClient::new(channel(a1).await)
        .cut(proto::CutRequest {
            peers: vec![a2_id.clone()],
        })
        .await
        .unwrap();
    let before = regions.served().await;
    let err = get(a1, &keys[0], Consistency::LocalOne).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("in region \"r1\""),
        "{}",
        err.message()
    );
    let served = diff(&before, &regions.served().await);
    assert_eq!(served, [0; 6], "no other region asked");
}

/// With no client traffic at all, each node still measures its peers'
/// round-trip times (a light probe of idle peers), and shows them in
/// `Admin.Members`: a peer delayed by 30 ms each way (one end of the link
/// degrades it, which delays the messages both ways: requests and answers)
/// reads as at least 60 ms away, an undelayed one as nearer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_peers_are_probed_for_their_round_trip_time() {
    use kilovolt::switch::Degradation;
    let mut nodes: Vec<kilovolt::node::RunningNode> = Vec::new();
    for region in ["r1", "r1", "r2"] {
        let seeds: Vec<String> = nodes.iter().map(|n| n.info().address.clone()).collect();
        nodes.push(
            common::start_node(|c| {
                c.cluster_id = "regions-probe".into();
                c.gossip_interval = Duration::from_millis(50);
                c.cluster = seeds;
                c.region = region.into();
            })
            .await,
        );
    }
    let far = nodes[2].info().id.clone();
    let near = nodes[1].info().id.clone();
    let wan = Degradation {
        drop: 0.0,
        delay: Duration::from_millis(30),
    };
    nodes[0].handles().switch.degrade([far.clone()], wan);
    let admin = common::admin(&nodes[0]).await;
    eventually(
        Duration::from_secs(20),
        "the far peer measured at 60 ms",
        || {
            let mut admin = admin.clone();
            let (far, near) = (far.clone(), near.clone());
            async move {
                let m = admin
                    .members(proto::MembersRequest {})
                    .await
                    .ok()?
                    .into_inner();
                let rtt = |id: &str| m.members.iter().find(|m| m.id == id).map(|m| m.rtt_us);
                let (far, near) = (rtt(&far)?, rtt(&near)?);
                (far >= 60_000 && near > 0 && near < far).then_some(())
            }
        },
    )
    .await;
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// A delta queue does not hold a write back while the batch before it
/// crosses a slow link: with 1 s each way to the other region, a ONE write
/// made while a QUORUM write's batch is in flight reaches the other
/// region's replica before that QUORUM write is answered (one batch in
/// flight per peer made it wait the whole round trip first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_crosses_a_slow_link_while_the_batch_before_it_is_in_flight() {
    use kilovolt::switch::Degradation;
    let mut nodes: Vec<kilovolt::node::RunningNode> = Vec::new();
    for region in ["r1", "r2"] {
        let seeds: Vec<String> = nodes.iter().map(|n| n.info().address.clone()).collect();
        nodes.push(
            common::start_node(|c| {
                c.cluster_id = "regions-pipeline".into();
                c.gossip_interval = Duration::from_millis(50);
                // Gossip crosses the slow link too: not declared dead for
                // a second's silence.
                c.phi_threshold = 60.0;
                c.request_timeout = Duration::from_secs(10);
                c.replication_factor = 2;
                c.cluster = seeds;
                c.region = region.into();
            })
            .await,
        );
    }
    for node in &nodes {
        let admin = common::admin(node).await;
        eventually(Duration::from_secs(15), "both members ready", || {
            let mut admin = admin.clone();
            async move {
                let m = admin
                    .members(proto::MembersRequest {})
                    .await
                    .ok()?
                    .into_inner();
                (m.members
                    .iter()
                    .filter(|m| m.alive && m.state == "ready")
                    .count()
                    == 2)
                    .then_some(())
            }
        })
        .await;
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    b.handles().switch.degrade(
        [a.info().id.clone()],
        Degradation {
            drop: 0.0,
            delay: Duration::from_secs(1),
        },
    );
    let local = |kv: &KilovoltClient<Channel>, key: &'static str| {
        let mut kv = kv.clone();
        async move {
            let got = kv
                .get(proto::GetRequest {
                    key: key.into(),
                    consistency: Consistency::Local.into(),
                })
                .await
                .ok()?
                .into_inner();
            got.found.then_some(())
        }
    };
    let (kv_a, kv_b) = (common::kv(a).await, common::kv(b).await);
    let write = |key: &'static str, level: Consistency| {
        let mut kv = kv_a.clone();
        async move {
            kv.set(proto::SetRequest {
                key: key.into(),
                value: "v".into(),
                consistency: level.into(),
                ttl_ms: 0,
            })
            .await
            .map(|_| ())
        }
    };
    let first = tokio::spawn(write("first", Consistency::Quorum));
    // The first write is applied at a and its batch has left a's queue
    // (queued bytes count no batch in flight): it is crossing.
    let admin = common::admin(a).await;
    eventually(Duration::from_secs(5), "the first batch in flight", || {
        let mut admin = admin.clone();
        let held = local(&kv_a, "first");
        async move {
            held.await?;
            let s = admin.stats(proto::StatsRequest {}).await.ok()?.into_inner();
            s.regions.iter().all(|r| r.queued_bytes == 0).then_some(())
        }
    })
    .await;
    write("second", Consistency::One).await.unwrap();
    eventually(Duration::from_secs(10), "the second write at b", || {
        local(&kv_b, "second")
    })
    .await;
    if first.is_finished() {
        panic!(
            "the second write crossed only after the first was answered ({:?})",
            first.await
        );
    }
    first.await.unwrap().unwrap();
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// `kilovolt-bench --visible-at` measures how long a ONE write at r1 takes
/// to show in r3: never less than the delay between regions (each link
/// delays a message once each way), and every write shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_measures_when_a_write_shows_in_another_region() {
    const BENCH: &str = env!("CARGO_BIN_EXE_kilovolt-bench");
    let regions = Regions::start("regions-visible", &["--replicas-per-region", "2"]).await;
    regions.wan().await;
    let out = Command::new(BENCH)
        .args(["--addr", &regions.node(0).addr])
        .args(["--visible-at", &regions.node(4).addr])
        .args(["--visible-writes", "5", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["writes"], 5, "{report}");
    let p50 = report["p50_us"].as_u64().unwrap();
    assert!(p50 >= u64::from(WAN_DELAY_MS) * 1000, "{report}");
    assert!(report["max_us"].as_u64().unwrap() >= p50, "{report}");
}

/// A replica that relays a write to its region but cannot reach a
/// region-mate holds the write as a hint for it, as a coordinator would
/// (not left to anti-entropy), and hands it on after the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_cannot_reach_a_region_mate_holds_a_hint_for_it() {
    let regions = Regions::start("regions-relay-hint", &["--replicas-per-region", "2"]).await;
    let (a1, c1, c2) = (regions.node(0), regions.node(4), regions.node(5));
    // r3's two nodes cut from each other, on both sides; the rest whole.
    for (s, other) in [(c1, c2), (c2, c1)] {
        FaultsClient::new(channel(s).await)
            .cut(proto::CutRequest {
                peers: vec![other.addr.clone()],
            })
            .await
            .unwrap();
    }
    let before = stats(c1).await.hints_pending + stats(c2).await.hints_pending;
    assert_eq!(before, 0);
    // The write crosses to r3 once, to c1 or c2, which relays it to the
    // other: the cut fails that delivery (gossip through the other regions
    // keeps each alive in the other's eyes), which makes it a hint.
    set(a1, "relayed", "v", Consistency::One).await.unwrap();
    eventually(Duration::from_secs(10), "a hint held in r3", || async {
        let held = stats(c1).await.hints_pending + stats(c2).await.hints_pending;
        (held > 0).then_some(())
    })
    .await;
    assert_eq!(
        stats(a1).await.hints_pending,
        0,
        "the coordinator reached r3"
    );
    regions.heal().await;
    eventually(Duration::from_secs(20), "the hint handed on", || async {
        let held = stats(c1).await.hints_pending + stats(c2).await.hints_pending;
        let both = get(c1, "relayed", Consistency::Local).await.ok()?? == "v"
            && get(c2, "relayed", Consistency::Local).await.ok()?? == "v";
        (held == 0 && both).then_some(())
    })
    .await;
}

/// A write that awaits a remote region's replicas sends one copy there, to
/// its nearest replica; when that relay cannot be reached (cut from the
/// coordinator, later killed), the coordinator sends to the region's other
/// replicas itself, so QUORUM and EACH_QUORUM still succeed. Seven nodes:
/// r2 holds three replicas of every key, so EACH_QUORUM needs two of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaited_writes_fall_back_to_the_mates_of_a_failed_relay() {
    let mut regions = Regions::start_in(
        "regions-relay-fallback",
        &["r1", "r1", "r2", "r2", "r2", "r3", "r3"],
        &["--replicas-per-region", "3"],
    )
    .await;
    let a1 = regions.node(0);
    let (b1, b2, b3) = (regions.node(2), regions.node(3), regions.node(4));
    let id = |s: &Server| common::process::field(&s.listening, "node_id=").unwrap();
    let (b1_id, b2_id, b3_id) = (id(b1), id(b2), id(b3));
    regions.wan().await;
    // b1 is r2's nearest replica from a1: a1's links to b2 and b3 slower.
    let degrade = |peers: Vec<String>, delay_ms: u32| async move {
        FaultsClient::new(channel(a1).await)
            .degrade(proto::DegradeRequest {
                peers,
                drop: 0.0,
                delay_ms,
            })
            .await
            .unwrap();
    };
    degrade(vec![b2.addr.clone(), b3.addr.clone()], 3 * WAN_DELAY_MS).await;
    eventually(Duration::from_secs(20), "b1 measured nearest", || async {
        let m = AdminClient::new(channel(a1).await)
            .members(proto::MembersRequest {})
            .await
            .ok()?
            .into_inner();
        let rtt = |id: &str| m.members.iter().find(|m| m.id == id).map(|m| m.rtt_us);
        let (near, far) = (rtt(&b1_id)?, rtt(&b2_id)?.min(rtt(&b3_id)?));
        (near > 0 && far >= 4 * 1000 * u64::from(WAN_DELAY_MS) && near < far).then_some(())
    })
    .await;

    // Cut between a1 and b1 alone: gossip through the others keeps b1
    // alive in a1's eyes, so a1 still picks it, fails, and sends to b2 and
    // b3 directly (two copies cross: the counter shows the fallback).
    FaultsClient::new(channel(a1).await)
        .cut(proto::CutRequest {
            peers: vec![b1.addr.clone()],
        })
        .await
        .unwrap();
    let r2_sent = || async {
        stats(a1)
            .await
            .regions
            .iter()
            .find(|r| r.region == "r2")
            .map_or(0, |r| r.bytes_sent)
    };
    let value = "x".repeat(1000);
    const WRITES: u64 = 5;
    for level in [Consistency::Quorum, Consistency::EachQuorum] {
        let key = |i: u64| format!("cut-{}-{i}", level.as_str_name());
        let before = r2_sent().await;
        for i in 0..WRITES {
            set(a1, &key(i), &value, level).await.unwrap();
        }
        eventually(
            Duration::from_secs(10),
            "b2 and b3 to hold the writes",
            || async {
                for s in [b2, b3] {
                    for i in 0..WRITES {
                        get(s, &key(i), Consistency::Local).await.ok()??;
                    }
                }
                Some(())
            },
        )
        .await;
        eventually(
            Duration::from_secs(10),
            "both mates sent to directly",
            || async {
                let per_write = (r2_sent().await - before) / WRITES;
                (per_write >= 2000).then_some(())
            },
        )
        .await;
    }
    assert!(
        stats(a1).await.hints_pending >= 2 * WRITES,
        "the relay's copies are held for it"
    );

    // b1 back on the WAN, still the nearest, then killed: the writes right
    // after still succeed (sent to the survivors directly, or through one
    // of them once b1 is known down).
    degrade(vec![b1.addr.clone()], WAN_DELAY_MS).await;
    drop(regions.nodes.remove(2));
    let (a1, b2, b3) = (regions.node(0), regions.node(2), regions.node(3));
    for level in [Consistency::Quorum, Consistency::EachQuorum] {
        for i in 0..WRITES {
            let key = format!("killed-{}-{i}", level.as_str_name());
            set(a1, &key, &value, level).await.unwrap();
            eventually(Duration::from_secs(10), "b2 and b3 to hold it", || async {
                for s in [b2, b3] {
                    get(s, &key, Consistency::Local).await.ok()??;
                }
                Some(())
            })
            .await;
        }
    }
}
