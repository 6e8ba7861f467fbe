//! Deterministic simulation of a cluster: the production state machines of
//! several nodes (request calls, delta queues, hints, anti-entropy
//! sessions, acknowledged collection, round planning, the store and the
//! clock) run on one thread over a simulated network with virtual time,
//! under faults, with every choice drawn from one seed. A checker that
//! knows the store's semantics judges each run; any failure replays
//! exactly from its seed (`make sim SEEDS=1 SEED=<seed>`).
//!
//! docs/testing.md says what the simulator covers, what the checker
//! asserts, and where the simulated shell differs from the production one.

pub mod checker;
pub mod disk;
pub mod history;
pub mod node;
pub mod rng;
pub mod schedule;
pub mod time;
pub mod world;

#[cfg(test)]
mod tests;

use std::fmt::Write;
use std::time::Duration;

pub use checker::Violation;
pub use history::{Availability, History};
pub use node::Settings;

use crate::replication::{BatchLimits, HintLimits};
use disk::DiskMode;
use rng::Rng;
use world::World;

/// The shape of every run: cluster size, workload, durations, node
/// settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Nodes that form the cluster at the start.
    pub nodes: usize,
    /// Nodes that may join during the run.
    pub joiners: usize,
    /// Keys the workload touches.
    pub keys: usize,
    /// Client operations on strings.
    pub ops: usize,
    /// Map keys, and as many counter keys, the typed workload touches.
    pub typed_keys: usize,
    /// Client operations on maps and counters.
    pub typed_ops: usize,
    /// How long faults are injected and operations issued.
    pub chaos: Duration,
    /// How long the cluster runs healed before the final check.
    pub settle: Duration,
    /// Every node's settings.
    pub settings: Settings,
}

impl Default for Config {
    /// Five nodes (and one that may join), replication factor 3, twelve
    /// string keys, three map and three counter keys, 300 string and 150
    /// map and counter operations over 20 seconds of faults, then 12
    /// seconds healed.
    fn default() -> Self {
        Self {
            nodes: 5,
            joiners: 1,
            keys: 12,
            ops: 300,
            typed_keys: 3,
            typed_ops: 150,
            chaos: Duration::from_secs(20),
            settle: Duration::from_secs(12),
            settings: Settings {
                partitions: 16,
                replication_factor: 3,
                request_timeout: Duration::from_millis(500),
                batch: BatchLimits {
                    max_bytes: 16 * 1024,
                    linger: Duration::from_millis(2),
                    // Small, so that a peer slowed by delays or a lossy
                    // network overflows its queue into hints now and then
                    // (about 230 times over seeds 1-200).
                    max_queued_bytes: 300,
                },
                hints: HintLimits {
                    max_hints: 10_000,
                    max_bytes: 16 << 20,
                    max_age: Duration::from_millis(1500),
                },
                anti_entropy_interval: Duration::from_secs(1),
                syncing_retry: Duration::from_millis(200),
                // At least the hint age plus the request timeout, as the
                // node's configuration requires.
                settle_grace: Duration::from_secs(2),
                hint_tick: Duration::from_secs(1),
                max_clock_drift: Duration::from_millis(500),
                disk: DiskMode::Memory,
            },
        }
    }
}

/// How one seed's run went.
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Everything that happened.
    pub history: History,
    /// Broken rules; empty when the run passed.
    pub violations: Vec<Violation>,
}

impl Outcome {
    /// Whether every rule held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// A 64-bit digest of the whole history: equal for equal histories, so
    /// two replays of a seed can be compared in one line.
    pub fn fingerprint(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(self.history.render().as_bytes())
    }

    /// What went wrong: each violation, the history of the first failing
    /// key (with every fault), and the command that replays the seed.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "seed {} FAILED:", self.seed);
        for v in &self.violations {
            let key = v.key.as_deref().unwrap_or("-");
            let _ = writeln!(out, "  [{key}] {}", v.what);
        }
        if let Some(key) = self.violations.iter().find_map(|v| v.key.as_deref()) {
            let _ = writeln!(out, "history of {key}:");
            out.push_str(&self.history.render_key(key));
        }
        let _ = writeln!(out, "replay: make sim SEEDS=1 SEED={}", self.seed);
        out
    }
}

/// The disk a seed's nodes keep: a third of the seeds each run in memory
/// only, with `periodic` durability (fsync every 100 ms) and with `sync`.
pub fn disk_mode(seed: u64) -> DiskMode {
    match seed % 3 {
        0 => DiskMode::Memory,
        1 => DiskMode::Periodic {
            interval: Duration::from_millis(100),
        },
        _ => DiskMode::Sync,
    }
}

/// Runs one seed: draws the workload and the faults, runs them, heals,
/// settles and checks.
pub fn run(seed: u64, config: &Config) -> Outcome {
    let mut rng = Rng::new(seed);
    let mut workload = rng.fork();
    let mut nemesis = rng.fork();
    let network = rng.fork();
    let mut ops = schedule::workload(&mut workload, config.ops, config.keys, config.chaos);
    // Forked after the string workload is drawn, so that it stays the same.
    let mut typed = workload.fork();
    ops.extend(schedule::typed_workload(
        &mut typed,
        config.typed_ops,
        config.typed_keys,
        config.chaos,
    ));
    ops.sort_by_key(|op| op.at);
    let faults = schedule::faults(&mut nemesis, config.chaos, config.settings.max_clock_drift);
    let mut config = config.clone();
    config.settings.disk = disk_mode(seed);
    let mut world = World::new(config, network);
    world.run(ops, faults);
    let violations = checker::check(&world);
    Outcome {
        seed,
        history: world.history,
        violations,
    }
}
