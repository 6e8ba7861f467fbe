//! `kilovolt-cli`: the command-line client for Kilovolt-DB.
//!
//! Exit codes: 0 success, 1 key not found (`get`, `mget`, `counter`), 2
//! usage error, 3 server or connection error (the message carries the gRPC
//! status, e.g. FailedPrecondition when the key holds another kind).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kilovolt::proto::{
    self, admin_client::AdminClient, faults_client::FaultsClient, kilovolt_client::KilovoltClient,
};
use kilovolt::security::certs::{DevCa, Pem};
use kilovolt::security::client::ClientSecurity;
use serde_json::json;
use tonic::transport::Channel;

/// Largest message the client sends or accepts; the server's own limit is
/// the one that applies.
const MAX_MESSAGE_BYTES: usize = 1 << 31;

#[derive(Parser)]
#[command(
    name = "kilovolt-cli",
    version,
    about = "Command-line client for Kilovolt-DB"
)]
struct Cli {
    /// host:port of any node.
    #[arg(
        long,
        env = "KILOVOLT_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    addr: String,
    /// Print JSON instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,
    /// Give up on a request after this long (e.g. 500ms, 5s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,
    #[command(flatten)]
    security: ClientSecurity,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a value.
    Set {
        key: String,
        value: String,
        /// Time to live (e.g. 10s, 5m, 1h); the value then reads as absent.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        level: WriteLevel,
    },
    /// Read a value (exit code 1 when the key is not found).
    Get {
        key: String,
        /// How many replicas must answer.
        #[arg(long, value_enum, default_value_t = ReadConsistency::Default)]
        consistency: ReadConsistency,
    },
    /// Delete a key, whatever it holds (string, map or counter).
    Del {
        key: String,
        #[command(flatten)]
        level: WriteLevel,
    },
    /// Set fields of the map at a key, creating it: FIELD=VALUE... (the
    /// first `=` separates the name from the value).
    Mset {
        key: String,
        #[arg(required = true, value_name = "FIELD=VALUE", value_parser = parse_field)]
        fields: Vec<(String, String)>,
        #[command(flatten)]
        level: WriteLevel,
    },
    /// Read fields of the map at a key, all of them when none is named
    /// (exit code 1 when the key holds no map).
    Mget {
        key: String,
        fields: Vec<String>,
        /// How many replicas must answer.
        #[arg(long, value_enum, default_value_t = ReadConsistency::Default)]
        consistency: ReadConsistency,
    },
    /// Remove fields of the map at a key.
    Mdel {
        key: String,
        #[arg(required = true)]
        fields: Vec<String>,
        #[command(flatten)]
        level: WriteLevel,
    },
    /// Add DELTA (default 1; negative subtracts) to the counter at a key,
    /// creating it at 0; prints the counter's value after it.
    Incr {
        key: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        delta: i64,
        #[command(flatten)]
        level: WriteLevel,
    },
    /// Read the counter at a key (exit code 1 when the key holds no counter).
    Counter {
        key: String,
        /// How many replicas must answer.
        #[arg(long, value_enum, default_value_t = ReadConsistency::Default)]
        consistency: ReadConsistency,
    },
    /// List the nodes the contacted node knows of.
    Members,
    /// Show the contacted node's counters.
    Stats,
    /// Delay (and optionally drop) the messages between the contacted node
    /// and PEERS (node ids), to try a WAN on loopback; needs the node's
    /// --fault-injection.
    Degrade {
        #[arg(required = true, value_delimiter = ',')]
        peers: Vec<String>,
        /// Delay added to each message, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u32,
        /// Fraction of messages dropped, 0.0 to 1.0.
        #[arg(long, default_value_t = 0.0)]
        drop: f64,
    },
    /// Lift every fault the contacted node holds.
    Heal,
    /// Make development certificates in a directory: a CA (ca.pem,
    /// ca.key; reused when ca.key is there), one certificate and key per
    /// node (NODE.pem, NODE.key: for --peer-tls-* and --tls-*) and per
    /// client (NAME.pem, NAME.key); in file names, characters other than
    /// letters, digits, `.`, `_` and `-` become `_`. No server is contacted.
    Cert {
        /// Directory to write to (created if missing).
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// A node id to certify (repeat for each node).
        #[arg(long = "node", value_name = "NODE_ID")]
        nodes: Vec<String>,
        /// A client name to certify (repeat for each client).
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
        /// A host name or IP address clients use to reach the nodes, put in
        /// every node certificate (repeat; default localhost and 127.0.0.1).
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
    },
    /// Write a snapshot of the contacted node's store to its data directory
    /// now (the node needs --data-dir).
    Snapshot,
    /// One screen for the whole cluster: every member's state, region,
    /// keys, hints and anti-entropy progress, asked of each member in turn
    /// (the contacted node names them).
    Status,
}

#[derive(Args)]
struct WriteLevel {
    /// How many replicas must acknowledge.
    #[arg(long, value_enum, default_value_t = WriteConsistency::Default)]
    consistency: WriteConsistency,
}

#[derive(Clone, Copy, ValueEnum)]
enum WriteConsistency {
    Default,
    One,
    Quorum,
    All,
    LocalOne,
    LocalQuorum,
    EachQuorum,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReadConsistency {
    Default,
    One,
    Quorum,
    All,
    Local,
    LocalOne,
    LocalQuorum,
    EachQuorum,
}

impl From<WriteConsistency> for proto::Consistency {
    fn from(c: WriteConsistency) -> Self {
        match c {
            WriteConsistency::Default => Self::Default,
            WriteConsistency::One => Self::One,
            WriteConsistency::Quorum => Self::Quorum,
            WriteConsistency::All => Self::All,
            WriteConsistency::LocalOne => Self::LocalOne,
            WriteConsistency::LocalQuorum => Self::LocalQuorum,
            WriteConsistency::EachQuorum => Self::EachQuorum,
        }
    }
}

impl From<ReadConsistency> for proto::Consistency {
    fn from(c: ReadConsistency) -> Self {
        match c {
            ReadConsistency::Default => Self::Default,
            ReadConsistency::One => Self::One,
            ReadConsistency::Quorum => Self::Quorum,
            ReadConsistency::All => Self::All,
            ReadConsistency::Local => Self::Local,
            ReadConsistency::LocalOne => Self::LocalOne,
            ReadConsistency::LocalQuorum => Self::LocalQuorum,
            ReadConsistency::EachQuorum => Self::EachQuorum,
        }
    }
}

/// How a command ended, short of success.
enum Failure {
    NotFound,
    Connect(String),
    Server(tonic::Status),
    /// A command that contacts no server failed (cert).
    Local(String),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Server(s)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::NotFound) => ExitCode::from(1),
        Err(Failure::Connect(message)) => {
            eprintln!("kilovolt-cli: cannot connect to {}: {message}", cli.addr);
            ExitCode::from(3)
        }
        Err(Failure::Server(status)) => {
            eprintln!(
                "kilovolt-cli: server error: {:?}: {}",
                status.code(),
                status.message()
            );
            ExitCode::from(3)
        }
        Err(Failure::Local(message)) => {
            eprintln!("kilovolt-cli: {message}");
            ExitCode::from(3)
        }
    }
}

/// `FIELD=VALUE`, split at the first `=`; the name may not be empty.
fn parse_field(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{arg:?} is not FIELD=VALUE with a non-empty FIELD")),
    }
}

async fn connect(cli: &Cli) -> Result<Channel, Failure> {
    cli.security
        .endpoint(&cli.addr)
        .map_err(Failure::Connect)?
        .connect_timeout(cli.timeout)
        .timeout(cli.timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| Failure::Connect(error_chain(&e)))
}

/// An error and its causes on one line: tonic's own message alone is just
/// "transport error".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    if let Command::Cert {
        out,
        nodes,
        clients,
        hosts,
    } = &cli.command
    {
        return make_certs(out, nodes, clients, hosts).map_err(Failure::Local);
    }
    let token = cli.security.interceptor().map_err(Failure::Connect)?;
    let channel = connect(cli).await?;
    let mut kv = KilovoltClient::with_interceptor(channel.clone(), token.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut admin = AdminClient::with_interceptor(channel.clone(), token.clone());
    let mut faults = FaultsClient::with_interceptor(channel, token);
    match &cli.command {
        Command::Set {
            key,
            value,
            ttl,
            level,
        } => {
            let ttl_ms = ttl.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
            let resp = kv
                .set(proto::SetRequest {
                    key: key.clone(),
                    value: value.clone(),
                    consistency: proto::Consistency::from(level.consistency).into(),
                    ttl_ms,
                })
                .await?
                .into_inner();
            print_written(cli.json, &resp.status, resp.version.as_ref());
        }
        Command::Get { key, consistency } => {
            let resp = kv
                .get(proto::GetRequest {
                    key: key.clone(),
                    consistency: proto::Consistency::from(*consistency).into(),
                })
                .await?
                .into_inner();
            if cli.json {
                println!(
                    "{}",
                    json!({"found": resp.found, "value": resp.value, "version": version_json(resp.version.as_ref())})
                );
            } else if resp.found {
                println!("{}", resp.value);
            } else {
                eprintln!("(not found)");
            }
            if !resp.found {
                return Err(Failure::NotFound);
            }
        }
        Command::Del { key, level } => {
            let resp = kv
                .delete(proto::DeleteRequest {
                    key: key.clone(),
                    consistency: proto::Consistency::from(level.consistency).into(),
                })
                .await?
                .into_inner();
            print_written(cli.json, &resp.status, resp.version.as_ref());
        }
        Command::Mset { key, fields, level } => {
            let resp = kv
                .map_set(proto::MapSetRequest {
                    key: key.clone(),
                    fields: fields.iter().cloned().collect(),
                    consistency: proto::Consistency::from(level.consistency).into(),
                })
                .await?
                .into_inner();
            print_written(cli.json, &resp.status, resp.version.as_ref());
        }
        Command::Mget {
            key,
            fields,
            consistency,
        } => {
            let resp = kv
                .map_get(proto::MapGetRequest {
                    key: key.clone(),
                    fields: fields.clone(),
                    consistency: proto::Consistency::from(*consistency).into(),
                })
                .await?
                .into_inner();
            let sorted: BTreeMap<_, _> = resp.fields.into_iter().collect();
            if cli.json {
                println!("{}", json!({"found": resp.found, "fields": sorted}));
            } else if resp.found {
                for (name, value) in &sorted {
                    println!("{name}\t{value}");
                }
            } else {
                eprintln!("(not found)");
            }
            if !resp.found {
                return Err(Failure::NotFound);
            }
        }
        Command::Mdel { key, fields, level } => {
            let resp = kv
                .map_remove(proto::MapRemoveRequest {
                    key: key.clone(),
                    fields: fields.clone(),
                    consistency: proto::Consistency::from(level.consistency).into(),
                })
                .await?
                .into_inner();
            if cli.json {
                println!("{}", json!({"status": resp.status}));
            } else {
                println!("{}", resp.status);
            }
        }
        Command::Incr { key, delta, level } => {
            let resp = kv
                .increment(proto::IncrementRequest {
                    key: key.clone(),
                    delta: *delta,
                    consistency: proto::Consistency::from(level.consistency).into(),
                })
                .await?
                .into_inner();
            if cli.json {
                println!("{}", json!({"value": resp.value}));
            } else {
                println!("{}", resp.value);
            }
        }
        Command::Counter { key, consistency } => {
            let resp = kv
                .get_counter(proto::GetCounterRequest {
                    key: key.clone(),
                    consistency: proto::Consistency::from(*consistency).into(),
                })
                .await?
                .into_inner();
            if cli.json {
                println!("{}", json!({"found": resp.found, "value": resp.value}));
            } else if resp.found {
                println!("{}", resp.value);
            } else {
                eprintln!("(not found)");
            }
            if !resp.found {
                return Err(Failure::NotFound);
            }
        }
        Command::Members => {
            let resp = admin.members(proto::MembersRequest {}).await?.into_inner();
            print_members(cli.json, &resp);
        }
        Command::Stats => {
            let s = admin.stats(proto::StatsRequest {}).await?.into_inner();
            print_stats(cli.json, &s);
        }
        Command::Degrade {
            peers,
            delay_ms,
            drop,
        } => {
            let state = faults
                .degrade(proto::DegradeRequest {
                    peers: peers.clone(),
                    drop: *drop,
                    delay_ms: *delay_ms,
                })
                .await?
                .into_inner();
            println!("{}", json!({"cut": state.cut, "degraded": state.degraded}));
        }
        Command::Heal => {
            let state = faults.heal(proto::HealRequest {}).await?.into_inner();
            println!("{}", json!({"cut": state.cut, "degraded": state.degraded}));
        }
        Command::Cert { .. } => unreachable!("handled before connecting"),
        Command::Snapshot => {
            let resp = admin
                .snapshot(proto::SnapshotRequest {})
                .await?
                .into_inner();
            if cli.json {
                println!("{}", json!({"bytes": resp.bytes}));
            } else {
                println!("snapshot: {} bytes", resp.bytes);
            }
        }
        Command::Status => {
            let members = admin.members(proto::MembersRequest {}).await?.into_inner();
            let mut rows = Vec::new();
            for m in &members.members {
                let stats = if m.alive {
                    member_stats(cli, &m.address).await
                } else {
                    Err("not alive".into())
                };
                rows.push((m.clone(), stats));
            }
            print_status(cli.json, &members.self_id, &rows);
        }
    }
    Ok(())
}

/// `kilovolt-cli cert`: writes the CA (or reuses the one in `out`) and the
/// certificates asked for; prints each file written.
fn make_certs(
    out: &Path,
    nodes: &[String],
    clients: &[String],
    hosts: &[String],
) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let ca_key = out.join("ca.key");
    let ca = if ca_key.exists() {
        let pem = std::fs::read_to_string(&ca_key)
            .map_err(|e| format!("cannot read {}: {e}", ca_key.display()))?;
        DevCa::from_key_pem(&pem).map_err(|e| e.to_string())?
    } else {
        DevCa::new().map_err(|e| e.to_string())?
    };
    if !ca_key.exists() || !out.join("ca.pem").exists() {
        write_pair(out, "ca", &ca.pem())?;
    }
    let hosts = if hosts.is_empty() {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    } else {
        hosts.to_vec()
    };
    for id in nodes {
        let pem = ca
            .node(id, &hosts)
            .map_err(|e| format!("node {id:?}: {e}"))?;
        write_pair(out, id, &pem)?;
    }
    for name in clients {
        let pem = ca
            .client(name)
            .map_err(|e| format!("client {name:?}: {e}"))?;
        write_pair(out, name, &pem)?;
    }
    Ok(())
}

/// Writes NAME.pem and NAME.key (readable by the owner only) in `dir`.
fn write_pair(dir: &Path, name: &str, pem: &Pem) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cert = dir.join(format!("{file}.pem"));
    std::fs::write(&cert, &pem.cert)
        .map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    let key = dir.join(format!("{file}.key"));
    let _ = std::fs::remove_file(&key);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .and_then(|mut f| f.write_all(pem.key.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", key.display()))?;
    println!("{}\n{}", cert.display(), key.display());
    Ok(())
}

/// The Stats of the member at `address` (with the same TLS settings and
/// token), or why they could not be had.
async fn member_stats(cli: &Cli, address: &str) -> Result<proto::StatsResponse, String> {
    let channel = cli
        .security
        .endpoint(address)?
        .connect_timeout(cli.timeout)
        .timeout(cli.timeout)
        .connect()
        .await
        .map_err(|e| error_chain(&e))?;
    AdminClient::with_interceptor(channel, cli.security.interceptor()?)
        .stats(proto::StatsRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// How long ago a Unix time in ms was, for people ("never" for 0).
fn ago(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "never".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("{}s ago", now.saturating_sub(unix_ms) / 1000)
}

type StatusRow = (proto::Member, Result<proto::StatsResponse, String>);

fn print_status(as_json: bool, self_id: &str, rows: &[StatusRow]) {
    if as_json {
        let members: Vec<_> = rows
            .iter()
            .map(|(m, stats)| {
                let mut o = json!({"id": m.id, "address": m.address, "alive": m.alive,
                    "region": m.region, "state": m.state});
                match stats {
                    Ok(s) => {
                        o["keys"] = json!(s.keys);
                        o["tombstones"] = json!(s.tombstones);
                        o["bytes"] = json!(s.bytes);
                        o["hints_pending"] = json!(s.hints_pending);
                        o["hints_dropped"] = json!(s.hints_dropped);
                        o["anti_entropy_rounds"] = json!(s.anti_entropy_rounds);
                        o["anti_entropy_repaired"] = json!(s.anti_entropy_repaired);
                        o["anti_entropy_last_completed_ms"] =
                            json!(s.anti_entropy_last_completed_ms);
                    }
                    Err(e) => o["error"] = json!(e),
                }
                o
            })
            .collect();
        println!("{}", json!({"self_id": self_id, "members": members}));
        return;
    }
    println!(
        "{:<22} {:<10} {:<8} {:<5} {:>9} {:>10} {:>7} {:>7} {:>9}  LAST SYNC",
        "ADDRESS", "REGION", "STATE", "ALIVE", "KEYS", "TOMBSTONES", "HINTS", "ROUNDS", "REPAIRED"
    );
    for (m, stats) in rows {
        let marker = if m.id == self_id { " (this node)" } else { "" };
        let region = if m.region.is_empty() { "-" } else { &m.region };
        let alive = if m.alive { "yes" } else { "no" };
        match stats {
            Ok(s) => println!(
                "{:<22} {:<10} {:<8} {:<5} {:>9} {:>10} {:>7} {:>7} {:>9}  {}{marker}",
                m.address,
                region,
                m.state,
                alive,
                s.keys,
                s.tombstones,
                s.hints_pending,
                s.anti_entropy_rounds,
                s.anti_entropy_repaired,
                ago(s.anti_entropy_last_completed_ms),
            ),
            Err(e) => println!(
                "{:<22} {:<10} {:<8} {:<5} unreachable: {e}{marker}",
                m.address, region, m.state, alive
            ),
        }
    }
}

fn version_json(v: Option<&proto::Version>) -> serde_json::Value {
    match v {
        Some(v) => json!({"time": v.time, "node": v.node}),
        None => serde_json::Value::Null,
    }
}

/// A version for people: the wall-clock instant and the issuing clock.
fn version_text(v: &proto::Version) -> String {
    format!(
        "{} by clock {}",
        uhlc::NTP64(v.time).to_string_rfc3339_lossy(),
        v.node
    )
}

fn print_written(as_json: bool, status: &str, version: Option<&proto::Version>) {
    if as_json {
        println!(
            "{}",
            json!({"status": status, "version": version_json(version)})
        );
    } else {
        match version {
            Some(v) => println!("{status} (version {})", version_text(v)),
            None => println!("{status}"),
        }
    }
}

fn print_members(as_json: bool, resp: &proto::MembersResponse) {
    if as_json {
        let members: Vec<_> = resp
            .members
            .iter()
            .map(|m| json!({"id": m.id, "address": m.address, "alive": m.alive, "region": m.region, "state": m.state}))
            .collect();
        println!("{}", json!({"self_id": resp.self_id, "members": members}));
        return;
    }
    println!(
        "{:<24} {:<24} {:<12} {:<8} ALIVE",
        "ID", "ADDRESS", "REGION", "STATE"
    );
    for m in &resp.members {
        let marker = if m.id == resp.self_id {
            " (this node)"
        } else {
            ""
        };
        println!(
            "{:<24} {:<24} {:<12} {:<8} {}{marker}",
            m.id,
            m.address,
            if m.region.is_empty() { "-" } else { &m.region },
            m.state,
            if m.alive { "yes" } else { "no" },
        );
    }
}

fn print_stats(as_json: bool, s: &proto::StatsResponse) {
    let rows = [
        ("keys", s.keys),
        ("tombstones", s.tombstones),
        ("bytes", s.bytes),
        ("hints_pending", s.hints_pending),
        ("hints_dropped", s.hints_dropped),
        ("deltas_overflowed", s.deltas_overflowed),
        ("anti_entropy_rounds", s.anti_entropy_rounds),
        ("anti_entropy_repaired", s.anti_entropy_repaired),
        (
            "anti_entropy_last_completed_ms",
            s.anti_entropy_last_completed_ms,
        ),
        ("clock_drift_events", s.clock_drift_events),
        ("versions_refused", s.versions_refused),
        ("merkle_mismatches", s.merkle_mismatches),
        ("anti_entropy_bytes", s.anti_entropy_bytes),
        ("log_bytes", s.log_bytes),
        ("last_fsync_unix_ms", s.last_fsync_unix_ms),
        ("last_snapshot_unix_ms", s.last_snapshot_unix_ms),
        ("snapshot_bytes", s.snapshot_bytes),
    ];
    let texts = [
        ("durability", &s.durability),
        ("log_failure", &s.log_failure),
    ];
    if as_json {
        let mut map: serde_json::Map<_, _> = rows
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        map.extend(texts.iter().map(|(k, v)| (k.to_string(), json!(v))));
        println!("{}", serde_json::Value::Object(map));
    } else {
        for (name, value) in rows {
            println!("{name}: {value}");
        }
        for (name, value) in texts {
            println!("{name}: {value}");
        }
    }
}
