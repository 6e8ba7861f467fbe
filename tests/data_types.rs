//! Maps and counters on a real node, through the public gRPC contract:
//! round trips, kinds per key, Delete and TTL, and every bad input.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{admin, eventually, kv, start_node};
use kilovolt::proto::{self, kilovolt_client::KilovoltClient, Consistency};
use tonic::transport::Channel;
use tonic::Code;

type Client = KilovoltClient<Channel>;

fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn mset(
    c: &mut Client,
    key: &str,
    pairs: &[(&str, &str)],
) -> Result<proto::Version, tonic::Status> {
    let resp = c
        .map_set(proto::MapSetRequest {
            key: key.into(),
            fields: fields(pairs),
            consistency: Consistency::One.into(),
        })
        .await?
        .into_inner();
    assert_eq!(resp.status, "OK");
    Ok(resp.version.expect("MapSet answers its version"))
}

async fn mget(
    c: &mut Client,
    key: &str,
    names: &[&str],
) -> Result<Option<HashMap<String, String>>, tonic::Status> {
    let resp = c
        .map_get(proto::MapGetRequest {
            key: key.into(),
            fields: names.iter().map(|n| n.to_string()).collect(),
            consistency: Consistency::Quorum.into(),
        })
        .await?
        .into_inner();
    Ok(resp.found.then_some(resp.fields))
}

async fn mdel(c: &mut Client, key: &str, names: &[&str]) -> Result<(), tonic::Status> {
    let resp = c
        .map_remove(proto::MapRemoveRequest {
            key: key.into(),
            fields: names.iter().map(|n| n.to_string()).collect(),
            consistency: Consistency::All.into(),
        })
        .await?
        .into_inner();
    assert_eq!(resp.status, "OK");
    Ok(())
}

async fn incr(c: &mut Client, key: &str, delta: i64) -> Result<i64, tonic::Status> {
    Ok(c.increment(proto::IncrementRequest {
        key: key.into(),
        delta,
        consistency: Consistency::One.into(),
    })
    .await?
    .into_inner()
    .value)
}

async fn counter(c: &mut Client, key: &str) -> Result<Option<i64>, tonic::Status> {
    let resp = c
        .get_counter(proto::GetCounterRequest {
            key: key.into(),
            consistency: Consistency::Local.into(),
        })
        .await?
        .into_inner();
    Ok(resp.found.then_some(resp.value))
}

async fn set(c: &mut Client, key: &str, value: &str, ttl_ms: u64) -> Result<(), tonic::Status> {
    c.set(proto::SetRequest {
        key: key.into(),
        value: value.into(),
        ttl_ms,
        ..Default::default()
    })
    .await
    .map(|_| ())
}

async fn get(c: &mut Client, key: &str) -> Result<Option<String>, tonic::Status> {
    let resp = c
        .get(proto::GetRequest {
            key: key.into(),
            consistency: Consistency::One.into(),
        })
        .await?
        .into_inner();
    Ok(resp.found.then_some(resp.value))
}

async fn delete(c: &mut Client, key: &str) {
    c.delete(proto::DeleteRequest {
        key: key.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

fn order(v: &proto::Version) -> (u64, u128) {
    (v.time, u128::from_str_radix(&v.node, 16).expect("hex node"))
}

/// Asserts `result` failed with `code` and a message containing `text`.
fn fails<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, text: &str) {
    let status = result.expect_err("the request fails");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status.message().contains(text),
        "{:?} lacks {text:?}",
        status.message()
    );
}

#[tokio::test]
async fn maps_set_read_and_remove_fields() {
    let node = start_node(|_| {}).await;
    let mut c = kv(&node).await;
    assert_eq!(mget(&mut c, "user:1", &[]).await.unwrap(), None);

    let v1 = mset(&mut c, "user:1", &[("name", "ada"), ("lang", "en")])
        .await
        .unwrap();
    let v2 = mset(&mut c, "user:1", &[("lang", "fr"), ("city", "paris")])
        .await
        .unwrap();
    assert!(order(&v2) > order(&v1));
    let all = mget(&mut c, "user:1", &[]).await.unwrap().unwrap();
    assert_eq!(
        all,
        fields(&[("name", "ada"), ("lang", "fr"), ("city", "paris")])
    );
    let some = mget(&mut c, "user:1", &["name", "missing"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(some, fields(&[("name", "ada")]));

    mdel(&mut c, "user:1", &["lang", "never-set"])
        .await
        .unwrap();
    let all = mget(&mut c, "user:1", &[]).await.unwrap().unwrap();
    assert_eq!(all, fields(&[("name", "ada"), ("city", "paris")]));
    // Removing from a key that holds nothing is a no-op.
    mdel(&mut c, "nothing-here", &["x"]).await.unwrap();
    assert_eq!(mget(&mut c, "nothing-here", &[]).await.unwrap(), None);

    // A map with no field left reads as absent, counts as a tombstone, and
    // the key may then hold anything.
    mdel(&mut c, "user:1", &["name", "city"]).await.unwrap();
    assert_eq!(mget(&mut c, "user:1", &[]).await.unwrap(), None);
    let stats = admin(&node)
        .await
        .stats(proto::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.keys, stats.tombstones), (0, 1));
    set(&mut c, "user:1", "a string now", 0).await.unwrap();
    assert_eq!(
        get(&mut c, "user:1").await.unwrap().as_deref(),
        Some("a string now")
    );
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn counters_add_signed_deltas() {
    let node = start_node(|_| {}).await;
    let mut c = kv(&node).await;
    assert_eq!(counter(&mut c, "hits").await.unwrap(), None);
    assert_eq!(incr(&mut c, "hits", 5).await.unwrap(), 5);
    assert_eq!(incr(&mut c, "hits", -8).await.unwrap(), -3);
    assert_eq!(incr(&mut c, "hits", 0).await.unwrap(), -3);
    assert_eq!(counter(&mut c, "hits").await.unwrap(), Some(-3));
    // A counter exists once incremented, at 0 too.
    assert_eq!(incr(&mut c, "zero", 0).await.unwrap(), 0);
    assert_eq!(counter(&mut c, "zero").await.unwrap(), Some(0));
    let stats = admin(&node)
        .await
        .stats(proto::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.keys, 2);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_key_holds_one_kind_and_the_wrong_kind_names_the_one_held() {
    let node = start_node(|_| {}).await;
    let mut c = kv(&node).await;
    set(&mut c, "s", "v", 0).await.unwrap();
    mset(&mut c, "m", &[("f", "v")]).await.unwrap();
    incr(&mut c, "n", 1).await.unwrap();

    let pre = Code::FailedPrecondition;
    fails(
        mset(&mut c, "s", &[("f", "v")]).await,
        pre,
        "key holds a string; MapSet needs a map",
    );
    fails(
        mdel(&mut c, "s", &["f"]).await,
        pre,
        "key holds a string; MapRemove",
    );
    fails(
        mget(&mut c, "n", &[]).await,
        pre,
        "key holds a counter; MapGet",
    );
    fails(
        incr(&mut c, "m", 1).await,
        pre,
        "key holds a map; Increment needs a counter",
    );
    fails(
        counter(&mut c, "s").await,
        pre,
        "key holds a string; GetCounter",
    );
    fails(
        set(&mut c, "n", "v", 0).await,
        pre,
        "key holds a counter; Set needs a string",
    );
    fails(
        get(&mut c, "m").await,
        pre,
        "key holds a map; Get needs a string (read maps with MapGet",
    );

    // In a batch, the wrong kind fails that operation alone.
    let batch = c
        .batch(proto::BatchRequest {
            ops: vec![
                proto::BatchOp {
                    op: Some(proto::batch_op::Op::Get(proto::GetRequest {
                        key: "m".into(),
                        ..Default::default()
                    })),
                },
                proto::BatchOp {
                    op: Some(proto::batch_op::Op::Get(proto::GetRequest {
                        key: "s".into(),
                        ..Default::default()
                    })),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        &batch.results[0].result,
        Some(proto::batch_result::Result::Error(f)) if f.code == Code::FailedPrecondition as i32
    ));
    assert!(matches!(
        &batch.results[1].result,
        Some(proto::batch_result::Result::Get(g)) if g.value == "v"
    ));

    // Nothing changed.
    assert_eq!(get(&mut c, "s").await.unwrap().as_deref(), Some("v"));
    assert_eq!(counter(&mut c, "n").await.unwrap(), Some(1));
    assert_eq!(
        mget(&mut c, "m", &[]).await.unwrap(),
        Some(fields(&[("f", "v")]))
    );
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn delete_removes_any_kind_and_ttl_applies_to_strings() {
    let node = start_node(|_| {}).await;
    let mut c = kv(&node).await;
    mset(&mut c, "m", &[("a", "1")]).await.unwrap();
    incr(&mut c, "n", 7).await.unwrap();
    delete(&mut c, "m").await;
    delete(&mut c, "n").await;
    assert_eq!(mget(&mut c, "m", &[]).await.unwrap(), None);
    assert_eq!(counter(&mut c, "n").await.unwrap(), None);
    // A new map or counter after a delete starts empty.
    mset(&mut c, "m", &[("b", "2")]).await.unwrap();
    assert_eq!(
        mget(&mut c, "m", &[]).await.unwrap(),
        Some(fields(&[("b", "2")]))
    );
    assert_eq!(incr(&mut c, "n", 1).await.unwrap(), 1);
    // And a deleted map's key can hold a counter.
    delete(&mut c, "m").await;
    assert_eq!(incr(&mut c, "m", 2).await.unwrap(), 2);

    // A string with a TTL expires; then the key may hold a map.
    set(&mut c, "t", "short", 200).await.unwrap();
    fails(
        mset(&mut c, "t", &[("a", "1")]).await,
        Code::FailedPrecondition,
        "holds a string",
    );
    eventually(Duration::from_secs(5), "the string to expire", || {
        let mut c = c.clone();
        async move { get(&mut c, "t").await.unwrap().is_none().then_some(()) }
    })
    .await;
    mset(&mut c, "t", &[("a", "1")]).await.unwrap();
    assert_eq!(
        mget(&mut c, "t", &[]).await.unwrap(),
        Some(fields(&[("a", "1")]))
    );
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_map_and_counter_input_names_the_limit_and_changes_nothing() {
    let node = start_node(|c| c.max_value_bytes = 100).await;
    let mut c = kv(&node).await;
    mset(&mut c, "m", &[("kept", "yes")]).await.unwrap();
    let bad = Code::InvalidArgument;

    fails(
        mset(&mut c, "m", &[]).await,
        bad,
        "MapSet needs at least one field",
    );
    fails(
        mdel(&mut c, "m", &[]).await,
        bad,
        "MapRemove needs at least one field",
    );
    let long = "n".repeat(5000);
    fails(
        mset(&mut c, "m", &[(&long, "v")]).await,
        bad,
        "field name is 5000 bytes; the limit is 4096",
    );
    fails(
        mget(&mut c, "m", &[&long]).await,
        bad,
        "field name is 5000 bytes; the limit is 4096",
    );
    fails(
        mset(&mut c, "m", &[("", "v")]).await,
        bad,
        "field name is empty",
    );
    let big = "v".repeat(101);
    fails(
        mset(&mut c, "m", &[("f", &big)]).await,
        bad,
        "value of field \"f\" is 101 bytes; the limit is 100 (--max-value-bytes)",
    );
    let half = "v".repeat(60);
    fails(
        mset(&mut c, "m", &[("a", &half), ("b", &half)]).await,
        bad,
        "fields are 154 bytes in all (names, values and 16 per field); the limit is 100",
    );
    let names: Vec<String> = (0..1001).map(|i| format!("f{i}")).collect();
    let many: Vec<&str> = names.iter().map(String::as_str).collect();
    fails(
        mdel(&mut c, "m", &many).await,
        bad,
        "request names 1001 fields; the limit is 1000",
    );
    fails(
        mget(&mut c, "m", &many).await,
        bad,
        "request names 1001 fields; the limit is 1000",
    );
    fails(mset(&mut c, "", &[("a", "b")]).await, bad, "key is empty");
    fails(
        incr(&mut c, &"k".repeat(4097), 1).await,
        bad,
        "key is 4097 bytes; the limit is 4096",
    );
    let local = c
        .map_set(proto::MapSetRequest {
            key: "m".into(),
            fields: fields(&[("a", "b")]),
            consistency: Consistency::Local.into(),
        })
        .await;
    fails(local, bad, "LOCAL is for reads only");
    let unknown = c
        .increment(proto::IncrementRequest {
            key: "n".into(),
            delta: 1,
            consistency: 8,
        })
        .await;
    fails(unknown, bad, "consistency is 8");

    // The whole map is bounded too: each write fits, the sum would not.
    mset(&mut c, "m", &[("a", &half)]).await.unwrap();
    fails(
        mset(&mut c, "m", &[("b", &half)]).await,
        Code::FailedPrecondition,
        "map would hold 177 bytes (field names, values and 16 per value); the limit is 100 (--max-value-bytes)",
    );
    // The map is now exactly at the limit; replacing a value counts the new
    // one only.
    mset(&mut c, "m", &[("a", &"w".repeat(60))]).await.unwrap();

    // Counters refuse to overflow (OUT_OF_RANGE) and keep their value.
    assert_eq!(incr(&mut c, "n", i64::MAX).await.unwrap(), i64::MAX);
    fails(
        incr(&mut c, "n", 1).await,
        Code::OutOfRange,
        "counter is 9223372036854775807; adding 1 would pass 9223372036854775807",
    );
    assert_eq!(counter(&mut c, "n").await.unwrap(), Some(i64::MAX));
    assert_eq!(incr(&mut c, "n", i64::MIN).await.unwrap(), -1);
    assert_eq!(incr(&mut c, "n", i64::MIN + 1).await.unwrap(), i64::MIN);
    fails(
        incr(&mut c, "n", -1).await,
        Code::OutOfRange,
        "would pass -9223372036854775808",
    );

    let kept = mget(&mut c, "m", &[]).await.unwrap().unwrap();
    assert_eq!(kept.get("kept").map(String::as_str), Some("yes"));
    assert_eq!(kept.len(), 2);
    node.shutdown().await.unwrap();
}
