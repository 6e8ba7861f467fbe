//! The results, for people (a table) or for scripts (one JSON object).

use std::io::{self, Write};
use std::time::Duration;

use serde_json::{json, Value};

use crate::workload::{per_second, ErrorCounts, OpStats, PreloadResult, RunResult};

/// Everything the report shows: the settings and the measurements.
pub struct Report<'a> {
    /// Nodes loaded.
    pub addrs: Vec<&'a str>,
    /// Connections opened.
    pub conns: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Measured period asked for.
    pub duration: Duration,
    /// Warmup period.
    pub warmup: Duration,
    /// Key space size.
    pub keys: u64,
    /// Bytes per value.
    pub value_size: usize,
    /// Fraction of reads.
    pub read_ratio: f64,
    /// Consistency level as named on the command line.
    pub consistency: &'static str,
    /// PRNG seed.
    pub seed: u64,
    /// Operations per request (1: plain RPCs).
    pub batch: usize,
    /// What the requests read and write: "string", "map" or "counter".
    pub workload: &'static str,
    /// Requests per second asked for (an open load); `None`: as fast as
    /// answers come.
    pub rate: Option<f64>,
    /// The preload, unless skipped.
    pub preload: Option<&'a PreloadResult>,
    /// The measured run.
    pub run: &'a RunResult,
}

/// The quantiles reported, with their labels.
const QUANTILES: [(&str, f64); 3] = [("p50", 0.50), ("p99", 0.99), ("p99_9", 0.999)];

/// Nanoseconds as milliseconds.
fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

/// Nanoseconds as microseconds, to a tenth.
fn us(nanos: u64) -> f64 {
    tenths(nanos as f64 / 1e3)
}

/// A number rounded to a tenth.
fn tenths(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Report<'_> {
    /// Reads and writes together.
    fn total(&self) -> OpStats {
        let mut total = OpStats::default();
        total.merge(&self.run.reads);
        total.merge(&self.run.writes);
        total
    }

    /// Writes the human report.
    pub fn write_text(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "kilovolt-bench: {} ({} connections), {} in flight, {:.0}% reads, consistency {}, {} workload",
            self.addrs.join(","),
            self.conns,
            self.concurrency,
            self.read_ratio * 100.0,
            self.consistency,
            self.workload
        )?;
        writeln!(
            out,
            "{} keys of {} bytes, seed {}, warmup {}, measured {:.2}s",
            self.keys,
            self.value_size,
            self.seed,
            humantime::format_duration(self.warmup),
            self.run.elapsed.as_secs_f64()
        )?;
        if self.batch > 1 {
            writeln!(
                out,
                "batches of {} operations: ops and errors count operations, latency is per batch",
                self.batch
            )?;
        }
        if let Some(rate) = self.rate {
            writeln!(
                out,
                "open load: {rate:.0} requests/s on a fixed schedule; a late request counts from when it was due"
            )?;
        }
        match self.preload {
            Some(p) => writeln!(
                out,
                "preload: {} keys in {:.2}s ({:.0} ops/s), errors: {}",
                p.written,
                p.elapsed.as_secs_f64(),
                per_second(p.written, p.elapsed),
                error_text(&p.errors)
            )?,
            None => writeln!(out, "preload: skipped")?,
        }
        writeln!(out)?;
        writeln!(
            out,
            "{:<7}{:>11}{:>12}{:>10}{:>10}{:>10}{:>10}",
            "", "ops", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
        )?;
        let total = self.total();
        for (name, stats) in [
            ("reads", &self.run.reads),
            ("writes", &self.run.writes),
            ("total", &total),
        ] {
            let h = &stats.latency;
            write!(
                out,
                "{name:<7}{:>11}{:>12.1}",
                h.count(),
                per_second(h.count(), self.run.elapsed)
            )?;
            if h.count() == 0 {
                writeln!(out, "{:>10}{:>10}{:>10}{:>10}", "-", "-", "-", "-")?;
            } else {
                for (_, q) in QUANTILES {
                    write!(out, "{:>10.2}", ms(h.quantile(q)))?;
                }
                writeln!(out, "{:>10.2}", ms(h.max()))?;
            }
        }
        writeln!(out)?;
        for (name, stats) in [("reads", &self.run.reads), ("writes", &self.run.writes)] {
            writeln!(out, "errors ({name}): {}", error_text(&stats.errors))?;
        }
        if self.run.reads.not_found > 0 {
            writeln!(out, "reads not found: {}", self.run.reads.not_found)?;
        }
        Ok(())
    }

    /// Writes the results as one JSON object on one line.
    pub fn write_json(&self, out: &mut impl Write) -> io::Result<()> {
        let preload = match self.preload {
            Some(p) => json!({
                "keys_written": p.written,
                "seconds": p.elapsed.as_secs_f64(),
                "ops_per_sec": tenths(per_second(p.written, p.elapsed)),
                "errors": error_json(&p.errors),
            }),
            None => Value::Null,
        };
        let total = self.total();
        let value = json!({
            "addrs": self.addrs,
            "conns": self.conns,
            "concurrency": self.concurrency,
            "duration_s": self.duration.as_secs_f64(),
            "warmup_s": self.warmup.as_secs_f64(),
            "keys": self.keys,
            "value_size": self.value_size,
            "read_ratio": self.read_ratio,
            "consistency": self.consistency,
            "seed": self.seed,
            "batch": self.batch,
            "workload": self.workload,
            "rate": self.rate,
            "preload": preload,
            "elapsed_s": self.run.elapsed.as_secs_f64(),
            "warmup_ops": self.run.warmup_ops,
            "reads": self.op_json(&self.run.reads),
            "writes": self.op_json(&self.run.writes),
            "total": self.op_json(&total),
        });
        writeln!(out, "{value}")
    }

    /// One kind of request as JSON; latencies in microseconds.
    fn op_json(&self, stats: &OpStats) -> Value {
        let h = &stats.latency;
        let mut latency = serde_json::Map::new();
        latency.insert("mean".into(), json!(us(h.mean().round() as u64)));
        for (label, q) in QUANTILES {
            latency.insert(label.into(), json!(us(h.quantile(q))));
        }
        latency.insert("max".into(), json!(us(h.max())));
        json!({
            "ops": h.count(),
            "ops_per_sec": tenths(per_second(h.count(), self.run.elapsed)),
            "not_found": stats.not_found,
            "errors_total": stats.errors.total(),
            "errors": error_json(&stats.errors),
            "latency_us": latency,
        })
    }
}

/// Failures as `Unavailable: 12, DeadlineExceeded: 3`, or `none`.
fn error_text(errors: &ErrorCounts) -> String {
    let parts: Vec<String> = errors
        .by_code()
        .map(|(code, n)| format!("{code:?}: {n}"))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// Failures as a JSON object from code name to count.
fn error_json(errors: &ErrorCounts) -> Value {
    Value::Object(
        errors
            .by_code()
            .map(|(code, n)| (format!("{code:?}"), json!(n)))
            .collect(),
    )
}
