//! The node's configuration: every flag is also a `KILOVOLT_*` environment
//! variable, so the same settings work on a command line, in a container
//! and in a unit file.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use thiserror::Error;

/// The longest key the node accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;

/// The most operations one `Batch` request may carry.
pub const MAX_BATCH_OPS: usize = 1000;

/// The longest map field name the node accepts, in bytes (as for keys).
pub const MAX_FIELD_NAME_BYTES: usize = 4096;

/// The most fields one `MapSet`, `MapGet` or `MapRemove` may name.
pub const MAX_MAP_FIELDS: usize = 1000;

/// The most partitions a cluster may have (`--partitions`); bounds the
/// partition sets peers exchange.
pub const MAX_PARTITIONS: u32 = 65536;

/// How far above the client port the peer listener listens unless
/// `--peer-port` says otherwise (50051 -> 51051).
pub const PEER_PORT_OFFSET: u16 = 1000;

/// The default for `--max-value-bytes`: 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// The most bytes one anti-entropy message carries by default (the
/// session's `Limits`): 256 KiB, large enough that the repair of a few
/// thousand keys takes one message, small enough that one message does not
/// hold a link for long. Here rather than in `anti_entropy` because the peer
/// message limit ([`Config::max_peer_message_bytes`]) is derived from it, and
/// this module stays plain data that imports nothing from the crate.
pub const DEFAULT_SYNC_MESSAGE_BYTES: usize = 256 * 1024;

/// Settings of one Kilovolt-DB node.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "kilovolt-db",
    version,
    about = "Kilovolt-DB: an in-memory, partition-tolerant key-value store"
)]
pub struct Config {
    /// Port for gRPC (TCP); gossip uses the same number over UDP.
    #[arg(long, env = "KILOVOLT_PORT", default_value_t = 50051)]
    pub port: u16,

    /// Address to bind.
    #[arg(long, env = "KILOVOLT_HOST", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub host: IpAddr,

    /// host:port that clients and peers use to reach this node. Defaults to
    /// the bind address and port, with 127.0.0.1 for an unspecified bind
    /// address.
    #[arg(long, env = "KILOVOLT_ADVERTISE")]
    pub advertise: Option<String>,

    /// Comma-separated host:port of seed nodes to join.
    #[arg(long, env = "KILOVOLT_CLUSTER", value_delimiter = ',')]
    pub cluster: Vec<String>,

    /// Name of the cluster; nodes gossip only with nodes of the same name,
    /// so two clusters on one network never merge by accident.
    #[arg(long, env = "KILOVOLT_CLUSTER_ID", default_value = "kilovolt")]
    pub cluster_id: String,

    /// This node's id. Defaults to the advertised address, so that a node
    /// restarted at the same address keeps its identity.
    #[arg(long, env = "KILOVOLT_NODE_ID")]
    pub node_id: Option<String>,

    /// Region label, used to spread replicas over regions.
    #[arg(long, env = "KILOVOLT_REGION", default_value = "")]
    pub region: String,

    /// How many replicas hold each key (capped at the number of nodes).
    #[arg(long, env = "KILOVOLT_REPLICATION_FACTOR", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub replication_factor: u32,

    /// How many replicas of each key every region holds (capped at the
    /// region's node count), instead of a total: with it, each region has
    /// its own copies and can serve LOCAL_ONE and LOCAL_QUORUM alone.
    /// Exclusive with --replication-factor; must be the same on every node.
    #[arg(long, env = "KILOVOLT_REPLICAS_PER_REGION", conflicts_with = "replication_factor", value_parser = clap::value_parser!(u32).range(1..=32))]
    pub replicas_per_region: Option<u32>,

    /// Log level; RUST_LOG, when set, takes precedence.
    #[arg(long, env = "KILOVOLT_LOG_LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// The largest value accepted, in bytes.
    #[arg(long, env = "KILOVOLT_MAX_VALUE_BYTES", default_value_t = DEFAULT_MAX_VALUE_BYTES, value_parser = parse_value_limit)]
    pub max_value_bytes: usize,

    /// Consistency level used when a request leaves it at DEFAULT.
    #[arg(long, env = "KILOVOLT_DEFAULT_CONSISTENCY", value_enum, default_value_t = DefaultConsistency::One)]
    pub default_consistency: DefaultConsistency,

    /// Largest clock lead a remote version may have and still move this
    /// node's clock, and the largest offset from most peers' clocks at which
    /// this node still coordinates writes (e.g. 500ms, 2s).
    #[arg(long, env = "KILOVOLT_MAX_CLOCK_DRIFT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub max_clock_drift: Duration,

    /// Fixed number of partitions keys are hashed into; must be the same on
    /// every node for the cluster's whole life.
    #[arg(long, env = "KILOVOLT_PARTITIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PARTITIONS)))]
    pub partitions: u32,

    /// How often a node gossips membership (e.g. 100ms).
    #[arg(long, env = "KILOVOLT_GOSSIP_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub gossip_interval: Duration,

    /// Phi-accrual threshold above which a silent peer is held dead; lower
    /// detects failures sooner and errs more often.
    #[arg(long, env = "KILOVOLT_PHI_THRESHOLD", default_value_t = 8.0)]
    pub phi_threshold: f64,

    /// How long a dead node stays in placement (its writes held as hints)
    /// before its partitions move to other nodes.
    #[arg(long, env = "KILOVOLT_DEAD_NODE_GRACE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub dead_node_grace: Duration,

    /// How long a coordinator waits for replicas before it counts them as
    /// failed for the request.
    #[arg(long, env = "KILOVOLT_REQUEST_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// How long a hint is kept for an unreachable replica before it is
    /// dropped (counted in Stats; anti-entropy repairs what it carried
    /// where a replica holds the write).
    #[arg(long, env = "KILOVOLT_MAX_HINT_AGE", default_value = "3h", value_parser = humantime::parse_duration)]
    pub max_hint_age: Duration,

    /// The most hints held, over all replicas.
    #[arg(long, env = "KILOVOLT_MAX_HINTS", default_value_t = 1_000_000)]
    pub max_hints: usize,

    /// The most bytes of keys and values held in hints.
    #[arg(long, env = "KILOVOLT_MAX_HINT_BYTES", default_value_t = 256 << 20)]
    pub max_hint_bytes: usize,

    /// How long a write may wait in a peer's delta queue for others to
    /// share its batch.
    #[arg(long, env = "KILOVOLT_REPLICATION_LINGER", default_value = "1ms", value_parser = humantime::parse_duration)]
    pub replication_linger: Duration,

    /// Bytes of keys and values that fill a delta batch, which is then sent
    /// at once.
    #[arg(long, env = "KILOVOLT_REPLICATION_BATCH_BYTES", default_value_t = 64 * 1024)]
    pub replication_batch_bytes: usize,

    /// The most bytes of deltas waiting for one peer. A peer slower than
    /// the writes to it would otherwise make its queue grow without limit;
    /// deltas past the bound are held as hints instead (counted in
    /// `Stats.deltas_overflowed`).
    #[arg(long, env = "KILOVOLT_REPLICATION_QUEUE_BYTES", default_value_t = 16 << 20)]
    pub replication_queue_bytes: usize,

    /// Time between anti-entropy rounds with every replica peer.
    #[arg(long, env = "KILOVOLT_ANTI_ENTROPY_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub anti_entropy_interval: Duration,

    /// The most bytes per second anti-entropy sessions may move.
    #[arg(long, env = "KILOVOLT_ANTI_ENTROPY_BYTES_PER_SEC", default_value_t = 32 << 20)]
    pub anti_entropy_bytes_per_sec: u64,

    /// How old a tombstone (or how long expired a value) must be before it
    /// may be collected, once every replica holds it. Never less than
    /// --max-hint-age plus --request-timeout: no older write may still be
    /// in flight when it goes.
    #[arg(long, env = "KILOVOLT_TOMBSTONE_GRACE", default_value = "4h", value_parser = humantime::parse_duration)]
    pub tombstone_grace: Duration,

    /// Serve the Faults service, which cuts and degrades this node's links
    /// to chosen peers (for partition tests). Off by default.
    #[arg(long, env = "KILOVOLT_FAULT_INJECTION")]
    pub fault_injection: bool,

    /// How often expired values are collected.
    #[arg(long, env = "KILOVOLT_EXPIRY_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub expiry_interval: Duration,

    /// The most expired values one collection tick removes.
    #[arg(long, env = "KILOVOLT_EXPIRY_BATCH", default_value_t = 10_000)]
    pub expiry_batch: usize,

    /// Port of the peer listener, which serves the node-to-node protocol
    /// only (the client port never does). Defaults to --port plus 1000 (a
    /// free port when --port is 0); 0 picks a free port. Gossip tells the
    /// other nodes where it is.
    #[arg(long, env = "KILOVOLT_PEER_PORT")]
    pub peer_port: Option<u16>,

    /// host:port other nodes reach the peer listener at. Defaults to the
    /// host of the advertised address with the peer port.
    #[arg(long, env = "KILOVOLT_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,

    /// PEM certificate (chain) of the client API; with --tls-key, clients
    /// must connect with TLS.
    #[arg(long, env = "KILOVOLT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "KILOVOLT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): clients must present a certificate signed by
    /// one of them. Needs --tls-cert.
    #[arg(long, env = "KILOVOLT_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// PEM certificate of this node for mutual TLS between nodes; it must
    /// name the node id (see docs/security.md; `kilovolt-cli cert node`
    /// makes one). With --peer-tls-key and --peer-ca.
    #[arg(long, env = "KILOVOLT_PEER_TLS_CERT", requires_all = ["peer_tls_key", "peer_ca"])]
    pub peer_tls_cert: Option<PathBuf>,

    /// PEM private key of --peer-tls-cert.
    #[arg(long, env = "KILOVOLT_PEER_TLS_KEY", requires = "peer_tls_cert")]
    pub peer_tls_key: Option<PathBuf>,

    /// PEM certificate of the cluster's CA: peers must present a
    /// certificate it signed for the node id they claim.
    #[arg(long, env = "KILOVOLT_PEER_CA", requires = "peer_tls_cert")]
    pub peer_ca: Option<PathBuf>,

    /// File of client tokens with roles (NAME ROLE SHA256 a line; see
    /// docs/security.md). Every client call then needs
    /// `authorization: Bearer TOKEN`. Re-read on SIGHUP.
    #[arg(long, env = "KILOVOLT_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Directory of the write-ahead log and snapshots (docs/durability.md).
    /// Without it the node keeps everything in memory only and a restart
    /// starts empty.
    #[arg(long, env = "KILOVOLT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// When a change is on disk, with --data-dir: `periodic` writes the log
    /// at once and fsyncs it every --fsync-interval; `sync` acknowledges a
    /// write only once its record is fsynced on that replica.
    #[arg(long, env = "KILOVOLT_DURABILITY", value_enum, default_value_t = DurabilityMode::Periodic)]
    pub durability: DurabilityMode,

    /// How often the log is fsynced in `periodic` mode: what a power loss
    /// may take.
    #[arg(long, env = "KILOVOLT_FSYNC_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub fsync_interval: Duration,

    /// The size past which the log starts a new segment file.
    #[arg(long, env = "KILOVOLT_LOG_SEGMENT_BYTES", default_value_t = 64 << 20)]
    pub log_segment_bytes: u64,

    /// A snapshot is taken once the log written since the last one is
    /// larger than that snapshot and than this many bytes.
    #[arg(long, env = "KILOVOLT_SNAPSHOT_LOG_BYTES", default_value_t = 64 << 20)]
    pub snapshot_log_bytes: u64,

    /// host:port of an HTTP listener serving Prometheus metrics
    /// (`/metrics`) and the probes `/live` and `/ready`. Off unless set.
    #[arg(long, env = "KILOVOLT_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Requests slower than this are logged, one line each, with the key's
    /// hash, the level and every replica's fate (requests that fail at
    /// QUORUM or ALL are logged so whatever their time).
    #[arg(long, env = "KILOVOLT_SLOW_REQUEST", default_value = "1s", value_parser = humantime::parse_duration)]
    pub slow_request: Duration,

    /// Log line format: `text` for people, `json` (one object per line) for
    /// log shippers.
    #[arg(long, env = "KILOVOLT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Threads of the async runtime that serve requests (default: one per
    /// core). Fewer than the cores leaves a core to other processes on a
    /// shared machine (docs/performance.md, "Tails").
    #[arg(long, env = "KILOVOLT_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

/// When a change logged to disk is safe (`--durability`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityMode {
    /// Written at once, fsynced every `--fsync-interval`: a power loss takes
    /// up to one interval of acknowledged writes; a crash of the process
    /// alone, what the writer had not yet written (its last millisecond).
    Periodic,
    /// Acknowledged only once fsynced (group commit): nothing acknowledged
    /// is lost.
    Sync,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields as keys.
    Json,
}

/// Verbosity of the node's logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Lifecycle events (default).
    Info,
    /// Per-request detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The level as a `tracing` filter directive.
    pub fn as_directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The levels a node may use for requests that name none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DefaultConsistency {
    /// One replica.
    One,
    /// A majority of replicas.
    Quorum,
    /// Every replica.
    All,
    /// One replica in this node's region.
    LocalOne,
    /// A majority of the key's replicas in this node's region.
    LocalQuorum,
    /// A majority of the key's replicas in every region.
    EachQuorum,
}

/// The value limit must leave room for the key and framing within what
/// gRPC can carry (4 GiB minus a margin).
fn parse_value_limit(s: &str) -> Result<usize, String> {
    const CEILING: usize = 1 << 30;
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if n == 0 || n > CEILING {
        return Err(format!(
            "{n} is out of range; the limit is 1 to {CEILING} bytes"
        ));
    }
    Ok(n)
}

/// A flag whose value is outside the range the node can run with.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("--{flag} is {value}; it must be {range}")]
pub struct ConfigError {
    /// The flag, without its leading dashes.
    pub flag: &'static str,
    /// The value given, as the user would write it.
    pub value: String,
    /// The accepted range, in words.
    pub range: &'static str,
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// `value` within `min..=max`, or the error naming `flag` and `range`.
fn check_duration(
    flag: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
    range: &'static str,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(ConfigError {
        flag,
        value: humantime::format_duration(value).to_string(),
        range,
    })
}

/// `value` within `min..=max`, or the error naming `flag` and `range`.
fn check_count<T: PartialOrd + ToString>(
    flag: &'static str,
    value: T,
    min: T,
    max: T,
    range: &'static str,
) -> Result<(), ConfigError> {
    if min <= value && value <= max {
        return Ok(());
    }
    Err(ConfigError {
        flag,
        value: value.to_string(),
        range,
    })
}

impl Config {
    /// Checks every setting against the range the node can run with, so
    /// that a bad value stops the node at start with one line naming the
    /// flag, rather than a panic or a busy loop later. A zero interval
    /// would spin its task; a duration of centuries would overflow the
    /// clock arithmetic.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ms = Duration::from_millis;
        check_duration(
            "max-clock-drift",
            self.max_clock_drift,
            ms(1),
            HOUR,
            "1ms to 1h",
        )?;
        check_duration(
            "gossip-interval",
            self.gossip_interval,
            ms(10),
            MINUTE,
            "10ms to 1m",
        )?;
        if let Some(n) = self.worker_threads.filter(|n| !(1..=1024).contains(n)) {
            return Err(ConfigError {
                flag: "worker-threads",
                value: n.to_string(),
                range: "1 to 1024",
            });
        }
        if !(1.0..=100.0).contains(&self.phi_threshold) {
            return Err(ConfigError {
                flag: "phi-threshold",
                value: self.phi_threshold.to_string(),
                range: "1 to 100",
            });
        }
        check_duration(
            "dead-node-grace",
            self.dead_node_grace,
            ms(100),
            365 * DAY,
            "100ms to 365d",
        )?;
        check_duration(
            "request-timeout",
            self.request_timeout,
            ms(1),
            10 * MINUTE,
            "1ms to 10m",
        )?;
        check_duration(
            "max-hint-age",
            self.max_hint_age,
            ms(1),
            30 * DAY,
            "1ms to 30d",
        )?;
        check_duration(
            "replication-linger",
            self.replication_linger,
            Duration::ZERO,
            SECOND,
            "0s to 1s",
        )?;
        check_count(
            "replication-batch-bytes",
            self.replication_batch_bytes,
            1,
            64 << 20,
            "1 to 67108864 bytes",
        )?;
        check_duration(
            "anti-entropy-interval",
            self.anti_entropy_interval,
            ms(10),
            DAY,
            "10ms to 1d",
        )?;
        check_count(
            "anti-entropy-bytes-per-sec",
            self.anti_entropy_bytes_per_sec,
            1024,
            1 << 40,
            "1024 to 1099511627776 bytes per second",
        )?;
        check_duration(
            "tombstone-grace",
            self.tombstone_grace,
            Duration::ZERO,
            365 * DAY,
            "0s to 365d",
        )?;
        check_duration(
            "expiry-interval",
            self.expiry_interval,
            ms(1),
            HOUR,
            "1ms to 1h",
        )?;
        check_count(
            "expiry-batch",
            self.expiry_batch,
            1,
            10_000_000,
            "1 to 10000000",
        )?;
        check_duration(
            "fsync-interval",
            self.fsync_interval,
            ms(1),
            MINUTE,
            "1ms to 1m",
        )?;
        check_count(
            "log-segment-bytes",
            self.log_segment_bytes,
            4096,
            1 << 34,
            "4096 to 17179869184",
        )?;
        self.peer_bind_addr().map(|_| ())
    }

    /// The settings with every default, as if no flag were given.
    pub fn defaults() -> Self {
        Self::parse_from(["kilovolt-db"])
    }

    /// The address to bind.
    pub fn bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The address the peer listener binds: `--peer-port`, else `--port`
    /// plus [`PEER_PORT_OFFSET`] (0, a free port, when `--port` is 0).
    pub fn peer_bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        let port = match (self.peer_port, self.port) {
            (Some(port), _) => port,
            (None, 0) => 0,
            (None, port) => port.checked_add(PEER_PORT_OFFSET).ok_or(ConfigError {
                flag: "port",
                value: port.to_string(),
                range: "at most 64535 unless --peer-port is given (the peer listener defaults to --port plus 1000)",
            })?,
        };
        Ok(SocketAddr::new(self.host, port))
    }

    /// The address other nodes reach the peer listener at, given its bound
    /// port and the advertised client address.
    pub fn peer_advertised(&self, advertised: &str, bound_port: u16) -> String {
        if let Some(a) = &self.peer_advertise {
            return a.clone();
        }
        let host = match advertised.rsplit_once(':') {
            Some((host, _)) => host,
            None => advertised,
        };
        format!("{host}:{bound_port}")
    }

    /// The address peers and clients use, given the port actually bound
    /// (which differs from `--port` when that is 0).
    pub fn advertised(&self, bound_port: u16) -> String {
        match &self.advertise {
            Some(a) => a.clone(),
            None => {
                let host = if self.host.is_unspecified() {
                    IpAddr::V4(Ipv4Addr::LOCALHOST)
                } else {
                    self.host
                };
                SocketAddr::new(host, bound_port).to_string()
            }
        }
    }

    /// The node id, given the advertised address.
    pub fn node_id(&self, advertised: &str) -> String {
        self.node_id
            .clone()
            .unwrap_or_else(|| advertised.to_string())
    }

    /// The grace in force: `--tombstone-grace`, raised to the longest a hint
    /// or delta may live when it is shorter.
    pub fn settle_grace(&self) -> Duration {
        self.tombstone_grace
            .max(self.max_hint_age + self.request_timeout)
    }

    /// The largest gRPC message the node decodes or encodes: the largest
    /// valid request (value and key at their limits) plus room for framing,
    /// so that a value just over its limit reaches validation and gets the
    /// precise error, while a grossly oversized message is refused by the
    /// transport before it is buffered.
    pub fn max_message_bytes(&self) -> usize {
        self.max_value_bytes + MAX_KEY_BYTES + 64 * 1024
    }

    /// The largest peer message the node decodes or encodes, either way.
    /// The protocol's largest messages are a delta batch (closed once its
    /// entries reach `--replication-batch-bytes`), an anti-entropy step (at
    /// most its own limit, 256 KiB) and a read answer, each with at most
    /// one entry past its budget; an entry is a value at its limit and its
    /// key. Twice that covers a map's dots and contexts and the protobuf
    /// framing the size estimates leave out, plus 64 KiB for the rest.
    pub fn max_peer_message_bytes(&self) -> usize {
        let budget = self.replication_batch_bytes.max(DEFAULT_SYNC_MESSAGE_BYTES);
        budget
            .saturating_add(self.max_value_bytes + MAX_KEY_BYTES)
            .saturating_mul(2)
            .saturating_add(64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_commands_parse() {
        let c = Config::try_parse_from(["kilovolt-db", "--port", "50051"]).unwrap();
        assert_eq!(c.port, 50051);
        let c = Config::try_parse_from([
            "kilovolt-db",
            "--port",
            "50052",
            "--cluster",
            "localhost:50051,localhost:50053",
        ])
        .unwrap();
        assert_eq!(c.cluster, vec!["localhost:50051", "localhost:50053"]);
    }

    #[test]
    fn identity_derives_from_the_advertised_address() {
        let c = Config::defaults();
        assert_eq!(c.advertised(4000), "127.0.0.1:4000");
        assert_eq!(c.node_id("127.0.0.1:4000"), "127.0.0.1:4000");
        let c = Config::try_parse_from(["kilovolt-db", "--node-id", "n1", "--advertise", "db1:7"])
            .unwrap();
        assert_eq!(c.advertised(4000), "db1:7");
        assert_eq!(c.node_id("db1:7"), "n1");
    }

    #[test]
    fn replicas_per_region_excludes_the_replication_factor() {
        assert_eq!(Config::defaults().replicas_per_region, None);
        let c = Config::try_parse_from(["kilovolt-db", "--replicas-per-region", "2"]).unwrap();
        assert_eq!(c.replicas_per_region, Some(2));
        let both = Config::try_parse_from([
            "kilovolt-db",
            "--replicas-per-region",
            "2",
            "--replication-factor",
            "3",
        ]);
        assert!(both.is_err(), "the two flags exclude each other");
        assert!(Config::try_parse_from(["kilovolt-db", "--replicas-per-region", "0"]).is_err());
    }

    #[test]
    fn the_peer_listener_is_advertised_on_the_advertised_host() {
        let c = Config::defaults();
        assert_eq!(c.peer_bind_addr().unwrap().port(), 51051);
        let c = Config::try_parse_from(["kilovolt-db", "--port", "0"]).unwrap();
        assert_eq!(c.peer_bind_addr().unwrap().port(), 0);
        let c = Config::try_parse_from(["kilovolt-db", "--port", "65000"]).unwrap();
        let err = c.peer_bind_addr().unwrap_err().to_string();
        assert!(
            err.starts_with("--port is 65000") && err.contains("--peer-port"),
            "{err}"
        );
        let c = Config::try_parse_from(["kilovolt-db", "--port", "65000", "--peer-port", "7000"])
            .unwrap();
        assert_eq!(c.peer_bind_addr().unwrap().port(), 7000);
        assert_eq!(c.peer_advertised("127.0.0.1:4000", 4100), "127.0.0.1:4100");
        assert_eq!(c.peer_advertised("[::1]:4000", 4100), "[::1]:4100");
        let c =
            Config::try_parse_from(["kilovolt-db", "--peer-advertise", "db1-internal:7"]).unwrap();
        assert_eq!(c.peer_advertised("db1:4000", 4100), "db1-internal:7");
    }

    #[test]
    fn tls_flags_come_in_complete_sets() {
        for partial in [
            &["--tls-cert", "c.pem"][..],
            &["--tls-client-ca", "ca.pem"],
            &["--peer-tls-cert", "c.pem", "--peer-tls-key", "k.pem"],
            &["--peer-ca", "ca.pem"],
        ] {
            let args = std::iter::once("kilovolt-db").chain(partial.iter().copied());
            assert!(Config::try_parse_from(args).is_err(), "{partial:?}");
        }
        let c = Config::try_parse_from([
            "kilovolt-db",
            "--peer-tls-cert",
            "c.pem",
            "--peer-tls-key",
            "k.pem",
            "--peer-ca",
            "ca.pem",
        ]);
        assert!(c.is_ok());
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(Config::defaults().validate(), Ok(()));
    }

    #[test]
    fn a_value_that_would_break_the_node_names_its_flag_and_range() {
        for (flag, value) in [
            ("--expiry-interval", "0s"),
            ("--anti-entropy-interval", "0s"),
            ("--gossip-interval", "0s"),
            ("--max-clock-drift", "0s"),
            ("--request-timeout", "0s"),
            ("--dead-node-grace", "1000years"),
            ("--phi-threshold", "0"),
            ("--phi-threshold", "NaN"),
            ("--expiry-batch", "0"),
            ("--anti-entropy-bytes-per-sec", "0"),
            ("--replication-batch-bytes", "0"),
            ("--worker-threads", "0"),
        ] {
            let c = Config::try_parse_from(["kilovolt-db", flag, value]).unwrap();
            let err = c.validate().unwrap_err();
            assert_eq!(format!("--{}", err.flag), flag);
            let text = err.to_string();
            assert!(
                text.starts_with(flag) && text.contains("it must be"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_zero_value_limit_is_refused() {
        assert!(Config::try_parse_from(["kilovolt-db", "--max-value-bytes", "0"]).is_err());
    }
}
