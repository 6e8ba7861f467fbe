//! Real processes scraped as Prometheus scrapes them: three `kilovolt-db`
//! binaries with `--metrics-addr`, whose request, replication and
//! anti-entropy metrics must move as operations, a partition (Faults.Cut)
//! and a heal happen; and `/ready` (with gRPC health) that turns ready after
//! a restart only once the node has refilled.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::eventually;
use common::process::{field, wait_ready, Server, SERVER};
use kilovolt::proto::{
    self, admin_client::AdminClient, faults_client::FaultsClient, kilovolt_client::KilovoltClient,
    Consistency,
};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// A node process with metrics on an ephemeral port, and that address.
struct Node {
    server: Server,
    metrics: String,
}

/// Starts a node seeded with `seeds`, fast gossip and anti-entropy, with
/// `extra` flags.
fn node(cluster: &str, seeds: &[&Node], port: &str, extra: &[&str]) -> Node {
    let seeds: Vec<&str> = seeds.iter().map(|s| s.server.addr.as_str()).collect();
    let mut cmd = Command::new(SERVER);
    cmd.args(["--host", "127.0.0.1", "--port", port, "--fault-injection"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(["--cluster-id", cluster, "--gossip-interval", "50ms"])
        .args(["--anti-entropy-interval", "1s", "--request-timeout", "1s"])
        .args(extra);
    if !seeds.is_empty() {
        cmd.args(["--cluster", &seeds.join(",")]);
    }
    let server = Server::launch(cmd);
    let metrics =
        field(&server.listening, "metrics=").expect("the listening line names the metrics address");
    Node { server, metrics }
}

/// GET `path` from `addr` over HTTP/1.0: the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("metrics listener answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("an HTTP status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The sum of the samples of `name` whose labels include every one of
/// `labels` (0 when there is none).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

fn scrape(n: &Node) -> String {
    let (status, body) = http_get(&n.metrics, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

async fn channel(n: &Node) -> Channel {
    Channel::from_shared(format!("http://{}", n.server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn digests(n: &Node) -> Vec<(u32, Vec<u8>)> {
    AdminClient::new(channel(n).await)
        .digests(proto::DigestsRequest {})
        .await
        .unwrap()
        .into_inner()
        .partitions
        .into_iter()
        .map(|p| (p.partition, p.root))
        .collect()
}

async fn set(n: &Node, key: &str, level: Consistency) -> Result<(), tonic::Status> {
    KilovoltClient::new(channel(n).await)
        .set(proto::SetRequest {
            key: key.into(),
            value: "v".into(),
            consistency: level.into(),
            ttl_ms: 0,
        })
        .await
        .map(|_| ())
}

async fn cut(n: &Node, peers: &[&Node]) {
    FaultsClient::new(channel(n).await)
        .cut(proto::CutRequest {
            peers: peers.iter().map(|p| p.server.addr.clone()).collect(),
        })
        .await
        .unwrap();
}

async fn heal(n: &Node) {
    FaultsClient::new(channel(n).await)
        .heal(proto::HealRequest {})
        .await
        .unwrap();
}

async fn health(n: &Node) -> ServingStatus {
    let status = HealthClient::new(channel(n).await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_requests_a_partition_and_a_heal() {
    // a keeps a write-ahead log, so that its log metrics are served too.
    let dir = std::env::temp_dir().join(format!("kilovolt-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = node(
        "metrics-move",
        &[],
        "0",
        &["--data-dir", dir.to_str().expect("a UTF-8 temp dir")],
    );
    let b = node("metrics-move", &[&a], "0", &[]);
    // c keeps at most two hints, so that most writes it takes while cut off
    // reach a and b only by anti-entropy.
    let c = node("metrics-move", &[&a, &b], "0", &["--max-hints", "2"]);
    for n in [&a, &b, &c] {
        wait_ready(&n.server.addr, 3).await;
    }
    let before = scrape(&a);
    assert_eq!(
        sample(&before, "kilovolt_members", &[("liveness", "alive")]),
        3.0
    );
    assert_eq!(
        sample(&before, "kilovolt_node_state", &[("state", "ready")]),
        1.0
    );

    // Requests: counted by RPC, level and code, with their latency; the
    // writes reach the other replicas over peer calls.
    for i in 0..20 {
        set(&a, &format!("q{i}"), Consistency::Quorum)
            .await
            .unwrap();
    }
    let text = scrape(&a);
    let ok = [("rpc", "Set"), ("level", "QUORUM"), ("code", "OK")];
    assert_eq!(sample(&text, "kilovolt_requests_total", &ok), 20.0);
    assert_eq!(
        sample(
            &text,
            "kilovolt_request_duration_seconds_count",
            &[("rpc", "Set"), ("level", "QUORUM")]
        ),
        20.0
    );
    assert!(sample(&text, "kilovolt_peer_requests_total", &[("rpc", "apply")]) >= 20.0);
    assert!(sample(&text, "kilovolt_store_keys", &[]) >= 20.0);

    // A partition: c is cut off from a and b, on every side.
    cut(&c, &[&a, &b]).await;
    cut(&a, &[&c]).await;
    cut(&b, &[&c]).await;
    let failed = set(&a, "all", Consistency::All).await.unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Unavailable);
    for i in 0..10 {
        set(&a, &format!("a{i}"), Consistency::One).await.unwrap();
    }
    for i in 0..20 {
        set(&c, &format!("c{i}"), Consistency::One).await.unwrap();
    }
    let c_addr = c.server.addr.clone();
    let text = scrape(&a);
    let unavailable = [("rpc", "Set"), ("level", "ALL"), ("code", "UNAVAILABLE")];
    assert_eq!(sample(&text, "kilovolt_requests_total", &unavailable), 1.0);
    assert!(
        sample(
            &text,
            "kilovolt_peer_request_errors_total",
            &[("peer", &c_addr)]
        ) >= 1.0
    );
    assert!(sample(&text, "kilovolt_hints", &[("peer", &c_addr)]) >= 1.0);
    assert!(sample(&text, "kilovolt_hints_held", &[]) >= 1.0);
    assert!(
        sample(
            &text,
            "kilovolt_replication_oldest_undelivered_seconds",
            &[]
        ) > 0.0
    );
    let text = scrape(&c);
    assert!(
        sample(
            &text,
            "kilovolt_hints_dropped_total",
            &[("reason", "bound")]
        ) >= 1.0,
        "c holds only two hints"
    );
    let repaired_before: f64 = [&a, &b]
        .iter()
        .map(|n| sample(&scrape(n), "kilovolt_anti_entropy_keys_repaired_total", &[]))
        .sum();
    let sessions_before = sample(
        &scrape(&a),
        "kilovolt_anti_entropy_sessions_total",
        &[("outcome", "ok")],
    );

    // The heal: hints are handed on, anti-entropy repairs what they could
    // not carry, and the replicas agree.
    for n in [&a, &b, &c] {
        heal(n).await;
    }
    eventually(Duration::from_secs(30), "replicas to agree", || async {
        let first = digests(&a).await;
        (digests(&b).await == first && digests(&c).await == first).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "a's hints to drain", || async {
        (sample(&scrape(&a), "kilovolt_hints_held", &[]) == 0.0).then_some(())
    })
    .await;
    let repaired_after: f64 = [&a, &b]
        .iter()
        .map(|n| sample(&scrape(n), "kilovolt_anti_entropy_keys_repaired_total", &[]))
        .sum();
    assert!(
        repaired_after >= repaired_before + 1.0,
        "anti-entropy repaired what c's dropped hints carried: {repaired_before} -> {repaired_after}"
    );
    // The repairs may have come from b's or c's sessions: a's own next
    // session (every second) completes once the links are back.
    eventually(
        Duration::from_secs(10),
        "a to complete an anti-entropy session after the heal",
        || async {
            let ok = sample(
                &scrape(&a),
                "kilovolt_anti_entropy_sessions_total",
                &[("outcome", "ok")],
            );
            (ok > sessions_before).then_some(())
        },
    )
    .await;
    let text = scrape(&a);
    assert!(
        sample(
            &text,
            "kilovolt_anti_entropy_bytes_total",
            &[("direction", "sent")]
        ) > 0.0
    );
    assert!(
        sample(
            &text,
            "kilovolt_anti_entropy_session_duration_seconds_count",
            &[]
        ) > 0.0
    );
    assert!(
        sample(
            &text,
            "kilovolt_anti_entropy_last_completed_timestamp_seconds",
            &[]
        ) > 0.0
    );
    assert_eq!(
        sample(&text, "kilovolt_anti_entropy_merkle_mismatches_total", &[]),
        0.0
    );
    assert!(sample(&text, "kilovolt_open_connections", &[]) >= 1.0);
    assert!(sample(&text, "kilovolt_process_resident_memory_bytes", &[]) > 0.0);
    assert!(sample(&text, "kilovolt_log_bytes", &[]) > 0.0);
    assert!(sample(&text, "kilovolt_log_last_fsync_timestamp_seconds", &[]) > 0.0);
    assert_eq!(sample(&text, "kilovolt_log_failed", &[]), 0.0);

    // The dashboard and the alerting rules name only metrics a node serves.
    for file in ["deploy/grafana-dashboard.json", "deploy/alerts.yml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let deployed = std::fs::read_to_string(&path).unwrap();
        for name in metric_names(&deployed) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "{file} names {name}, which the node does not serve"
            );
        }
    }
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every `kilovolt_...` metric name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("kilovolt_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_ready_after_a_restart_only_once_syncing_is_done() {
    let a = node("metrics-ready", &[], "0", &[]);
    let b = node("metrics-ready", &[&a], "0", &[]);
    let mut c = node("metrics-ready", &[&a, &b], "0", &[]);
    for n in [&a, &b, &c] {
        wait_ready(&n.server.addr, 3).await;
    }
    assert_eq!(http_get(&c.metrics, "/ready"), (200, "ready\n".into()));
    assert_eq!(http_get(&c.metrics, "/live").0, 200);
    assert_eq!(health(&c).await, ServingStatus::Serving);
    for i in 0..1000 {
        set(&a, &format!("k{i}"), Consistency::One).await.unwrap();
    }

    // Kill c outright and start it again, empty, at the same address; its
    // refill is slowed down (a small anti-entropy byte budget), so that it
    // is seen syncing.
    let port = c.server.port().to_string();
    c.server.child.kill().unwrap();
    c.server.child.wait().unwrap();
    drop(c);
    let restarted = node(
        "metrics-ready",
        &[&a, &b],
        &port,
        &["--anti-entropy-bytes-per-sec", "20000"],
    );
    let (status, body) = http_get(&restarted.metrics, "/ready");
    assert_eq!((status, body.as_str()), (503, "syncing\n"));
    assert_eq!(http_get(&restarted.metrics, "/live").0, 200);
    assert_eq!(health(&restarted).await, ServingStatus::NotServing);
    let text = scrape(&restarted);
    assert_eq!(
        sample(&text, "kilovolt_node_state", &[("state", "syncing")]),
        1.0
    );

    // Ready only once refilled: whenever /ready first says so, the store
    // already agrees with a's.
    eventually(
        Duration::from_secs(30),
        "the restarted node to be ready",
        || async { (http_get(&restarted.metrics, "/ready").0 == 200).then_some(()) },
    )
    .await;
    assert_eq!(
        digests(&restarted).await,
        digests(&a).await,
        "ready means refilled"
    );
    assert_eq!(health(&restarted).await, ServingStatus::Serving);

    // One screen for the whole cluster, from any node (once gossip has
    // told it the restarted node is ready).
    wait_ready(&a.server.addr, 3).await;
    let out = a.server.cli(&["--json", "status"]);
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{status}");
    for m in members {
        assert_eq!(m["state"], "ready", "{status}");
        assert_eq!(m["keys"], 1000, "every node holds every key: {status}");
        assert!(
            m["anti_entropy_last_completed_ms"].as_u64().unwrap() > 0,
            "{status}"
        );
    }
    let out = a.server.cli(&["status"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&restarted.server.addr) && text.contains("(this node)"),
        "{text}"
    );
}

#[test]
fn a_metrics_port_in_use_is_a_one_line_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(SERVER)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-addr",
            &addr,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("in use"),
        "{err}"
    );
}
