//! Real processes with `--log-format json`: every line is one JSON object,
//! and a request slower than `--slow-request` or failing at QUORUM/ALL logs
//! one line naming the key's hash, the level and every replica's fate,
//! never the key or the value.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::process::SERVER;
use kilovolt::proto::{self, faults_client::FaultsClient, kilovolt_client::KilovoltClient};
use kilovolt::proto::{admin_client::AdminClient, Consistency};
use serde_json::Value;
use tonic::transport::Channel;

/// A node logging JSON; killed on drop.
struct JsonNode {
    child: Child,
    addr: String,
    /// Every line it logged, parsed (a line that is not JSON fails the
    /// test where it is read).
    lines: mpsc::Receiver<String>,
}

impl Drop for JsonNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl JsonNode {
    fn start(extra: &[&str]) -> JsonNode {
        let mut child = Command::new(SERVER)
            .args(["--host", "127.0.0.1", "--port", "0", "--log-format", "json"])
            .args(["--gossip-interval", "50ms", "--request-timeout", "500ms"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("server starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut node = JsonNode {
            child,
            addr: String::new(),
            lines,
        };
        let listening = node.wait_for(|l| l["fields"]["message"] == "kilovolt-db listening");
        node.addr = listening["fields"]["listen"].as_str().unwrap().to_string();
        node
    }

    /// The next logged line (as JSON) for which `want` holds, within 20 s;
    /// every line read on the way must be JSON as well.
    fn wait_for(&self, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("the awaited log line");
            let json: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            assert!(
                json["level"].is_string() && json["timestamp"].is_string(),
                "{line}"
            );
            if want(&json) {
                return json;
            }
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn set(&self, key: &str, value: &str, level: Consistency) -> Result<(), tonic::Status> {
        KilovoltClient::new(self.channel().await)
            .set(proto::SetRequest {
                key: key.into(),
                value: value.into(),
                consistency: level.into(),
                ttl_ms: 0,
            })
            .await
            .map(|_| ())
    }
}

fn key_hash(key: &str) -> String {
    format!("{:016x}", kilovolt::keyspace::key_hash(key))
}

fn is_request_line(l: &Value) -> bool {
    l["fields"]["key_hash"].is_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_log_one_json_line_with_the_key_hash_never_the_key() {
    let node = JsonNode::start(&["--slow-request", "0s"]);
    node.set("secret-key", "secret-value", Consistency::One)
        .await
        .unwrap();
    let line = node.wait_for(is_request_line);
    let fields = &line["fields"];
    assert_eq!(fields["key_hash"], key_hash("secret-key"));
    assert_eq!(fields["level"], "ONE");
    assert_eq!(fields["outcome"], "slow");
    assert_eq!(line["level"], "WARN");
    let text = line.to_string();
    assert!(
        fields["replicas"].as_str().unwrap().contains(&node.addr),
        "names the replica and its fate: {text}"
    );
    assert!(!text.contains("secret"), "neither key nor value: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_failing_at_all_log_every_replicas_fate() {
    let a = JsonNode::start(&["--fault-injection"]);
    let b = JsonNode::start(&["--fault-injection", "--cluster", &a.addr.clone()]);
    common::eventually(Duration::from_secs(20), "two ready members", || async {
        let m = AdminClient::new(a.channel().await)
            .members(proto::MembersRequest {})
            .await
            .unwrap()
            .into_inner();
        (m.members
            .iter()
            .filter(|m| m.alive && m.state == "ready")
            .count()
            == 2)
            .then_some(())
    })
    .await;
    // A fast request at ONE logs nothing (the default --slow-request is 1s).
    a.set("fine", "v", Consistency::One).await.unwrap();
    FaultsClient::new(a.channel().await)
        .cut(proto::CutRequest {
            peers: vec![b.addr.clone()],
        })
        .await
        .unwrap();
    let failed = a.set("secret-key", "secret-value", Consistency::All).await;
    assert_eq!(failed.unwrap_err().code(), tonic::Code::Unavailable);
    let line = a.wait_for(is_request_line);
    let fields = &line["fields"];
    assert_eq!(fields["key_hash"], key_hash("secret-key"), "{line}");
    assert_eq!(fields["level"], "ALL");
    assert_eq!(fields["outcome"], "failed");
    let replicas = fields["replicas"].as_str().unwrap();
    assert!(replicas.contains(&format!("{}: ok", a.addr)), "{replicas}");
    assert!(
        replicas.contains(&format!("{}: unreachable", b.addr)),
        "{replicas}"
    );
    assert!(!line.to_string().contains("secret"), "{line}");
}
