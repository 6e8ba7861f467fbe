//! A real node on an ephemeral port, driven through its gRPC contract.

mod common;

use std::time::Duration;

use common::{admin, channel, eventually, kv, start_node};
use kilovolt::proto::{self, Consistency};
use tonic::Code;

fn set(key: &str, value: &str) -> proto::SetRequest {
    proto::SetRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn get(key: &str, consistency: Consistency) -> proto::GetRequest {
    proto::GetRequest {
        key: key.into(),
        consistency: consistency.into(),
    }
}

fn order(v: &proto::Version) -> (u64, u128) {
    (v.time, u128::from_str_radix(&v.node, 16).expect("hex node"))
}

#[tokio::test]
async fn set_get_delete_round_trip_with_increasing_versions() {
    let node = start_node(|_| {}).await;
    let mut c = kv(&node).await;

    let first = c.set(set("foo", "bar")).await.unwrap().into_inner();
    assert_eq!(first.status, "OK");
    let v1 = first.version.expect("set answers its version");

    for level in [
        Consistency::Default,
        Consistency::One,
        Consistency::Quorum,
        Consistency::All,
        Consistency::Local,
    ] {
        let got = c.get(get("foo", level)).await.unwrap().into_inner();
        assert!(got.found, "{level:?}");
        assert_eq!(got.value, "bar");
        assert_eq!(got.version.as_ref(), Some(&v1));
    }

    let second = c.set(set("foo", "baz")).await.unwrap().into_inner();
    let v2 = second.version.unwrap();
    assert!(order(&v2) > order(&v1), "{v2:?} after {v1:?}");

    let deleted = c
        .delete(proto::DeleteRequest {
            key: "foo".into(),
            consistency: Consistency::All.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.status, "OK");
    let v3 = deleted.version.unwrap();
    assert!(order(&v3) > order(&v2));

    let gone = c
        .get(get("foo", Consistency::One))
        .await
        .unwrap()
        .into_inner();
    assert!(!gone.found);
    assert_eq!(gone.value, "");
    assert_eq!(
        gone.version,
        Some(v3),
        "a deleted key reads with its tombstone's version"
    );

    let never = c
        .get(get("never-written", Consistency::One))
        .await
        .unwrap()
        .into_inner();
    assert!(!never.found);
    assert_eq!(never.version, None);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn ttl_values_expire_and_are_collected() {
    let node = start_node(|c| c.expiry_interval = Duration::from_millis(10)).await;
    let mut c = kv(&node).await;
    let mut a = admin(&node).await;
    c.set(proto::SetRequest {
        ttl_ms: 300,
        ..set("short", "lived")
    })
    .await
    .unwrap();
    c.set(set("long", "lived")).await.unwrap();
    let got = c
        .get(get("short", Consistency::One))
        .await
        .unwrap()
        .into_inner();
    assert!(got.found, "readable before its expiry");

    eventually(Duration::from_secs(5), "the value to expire", || {
        let mut c = c.clone();
        async move {
            let got = c
                .get(get("short", Consistency::One))
                .await
                .unwrap()
                .into_inner();
            (!got.found).then_some(())
        }
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "the expired value to be collected",
        || {
            let mut a = a.clone();
            async move {
                let stats = a.stats(proto::StatsRequest {}).await.unwrap().into_inner();
                (stats.keys == 1).then_some(())
            }
        },
    )
    .await;
    let stats = a.stats(proto::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!((stats.keys, stats.tombstones), (1, 0));
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_limit() {
    let node = start_node(|c| c.max_value_bytes = 1000).await;
    let mut c = kv(&node).await;
    c.set(set("kept", "original")).await.unwrap();

    let cases: Vec<(proto::SetRequest, &str)> = vec![
        (set("", "v"), "key is empty; a key needs 1 to 4096 bytes"),
        (
            set(&"k".repeat(4097), "v"),
            "key is 4097 bytes; the limit is 4096",
        ),
        (
            set("kept", &"v".repeat(1001)),
            "value is 1001 bytes; the limit is 1000",
        ),
        (
            proto::SetRequest {
                ttl_ms: u64::MAX,
                ..set("kept", "v")
            },
            "ttl_ms is 18446744073709551615; the limit is",
        ),
        (
            proto::SetRequest {
                consistency: 9,
                ..set("kept", "v")
            },
            "consistency is 9, which the contract does not define",
        ),
        (
            proto::SetRequest {
                consistency: Consistency::Local.into(),
                ..set("kept", "v")
            },
            "LOCAL is for reads only",
        ),
    ];
    for (request, message) in cases {
        let status = c.set(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().contains(message),
            "{:?} lacks {message:?}",
            status.message()
        );
    }
    let status = c.get(get("", Consistency::One)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = c
        .get(proto::GetRequest {
            key: "kept".into(),
            consistency: -3,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = c
        .delete(proto::DeleteRequest {
            key: "kept".into(),
            consistency: Consistency::Local.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Nothing was lost to the refused requests.
    let got = c
        .get(get("kept", Consistency::One))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.value, "original");
    // The largest valid value is accepted.
    c.set(set("kept", &"v".repeat(1000))).await.unwrap();
    node.shutdown().await.unwrap();
}

fn op(op: proto::batch_op::Op) -> proto::BatchOp {
    proto::BatchOp { op: Some(op) }
}

#[tokio::test]
async fn batch_answers_each_op_in_order_and_fails_ops_alone() {
    use proto::batch_op::Op;
    use proto::batch_result::Result as R;

    let node = start_node(|_| {}).await;
    let mut c = kv(&node).await;
    let va = c.set(set("a", "1")).await.unwrap().into_inner().version;
    let vc = c.set(set("c", "3")).await.unwrap().into_inner().version;

    let ops = vec![
        op(Op::Set(set("b", "2"))),
        op(Op::Get(get("a", Consistency::Quorum))),
        op(Op::Set(set("", "v"))),
        op(Op::Delete(proto::DeleteRequest {
            key: "c".into(),
            consistency: Consistency::One.into(),
        })),
        proto::BatchOp { op: None },
        op(Op::Get(get("never-written", Consistency::Local))),
        op(Op::Set(proto::SetRequest {
            consistency: Consistency::Local.into(),
            ..set("d", "4")
        })),
    ];
    let results: Vec<_> = c
        .batch(proto::BatchRequest { ops })
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|r| r.result.expect("every result is set"))
        .collect();
    assert_eq!(results.len(), 7, "{results:?}");

    let failure = |r: &R, message: &str| {
        let R::Error(f) = r else {
            panic!("expected a failure, got {r:?}")
        };
        assert_eq!(f.code, Code::InvalidArgument as i32, "{f:?}");
        assert!(
            f.message.contains(message),
            "{:?} lacks {message:?}",
            f.message
        );
    };
    let R::Set(set_b) = &results[0] else {
        panic!("{:?}", results[0])
    };
    assert_eq!(set_b.status, "OK");
    let vb = set_b.version.clone().expect("set answers its version");
    let R::Get(got_a) = &results[1] else {
        panic!("{:?}", results[1])
    };
    assert_eq!((got_a.found, got_a.value.as_str()), (true, "1"));
    assert_eq!(got_a.version, va);
    failure(&results[2], "key is empty; a key needs 1 to 4096 bytes");
    let R::Delete(del_c) = &results[3] else {
        panic!("{:?}", results[3])
    };
    assert_eq!(del_c.status, "OK");
    let vdel = del_c.version.clone().expect("delete answers its version");
    assert!(order(&vdel) > order(vc.as_ref().unwrap()));
    failure(&results[4], "batch operation is empty");
    let R::Get(never) = &results[5] else {
        panic!("{:?}", results[5])
    };
    assert!(!never.found);
    assert_eq!(never.version, None);
    failure(&results[6], "LOCAL is for reads only");

    // The effects are those of the single RPCs, failures changing nothing.
    let b = c
        .get(get("b", Consistency::One))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((b.value.as_str(), b.version), ("2", Some(vb)));
    let gone = c
        .get(get("c", Consistency::One))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((gone.found, gone.version), (false, Some(vdel)));
    let d = c
        .get(get("d", Consistency::One))
        .await
        .unwrap()
        .into_inner();
    assert!(!d.found);

    // At the limit a batch is served; over it, refused as a whole.
    let gets = |n: usize| proto::BatchRequest {
        ops: (0..n)
            .map(|_| op(Op::Get(get("a", Consistency::One))))
            .collect(),
    };
    let full = c.batch(gets(1000)).await.unwrap().into_inner().results;
    assert_eq!(full.len(), 1000);
    assert!(full
        .iter()
        .all(|r| matches!(&r.result, Some(R::Get(g)) if g.value == "1")));
    let status = c.batch(gets(1500)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "batch has 1500 operations; the limit is 1000"
    );
    let empty = c.batch(proto::BatchRequest { ops: vec![] }).await.unwrap();
    assert!(empty.into_inner().results.is_empty());
    node.shutdown().await.unwrap();
}

/// A message that puts invalid UTF-8 where `SetRequest` has its key string.
#[derive(Clone, PartialEq, prost::Message)]
struct Malformed {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
}

#[tokio::test]
async fn malformed_requests_do_not_take_the_node_down() {
    let node = start_node(|_| {}).await;
    let mut raw = tonic::client::Grpc::new(channel(&node).await);
    raw.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Malformed, proto::SetResponse>::default();
    let status = raw
        .unary(
            tonic::Request::new(Malformed {
                key: vec![0xff, 0xfe, 0x00],
            }),
            "/kilovolt.Kilovolt/Set".parse().unwrap(),
            codec,
        )
        .await
        .unwrap_err();
    assert_ne!(status.code(), Code::Ok);

    // An oversized message is refused by the transport limit, not buffered.
    let mut c = kv(&node).await;
    let huge = "v".repeat(3 << 20);
    let status = c.set(set("k", &huge)).await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{status:?}"
    );

    // Still serving.
    c.set(set("k", "v")).await.unwrap();
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn admin_reports_this_node_and_faults_are_off_by_default() {
    let node = start_node(|c| c.region = "eu-west".into()).await;
    let mut a = admin(&node).await;
    let members = a
        .members(proto::MembersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.self_id, node.info().id);
    assert_eq!(members.members.len(), 1);
    let me = &members.members[0];
    assert_eq!(
        (
            me.address.as_str(),
            me.region.as_str(),
            me.state.as_str(),
            me.alive
        ),
        (node.info().address.as_str(), "eu-west", "ready", true)
    );

    let replicas = a
        .replicas(proto::ReplicasRequest { key: "k".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replicas.replicas, members.members);
    assert_eq!(
        a.replicas(proto::ReplicasRequest { key: String::new() })
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    let mut c = kv(&node).await;
    c.set(set("a", "1")).await.unwrap();
    c.set(set("b", "1")).await.unwrap();
    c.delete(proto::DeleteRequest {
        key: "b".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let stats = a.stats(proto::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (stats.keys, stats.tombstones, stats.hints_pending),
        (1, 1, 0)
    );

    let digests = a
        .digests(proto::DigestsRequest {})
        .await
        .unwrap()
        .into_inner()
        .partitions;
    assert_eq!(digests.len(), 1024, "a lone node holds every partition");
    assert!(digests.windows(2).all(|w| w[0].partition < w[1].partition));
    assert_eq!(
        digests.iter().map(|d| d.entries).sum::<u64>(),
        2,
        "a value and a tombstone"
    );
    for d in &digests {
        assert_eq!(d.root.len(), 16);
        assert_eq!(
            d.entries == 0,
            d.root == [0; 16],
            "partition {}",
            d.partition
        );
    }
    let mut f = proto::faults_client::FaultsClient::new(channel(&node).await);
    let status = f.heal(proto::HealRequest {}).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "fault injection is off by default"
    );
    assert!(
        status.message().contains("--fault-injection"),
        "{}",
        status.message()
    );
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_and_reflection_answer() {
    use tokio_stream::StreamExt;
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };

    let node = start_node(|_| {}).await;
    let mut health = HealthClient::new(channel(&node).await);
    for service in ["", "kilovolt.Kilovolt"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status(), ServingStatus::Serving, "service {service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel(&node).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.expect("one reply").unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reply {reply:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "kilovolt.Kilovolt",
        "kilovolt.Admin",
        "kilovolt.Faults",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    // The peer protocol has its own listener; the client port neither
    // serves nor lists it.
    assert!(
        !names.iter().any(|n| n.starts_with("kilovolt.cluster")),
        "the peer protocol is listed: {names:?}"
    );
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_is_clean_and_closes_the_listener() {
    let node = start_node(|_| {}).await;
    let addr = node.local_addr();
    let mut c = kv(&node).await;
    c.set(set("k", "v")).await.unwrap();
    node.shutdown().await.expect("clean shutdown");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
    assert!(c.get(get("k", Consistency::One)).await.is_err());
}

#[tokio::test]
async fn faults_cut_degrade_and_heal_when_enabled() {
    let node = start_node(|c| c.fault_injection = true).await;
    let mut f = proto::faults_client::FaultsClient::new(channel(&node).await);
    let state = f
        .cut(proto::CutRequest {
            peers: vec!["b".into(), "a".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.cut, vec!["a", "b"]);
    let state = f
        .degrade(proto::DegradeRequest {
            peers: vec!["c".into()],
            drop: 0.5,
            delay_ms: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (state.cut.len(), state.degraded),
        (2, vec!["c".to_string()])
    );
    assert_eq!(
        node.handles().switch.state().0,
        vec!["a", "b"],
        "the RPC drives the node's one switch"
    );

    let bad = f
        .degrade(proto::DegradeRequest {
            peers: vec!["c".into()],
            drop: 1.5,
            delay_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message()
            .contains("drop is 1.5; the limit is 0.0 to 1.0"),
        "{}",
        bad.message()
    );
    let empty = f
        .cut(proto::CutRequest { peers: vec![] })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);

    let state = f.heal(proto::HealRequest {}).await.unwrap().into_inner();
    assert!(state.cut.is_empty() && state.degraded.is_empty());
    // Client traffic is never affected.
    kv(&node).await.set(set("k", "v")).await.unwrap();
    node.shutdown().await.unwrap();
}
