//! Small hostile requests to a real node: each must be answered or refused
//! with a clear error, within bounded memory. An allocator that counts the
//! bytes this process holds measures the peak growth of each request; the
//! node runs in this process, so its allocations count.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{kv, peer_channel, start_node};
use kilovolt::config::Config;
use kilovolt::net::peer::PROTOCOL;
use kilovolt::proto::{self, cluster as wire};
use tonic::Code;

/// Counts the bytes allocated and not yet freed, and their peak.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed to `System` unchanged; the counters are only
// updated around it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One test at a time: the counters are process-wide, so a test that
/// allocates much would disturb another's measurement.
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The most bytes held at once while `f` ran, above what was held when it
/// started.
async fn peak_growth<T>(f: impl std::future::Future<Output = T>) -> (T, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f.await;
    let peak = PEAK.load(Ordering::Relaxed);
    (out, peak.saturating_sub(base))
}

const MIB: usize = 1 << 20;

/// Growth no request here may exceed: a few copies of the largest value
/// and message, far below what the unbounded requests took (gigabytes).
const BOUND: usize = 64 * MIB;

fn header() -> Option<wire::Header> {
    Some(wire::Header {
        protocol: PROTOCOL,
        from: "hostile".into(),
    })
}

async fn set_large(node: &kilovolt::node::RunningNode, key: &str) -> String {
    let value = "x".repeat(Config::defaults().max_value_bytes);
    kv(node)
        .await
        .set(proto::SetRequest {
            key: key.into(),
            value: value.clone(),
            ..Default::default()
        })
        .await
        .expect("a value at the limit is stored");
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_read_naming_one_key_many_times_answers_it_once() {
    let _one = MEASURING.lock().await;
    let node = start_node(|_| {}).await;
    let value = set_large(&node, "big").await;
    let mut peer = wire::peer_client::PeerClient::new(peer_channel(&node).await)
        .max_decoding_message_size(usize::MAX);
    let request = wire::ReadRequest {
        header: header(),
        keys: vec!["big".to_string(); 2000],
    };
    let (reply, growth) = peak_growth(peer.read(request)).await;
    eprintln!("peer read: memory grew by {growth} bytes");
    let reply = reply.expect("the read is answered").into_inner();
    assert_eq!(reply.entries.len(), 1, "the key is answered once");
    assert_eq!(reply.entries[0].value, value);
    let holding = wire::HoldingRequest {
        header: header(),
        partitions: vec![7; 2000],
    };
    let held = peer.holding(holding).await.expect("answered").into_inner();
    assert!(held.held.len() <= 1, "partitions answered once each");
    assert!(
        growth < BOUND,
        "the read grew memory by {growth} bytes; the bound is {BOUND}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_gets_past_the_message_limit_is_refused_early() {
    let _one = MEASURING.lock().await;
    let node = start_node(|_| {}).await;
    set_large(&node, "big").await;
    let mut client = kv(&node).await;
    let get = proto::BatchOp {
        op: Some(proto::batch_op::Op::Get(proto::GetRequest {
            key: "big".into(),
            consistency: proto::Consistency::One.into(),
        })),
    };
    let request = proto::BatchRequest {
        ops: vec![get; 1000],
    };
    let (reply, growth) = peak_growth(client.batch(request)).await;
    eprintln!("batch: memory grew by {growth} bytes");
    let status = reply.expect_err("the answer cannot fit one message");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let limit = Config::defaults().max_message_bytes();
    assert!(
        status.message().contains(&format!("the limit is {limit}")),
        "the error names the limit: {}",
        status.message()
    );
    assert!(
        growth < BOUND,
        "the batch grew memory by {growth} bytes; the bound is {BOUND}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_answer_fits_is_answered_in_full() {
    let _one = MEASURING.lock().await;
    let node = start_node(|_| {}).await;
    let mut client = kv(&node).await;
    let ops = (0..1000)
        .map(|i| proto::BatchOp {
            op: Some(proto::batch_op::Op::Set(proto::SetRequest {
                key: format!("k{i}"),
                value: "v".repeat(100),
                ..Default::default()
            })),
        })
        .collect();
    let reply = client
        .batch(proto::BatchRequest { ops })
        .await
        .expect("a batch of small sets fits")
        .into_inner();
    assert_eq!(reply.results.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_message_larger_than_the_protocol_needs_is_refused() {
    let _one = MEASURING.lock().await;
    let node = start_node(|_| {}).await;
    let mut peer = wire::peer_client::PeerClient::new(peer_channel(&node).await);
    let request = wire::ApplyRequest {
        header: header(),
        relay: false,
        await_mates: Vec::new(),
        await_ms: 0,
        entries: vec![wire::Entry {
            key: "k".into(),
            value: "x".repeat(16 * MIB),
            time: 1,
            node: 1,
            ..Default::default()
        }],
    };
    let status = peer
        .apply(request)
        .await
        .expect_err("16 MiB is far over what the protocol needs");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let limit = Config::defaults().max_peer_message_bytes();
    assert!(
        status.message().contains(&limit.to_string()),
        "the error names the limit: {}",
        status.message()
    );

    // What the protocol does send still passes: an entry of the longest key
    // and a value at its limit.
    let largest = wire::ApplyRequest {
        header: header(),
        relay: false,
        await_mates: Vec::new(),
        await_ms: 0,
        entries: vec![wire::Entry {
            key: "k".repeat(kilovolt::config::MAX_KEY_BYTES),
            value: "x".repeat(Config::defaults().max_value_bytes),
            time: 1,
            node: 1,
            ..Default::default()
        }],
    };
    let applied = peer.apply(largest).await.expect("the largest entry passes");
    assert_eq!(applied.into_inner().changed, 1);
}

/// One adversarial peer message.
#[derive(Clone, Debug)]
enum Hostile {
    /// A read naming the stored 1 MiB key `repeats` times among `others`.
    Read { repeats: usize, others: Vec<String> },
    /// A question naming `partitions` (repeated, any number).
    Holding { partitions: Vec<u32> },
    /// `copies` of one map entry whose field context lists `actors` actors
    /// in descending order.
    Apply { copies: usize, actors: u64 },
    /// A summary with a bitmap of `bitmap` bytes of `fill` and `groups`
    /// digests.
    Summary {
        bitmap: usize,
        fill: u8,
        groups: usize,
    },
    /// A repair wanting one key `repeats` times.
    Repair { repeats: usize },
    /// A versions step listing `leaves` leaves, ascending or repeated.
    Versions { leaves: u32, repeated: bool },
}

fn hostile() -> impl proptest::strategy::Strategy<Value = Hostile> {
    use proptest::prelude::*;
    prop_oneof![
        (1usize..3000, prop::collection::vec("[a-z]{1,8}", 0..50))
            .prop_map(|(repeats, others)| Hostile::Read { repeats, others }),
        prop::collection::vec(any::<u32>(), 0..3000)
            .prop_map(|partitions| Hostile::Holding { partitions }),
        (1usize..20, 0u64..40_000).prop_map(|(copies, actors)| Hostile::Apply { copies, actors }),
        (
            prop_oneof![0usize..200, 8190usize..8200, Just(100_000)],
            any::<u8>(),
            0usize..3000
        )
            .prop_map(|(bitmap, fill, groups)| Hostile::Summary {
                bitmap,
                fill,
                groups
            }),
        (1usize..5000).prop_map(|repeats| Hostile::Repair { repeats }),
        (1u32..5000, any::<bool>())
            .prop_map(|(leaves, repeated)| Hostile::Versions { leaves, repeated }),
    ]
}

/// Sends `message`; the encoded size of the answer, or the refusal.
async fn send(
    peer: &mut wire::peer_client::PeerClient<tonic::transport::Channel>,
    message: Hostile,
) -> Result<usize, tonic::Status> {
    use prost::Message;
    use wire::sync_request::Step;
    let sync = |step| wire::SyncRequest {
        header: header(),
        max_reply_bytes: u32::MAX,
        step: Some(step),
    };
    match message {
        Hostile::Read {
            repeats,
            mut others,
        } => {
            others.extend(std::iter::repeat_n("big".to_string(), repeats));
            let request = wire::ReadRequest {
                header: header(),
                keys: others,
            };
            let reply = peer.read(request).await?.into_inner();
            let mut keys: Vec<&str> = reply.entries.iter().map(|e| e.key.as_str()).collect();
            keys.sort_unstable();
            let before = keys.len();
            keys.dedup();
            assert_eq!(keys.len(), before, "each key is answered once");
            Ok(reply.encoded_len())
        }
        Hostile::Holding { partitions } => {
            let request = wire::HoldingRequest {
                header: header(),
                partitions,
            };
            let reply = peer.holding(request).await?.into_inner();
            assert!(
                reply.held.windows(2).all(|w| w[0] < w[1]),
                "each partition is answered once"
            );
            Ok(reply.encoded_len())
        }
        Hostile::Apply { copies, actors } => {
            let field = wire::MapField {
                name: "f".into(),
                adds: Vec::new(),
                context: (0..actors)
                    .rev()
                    .map(|n| wire::ActorTime {
                        actor: Some(wire::Actor {
                            node: n,
                            incarnation: 1,
                        }),
                        time: n + 1,
                    })
                    .collect(),
                removed_at: 1,
            };
            let entry = wire::Entry {
                key: "m".into(),
                time: 1,
                node: 1,
                map: Some(wire::MapState {
                    generation_time: 1,
                    generation_node: 1,
                    fields: vec![field],
                }),
                ..Default::default()
            };
            let request = wire::ApplyRequest {
                header: header(),
                relay: false,
                await_mates: Vec::new(),
                await_ms: 0,
                entries: vec![entry; copies],
            };
            Ok(peer.apply(request).await?.into_inner().encoded_len())
        }
        Hostile::Summary {
            bitmap,
            fill,
            groups,
        } => {
            let step = Step::Summary(wire::SummaryStep {
                partitions: vec![fill; bitmap],
                groups: vec![0; groups * 16],
            });
            Ok(peer.sync(sync(step)).await?.into_inner().encoded_len())
        }
        Hostile::Repair { repeats } => {
            let wanted = wire::WantedKey {
                leaf: Some(wire::LeafRef {
                    partition: 1,
                    leaf: 2,
                }),
                fingerprint: 3,
            };
            let step = Step::Repair(wire::RepairStep {
                salt: 1,
                entries: Vec::new(),
                wanted: vec![wanted; repeats],
                handoff: false,
            });
            Ok(peer.sync(sync(step)).await?.into_inner().encoded_len())
        }
        Hostile::Versions { leaves, repeated } => {
            let leaves = (0..leaves)
                .map(|i| wire::LeafRef {
                    partition: if repeated { 0 } else { i / 256 },
                    leaf: if repeated { 0 } else { i % 256 },
                })
                .collect();
            let step = Step::Versions(wire::VersionsStep {
                salt: 1,
                leaves,
                after: None,
            });
            Ok(peer.sync(sync(step)).await?.into_inner().encoded_len())
        }
    }
}

#[test]
fn hostile_peer_messages_are_answered_or_refused_clearly_in_bounded_memory() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let _one = MEASURING.blocking_lock();
    let limit = Config::defaults().max_peer_message_bytes();
    let (node, peer) = runtime.block_on(async {
        let node = start_node(|_| {}).await;
        set_large(&node, "big").await;
        let peer = wire::peer_client::PeerClient::new(peer_channel(&node).await)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        (node, peer)
    });
    proptest!(ProptestConfig::with_cases(48), |(message in hostile())| {
        let mut peer = peer.clone();
        let shown = format!("{message:?}");
        let shown = &shown[..shown.len().min(200)];
        let (answer, growth) = runtime.block_on(peak_growth(send(&mut peer, message)));
        match answer {
            Ok(size) => prop_assert!(size <= limit, "{shown}: answer of {size} bytes"),
            Err(status) => {
                prop_assert!(
                    matches!(
                        status.code(),
                        Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
                    ),
                    "{shown}: {status:?}"
                );
                prop_assert!(!status.message().is_empty());
            }
        }
        prop_assert!(growth < BOUND, "{shown}: memory grew by {growth} bytes");
    });
    runtime
        .block_on(node.shutdown())
        .expect("the node shuts down");
}
