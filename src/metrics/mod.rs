//! Prometheus metrics of one node: a registry handle that every layer can
//! record into (it knows nothing of the modules that use it), and the
//! Prometheus text exposition served by [`http`].
//!
//! Two kinds of figures:
//! - counted on the request path (requests, peer calls, anti-entropy
//!   sessions): the `prometheus` crate's counters and histograms, whose
//!   observations are lock-free atomics; handles are looked up once per
//!   label set and cached, never per request;
//! - read at scrape time from what the node already counts (store, hints,
//!   clock, membership, `Admin.Stats`): [`Metrics::add_source`] registers a
//!   function that writes them into an [`Exposition`], so nothing is counted
//!   twice.
//!
//! A node started without `--metrics-addr` gets [`Metrics::off`]: every
//! record call returns at once.

pub mod http;
pub mod process;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets of client requests and peer calls, in seconds: 100 µs
/// to 10 s, so that both a local read and a request that waits out the
/// request timeout land in a bucket of their own.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of anti-entropy session durations, in seconds.
const SESSION_BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The client RPCs counted by [`Metrics::request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    /// `Kilovolt.Set`.
    Set,
    /// `Kilovolt.Get`.
    Get,
    /// `Kilovolt.Delete`.
    Delete,
    /// `Kilovolt.Batch`.
    Batch,
    /// `Kilovolt.MapSet`.
    MapSet,
    /// `Kilovolt.MapGet`.
    MapGet,
    /// `Kilovolt.MapRemove`.
    MapRemove,
    /// `Kilovolt.Increment`.
    Increment,
    /// `Kilovolt.GetCounter`.
    GetCounter,
}

impl Rpc {
    const ALL: [Rpc; 9] = [
        Rpc::Set,
        Rpc::Get,
        Rpc::Delete,
        Rpc::Batch,
        Rpc::MapSet,
        Rpc::MapGet,
        Rpc::MapRemove,
        Rpc::Increment,
        Rpc::GetCounter,
    ];

    /// The RPC's name as the contract spells it (the `rpc` label).
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Set => "Set",
            Rpc::Get => "Get",
            Rpc::Delete => "Delete",
            Rpc::Batch => "Batch",
            Rpc::MapSet => "MapSet",
            Rpc::MapGet => "MapGet",
            Rpc::MapRemove => "MapRemove",
            Rpc::Increment => "Increment",
            Rpc::GetCounter => "GetCounter",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The `level` label values: the contract's levels, `none` for a request
/// that carries no single level (a `Batch`), `invalid` for a number the
/// contract does not define.
pub const LEVELS: [&str; 9] = [
    "ONE",
    "QUORUM",
    "ALL",
    "LOCAL",
    "LOCAL_ONE",
    "LOCAL_QUORUM",
    "EACH_QUORUM",
    "none",
    "invalid",
];

/// gRPC status codes 0-16, as the `code` label spells them.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A function that writes figures read at scrape time.
pub type Source = Box<dyn Fn(&mut Exposition) + Send + Sync>;

/// The node's metrics; cheap to clone (a shared handle).
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    /// Per (rpc, level): the latency histogram and one counter per code,
    /// each made on first use.
    request_handles: Vec<OnceLock<RequestHandles>>,
    peer_requests: IntCounterVec,
    peer_errors: IntCounterVec,
    peer_seconds: HistogramVec,
    /// Per peer, per RPC: its handles, made on the first call.
    peer_handles: RwLock<HashMap<String, Vec<(&'static str, PeerHandles)>>>,
    /// Each peer's region, from membership.
    regions: RwLock<HashMap<String, String>>,
    sessions: IntCounterVec,
    session_bytes: IntCounterVec,
    session_seconds: Histogram,
    sources: Mutex<Vec<Source>>,
}

struct RequestHandles {
    seconds: Histogram,
    codes: [OnceLock<IntCounter>; CODES.len()],
}

#[derive(Clone)]
struct PeerHandles {
    calls: IntCounter,
    errors: IntCounter,
    seconds: Histogram,
}

impl Metrics {
    /// Metrics that record nothing (no `--metrics-addr`).
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// Metrics that record, ready to be served.
    pub fn on() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "kilovolt_requests_total",
                "Client requests answered, by RPC, consistency level and gRPC status code.",
            ),
            &["rpc", "level", "code"],
        )
        .expect("valid metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "kilovolt_request_duration_seconds",
                "Time to answer a client request, by RPC and consistency level.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["rpc", "level"],
        )
        .expect("valid metric");
        let peer_requests = IntCounterVec::new(
            Opts::new(
                "kilovolt_peer_requests_total",
                "Calls to peers over the peer protocol, by peer, its region and RPC.",
            ),
            &["peer", "region", "rpc"],
        )
        .expect("valid metric");
        let peer_errors = IntCounterVec::new(
            Opts::new(
                "kilovolt_peer_request_errors_total",
                "Calls to peers that failed (cut, no address, timeout, refused), by peer, region and RPC.",
            ),
            &["peer", "region", "rpc"],
        )
        .expect("valid metric");
        let peer_seconds = HistogramVec::new(
            HistogramOpts::new(
                "kilovolt_peer_request_duration_seconds",
                "Time of calls to peers that got an answer or timed out, by peer, region and RPC.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["peer", "region", "rpc"],
        )
        .expect("valid metric");
        let sessions = IntCounterVec::new(
            Opts::new(
                "kilovolt_anti_entropy_sessions_total",
                "Anti-entropy sessions this node started, by outcome (ok, failed).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let session_bytes = IntCounterVec::new(
            Opts::new(
                "kilovolt_anti_entropy_bytes_total",
                "Bytes anti-entropy sessions this node started sent and received (estimated wire size), by direction.",
            ),
            &["direction"],
        )
        .expect("valid metric");
        let session_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "kilovolt_anti_entropy_session_duration_seconds",
                "Time of the anti-entropy sessions this node started, throttling included.",
            )
            .buckets(SESSION_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(peer_requests.clone()),
            Box::new(peer_errors.clone()),
            Box::new(peer_seconds.clone()),
            Box::new(sessions.clone()),
            Box::new(session_bytes.clone()),
            Box::new(session_seconds.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            inner: Some(Arc::new(Inner {
                registry,
                requests,
                request_seconds,
                request_handles: (0..Rpc::ALL.len() * LEVELS.len())
                    .map(|_| OnceLock::new())
                    .collect(),
                peer_requests,
                peer_errors,
                peer_seconds,
                peer_handles: RwLock::new(HashMap::new()),
                regions: RwLock::new(HashMap::new()),
                sessions,
                session_bytes,
                session_seconds,
                sources: Mutex::new(Vec::new()),
            })),
        }
    }

    /// Whether these metrics record (and are served).
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Counts one client request of `rpc` at `level` (one of [`LEVELS`];
    /// anything else counts as `invalid`) answered with gRPC status `code`
    /// after `elapsed`.
    pub fn request(&self, rpc: Rpc, level: &str, code: i32, elapsed: Duration) {
        let Some(inner) = &self.inner else { return };
        let level = LEVELS
            .iter()
            .position(|l| *l == level)
            .unwrap_or(LEVELS.len() - 1);
        let code = usize::try_from(code)
            .ok()
            .filter(|c| *c < CODES.len())
            .unwrap_or(2); // UNKNOWN
        let handles = inner.request_handles[rpc.index() * LEVELS.len() + level].get_or_init(|| {
            RequestHandles {
                seconds: inner
                    .request_seconds
                    .with_label_values(&[rpc.name(), LEVELS[level]]),
                codes: Default::default(),
            }
        });
        handles.seconds.observe(elapsed.as_secs_f64());
        handles.codes[code]
            .get_or_init(|| {
                inner
                    .requests
                    .with_label_values(&[rpc.name(), LEVELS[level], CODES[code]])
            })
            .inc();
    }

    /// Replaces the known peers' regions (node id -> region), which label
    /// peer calls.
    pub fn set_regions(&self, regions: HashMap<String, String>) {
        let Some(inner) = &self.inner else { return };
        let mut known = inner
            .regions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if *known != regions {
            *known = regions;
            // Handles carry the region label: make them again.
            inner
                .peer_handles
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
    }

    /// Counts one call `rpc` to `peer`: `elapsed` when it got an answer or
    /// timed out (`None` when it never left: cut or no address), and
    /// whether it failed.
    pub fn peer_call(
        &self,
        peer: &str,
        rpc: &'static str,
        elapsed: Option<Duration>,
        failed: bool,
    ) {
        let Some(inner) = &self.inner else { return };
        let cached = inner
            .peer_handles
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(peer)
            .and_then(|by_rpc| by_rpc.iter().find(|(r, _)| *r == rpc))
            .map(|(_, h)| h.clone());
        let handles = match cached {
            Some(h) => h,
            None => {
                let region = inner
                    .regions
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(peer)
                    .cloned()
                    .unwrap_or_default();
                let labels = [peer, region.as_str(), rpc];
                let h = PeerHandles {
                    calls: inner.peer_requests.with_label_values(&labels),
                    errors: inner.peer_errors.with_label_values(&labels),
                    seconds: inner.peer_seconds.with_label_values(&labels),
                };
                inner
                    .peer_handles
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(peer.to_string())
                    .or_default()
                    .push((rpc, h.clone()));
                h
            }
        };
        handles.calls.inc();
        if failed {
            handles.errors.inc();
        }
        if let Some(elapsed) = elapsed {
            handles.seconds.observe(elapsed.as_secs_f64());
        }
    }

    /// Counts one anti-entropy session this node started: whether it
    /// completed, its bytes each way, and how long it took.
    pub fn session(&self, ok: bool, sent: u64, received: u64, elapsed: Duration) {
        let Some(inner) = &self.inner else { return };
        inner
            .sessions
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
        inner
            .session_bytes
            .with_label_values(&["sent"])
            .inc_by(sent);
        inner
            .session_bytes
            .with_label_values(&["received"])
            .inc_by(received);
        inner.session_seconds.observe(elapsed.as_secs_f64());
    }

    /// Registers `source`, called at every scrape to write figures the node
    /// already keeps.
    pub fn add_source(&self, source: Source) {
        let Some(inner) = &self.inner else { return };
        inner
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }

    /// Everything, in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let Some(inner) = &self.inner else {
            return String::new();
        };
        let mut out = Exposition::default();
        for source in inner
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            source(&mut out);
        }
        let mut text = Vec::new();
        // Encoding into memory fails only on an invalid metric, which the
        // constructors above rule out.
        if let Err(e) = TextEncoder::new().encode(&inner.registry.gather(), &mut text) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        let mut text = String::from_utf8(text).unwrap_or_default();
        text.push_str(&out.text);
        text
    }
}

/// Whether a metric family is a counter or a gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (restarts at 0 with the process).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Figures read at scrape time, written in the Prometheus text format.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// One family `name` of `kind`, described by `help`, with one sample
    /// per `(labels, value)`.
    pub fn family<'a, L>(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        samples: impl IntoIterator<Item = (L, f64)>,
    ) where
        L: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.text.push_str(name);
            let mut first = true;
            for (label, v) in labels {
                self.text.push(if first { '{' } else { ',' });
                first = false;
                let _ = write!(self.text, "{label}=\"{}\"", escape(v));
            }
            if !first {
                self.text.push('}');
            }
            let _ = writeln!(self.text, " {value}");
        }
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: Kind, value: f64) {
        self.family(name, help, kind, [([], value)]);
    }
}

/// A label value as the text format quotes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_rpc_level_and_code() {
        let m = Metrics::on();
        m.request(Rpc::Set, "QUORUM", 0, Duration::from_millis(3));
        m.request(Rpc::Set, "QUORUM", 14, Duration::from_millis(2));
        m.request(Rpc::Set, "QUORUM", 14, Duration::from_millis(2));
        m.request(Rpc::Get, "bogus", 99, Duration::from_millis(1));
        for level in ["LOCAL_ONE", "LOCAL_QUORUM", "EACH_QUORUM"] {
            m.request(Rpc::Get, level, 0, Duration::from_millis(1));
        }
        let text = m.render();
        for level in ["LOCAL_ONE", "LOCAL_QUORUM", "EACH_QUORUM"] {
            let line =
                format!(r#"kilovolt_requests_total{{code="OK",level="{level}",rpc="Get"}} 1"#);
            assert!(text.contains(&line), "{level}: {text}");
        }
        assert!(
            text.contains(r#"kilovolt_requests_total{code="OK",level="QUORUM",rpc="Set"} 1"#),
            "{text}"
        );
        assert!(text
            .contains(r#"kilovolt_requests_total{code="UNAVAILABLE",level="QUORUM",rpc="Set"} 2"#));
        assert!(
            text.contains(r#"kilovolt_requests_total{code="UNKNOWN",level="invalid",rpc="Get"} 1"#)
        );
        assert!(
            text.contains(r#"kilovolt_request_duration_seconds_count{level="QUORUM",rpc="Set"} 3"#)
        );
    }

    #[test]
    fn peer_calls_carry_the_peer_region() {
        let m = Metrics::on();
        m.set_regions(HashMap::from([("n2".to_string(), "eu".to_string())]));
        m.peer_call("n2", "apply", Some(Duration::from_millis(1)), false);
        m.peer_call("n2", "apply", None, true);
        let text = m.render();
        assert!(
            text.contains(r#"kilovolt_peer_requests_total{peer="n2",region="eu",rpc="apply"} 2"#)
        );
        assert!(text.contains(
            r#"kilovolt_peer_request_errors_total{peer="n2",region="eu",rpc="apply"} 1"#
        ));
        assert!(text.contains(
            r#"kilovolt_peer_request_duration_seconds_count{peer="n2",region="eu",rpc="apply"} 1"#
        ));
    }

    #[test]
    fn sources_are_read_at_scrape_time_and_labels_escaped() {
        let m = Metrics::on();
        let n = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let read = n.clone();
        m.add_source(Box::new(move |out| {
            let v = read.load(std::sync::atomic::Ordering::Relaxed) as f64;
            out.single("kilovolt_test_keys", "Keys.", Kind::Gauge, v);
            out.family(
                "kilovolt_test_members",
                "Members.",
                Kind::Gauge,
                [([("state", "re\"ady")], 2.0)],
            );
        }));
        assert!(m.render().contains("kilovolt_test_keys 1\n"));
        n.store(5, std::sync::atomic::Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("# TYPE kilovolt_test_keys gauge\nkilovolt_test_keys 5\n"));
        assert!(text.contains("kilovolt_test_members{state=\"re\\\"ady\"} 2\n"));
    }

    #[test]
    fn metrics_off_record_and_render_nothing() {
        let m = Metrics::off();
        m.request(Rpc::Set, "ONE", 0, Duration::from_millis(1));
        m.peer_call("n2", "apply", None, true);
        assert!(!m.is_on());
        assert_eq!(m.render(), "");
    }
}
