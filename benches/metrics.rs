//! What recording metrics costs on the request path, per call:
//!
//! - `metrics/request_on`: `Metrics::request` with metrics on: a cached
//!   histogram observation and a counter increment (what every client
//!   request pays with `--metrics-addr`);
//! - `metrics/request_off`: the same call with metrics off (the baseline:
//!   every node without `--metrics-addr`);
//! - `metrics/peer_call_on`: `Metrics::peer_call`, a read-locked lookup of
//!   the peer's handles, a counter and a histogram;
//! - `metrics/render`: one scrape's text of those series.
//!
//! Run with `cargo bench --bench metrics`; results in `docs/performance.md`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kilovolt::metrics::{Metrics, Rpc};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    let elapsed = Duration::from_micros(150);
    let on = Metrics::on();
    group.bench_function("request_on", |b| {
        b.iter(|| on.request(Rpc::Get, black_box("ONE"), black_box(0), elapsed))
    });
    let off = Metrics::off();
    group.bench_function("request_off", |b| {
        b.iter(|| off.request(Rpc::Get, black_box("ONE"), black_box(0), elapsed))
    });
    group.bench_function("peer_call_on", |b| {
        b.iter(|| on.peer_call(black_box("127.0.0.1:50052"), "apply", Some(elapsed), false))
    });
    group.bench_function("render", |b| b.iter(|| black_box(on.render())));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
