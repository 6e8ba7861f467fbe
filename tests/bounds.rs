//! Small hostile requests to a real node: each must be answered or refused
//! with a clear error, within bounded memory. An allocator that counts the
//! bytes this process holds measures the peak growth of each request; the
//! node runs in this process, so its allocations count.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{channel, kv, start_node};
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
    let mut peer = wire::peer_client::PeerClient::new(channel(&node).await)
        .max_decoding_message_size(usize::MAX);
    let request = wire::ReadRequest {
        header: header(),
        keys: vec!["big".to_string(); 2000],
        partitions: vec![7; 2000],
    };
    let (reply, growth) = peak_growth(peer.read(request)).await;
    eprintln!("peer read: memory grew by {growth} bytes");
    let reply = reply.expect("the read is answered").into_inner();
    assert_eq!(reply.entries.len(), 1, "the key is answered once");
    assert_eq!(reply.entries[0].value, value);
    assert!(reply.held.len() <= 1, "partitions answered once each");
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
    let mut peer = wire::peer_client::PeerClient::new(channel(&node).await);
    let request = wire::ApplyRequest {
        header: header(),
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
