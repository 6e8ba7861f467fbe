//! Micro-benchmarks of what every request costs before and after the store:
//! finding the key's replicas, and protobuf encoding and decoding.
//!
//! Measured, with `Throughput::Elements(1)` (one lookup or one message per
//! iteration):
//!
//! - `placement/replicas_for_key_{1,3,5}n`: [`Ring::replicas_for_key`] of a
//!   random 16-byte key over 1024 partitions with RF 3 (capped at the node
//!   count): one xxh3 of the key and a slice of the precomputed table.
//! - `placement/topology_replicas_3n`: [`Topology::replicas`], which the
//!   coordinator calls on every request: the same lookup through the
//!   coordinator's view of the cluster.
//! - `codec/{encode,decode}_set_request`, `codec/{encode,decode}_get_response`:
//!   prost encoding into a reused buffer and decoding from bytes of a Set
//!   with a 16-byte key and a 100-byte value, and of the Get response that
//!   carries such a value and its version.
//! - `codec/{encode,decode}_batch_request_16`: a Batch of 16 operations,
//!   90% reads, as `kilovolt-bench --batch 16` sends it; one iteration is
//!   the whole batch.
//!
//! Run with `cargo bench --bench request`; results in `docs/performance.md`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kilovolt::cluster::Topology;
use kilovolt::cluster::{Member, NodeState};
use kilovolt::proto;
use kilovolt::ring::{Ring, RingNode};
use prost::Message;

/// Keys looked up, picked at random.
const KEYS: usize = 100_000;
/// Partitions, the node's default.
const PARTITIONS: u32 = 1024;
/// Replication factor, the node's default.
const RF: usize = 3;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("key:{i:012}")).collect()
}

/// A cheap deterministic index generator (xorshift).
struct Picker(u64);

impl Picker {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % KEYS as u64) as usize
    }
}

fn member(i: usize) -> Member {
    Member {
        id: format!("127.0.0.1:{}", 50051 + i),
        address: format!("127.0.0.1:{}", 50051 + i),
        peer_address: format!("127.0.0.1:{}", 51051 + i),
        region: String::new(),
        state: NodeState::Ready,
        alive: true,
        generation: 1,
    }
}

fn placement(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("placement");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for n in [1, 3, 5] {
        let nodes = (0..n).map(|i| RingNode::from(&member(i))).collect();
        let ring = Ring::new(nodes, PARTITIONS, RF);
        group.bench_function(format!("replicas_for_key_{n}n"), |b| {
            let mut pick = Picker(1);
            b.iter(|| black_box(ring.replicas_for_key(&keys[pick.next()]).len()))
        });
    }
    let topology = Topology::new((0..3).map(member).collect(), PARTITIONS, RF);
    group.bench_function("topology_replicas_3n", |b| {
        let mut pick = Picker(1);
        b.iter(|| black_box(topology.replicas(&keys[pick.next()]).len()))
    });
    group.finish();
}

fn value() -> String {
    "v".repeat(100)
}

fn set_request() -> proto::SetRequest {
    proto::SetRequest {
        key: "key:000000000042".into(),
        value: value(),
        consistency: proto::Consistency::Default.into(),
        ttl_ms: 0,
    }
}

fn get_response() -> proto::GetResponse {
    proto::GetResponse {
        value: value(),
        found: true,
        version: Some(proto::Version {
            time: 0x6745_1234_89ab_cdef,
            node: "9f3c5a7e21b4d680".into(),
        }),
    }
}

fn batch_request() -> proto::BatchRequest {
    use proto::batch_op::Op;
    proto::BatchRequest {
        ops: (0..16)
            .map(|i| proto::BatchOp {
                op: Some(if i % 10 == 9 {
                    Op::Set(proto::SetRequest {
                        key: format!("key:{i:012}"),
                        ..set_request()
                    })
                } else {
                    Op::Get(proto::GetRequest {
                        key: format!("key:{i:012}"),
                        consistency: proto::Consistency::Default.into(),
                    })
                }),
            })
            .collect(),
    }
}

/// Benchmarks encoding `message` into a reused buffer and decoding it back.
fn encode_decode<M: Message + Default>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    message: &M,
) {
    let mut buf = Vec::with_capacity(message.encoded_len());
    group.bench_function(format!("encode_{name}"), |b| {
        b.iter(|| {
            buf.clear();
            // The buffer has the capacity: encoding cannot fail.
            let encoded = black_box(message).encode(&mut buf).is_ok();
            black_box(encoded)
        })
    });
    let bytes = message.encode_to_vec();
    group.bench_function(format!("decode_{name}"), |b| {
        b.iter(|| black_box(M::decode(black_box(bytes.as_slice())).is_ok()))
    });
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    encode_decode(&mut group, "set_request", &set_request());
    encode_decode(&mut group, "get_response", &get_response());
    encode_decode(&mut group, "batch_request_16", &batch_request());
    group.finish();
}

criterion_group!(benches, placement, codec);
criterion_main!(benches);
