//! The load itself: the preload of the key space and the timed run, each
//! driven by one task per request in flight, and the progress line.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kilovolt::proto;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::histogram::Histogram;
use crate::Client;

/// Distinct gRPC status codes (`tonic::Code` runs from 0 to 16).
pub const CODES: usize = 17;

/// Requests that failed, counted by gRPC status code.
#[derive(Clone, Copy, Default)]
pub struct ErrorCounts([u64; CODES]);

impl ErrorCounts {
    /// Counts one failure.
    fn add(&mut self, code: tonic::Code) {
        let index = (code as usize).min(CODES - 1);
        self.0[index] += 1;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0.iter()) {
            *mine += theirs;
        }
    }

    /// Failures in all.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The codes seen, with their counts, in code order.
    pub fn by_code(&self) -> impl Iterator<Item = (tonic::Code, u64)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(code, &n)| (tonic::Code::from_i32(code as i32), n))
    }
}

/// xorshift64*: a fast, small PRNG, good enough to pick keys and operations.
pub struct XorShift(u64);

impl XorShift {
    /// A generator for task `stream` of a run seeded with `seed`: the two are
    /// mixed by splitmix64 so that neighbouring tasks get unrelated streams.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut z = seed
            .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self(if z == 0 { 1 } else { z })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`, uniform (multiply-shift, bias below 2^-32 for
    /// any key space that fits in memory).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// What the load reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Strings: Set and Get.
    String,
    /// Maps of [`MAP_FIELDS`] fields: MapSet of one field, MapGet of one.
    Map,
    /// Counters: Increment by 1 and GetCounter.
    Counter,
}

impl Kind {
    /// The name, as `--workload` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Map => "map",
            Kind::Counter => "counter",
        }
    }

    /// What every key of this kind starts with: `key:` (`map:`, `counter:`
    /// for those workloads, so that runs of different kinds against one
    /// cluster do not meet keys of another kind).
    pub fn key_prefix(self) -> &'static str {
        match self {
            Kind::String => "key:",
            Kind::Map => "map:",
            Kind::Counter => "counter:",
        }
    }
}

/// Fields of each map in the map workload; each write sets one of them and
/// each read reads one, picked at random.
pub const MAP_FIELDS: u64 = 16;

/// What every task needs to know to issue requests.
pub struct Workload {
    /// What the requests read and write.
    pub kind: Kind,
    /// Keys in the key space.
    pub keys: u64,
    /// Digits of a key's number, so that every key has the same length.
    pub key_width: usize,
    /// The value written by every Set.
    pub value: String,
    /// Fraction of the run's requests that are reads.
    pub read_ratio: f64,
    /// Consistency of reads.
    pub read_level: proto::Consistency,
    /// Consistency of writes (preload included).
    pub write_level: proto::Consistency,
    /// How long one request may take before it counts as DEADLINE_EXCEEDED.
    pub timeout: Duration,
    /// Seed of the task PRNGs.
    pub seed: u64,
    /// Operations per request in the run: 1 sends plain RPCs, more sends
    /// Batch requests.
    pub batch: usize,
}

impl Workload {
    /// The name of key number `i`: `key:` (`map:`, `counter:` for those
    /// workloads, so that runs of different kinds against one cluster do
    /// not meet keys of another kind) and the number, zero-padded.
    pub fn key(&self, i: u64) -> String {
        let prefix = self.kind.key_prefix();
        format!("{prefix}{i:0width$}", width = self.key_width)
    }

    /// Digits of the largest key number of a key space of `keys`.
    pub fn digits_for(keys: u64) -> usize {
        keys.saturating_sub(1).to_string().len()
    }

    /// Digits needed for the largest key number, at least 8.
    pub fn key_width_for(keys: u64) -> usize {
        Self::digits_for(keys).max(8)
    }

    /// Issues one write of key `i`: a Set, a MapSet of field `field`, or
    /// an Increment by 1, as the workload's kind says.
    async fn set(&self, client: &mut Client, i: u64, field: u64) -> Result<(), tonic::Status> {
        let key = self.key(i);
        let consistency = self.write_level.into();
        let call = async {
            match self.kind {
                Kind::String => client
                    .set(proto::SetRequest {
                        key,
                        value: self.value.clone(),
                        consistency,
                        ttl_ms: 0,
                    })
                    .await
                    .map(|_| ()),
                Kind::Map => client
                    .map_set(proto::MapSetRequest {
                        key,
                        fields: [(format!("f{field}"), self.value.clone())].into(),
                        consistency,
                    })
                    .await
                    .map(|_| ()),
                Kind::Counter => client
                    .increment(proto::IncrementRequest {
                        key,
                        delta: 1,
                        consistency,
                    })
                    .await
                    .map(|_| ()),
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        }
    }

    /// Issues one read of key `i`: a Get, a MapGet of field `field`, or a
    /// GetCounter; answers whether the key (or the field) was found.
    async fn get(&self, client: &mut Client, i: u64, field: u64) -> Result<bool, tonic::Status> {
        let key = self.key(i);
        let consistency = self.read_level.into();
        let call = async {
            match self.kind {
                Kind::String => client
                    .get(proto::GetRequest { key, consistency })
                    .await
                    .map(|r| r.into_inner().found),
                Kind::Map => client
                    .map_get(proto::MapGetRequest {
                        key,
                        fields: vec![format!("f{field}")],
                        consistency,
                    })
                    .await
                    .map(|r| !r.into_inner().fields.is_empty()),
                Kind::Counter => client
                    .get_counter(proto::GetCounterRequest { key, consistency })
                    .await
                    .map(|r| r.into_inner().found),
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        }
    }
}

impl Workload {
    /// Issues one Batch of the operations `ops` (key number, whether a read)
    /// describe; answers, per operation in order, what the single RPC would
    /// have: whether a read found its key (true for writes), or the failure.
    /// A failure of the whole call fails every operation with its status.
    async fn batch(
        &self,
        client: &mut Client,
        ops: &[(u64, bool)],
    ) -> Vec<Result<bool, tonic::Code>> {
        use proto::batch_op::Op;
        use proto::batch_result::Result as R;
        let request = proto::BatchRequest {
            ops: ops
                .iter()
                .map(|&(i, is_read)| proto::BatchOp {
                    op: Some(if is_read {
                        Op::Get(proto::GetRequest {
                            key: self.key(i),
                            consistency: self.read_level.into(),
                        })
                    } else {
                        Op::Set(proto::SetRequest {
                            key: self.key(i),
                            value: self.value.clone(),
                            consistency: self.write_level.into(),
                            ttl_ms: 0,
                        })
                    }),
                })
                .collect(),
        };
        let response = match tokio::time::timeout(self.timeout, client.batch(request)).await {
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        };
        match response {
            Ok(response) => {
                let mut results: Vec<Result<bool, tonic::Code>> = response
                    .into_inner()
                    .results
                    .into_iter()
                    .map(|r| match r.result {
                        Some(R::Get(get)) => Ok(get.found),
                        Some(R::Set(_)) | Some(R::Delete(_)) => Ok(true),
                        Some(R::Error(failure)) => Err(tonic::Code::from_i32(failure.code)),
                        None => Err(tonic::Code::Internal),
                    })
                    .collect();
                // A server that answers fewer results than operations fails
                // the rest.
                results.resize(ops.len(), Err(tonic::Code::Internal));
                results
            }
            Err(status) => vec![Err(status.code()); ops.len()],
        }
    }
}

/// The status a request that outlived `--timeout` counts as.
fn timed_out() -> tonic::Status {
    tonic::Status::deadline_exceeded("no answer within --timeout")
}

/// Requests completed and failed so far, shared with the progress line.
#[derive(Default)]
struct Counters {
    /// Requests that succeeded.
    ops: AtomicU64,
    /// Requests that failed.
    errors: AtomicU64,
}

impl Counters {
    /// Counts one request.
    fn count(&self, ok: bool) {
        self.count_many(u64::from(ok), u64::from(!ok));
    }

    /// Counts `ok` successful and `failed` failed operations.
    fn count_many(&self, ok: u64, failed: u64) {
        if ok > 0 {
            self.ops.fetch_add(ok, Ordering::Relaxed);
        }
        if failed > 0 {
            self.errors.fetch_add(failed, Ordering::Relaxed);
        }
    }

    /// (succeeded, failed) so far.
    fn read(&self) -> (u64, u64) {
        (
            self.ops.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// What the preload did.
pub struct PreloadResult {
    /// Keys written successfully.
    pub written: u64,
    /// Failed writes by status code.
    pub errors: ErrorCounts,
    /// Wall time it took.
    pub elapsed: Duration,
}

/// Writes every key once, `concurrency` requests in flight, the tasks taking
/// key numbers from a shared counter.
pub async fn preload(
    workload: &Arc<Workload>,
    clients: &[Client],
    concurrency: usize,
    progress: &Progress,
) -> PreloadResult {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let counters = Arc::new(Counters::default());
    let tasks = concurrency.min(usize::try_from(workload.keys).unwrap_or(usize::MAX));
    let handles: Vec<JoinHandle<ErrorCounts>> = (0..tasks)
        .map(|t| {
            let mut client = clients[t % clients.len()].clone();
            let workload = Arc::clone(workload);
            let next = Arc::clone(&next);
            let counters = Arc::clone(&counters);
            tokio::spawn(async move {
                let mut errors = ErrorCounts::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= workload.keys {
                        break;
                    }
                    let result = workload.set(&mut client, i, i % MAP_FIELDS).await;
                    if let Err(status) = &result {
                        errors.add(status.code());
                    }
                    counters.count(result.is_ok());
                }
                errors
            })
        })
        .collect();

    let keys = workload.keys;
    let ticker = progress.start(Arc::clone(&counters), move |elapsed, (ops, errors)| {
        format!(
            "preload {:>4}s  {:>3}% ({}/{} keys)  {:.0} ops/s  errors {}",
            elapsed.as_secs(),
            (ops + errors) * 100 / keys,
            ops + errors,
            keys,
            per_second(ops + errors, elapsed),
            errors
        )
    });
    let mut errors = ErrorCounts::default();
    for handle in handles {
        match handle.await {
            Ok(counts) => errors.merge(&counts),
            Err(e) => progress.note(&format!("a preload task failed: {e}")),
        }
    }
    ticker.stop().await;
    PreloadResult {
        written: counters.read().0,
        errors,
        elapsed: started.elapsed(),
    }
}

/// The measurements of one kind of request.
#[derive(Default)]
pub struct OpStats {
    /// Latencies of the requests that succeeded, in nanoseconds.
    pub latency: Histogram,
    /// Failed requests by status code.
    pub errors: ErrorCounts,
    /// Reads that found no value (successful requests, counted in `latency`).
    pub not_found: u64,
}

impl OpStats {
    /// Adds `other`'s measurements to these.
    pub fn merge(&mut self, other: &OpStats) {
        self.latency.merge(&other.latency);
        self.errors.merge(&other.errors);
        self.not_found += other.not_found;
    }
}

/// The measurements of the timed run.
#[derive(Default)]
pub struct RunResult {
    /// Gets.
    pub reads: OpStats,
    /// Sets.
    pub writes: OpStats,
    /// From the end of the warmup until the last task finished its last
    /// request: the time the measured requests were issued in.
    pub elapsed: Duration,
    /// Operations sent during the warmup (succeeded or failed), not
    /// recorded: with the measured ones, all the server was asked to do,
    /// for dividing its CPU time by.
    pub warmup_ops: u64,
}

/// When each request of one task is due under `--rate`: every
/// `interval`, from a start staggered by the task's number so that the
/// tasks' requests interleave evenly instead of leaving together.
struct Schedule {
    /// When the next request is due.
    next: Instant,
    /// The time between two requests of this task.
    interval: Duration,
}

impl Schedule {
    /// The schedule of task `task` of `tasks` sharing `rate` requests per
    /// second in all, from `start`.
    fn new(rate: f64, tasks: usize, task: usize, start: Instant) -> Self {
        let interval = Duration::from_secs_f64(tasks as f64 / rate);
        let offset = interval.mul_f64(task as f64 / tasks as f64);
        Self {
            next: start + offset,
            interval,
        }
    }

    /// Waits until the next request is due and answers the instant its
    /// latency counts from: when this task is behind (its last answer came
    /// after this request was due), the instant it was due, and the request
    /// goes at once; otherwise the instant the timer woke the task, so that
    /// the timer's own lateness (up to a millisecond in tokio) is not
    /// counted against the server.
    async fn wait(&mut self) -> Instant {
        let due = self.next;
        self.next += self.interval;
        if Instant::now() >= due {
            return due;
        }
        tokio::time::sleep_until(due.into()).await;
        Instant::now()
    }
}

/// Runs the warmup and then the measured period: every task issues one
/// request at a time, picking a key uniformly and a read with probability
/// `read_ratio`, until `warmup + duration` has passed. With `batch` above
/// 1 each request is one Batch of that many such operations, each counted
/// and recorded with the batch's latency. Requests started during the
/// warmup are not recorded. With a `rate`, the tasks share that many
/// requests per second, each on a fixed schedule, and a request held back
/// by a slow answer counts its latency from the instant it was due.
pub async fn run(
    workload: &Arc<Workload>,
    clients: &[Client],
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    rate: Option<f64>,
    progress: &Progress,
) -> RunResult {
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + duration;
    let warm = Arc::new(Counters::default());
    let measured = Arc::new(Counters::default());
    let handles: Vec<JoinHandle<(OpStats, OpStats)>> = (0..concurrency)
        .map(|t| {
            let mut client = clients[t % clients.len()].clone();
            let workload = Arc::clone(workload);
            let warm = Arc::clone(&warm);
            let measured = Arc::clone(&measured);
            tokio::spawn(async move {
                let mut rng = XorShift::new(workload.seed, t as u64);
                let mut reads = OpStats::default();
                let mut writes = OpStats::default();
                let mut ops: Vec<(u64, bool)> = Vec::with_capacity(workload.batch);
                let mut schedule = rate.map(|r| Schedule::new(r, concurrency, t, started));
                loop {
                    let sent = match &mut schedule {
                        Some(schedule) => schedule.wait().await,
                        None => Instant::now(),
                    };
                    if sent >= end {
                        break;
                    }
                    if workload.batch <= 1 {
                        // Plain RPCs: one Get or Set per request.
                        let i = rng.below(workload.keys);
                        let is_read = rng.unit() < workload.read_ratio;
                        // Drawn only for maps, so that a string run with a
                        // given seed picks the keys it always picked.
                        let field = if workload.kind == Kind::Map {
                            rng.below(MAP_FIELDS)
                        } else {
                            0
                        };
                        let result = if is_read {
                            workload.get(&mut client, i, field).await
                        } else {
                            workload.set(&mut client, i, field).await.map(|()| true)
                        };
                        let latency = sent.elapsed();
                        if sent < measure_from {
                            warm.count(result.is_ok());
                            continue;
                        }
                        measured.count(result.is_ok());
                        let stats = if is_read { &mut reads } else { &mut writes };
                        match result {
                            Ok(found) => {
                                stats
                                    .latency
                                    .record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
                                if !found {
                                    stats.not_found += 1;
                                }
                            }
                            Err(status) => stats.errors.add(status.code()),
                        }
                        continue;
                    }
                    ops.clear();
                    for _ in 0..workload.batch {
                        let i = rng.below(workload.keys);
                        ops.push((i, rng.unit() < workload.read_ratio));
                    }
                    let results = workload.batch(&mut client, &ops).await;
                    let latency = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
                    let failed = results.len() as u64 - ok;
                    if sent < measure_from {
                        warm.count_many(ok, failed);
                        continue;
                    }
                    measured.count_many(ok, failed);
                    for (&(_, is_read), result) in ops.iter().zip(results) {
                        let stats = if is_read { &mut reads } else { &mut writes };
                        match result {
                            // Each operation is recorded with its batch's
                            // latency, so that counts stay operations.
                            Ok(found) => {
                                stats.latency.record(latency);
                                if !found {
                                    stats.not_found += 1;
                                }
                            }
                            Err(code) => stats.errors.add(code),
                        }
                    }
                }
                (reads, writes)
            })
        })
        .collect();

    if !warmup.is_zero() {
        let ticker = progress.start(Arc::clone(&warm), move |elapsed, (ops, errors)| {
            format!(
                "warmup  {:>4}s/{}  {:.0} ops/s  errors {}",
                elapsed.as_secs(),
                humantime::format_duration(warmup),
                per_second(ops, elapsed),
                errors
            )
        });
        tokio::time::sleep_until(measure_from.into()).await;
        ticker.stop().await;
    }
    let ticker = progress.start(Arc::clone(&measured), move |elapsed, (ops, errors)| {
        format!(
            "run     {:>4}s/{}  {} ops  {:.0} ops/s  errors {}",
            elapsed.as_secs(),
            humantime::format_duration(duration),
            ops,
            per_second(ops, elapsed),
            errors
        )
    });
    let mut result = RunResult::default();
    for handle in handles {
        match handle.await {
            Ok((reads, writes)) => {
                result.reads.merge(&reads);
                result.writes.merge(&writes);
            }
            Err(e) => progress.note(&format!("a load task failed: {e}")),
        }
    }
    result.elapsed = measure_from.elapsed();
    let (warm_ok, warm_failed) = warm.read();
    result.warmup_ops = warm_ok + warm_failed;
    ticker.stop().await;
    result
}

/// `n` events over `elapsed`, per second; 0 over no time.
pub fn per_second(n: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

/// The progress line on stderr: rewritten in place (`\r`) when stderr is a
/// terminal, one plain line a second otherwise.
pub struct Progress {
    /// Whether stderr is a terminal.
    tty: bool,
}

impl Progress {
    /// A progress line for this process's stderr.
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Starts printing `render(elapsed, counters)` once a second until the
    /// returned ticker is stopped.
    fn start<F>(&self, counters: Arc<Counters>, render: F) -> Ticker
    where
        F: Fn(Duration, (u64, u64)) -> String + Send + 'static,
    {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let tty = self.tty;
        let handle = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let second = Duration::from_secs(1);
            let mut ticks = tokio::time::interval_at(started + second, second);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut printed = false;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {
                        let line = render(started.elapsed(), counters.read());
                        write_progress(tty, &line);
                        printed = true;
                    }
                }
            }
            if tty && printed {
                let _ = writeln!(std::io::stderr().lock());
            }
        });
        Ticker { stop, handle }
    }

    /// Prints a message on a line of its own.
    pub fn note(&self, message: &str) {
        let _ = writeln!(std::io::stderr().lock(), "kilovolt-bench: {message}");
    }
}

/// Writes one progress line: over the previous one on a terminal.
fn write_progress(tty: bool, line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = if tty {
        write!(err, "\r{line}\x1b[K")
    } else {
        writeln!(err, "{line}")
    };
    let _ = err.flush();
}

/// A running progress line.
struct Ticker {
    /// Dropping or sending on it ends the line.
    stop: oneshot::Sender<()>,
    /// The task printing it.
    handle: JoinHandle<()>,
}

impl Ticker {
    /// Ends the line and waits until its last output is written.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.handle.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_repeat() {
        let mut a = XorShift::new(1, 0);
        let mut b = XorShift::new(1, 1);
        let mut a2 = XorShift::new(1, 0);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let xs2: Vec<u64> = (0..4).map(|_| a2.next_u64()).collect();
        assert_ne!(xs, ys);
        assert_eq!(xs, xs2);
    }

    #[test]
    fn below_and_unit_stay_in_range_and_spread() {
        let mut rng = XorShift::new(7, 3);
        let mut seen = [0u32; 10];
        for _ in 0..100_000 {
            let k = rng.below(10);
            seen[k as usize] += 1;
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert!(
            seen.iter().all(|&n| (9_000..11_000).contains(&n)),
            "{seen:?}"
        );
    }

    #[test]
    fn keys_have_a_fixed_width() {
        assert_eq!(Workload::key_width_for(100_000), 8);
        assert_eq!(Workload::key_width_for(1), 8);
        assert_eq!(Workload::key_width_for(1_000_000_000), 9);
        let mut w = Workload {
            kind: Kind::String,
            keys: 100,
            key_width: 8,
            value: String::new(),
            read_ratio: 0.5,
            read_level: proto::Consistency::Default,
            write_level: proto::Consistency::Default,
            timeout: Duration::from_secs(1),
            seed: 1,
            batch: 1,
        };
        assert_eq!(w.key(42), "key:00000042");
        w.kind = Kind::Counter;
        assert_eq!(w.key(42), "counter:00000042");
    }

    #[test]
    fn a_schedule_staggers_tasks_and_spaces_requests() {
        let start = Instant::now();
        // 4 tasks sharing 1000 requests/s: each sends every 4 ms, task 1
        // a quarter of that after task 0.
        let s0 = Schedule::new(1000.0, 4, 0, start);
        let s1 = Schedule::new(1000.0, 4, 1, start);
        assert_eq!(s0.interval, Duration::from_millis(4));
        assert_eq!(s0.next, start);
        assert_eq!(s1.next - start, Duration::from_millis(1));
    }

    #[tokio::test]
    async fn a_late_task_sends_at_once_and_counts_from_the_due_times() {
        let start = Instant::now() - Duration::from_millis(50);
        let mut s = Schedule::new(1000.0, 1, 0, start);
        assert_eq!(s.wait().await, start);
        assert_eq!(s.wait().await, start + Duration::from_millis(1));
    }

    #[tokio::test]
    async fn a_task_on_time_counts_from_when_it_woke() {
        let start = Instant::now() + Duration::from_millis(5);
        let mut s = Schedule::new(100.0, 1, 0, start);
        let sent = s.wait().await;
        assert!(sent >= start);
        assert_eq!(s.next, start + Duration::from_millis(10));
    }

    #[test]
    fn key_width_can_follow_a_key_size() {
        assert_eq!(Workload::digits_for(1_000_000), 6);
        assert_eq!(Workload::digits_for(1), 1);
        let w = Workload {
            kind: Kind::String,
            keys: 1_000_000,
            key_width: 16 - Kind::String.key_prefix().len(),
            value: String::new(),
            read_ratio: 0.5,
            read_level: proto::Consistency::Default,
            write_level: proto::Consistency::Default,
            timeout: Duration::from_secs(1),
            seed: 1,
            batch: 1,
        };
        assert_eq!(w.key(999_999), "key:000000999999");
        assert_eq!(w.key(999_999).len(), 16);
    }

    #[test]
    fn errors_count_by_code() {
        let mut e = ErrorCounts::default();
        e.add(tonic::Code::Unavailable);
        e.add(tonic::Code::Unavailable);
        e.add(tonic::Code::DeadlineExceeded);
        let seen: Vec<_> = e.by_code().collect();
        assert_eq!(
            seen,
            vec![
                (tonic::Code::DeadlineExceeded, 1),
                (tonic::Code::Unavailable, 2)
            ]
        );
        assert_eq!(e.total(), 3);
    }
}
