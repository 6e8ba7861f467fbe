//! `kilovolt-bench`: a load generator for Kilovolt-DB, in the manner of
//! redis-benchmark or etcd's benchmark tool.
//!
//! It opens `--conns` gRPC channels (HTTP/2 connections) spread over the
//! `--addr` nodes, writes every key of the key space once (the preload),
//! then keeps `--concurrency` requests in flight, each task issuing one Get
//! or Set at a time (or, with `--batch N`, one Batch of N of them; with
//! `--workload map` or `counter`, MapGet and MapSet of one field, or
//! GetCounter and Increment), for `--warmup` (not recorded) and
//! `--duration`, and reports throughput, latency percentiles and errors by
//! gRPC status code.
//!
//! Exit codes: 0 when the benchmark ran (even if requests failed), 2 usage
//! error, 3 a node cannot be connected to at all.

mod histogram;
mod report;
mod visibility;
mod workload;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, ValueEnum};
use futures_util::future::join_all;
use kilovolt::proto::{self, kilovolt_client::KilovoltClient};
use kilovolt::security::client::{BearerToken, ClientSecurity};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A client of one connection, sending the token (if any) with every
/// request.
pub type Client = KilovoltClient<InterceptedService<Channel, BearerToken>>;

use crate::report::Report;
use crate::workload::{Kind, Progress, Workload};

/// Largest message the client sends or accepts; the server's own limit is
/// the one that applies.
const MAX_MESSAGE_BYTES: usize = 1 << 31;

/// The command line.
#[derive(Parser)]
#[command(
    name = "kilovolt-bench",
    version,
    about = "Load generator for Kilovolt-DB",
    long_about = "Load generator for Kilovolt-DB.\n\n\
        Writes every key of the key space once (the preload, skipped with \
        --no-preload), then keeps --concurrency requests in flight over \
        --conns connections for --warmup (not recorded) and --duration: each \
        request is a Get (with probability --read-ratio) or a Set of a key \
        picked uniformly at random (with --workload map, a MapGet or MapSet \
        of one of 16 fields of the key's map; with --workload counter, a \
        GetCounter or an Increment by 1). With --batch N above 1, each request in \
        flight is instead one Batch of N such operations. It then reports \
        ops/s, the p50, p99, p99.9 and max latency of reads, writes and both, \
        and the failed requests by gRPC status code. With --batch, ops/s and \
        errors count operations, while latency is that of the whole batch \
        each operation travelled in. With --rate, requests are sent on a \
        fixed schedule instead (an open load), and a request held back by a \
        slow answer counts its latency from the instant it was due. \
        Progress goes to stderr once a second.\n\n\
        Exit codes: 0 the benchmark ran (even if requests failed), 2 usage \
        error, 3 a node cannot be connected to.",
    after_help = "Examples:\n  \
        kilovolt-bench --duration 30s\n  \
        kilovolt-bench --addr 127.0.0.1:50051,127.0.0.1:50052 --read-ratio 0 --consistency quorum\n  \
        kilovolt-bench --batch 16 --read-ratio 0.9\n  \
        kilovolt-bench --workload counter --read-ratio 0.5\n  \
        kilovolt-bench --rate 20000 --duration 30s\n  \
        kilovolt-bench --json --no-preload --keys 1000 --value-size 1024"
)]
struct Cli {
    /// Nodes to load, host:port, comma-separated; connections are spread
    /// over them round-robin (connection i goes to node i mod the count).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:50051",
        value_name = "HOST:PORT[,...]"
    )]
    addr: Vec<String>,
    #[command(flatten)]
    security: ClientSecurity,
    /// gRPC channels (HTTP/2 connections) to open; requests in flight are
    /// spread over them.
    #[arg(long, default_value_t = 4, value_parser = at_least_one::<usize>)]
    conns: usize,
    /// Requests in flight in total (one task each, one request at a time).
    #[arg(long, default_value_t = 64, value_parser = at_least_one::<usize>)]
    concurrency: usize,
    /// How long to measure (e.g. 10s, 1m), after the warmup.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    duration: Duration,
    /// How long to run the load before measuring; not counted (0s for none).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Keys in the key space (`key:00000000` upwards; `map:` and `counter:`
    /// for those workloads).
    #[arg(long, default_value_t = 100_000, value_parser = at_least_one::<u64>)]
    keys: u64,
    /// Bytes in each key: its prefix (`key:`, `map:` or `counter:`) and the
    /// key's number, zero-padded to fill them. By default the number takes
    /// 8 digits, or as many as the largest key number needs.
    #[arg(long, value_name = "BYTES")]
    key_size: Option<usize>,
    /// Bytes in each value written.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Fraction of requests that are reads, 0.0 to 1.0; the rest are writes.
    #[arg(long, default_value_t = 0.9, value_parser = ratio)]
    read_ratio: f64,
    /// Consistency level of every request; `local` applies to reads only
    /// (writes then use `default`).
    #[arg(long, value_enum, default_value_t = Level::Default)]
    consistency: Level,
    /// Operations per request: 1 sends plain Get and Set RPCs; N above 1
    /// sends each request in flight as one Batch of N operations (at most
    /// the server's limit, 1000), each a read or a write by --read-ratio.
    /// ops/s and errors then count operations; latency is per batch.
    #[arg(long, default_value_t = 1, value_parser = at_least_one::<usize>)]
    batch: usize,
    /// What the requests read and write: strings (Get, Set), maps (MapGet
    /// and MapSet of one of 16 fields per key, each --value-size bytes) or
    /// counters (GetCounter, Increment by 1). --batch applies to strings
    /// only.
    #[arg(long, value_enum, default_value_t = WorkloadKind::String)]
    workload: WorkloadKind,
    /// Requests per second to send in all (an open load), instead of
    /// sending each task's next request as soon as its last one is
    /// answered. Each task sends on a fixed schedule; a request that is late
    /// because the answer before it was slow counts its latency from the
    /// instant it was due, so that the delay shows in its latency too. With
    /// --batch, each request is one batch.
    #[arg(long, value_name = "REQUESTS_PER_SEC", value_parser = positive_rate)]
    rate: Option<f64>,
    /// Print one JSON object with the results instead of the report.
    #[arg(long)]
    json: bool,
    /// Skip the preload: reads of keys never written count as successful
    /// (and as "not found").
    #[arg(long)]
    no_preload: bool,
    /// Seed of the key and operation choices: each task draws its own
    /// sequence from it, so runs with the same seed and --concurrency pick
    /// the same keys and operations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Give up on one request (or a connection attempt) after this long; the
    /// request then counts as DeadlineExceeded.
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    timeout: Duration,
    /// Instead of a load, measure how long a write takes to show at this
    /// node: --visible-writes ONE Sets, one at a time, to the first --addr,
    /// each followed by LOCAL Gets at this node over one connection until
    /// its value shows (at most --timeout); prints the median and the
    /// largest time from sending the Set to the first Get that saw it.
    #[arg(long, value_name = "HOST:PORT")]
    visible_at: Option<String>,
    /// How many writes --visible-at makes.
    #[arg(long, default_value_t = 20, value_parser = at_least_one::<usize>)]
    visible_writes: usize,
}

/// A workload as named on the command line.
#[derive(Clone, Copy, ValueEnum)]
enum WorkloadKind {
    String,
    Map,
    Counter,
}

impl From<WorkloadKind> for Kind {
    fn from(k: WorkloadKind) -> Self {
        match k {
            WorkloadKind::String => Kind::String,
            WorkloadKind::Map => Kind::Map,
            WorkloadKind::Counter => Kind::Counter,
        }
    }
}

/// A consistency level as named on the command line.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Level {
    /// The node's --default-consistency.
    Default,
    /// One replica.
    One,
    /// A majority of the key's replicas.
    Quorum,
    /// Every replica of the key.
    All,
    /// Reads: the receiving node's own copy; writes use `default`.
    Local,
    /// One replica in the receiving node's region.
    LocalOne,
    /// A majority of the key's replicas in the receiving node's region.
    LocalQuorum,
    /// A majority of the key's replicas in every region.
    EachQuorum,
}

impl Level {
    /// The level reads are sent with.
    fn for_reads(self) -> proto::Consistency {
        match self {
            Level::Default => proto::Consistency::Default,
            Level::One => proto::Consistency::One,
            Level::Quorum => proto::Consistency::Quorum,
            Level::All => proto::Consistency::All,
            Level::Local => proto::Consistency::Local,
            Level::LocalOne => proto::Consistency::LocalOne,
            Level::LocalQuorum => proto::Consistency::LocalQuorum,
            Level::EachQuorum => proto::Consistency::EachQuorum,
        }
    }

    /// The level writes are sent with: LOCAL is refused for writes, so
    /// they fall back to DEFAULT.
    fn for_writes(self) -> proto::Consistency {
        match self {
            Level::Local => proto::Consistency::Default,
            other => other.for_reads(),
        }
    }

    /// The name used on the command line.
    fn name(self) -> &'static str {
        match self {
            Level::Default => "default",
            Level::One => "one",
            Level::Quorum => "quorum",
            Level::All => "all",
            Level::Local => "local",
            Level::LocalOne => "local-one",
            Level::LocalQuorum => "local-quorum",
            Level::EachQuorum => "each-quorum",
        }
    }
}

/// Parses a duration that must be longer than zero.
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// Parses a request rate: a number of requests per second above zero.
fn positive_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !r.is_finite() || r <= 0.0 {
        return Err(format!("{r} is not a rate above zero"));
    }
    Ok(r)
}

/// Parses a whole number of at least one.
fn at_least_one<T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    let n: u64 = s.parse().map_err(|e| format!("{e}"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    T::try_from(n).map_err(|_| format!("{n} is too large"))
}

/// Parses a fraction from 0.0 to 1.0.
fn ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=1.0).contains(&r) {
        return Err(format!("{r} is not between 0.0 and 1.0"));
    }
    Ok(r)
}

/// One node to connect to, as given and as an endpoint.
struct Target {
    /// The address as given on the command line.
    addr: String,
    /// The endpoint built from it.
    endpoint: Endpoint,
}

/// Checks what clap cannot and builds the endpoints; exits with code 2
/// (and the usage) on a problem.
fn targets(cli: &Cli) -> Vec<Target> {
    let usage_error = |message: String| -> ! {
        Cli::command()
            .error(ErrorKind::ValueValidation, message)
            .exit()
    };
    if cli.conns > cli.concurrency {
        usage_error(format!(
            "--conns ({}) is more than --concurrency ({}): some connections would carry no requests",
            cli.conns, cli.concurrency
        ));
    }
    if cli.batch > kilovolt::config::MAX_BATCH_OPS {
        usage_error(format!(
            "--batch ({}) is more than the server's limit of {} operations per batch",
            cli.batch,
            kilovolt::config::MAX_BATCH_OPS
        ));
    }
    if cli.batch > 1 && !matches!(cli.workload, WorkloadKind::String) {
        usage_error(format!(
            "--batch ({}) applies to the string workload only: Batch carries Set, Get and Delete",
            cli.batch
        ));
    }
    if let Some(size) = cli.key_size {
        let prefix = Kind::from(cli.workload).key_prefix();
        let needed = prefix.len() + Workload::digits_for(cli.keys);
        if size < needed {
            usage_error(format!(
                "--key-size ({size}) cannot hold {} keys: they need {needed} bytes",
                cli.keys
            ));
        }
    }
    cli.addr
        .iter()
        .map(|addr| {
            let addr = addr.trim();
            if addr.is_empty() {
                usage_error("--addr has an empty entry".into());
            }
            let endpoint = cli
                .security
                .endpoint(addr)
                .unwrap_or_else(|e| usage_error(format!("--addr: {e}")))
                .connect_timeout(cli.timeout)
                .tcp_nodelay(true);
            Target {
                addr: addr.to_string(),
                endpoint,
            }
        })
        .collect()
}

/// Opens the `conns` channels, channel i to target i mod the count. On a
/// failure answers the address and the reason.
async fn connect(targets: &[Target], conns: usize) -> Result<Vec<Channel>, (String, String)> {
    let attempts = (0..conns).map(|i| {
        let target = &targets[i % targets.len()];
        async move {
            target
                .endpoint
                .connect()
                .await
                .map_err(|e| (target.addr.clone(), error_chain(&e)))
        }
    });
    join_all(attempts).await.into_iter().collect()
}

/// An error and its causes on one line (tonic's own message alone is just
/// "transport error"), a cause that repeats the one before it left out.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    let mut last = message.clone();
    while let Some(cause) = source {
        let text = cause.to_string();
        // hyper and tonic often wrap an error in one that repeats it.
        if text != last {
            message.push_str(": ");
            message.push_str(&text);
            last = text;
        }
        source = cause.source();
    }
    message
}

/// The value every Set writes: `size` bytes of printable ASCII.
fn value_of(size: usize) -> String {
    (0..size)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let targets = targets(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kilovolt-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(bench(cli, targets))
}

/// Connects, preloads, runs and reports.
async fn bench(cli: Cli, targets: Vec<Target>) -> ExitCode {
    let channels = match connect(&targets, cli.conns).await {
        Ok(channels) => channels,
        Err((addr, reason)) => {
            eprintln!("kilovolt-bench: cannot connect to {addr}: {reason}");
            return ExitCode::from(3);
        }
    };
    let token = match cli.security.interceptor() {
        Ok(token) => token,
        Err(e) => {
            eprintln!("kilovolt-bench: --token: {e}");
            return ExitCode::from(2);
        }
    };
    let clients: Vec<Client> = channels
        .into_iter()
        .map(|channel| {
            KilovoltClient::with_interceptor(channel, token.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        })
        .collect();
    if let Some(at) = &cli.visible_at {
        return visible(&cli, &clients[0], at, token).await;
    }
    let workload = Arc::new(Workload {
        kind: cli.workload.into(),
        keys: cli.keys,
        key_width: match cli.key_size {
            // Checked in `targets`: the size holds the prefix and the digits.
            Some(size) => size - Kind::from(cli.workload).key_prefix().len(),
            None => Workload::key_width_for(cli.keys),
        },
        value: value_of(cli.value_size),
        read_ratio: cli.read_ratio,
        read_level: cli.consistency.for_reads(),
        write_level: cli.consistency.for_writes(),
        timeout: cli.timeout,
        seed: cli.seed,
        batch: cli.batch,
    });
    let progress = Progress::new();

    let preload = if cli.no_preload {
        None
    } else {
        let result = workload::preload(&workload, &clients, cli.concurrency, &progress).await;
        if result.errors.total() > 0 {
            progress.note(&format!(
                "preload: {} of {} writes failed",
                result.errors.total(),
                cli.keys
            ));
        }
        Some(result)
    };
    let run = workload::run(
        &workload,
        &clients,
        cli.concurrency,
        cli.warmup,
        cli.duration,
        cli.rate,
        &progress,
    )
    .await;

    let report = Report {
        addrs: targets.iter().map(|t| t.addr.as_str()).collect(),
        conns: cli.conns,
        concurrency: cli.concurrency,
        duration: cli.duration,
        warmup: cli.warmup,
        keys: cli.keys,
        value_size: cli.value_size,
        read_ratio: cli.read_ratio,
        consistency: cli.consistency.name(),
        seed: cli.seed,
        batch: cli.batch,
        workload: Kind::from(cli.workload).name(),
        rate: cli.rate,
        preload: preload.as_ref(),
        run: &run,
    };
    let written = if cli.json {
        report.write_json(&mut std::io::stdout().lock())
    } else {
        report.write_text(&mut std::io::stdout().lock())
    };
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("kilovolt-bench: cannot write the report: {e}");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `--visible-at`: measures and prints how long writes through `writer`
/// take to show at `at`.
async fn visible(cli: &Cli, writer: &Client, at: &str, token: BearerToken) -> ExitCode {
    let endpoint = match cli.security.endpoint(at) {
        Ok(e) => e.connect_timeout(cli.timeout).tcp_nodelay(true),
        Err(e) => {
            eprintln!("kilovolt-bench: --visible-at: {e}");
            return ExitCode::from(2);
        }
    };
    let reader = match endpoint.connect().await {
        Ok(channel) => KilovoltClient::with_interceptor(channel, token),
        Err(e) => {
            eprintln!(
                "kilovolt-bench: cannot connect to {at}: {}",
                error_chain(&e)
            );
            return ExitCode::from(3);
        }
    };
    let tag = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let value = value_of(cli.value_size);
    match visibility::measure(
        writer.clone(),
        reader,
        cli.visible_writes,
        &value,
        tag,
        cli.timeout,
    )
    .await
    {
        Ok(v) => {
            if cli.json {
                println!(
                    "{{\"visible_at\":{at:?},\"writes\":{},\"p50_us\":{},\"max_us\":{}}}",
                    v.took_us.len(),
                    v.p50_us(),
                    v.max_us()
                );
            } else {
                println!(
                    "{} writes visible at {at} after {:.1} ms (median), {:.1} ms at most",
                    v.took_us.len(),
                    v.p50_us() as f64 / 1000.0,
                    v.max_us() as f64 / 1000.0
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kilovolt-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
