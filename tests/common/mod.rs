//! Shared helpers for tests that start real nodes.
#![allow(dead_code)] // each test binary uses its own subset

pub mod process;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use kilovolt::config::Config;
use kilovolt::node::{self, RunningNode};
use kilovolt::proto::{self, admin_client::AdminClient, kilovolt_client::KilovoltClient};
use tonic::transport::{Channel, Endpoint};

/// Starts an in-process node on an ephemeral loopback port, with the
/// defaults changed by `configure`.
pub async fn start_node(configure: impl FnOnce(&mut Config)) -> RunningNode {
    start_node_with_clock(configure, kilovolt::clock::system_time).await
}

/// [`start_node`] with the node's physical time read from `physical`.
pub async fn start_node_with_clock(
    configure: impl FnOnce(&mut Config),
    physical: kilovolt::clock::PhysicalClock,
) -> RunningNode {
    init_logs();
    let mut config = Config::defaults();
    config.host = IpAddr::V4(Ipv4Addr::LOCALHOST);
    config.port = 0;
    configure(&mut config);
    node::start_with_clock(config, physical)
        .await
        .expect("node starts")
}

/// Logs to the test's output when `RUST_LOG` is set (e.g. `RUST_LOG=debug
/// cargo test --test cluster -- --nocapture`), nothing otherwise.
fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

/// A channel to `node`.
pub async fn channel(node: &RunningNode) -> Channel {
    Endpoint::from_shared(format!("http://{}", node.local_addr()))
        .expect("valid uri")
        .connect()
        .await
        .expect("connects")
}

/// A channel to `node`'s peer listener (the node-to-node protocol).
pub async fn peer_channel(node: &RunningNode) -> Channel {
    Endpoint::from_shared(format!("http://{}", node.peer_addr()))
        .expect("valid uri")
        .connect()
        .await
        .expect("connects")
}

/// A client of the `Kilovolt` service of `node`.
pub async fn kv(node: &RunningNode) -> KilovoltClient<Channel> {
    KilovoltClient::new(channel(node).await)
}

/// A client of the `Admin` service of `node`.
pub async fn admin(node: &RunningNode) -> AdminClient<Channel> {
    AdminClient::new(channel(node).await)
}

/// The replicas of `key`, in preference order, as the node behind `admin`
/// places it.
pub async fn replicas_of(admin: &mut AdminClient<Channel>, key: &str) -> Vec<proto::Member> {
    admin
        .replicas(proto::ReplicasRequest { key: key.into() })
        .await
        .expect("Replicas answers")
        .into_inner()
        .replicas
}

/// Polls `check` until it returns `Some`, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
