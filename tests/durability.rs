//! Durability with real processes: `kilovolt-db` binaries with
//! `--data-dir`, killed with SIGKILL in the middle of a write load and
//! restarted from disk; torn and corrupt logs; a failing disk; what a
//! restart from disk fetches from its peers against a restart from empty.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::eventually;
use common::process::{wait_ready, Server, SERVER};
use kilovolt::proto::{
    self, admin_client::AdminClient, faults_client::FaultsClient, kilovolt_client::KilovoltClient,
    Consistency,
};
use tonic::transport::Channel;

/// A fresh data directory for this test run.
fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kilovolt-it-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port free now (TCP and UDP: gRPC and gossip share it), so a
/// node restarted keeps its address.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One node of a process cluster: how to (re)start it.
#[derive(Clone)]
struct Spec {
    id: String,
    port: u16,
    peers: Vec<u16>,
    dir: PathBuf,
    extra: Vec<String>,
}

impl Spec {
    fn command(&self) -> Command {
        let mut cmd = Command::new(SERVER);
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--node-id", &self.id, "--cluster-id", "durability"])
            .args(["--gossip-interval", "50ms", "--anti-entropy-interval", "1s"])
            .args(["--request-timeout", "1s", "--partitions", "64"])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(&self.extra);
        if !self.peers.is_empty() {
            let seeds: Vec<String> = self
                .peers
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect();
            cmd.args(["--cluster", &seeds.join(",")]);
        }
        cmd
    }

    fn start(&self) -> Server {
        Server::launch(self.command())
    }
}

/// Three node specs, each seeded with the other two.
fn cluster(name: &str, extra: &[&str]) -> Vec<Spec> {
    let root = data_dir(name);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    (0..3)
        .map(|i| Spec {
            id: format!("n{}", i + 1),
            port: ports[i],
            peers: ports.iter().copied().filter(|&p| p != ports[i]).collect(),
            dir: root.join(format!("n{}", i + 1)),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        })
        .collect()
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn admin(s: &Server) -> AdminClient<Channel> {
    AdminClient::new(channel(&s.addr).await)
}

async fn stats(s: &Server) -> proto::StatsResponse {
    admin(s)
        .await
        .stats(proto::StatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn digests(s: &Server) -> Vec<(u32, Vec<u8>)> {
    admin(s)
        .await
        .digests(proto::DigestsRequest {})
        .await
        .unwrap()
        .into_inner()
        .partitions
        .into_iter()
        .map(|p| (p.partition, p.root))
        .collect()
}

async fn wait_agree(servers: &[Server]) {
    eventually(Duration::from_secs(30), "replicas agree", || async {
        let first = digests(&servers[0]).await;
        for s in &servers[1..] {
            if digests(s).await != first {
                return None;
            }
        }
        Some(())
    })
    .await;
}

fn set_request(key: &str, value: &str, level: Consistency) -> proto::SetRequest {
    proto::SetRequest {
        key: key.into(),
        value: value.into(),
        consistency: level.into(),
        ttl_ms: 0,
    }
}

async fn get(addr: &str, key: &str, level: Consistency) -> Option<String> {
    let resp = KilovoltClient::new(channel(addr).await)
        .get(proto::GetRequest {
            key: key.into(),
            consistency: level.into(),
        })
        .await
        .unwrap()
        .into_inner();
    resp.found.then_some(resp.value)
}

/// What a write load saw: each acknowledged key with its value and the
/// instant it was acknowledged.
type Acked = Arc<Mutex<BTreeMap<String, Instant>>>;

/// Writers (8 in flight per node) at QUORUM until `stop`, each key written
/// once with the key as its value; records each acknowledgement.
fn write_load(
    addrs: Vec<String>,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (n, addr) in addrs.into_iter().enumerate() {
        for w in 0..8 {
            let (addr, stop, acked) = (addr.clone(), stop.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(ch) = Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                else {
                    return;
                };
                let mut client = KilovoltClient::new(ch);
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let key = format!("load-{n}-{w}-{i}");
                    let req = set_request(&key, &key, Consistency::Quorum);
                    match client.set(req).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(key, Instant::now());
                        }
                        // The node died under us: the load is over here.
                        Err(_) => return,
                    }
                }
            }));
        }
    }
    tasks
}

/// Starts the cluster, runs the load, kills every node with SIGKILL in the
/// middle of it, restarts them all from disk; returns the acknowledged
/// writes missing after the restart, and how many were acknowledged
/// within `window` before the kill. Fails when a missing write was
/// acknowledged earlier than that.
async fn kill_all_under_load(
    name: &str,
    extra: &[&str],
    window: Duration,
) -> (usize, Vec<String>, usize) {
    let specs = cluster(name, extra);
    let mut servers: Vec<Server> = specs.iter().map(Spec::start).collect();
    for s in &servers {
        wait_ready(&s.addr, 3).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    let tasks = write_load(addrs.clone(), stop.clone(), acked.clone());
    // Wait for a real load, then kill every node at once, mid-write.
    eventually(Duration::from_secs(30), "a write load", || async {
        (acked.lock().unwrap().len() >= 1500).then_some(())
    })
    .await;
    for s in &mut servers {
        s.child.kill().unwrap();
    }
    let killed = Instant::now();
    for s in &mut servers {
        s.child.wait().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    drop(servers);
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let recent = acked
        .values()
        .filter(|&&at| killed.saturating_duration_since(at) <= window)
        .count();

    let servers: Vec<Server> = specs.iter().map(Spec::start).collect();
    for s in &servers {
        wait_ready(&s.addr, 3).await;
    }
    let mut missing = Vec::new();
    for key in acked.keys() {
        if get(&servers[0].addr, key, Consistency::Quorum)
            .await
            .as_deref()
            != Some(key)
        {
            missing.push(key.clone());
        }
    }
    for key in &missing {
        let before = killed.saturating_duration_since(acked[key]);
        assert!(
            before <= window,
            "{key} was acknowledged {before:?} before the kill and is lost"
        );
    }
    let _ = std::fs::remove_dir_all(specs[0].dir.parent().unwrap());
    (acked.len(), missing, recent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_kill_9_of_every_node_loses_no_acknowledged_write() {
    let (acked, missing, _) =
        kill_all_under_load("sync", &["--durability", "sync"], Duration::ZERO).await;
    eprintln!("sync: {acked} writes acknowledged before kill -9 of all three nodes; {} missing after the restart", missing.len());
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_kill_9_of_every_node_loses_at_most_the_last_interval() {
    let interval = Duration::from_millis(100);
    let (acked, missing, recent) = kill_all_under_load(
        "periodic",
        &["--durability", "periodic", "--fsync-interval", "100ms"],
        interval,
    )
    .await;
    eprintln!(
        "periodic: {acked} writes acknowledged before kill -9 of all three nodes, {recent} of them in the last {interval:?}; {} missing after the restart",
        missing.len()
    );
    assert!(
        missing.len() <= recent,
        "lost {} writes, more than the {recent} of the last interval: {missing:?}",
        missing.len()
    );
}

/// A single node with a data directory.
fn single(dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(SERVER);
    cmd.args(["--host", "127.0.0.1", "--port", "0", "--data-dir"])
        .arg(dir)
        .args(extra);
    cmd
}

/// The newest log segment in `dir`.
fn last_segment(dir: &Path) -> PathBuf {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
        .collect();
    names.sort();
    names.pop().expect("a segment with records")
}

/// Writes `n` keys to a fresh single node, then kills it with SIGKILL.
async fn write_and_kill(dir: &Path, n: usize) {
    let mut server = Server::launch(single(dir, &["--durability", "sync"]));
    let mut client = KilovoltClient::new(channel(&server.addr).await);
    for i in 0..n {
        let key = format!("k{i}");
        client
            .set(set_request(&key, &key, Consistency::One))
            .await
            .unwrap();
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_dropped_with_one_log_line() {
    let dir = data_dir("torn");
    write_and_kill(&dir, 20).await;
    // A record cut short, as a crash in the middle of a write leaves it.
    let segment = last_segment(&dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 5]);
    std::fs::write(&segment, &bytes).unwrap();

    let (server, startup) = Server::launch_with_startup_log(single(&dir, &[]));
    let torn: Vec<&String> = startup.iter().filter(|l| l.contains("torn last")).collect();
    assert_eq!(torn.len(), 1, "{startup:?}");
    assert!(
        torn[0].contains("dropped a torn last log record"),
        "{}",
        torn[0]
    );
    for i in 0..20 {
        let key = format!("k{i}");
        assert_eq!(get(&server.addr, &key, Consistency::One).await, Some(key));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_stops_the_node_naming_file_and_offset() {
    let dir = data_dir("corrupt");
    write_and_kill(&dir, 20).await;
    let segment = last_segment(&dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[10] ^= 0xff; // in the first record, with 19 good ones after it
    std::fs::write(&segment, &bytes).unwrap();

    let out = single(&dir, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(text.contains(name), "{text}");
    assert!(text.contains("byte offset 0"), "{text}");
    assert!(text.contains("docs/durability.md"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_naming_the_cause_and_reads_go_on() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full to stand for a full disk");
        return;
    }
    let dir = data_dir("full");
    let server = Server::launch(single(
        &dir,
        &["--durability", "sync", "--log-segment-bytes", "4096"],
    ));
    let mut client = KilovoltClient::new(channel(&server.addr).await);
    client
        .set(set_request("kept", "v", Consistency::One))
        .await
        .unwrap();
    // Every segment the log may open next is a full disk.
    let current = last_segment(&dir);
    let first: u64 = current
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    for n in first + 1..first + 2000 {
        std::os::unix::fs::symlink("/dev/full", dir.join("log").join(format!("{n:020}.log")))
            .unwrap();
    }
    let mut refused = None;
    for i in 0..2000 {
        let key = format!("fill{i}");
        if let Err(status) = client.set(set_request(&key, "x", Consistency::One)).await {
            refused = Some(status);
            break;
        }
    }
    let status = refused.expect("a write is refused once the disk is full");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("No space left on device"),
        "{status:?}"
    );
    // Every later write is refused too; reads go on.
    let again = client
        .set(set_request("later", "v", Consistency::One))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unavailable);
    assert_eq!(
        get(&server.addr, "kept", Consistency::One).await.as_deref(),
        Some("v")
    );
    let s = stats(&server).await;
    assert!(s.log_failure.contains("No space left on device"), "{s:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_log_stats_through_the_cli() {
    let dir = data_dir("cli");
    let server = Server::launch(single(&dir, &[]));
    let out = server.cli(&["set", "a", "1"]);
    assert_eq!(out.status.code(), Some(0));
    let out = server.cli(&["--json", "snapshot"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["bytes"].as_u64().unwrap() > 0);
    let out = server.cli(&["--json", "stats"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["durability"], "periodic");
    assert!(json["last_snapshot_unix_ms"].as_u64().unwrap() > 0);
    assert!(json["snapshot_bytes"].as_u64().unwrap() > 0);
    assert_eq!(json["log_failure"], "");
    // Without a data directory there is nothing to snapshot to.
    let memory = Server::start(&[]);
    let out = memory.cli(&["snapshot"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data-dir"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_disk_fetches_only_what_changed() {
    let specs = cluster("refill", &[]);
    let mut servers: Vec<Server> = specs.iter().map(Spec::start).collect();
    for s in &servers {
        wait_ready(&s.addr, 3).await;
    }
    let mut client = KilovoltClient::new(channel(&servers[0].addr).await);
    let value = "v".repeat(100);
    for i in 0..3000 {
        client
            .set(set_request(&format!("k{i}"), &value, Consistency::Quorum))
            .await
            .unwrap();
    }
    wait_agree(&servers).await;

    // Stops the third node (and with `wipe` empties its data directory).
    let stop_third = |servers: &mut Vec<Server>, wipe: bool| {
        let mut third = servers.pop().unwrap();
        third.child.kill().unwrap();
        third.child.wait().unwrap();
        if wipe {
            std::fs::remove_dir_all(&specs[2].dir).unwrap();
        }
    };
    // Kill the third node and write 50 keys while it is down; restart it
    // from its data directory, then again (50 other keys) from an empty one.
    let mut restarted = Vec::new();
    for (wipe, keys) in [(false, 0..50), (true, 50..100)] {
        stop_third(&mut servers, wipe);
        for i in keys {
            client
                .set(set_request(
                    &format!("k{i}"),
                    "changed",
                    Consistency::Quorum,
                ))
                .await
                .unwrap();
        }
        servers.push(specs[2].start());
        wait_ready(&servers[2].addr, 3).await;
        wait_agree(&servers).await;
        restarted.push(stats(&servers[2]).await);
    }
    let (from_disk, from_empty) = (&restarted[0], &restarted[1]);
    eprintln!(
        "restart from disk: {} anti-entropy bytes, {} entries repaired; from empty: {} bytes, {} entries",
        from_disk.anti_entropy_bytes,
        from_disk.anti_entropy_repaired,
        from_empty.anti_entropy_bytes,
        from_empty.anti_entropy_repaired
    );
    assert_eq!(from_disk.keys, 3000);
    assert!(from_disk.anti_entropy_repaired <= 100, "{from_disk:?}");
    assert!(
        from_disk.anti_entropy_bytes * 4 < from_empty.anti_entropy_bytes,
        "from disk {} bytes, from empty {}",
        from_disk.anti_entropy_bytes,
        from_empty.anti_entropy_bytes
    );
    let _ = std::fs::remove_dir_all(specs[0].dir.parent().unwrap());
}

/// A node back from disk after longer than the dead-node grace must not
/// bring back a delete its peers collected without it (they dropped it
/// from placement): it discards what it held and refills from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_after_the_dead_node_grace_does_not_bring_back_collected_deletes() {
    let specs = cluster(
        "stale",
        &[
            "--dead-node-grace",
            "2s",
            "--max-hint-age",
            "1s",
            "--tombstone-grace",
            "2s",
        ],
    );
    let mut servers: Vec<Server> = specs.iter().map(Spec::start).collect();
    for s in &servers {
        wait_ready(&s.addr, 3).await;
    }
    let mut client = KilovoltClient::new(channel(&servers[0].addr).await);
    client
        .set(set_request("doomed", "old", Consistency::All))
        .await
        .unwrap();
    let mut third = servers.pop().unwrap();
    third.child.kill().unwrap();
    third.child.wait().unwrap();
    client
        .delete(proto::DeleteRequest {
            key: "doomed".into(),
            consistency: Consistency::Quorum.into(),
        })
        .await
        .unwrap();
    // The others drop the third node from placement and collect the delete.
    eventually(Duration::from_secs(30), "the delete collected", || async {
        for s in &servers {
            let st = stats(s).await;
            if st.tombstones != 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
    let (back, startup) = Server::launch_with_startup_log(specs[2].command());
    assert!(
        startup.iter().any(|l| l.contains("discards what it held")),
        "{startup:?}"
    );
    servers.push(back);
    for s in &servers {
        wait_ready(&s.addr, 3).await;
    }
    wait_agree(&servers).await;
    for s in &servers {
        assert_eq!(get(&s.addr, "doomed", Consistency::Local).await, None);
    }
    let _ = std::fs::remove_dir_all(specs[0].dir.parent().unwrap());
}

/// Unix milliseconds now.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A whole cluster down together for longer than the dead-node grace (a
/// region that lost power overnight) comes back with everything it
/// acknowledged: no peer ran on to drop anyone from placement or collect
/// a delete without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_down_longer_than_the_dead_node_grace_keeps_its_data() {
    const GRACE_MS: u64 = 4_000;
    let specs = cluster(
        "outage",
        &["--dead-node-grace", "4s", "--durability", "sync"],
    );
    let mut servers: Vec<Server> = specs.iter().map(Spec::start).collect();
    for s in &servers {
        wait_ready(&s.addr, 3).await;
    }
    let mut client = KilovoltClient::new(channel(&servers[0].addr).await);
    let keys: Vec<String> = (0..200).map(|i| format!("outage-{i}")).collect();
    for key in &keys {
        client
            .set(set_request(key, key, Consistency::Quorum))
            .await
            .unwrap();
    }
    for s in &mut servers {
        s.child.kill().unwrap();
    }
    for s in &mut servers {
        s.child.wait().unwrap();
    }
    drop(servers);
    // The outage: until every node's `alive` record is older than the grace.
    eventually(
        Duration::from_secs(30),
        "every alive record older than the grace",
        || async {
            specs
                .iter()
                .all(|spec| {
                    let alive: u64 = std::fs::read_to_string(spec.dir.join("alive"))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    unix_ms().saturating_sub(alive) > GRACE_MS
                })
                .then_some(())
        },
    )
    .await;
    // All at once: a stale node waits for a live peer before it serves.
    let launched: Vec<(Server, Vec<String>)> = specs
        .iter()
        .map(|spec| {
            let cmd = spec.command();
            std::thread::spawn(move || Server::launch_with_startup_log(cmd))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let kept = launched
        .iter()
        .filter(|(_, startup)| startup.iter().any(|l| l.contains("it keeps its data")))
        .count();
    let servers: Vec<Server> = launched.into_iter().map(|(s, _)| s).collect();
    for s in &servers {
        wait_ready(&s.addr, 3).await;
    }
    for s in &servers {
        for key in &keys {
            assert_eq!(
                get(&s.addr, key, Consistency::Quorum).await.as_deref(),
                Some(key.as_str()),
                "{key} read through {}",
                s.addr
            );
        }
    }
    assert!(kept >= 2, "{kept} of 3 nodes kept their data");
    let _ = std::fs::remove_dir_all(specs[0].dir.parent().unwrap());
}

/// A node restarted from its data directory collects no tombstones for
/// the dead-node grace (a member that was down when it stopped may be known
/// to no live peer), while its peers, which did not restart, collect as
/// usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_from_disk_holds_collection_for_the_dead_node_grace() {
    let specs = cluster(
        "hold",
        &[
            "--dead-node-grace",
            "60s",
            "--max-hint-age",
            "1s",
            "--tombstone-grace",
            "2s",
        ],
    );
    let mut servers: Vec<Server> = specs.iter().map(Spec::start).collect();
    for s in &servers {
        wait_ready(&s.addr, 3).await;
    }
    let mut third = servers.pop().unwrap();
    third.child.kill().unwrap();
    third.child.wait().unwrap();
    servers.push(specs[2].start());
    for s in &servers {
        wait_ready(&s.addr, 3).await;
    }
    let mut client = KilovoltClient::new(channel(&servers[0].addr).await);
    client
        .set(set_request("doomed", "old", Consistency::All))
        .await
        .unwrap();
    client
        .delete(proto::DeleteRequest {
            key: "doomed".into(),
            consistency: Consistency::All.into(),
        })
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the delete collected by the two nodes that did not restart",
        || async {
            for s in &servers[..2] {
                if stats(s).await.tombstones != 0 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    // Three more of the restarted node's rounds, each of which would have
    // collected the tombstone (its peers acknowledged it).
    let rounds = stats(&servers[2]).await.anti_entropy_rounds;
    eventually(Duration::from_secs(30), "three more rounds", || async {
        (stats(&servers[2]).await.anti_entropy_rounds >= rounds + 3).then_some(())
    })
    .await;
    assert_eq!(stats(&servers[2]).await.tombstones, 1);
    let _ = std::fs::remove_dir_all(specs[0].dir.parent().unwrap());
}

/// A ONE write that no replica took lives only as a hint on its
/// coordinator: the hint is logged (in `sync` mode before the write is
/// acknowledged), and survives the coordinator's kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_survives_its_coordinators_kill_9() {
    let root = data_dir("hints");
    let ports = [free_port(), free_port()];
    let specs: Vec<Spec> = (0..2)
        .map(|i| Spec {
            id: format!("n{}", i + 1),
            port: ports[i],
            peers: vec![ports[1 - i]],
            dir: root.join(format!("n{}", i + 1)),
            extra: ["--replication-factor", "1", "--durability", "sync"]
                .map(String::from)
                .to_vec(),
        })
        .collect();
    let mut servers: Vec<Server> = specs.iter().map(Spec::start).collect();
    for s in &servers {
        wait_ready(&s.addr, 2).await;
    }
    // A key only the second node holds.
    let key = key_held_by(&servers[0], "n2", "h").await;
    let admin1 = admin(&servers[0]).await;
    let mut second = servers.pop().unwrap();
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    eventually(Duration::from_secs(20), "the second node seen down", || {
        let mut admin1 = admin1.clone();
        async move {
            let m = admin1
                .members(proto::MembersRequest {})
                .await
                .ok()?
                .into_inner();
            m.members
                .iter()
                .any(|m| m.id == "n2" && !m.alive)
                .then_some(())
        }
    })
    .await;
    KilovoltClient::new(channel(&servers[0].addr).await)
        .set(set_request(&key, "held", Consistency::One))
        .await
        .unwrap();
    assert_eq!(stats(&servers[0]).await.hints_pending, 1);
    let mut first = servers.pop().unwrap();
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let servers: Vec<Server> = specs.iter().map(Spec::start).collect();
    for s in &servers {
        wait_ready(&s.addr, 2).await;
    }
    eventually(Duration::from_secs(20), "the hint delivered", || async {
        (get(&servers[1].addr, &key, Consistency::Local)
            .await
            .as_deref()
            == Some("held"))
        .then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&root);
}

/// A ONE write that its coordinator, not a replica, answers from its
/// queued copy (the replica is alive but slow) is held as a hint too, so
/// that it is on the coordinator's disk before the answer (`sync`) and
/// survives the coordinator's kill -9 right after it. (A delete: it is
/// sent without reading the key first, which would wait on the slow
/// replica until the failure detector gave it up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_write_answered_from_its_queued_copy_survives_its_coordinators_kill_9() {
    let root = data_dir("queued");
    let ports = [free_port(), free_port()];
    let specs: Vec<Spec> = (0..2)
        .map(|i| Spec {
            id: format!("n{}", i + 1),
            port: ports[i],
            peers: vec![ports[1 - i]],
            dir: root.join(format!("n{}", i + 1)),
            extra: [
                "--replication-factor",
                "1",
                "--durability",
                "sync",
                "--fault-injection",
            ]
            .map(String::from)
            .to_vec(),
        })
        .collect();
    let mut servers: Vec<Server> = specs.iter().map(Spec::start).collect();
    for s in &servers {
        wait_ready(&s.addr, 2).await;
    }
    // A key only the second node holds.
    let key = key_held_by(&servers[0], "n2", "q").await;
    let mut client = KilovoltClient::new(channel(&servers[0].addr).await);
    client
        .set(set_request(&key, "doomed", Consistency::All))
        .await
        .unwrap();
    // The second node is still alive to the first one's failure detector,
    // but the first one's messages reach it only after 5 s: the write waits
    // its hedge delay and is answered from the queued copy.
    FaultsClient::new(channel(&servers[0].addr).await)
        .degrade(proto::DegradeRequest {
            peers: vec!["n2".into()],
            drop: 0.0,
            delay_ms: 5_000,
        })
        .await
        .unwrap();
    client
        .delete(proto::DeleteRequest {
            key: key.clone(),
            consistency: Consistency::One.into(),
        })
        .await
        .unwrap();
    let mut first = servers.remove(0);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let _first = specs[0].start();
    eventually(Duration::from_secs(20), "the delete delivered", || async {
        get(&servers[0].addr, &key, Consistency::Local)
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&root);
}

/// The first key `PREFIX0`, `PREFIX1`, ... whose first replica, as `server`
/// reports it, is node `id` (with replication factor 1: the key only `id`
/// holds).
async fn key_held_by(server: &Server, id: &str, prefix: &str) -> String {
    let mut admin = admin(server).await;
    for i in 0.. {
        let key = format!("{prefix}{i}");
        if common::replicas_of(&mut admin, &key).await[0].id == id {
            return key;
        }
    }
    unreachable!("the key space is not exhausted")
}
