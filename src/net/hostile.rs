//! Hostile input to the peer decoders: arbitrary bytes and adversarial
//! messages (repeated keys and dots, huge counts, actors in descending
//! order). Each must decode to a state no larger than its input allows, or
//! be refused with an error that says what is wrong; none may panic.

use proptest::prelude::*;
use prost::Message;

use super::sync_wire::{reply_from_wire, request_from_wire};
use super::wire::from_wire;
use crate::config::MAX_PARTITIONS;
use crate::crdt::Payload;
use crate::proto::cluster as wire;
use crate::proto::cluster::sync_request::Step as RequestStep;
use crate::sync_message::{Request, GROUP_PARTITIONS};

fn actor(node: u64, incarnation: u64) -> Option<wire::Actor> {
    Some(wire::Actor { node, incarnation })
}

/// A map of `fields` fields, all named from a few names (so names repeat),
/// each with adds and a context of actors in descending order, dots
/// repeated.
fn hostile_map() -> impl Strategy<Value = wire::MapState> {
    let field = (
        0u8..4,
        prop::collection::vec((0u64..64, 0u64..3, any::<u64>()), 0..40),
        0u64..2000,
        any::<u64>(),
    )
        .prop_map(|(name, dots, actors, removed_at)| wire::MapField {
            name: format!("f{name}"),
            adds: dots
                .iter()
                .chain(dots.iter())
                .map(|&(node, inc, time)| wire::FieldAdd {
                    actor: actor(node, inc),
                    time,
                    value: format!("{time}"),
                })
                .collect(),
            context: (0..actors)
                .rev()
                .map(|n| wire::ActorTime {
                    actor: actor(n, n % 3),
                    time: n.wrapping_mul(0x9e37_79b9),
                })
                .collect(),
            removed_at,
        });
    prop::collection::vec(field, 0..12).prop_map(|fields| wire::MapState {
        generation_time: 1,
        generation_node: 2,
        fields,
    })
}

/// A counter whose actors repeat and whose counts are extreme.
fn hostile_counter() -> impl Strategy<Value = wire::CounterState> {
    let count = (
        0u64..8,
        prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        any::<u64>(),
        any::<i64>(),
        prop::collection::vec((any::<u64>(), any::<i64>()), 0..20),
    )
        .prop_map(
            |(node, upto, sum_low, sum_high, pending)| wire::ActorCount {
                actor: actor(node, 0),
                upto,
                sum_low,
                sum_high,
                pending: pending
                    .into_iter()
                    .map(|(seq, delta)| wire::PendingIncrement { seq, delta })
                    .collect(),
            },
        );
    prop::collection::vec(count, 0..30).prop_map(|actors| wire::CounterState {
        generation_time: 1,
        generation_node: 2,
        actors,
    })
}

fn summary(partitions: Vec<u8>, groups: Vec<u8>, max_reply_bytes: u32) -> wire::SyncRequest {
    wire::SyncRequest {
        header: None,
        max_reply_bytes,
        step: Some(RequestStep::Summary(wire::SummaryStep {
            partitions,
            groups,
        })),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(apply) = wire::ApplyRequest::decode(&bytes[..]) {
            for e in apply.entries {
                if let Err(err) = from_wire(e) {
                    prop_assert!(!err.to_string().is_empty());
                }
            }
        }
        if let Ok(sync) = wire::SyncRequest::decode(&bytes[..]) {
            match request_from_wire(sync) {
                Ok(Request::Summary { partitions, .. }) => {
                    prop_assert!(partitions.len() <= 8 * bytes.len());
                }
                Ok(_) => {}
                Err(err) => prop_assert!(!err.to_string().is_empty()),
            }
        }
        if let Ok(reply) = wire::SyncReply::decode(&bytes[..]) {
            if let Err(err) = reply_from_wire(reply) {
                prop_assert!(!err.to_string().is_empty());
            }
        }
    }

    #[test]
    fn hostile_maps_decode_to_normalized_states_no_larger_than_sent(map in hostile_map()) {
        let sent_context: usize = map.fields.iter().map(|f| f.context.len() + f.adds.len()).sum();
        let sent_adds: usize = map.fields.iter().map(|f| f.adds.len()).sum();
        let entry = wire::Entry { key: "k".into(), time: 1, node: 1, map: Some(map), ..Default::default() };
        let (_, entry) = from_wire(entry).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let Payload::Map(map) = &entry.payload else {
            return Err(TestCaseError::fail("a map decodes to a map"));
        };
        let mut kept_context = 0;
        let mut kept_adds = 0;
        for (_, field) in map.fields() {
            let context = field.context();
            prop_assert!(context.windows(2).all(|w| w[0].0 < w[1].0), "context sorted, one item per actor");
            prop_assert!(field.adds().windows(2).all(|w| (w[0].actor, w[0].time) < (w[1].actor, w[1].time)), "one add per dot");
            kept_context += context.len();
            kept_adds += field.adds().len();
        }
        prop_assert!(kept_context <= sent_context);
        prop_assert!(kept_adds <= sent_adds);
    }

    #[test]
    fn hostile_counters_decode_without_panic(counter in hostile_counter()) {
        let sent: usize = counter.actors.iter().map(|a| a.pending.len()).sum();
        let entry = wire::Entry { key: "k".into(), time: 1, node: 1, counter: Some(counter), ..Default::default() };
        let (_, entry) = from_wire(entry).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let Payload::Counter(counter) = &entry.payload else {
            return Err(TestCaseError::fail("a counter decodes to a counter"));
        };
        let kept: usize = counter.actors().map(|(_, c)| c.pending().count()).sum();
        prop_assert!(kept <= sent);
        let _ = counter.value();
    }

    #[test]
    fn summaries_are_bounded_before_they_are_expanded(
        bitmap_len in prop_oneof![0usize..64, 8100usize..8300, Just(1 << 20)],
        fill in any::<u8>(),
        groups in 0usize..2100,
        max_reply_bytes in any::<u32>(),
    ) {
        let bitmap = vec![fill; bitmap_len];
        let named = bitmap_len * fill.count_ones() as usize;
        match request_from_wire(summary(bitmap, vec![7; groups * 16], max_reply_bytes)) {
            Ok(Request::Summary { partitions, groups: digests, .. }) => {
                prop_assert!(partitions.len() <= MAX_PARTITIONS as usize);
                prop_assert_eq!(partitions.len(), named);
                prop_assert_eq!(digests.len(), partitions.len().div_ceil(GROUP_PARTITIONS));
            }
            Ok(other) => return Err(TestCaseError::fail(format!("a summary decoded as {}", other.kind()))),
            Err(err) => {
                let why = err.to_string();
                prop_assert!(bitmap_len > MAX_PARTITIONS as usize / 8 || groups != named.div_ceil(GROUP_PARTITIONS), "{}", why);
                prop_assert!(why.contains("limit") || why.contains("expected"), "{}", why);
            }
        }
    }
}
