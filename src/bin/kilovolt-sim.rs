//! kilovolt-sim: runs the deterministic cluster simulation for a range of
//! seeds and reports the first failures with their history and the command
//! that replays them. `make sim SEEDS=N SEED=S` runs it.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use kilovolt::sim::history::{ms, History, ONE_DEADLINE};
use kilovolt::sim::{run, Availability, Config};

/// Deterministic simulation of a Kilovolt-DB cluster under faults.
#[derive(Parser)]
#[command(name = "kilovolt-sim", version)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 200)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the whole history of every seed run.
    #[arg(long)]
    history: bool,
    /// Print every ONE request counted for availability that was not
    /// answered in time, with why, and the faults around it.
    #[arg(long)]
    misses: bool,
    /// Stop after this many failing seeds.
    #[arg(long, default_value_t = 3)]
    max_failures: usize,
    /// Place this many replicas of every key in each region instead of
    /// three in all (one per region): writes then cross to a remote
    /// region through one relay replica there.
    #[arg(long)]
    replicas_per_region: Option<usize>,
}

/// Prints each ONE request of a seed that missed its deadline, and the
/// faults from 3 s before it until its deadline.
fn print_misses(seed: u64, history: &History) {
    for (op, why) in history.one_misses() {
        let ended = match &op.ended {
            Some((at, result)) => format!("after {}: {result:?}", ms(at - op.invoked)),
            None => "never".into(),
        };
        let lossy = if history.lossy.contains(&op.id) {
            " (lossy network)"
        } else {
            ""
        };
        println!(
            "seed {seed} #{} {why:?}{lossy}: {:?} {} on {} at {}, ended {ended}",
            op.id,
            op.kind,
            op.key,
            op.node,
            ms(op.invoked)
        );
        let from = op.invoked.saturating_sub(3_000_000);
        for (at, what) in &history.events {
            if (from..=op.invoked + ONE_DEADLINE).contains(at) {
                println!(
                    "    {:>+9.1}ms {what}",
                    (*at as f64 - op.invoked as f64) / 1000.0
                );
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = Config::default();
    config.settings.replicas_per_region = args.replicas_per_region;
    let started = Instant::now();
    let mut failures = 0;
    let mut ops = 0;
    let mut one = Availability::default();
    for seed in args.seed..args.seed.saturating_add(args.seeds) {
        let outcome = run(seed, &config);
        ops += outcome.history.ops.len();
        one.add(outcome.history.availability());
        if args.misses {
            print_misses(seed, &outcome.history);
        }
        if args.history {
            print!("{}", outcome.history.render());
            println!(
                "seed {seed}: history fingerprint {:016x}",
                outcome.fingerprint()
            );
        }
        if !outcome.passed() {
            failures += 1;
            eprint!("{}", outcome.report());
            if failures >= args.max_failures {
                break;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if failures > 0 {
        eprintln!(
            "{failures} failing seed(s) from seed {}; {secs:.1}s; {one}",
            args.seed
        );
        return ExitCode::FAILURE;
    }
    println!(
        "{} seeds from {} passed: {ops} client operations checked in {secs:.1}s; {one}",
        args.seeds, args.seed
    );
    ExitCode::SUCCESS
}
