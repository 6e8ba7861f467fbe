//! Awaited copies relayed to a remote region: one copy of a write crosses
//! to the region's relay, which hands it on to the mates the coordinator
//! awaits and names those that took it. Whatever the relay does not vouch
//! for, the coordinator sends to directly, so a quorum reachable without
//! relaying stays reachable.

use std::sync::Arc;
use std::time::Duration;

use super::{Ack, Replicator, Undelivered};
use crate::crdt::Entry;
use crate::store::Key;

/// One write's copy for a remote region, sent to one replica there.
pub struct AwaitedRelay {
    /// The replica the copy crosses to.
    pub relay: Arc<str>,
    /// Learns whether the relay took the copy, when its answer counts.
    pub relay_ack: Option<Ack>,
    /// The relay's region-mates whose answers count, each with the sender
    /// that tells the coordinator whether it took the write.
    pub mates: Named<Ack>,
    /// How long the relay waits for its mates.
    pub within: Duration,
    /// How long the coordinator waits for the relay's answer before it
    /// sends to the mates itself.
    pub bound: Duration,
}

/// Replicas, each with what tells its coordinator whether it took a write.
pub type Named<T> = Vec<(Arc<str>, T)>;

/// Splits `mates` by the relay's `answer`: those it names as having taken
/// the write, and those the coordinator must send to itself (every one when
/// the relay failed, timed out, or names none, as a node that does not
/// await mates answers).
pub fn settle<T>(
    mates: Named<T>,
    answer: &Result<Vec<String>, Undelivered>,
) -> (Named<T>, Named<T>) {
    match answer {
        Ok(took) => mates
            .into_iter()
            .partition(|(mate, _)| took.iter().any(|t| **t == **mate)),
        Err(_) => (Vec::new(), mates),
    }
}

impl Replicator {
    /// Sends `entry` at `key` to `copy.relay`, awaiting its mates there
    /// (see [`AwaitedRelay`]), in the background: the relay's answer
    /// acknowledges the relay and each mate it names at once; each mate it
    /// does not name is then sent the write directly, with its own ack. A
    /// relay that cannot take the write is held as a hint here.
    pub fn relay_awaited(self: &Arc<Self>, key: Key, entry: Entry, copy: AwaitedRelay) {
        let me = self.clone();
        tokio::spawn(async move {
            let AwaitedRelay {
                relay,
                relay_ack,
                mates,
                within,
                bound,
            } = copy;
            let entries = vec![(key.clone(), entry.clone())];
            let names: Vec<String> = mates.iter().map(|(m, _)| m.to_string()).collect();
            let answer = me
                .peers
                .apply_awaiting(&relay, &entries, &names, within, bound)
                .await
                .map_err(Undelivered::from);
            if let Err(e) = &answer {
                tracing::debug!(peer = %relay, error = %e, "relayed awaited write failed; holding a hint and sending to its mates");
                me.hold(&relay, &entries);
            }
            if let Some(ack) = relay_ack {
                let _ = ack.send(answer.clone().map(|_| ()));
            }
            let (took, missing) = settle(mates, &answer);
            for (_, ack) in took {
                let _ = ack.send(Ok(()));
            }
            for (mate, ack) in missing {
                me.push(&mate, key.clone(), entry.clone(), Some(ack));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;
    use crate::crdt::Version;
    use crate::net::PeerError;

    fn mates() -> Vec<(Arc<str>, u8)> {
        vec![(Arc::from("b2"), 2), (Arc::from("b3"), 3)]
    }

    fn names(list: &[(Arc<str>, u8)]) -> Vec<&str> {
        list.iter().map(|(m, _)| &**m).collect()
    }

    #[test]
    fn the_mates_the_relay_names_count_and_the_others_are_sent_directly() {
        let (took, missing) = settle(mates(), &Ok(vec!["b1".into(), "b3".into()]));
        assert_eq!(names(&took), ["b3"]);
        assert_eq!(names(&missing), ["b2"]);
    }

    #[test]
    fn a_failed_relay_or_one_that_names_nobody_leaves_every_mate_to_the_coordinator() {
        let failed = Err(Undelivered::Peer(PeerError::Timeout(
            Duration::from_millis(500),
        )));
        let (took, missing) = settle(mates(), &failed);
        assert!(took.is_empty());
        assert_eq!(names(&missing), ["b2", "b3"]);
        // A receiver that ignores await_mates applies the batch and names
        // no one.
        let (took, missing) = settle(mates(), &Ok(Vec::new()));
        assert!(took.is_empty());
        assert_eq!(names(&missing), ["b2", "b3"]);
    }

    /// A relay that never answers: once its bound passes, the relay's ack
    /// fails and the coordinator sends to each mate itself (here a mate
    /// with no known address, whose ack says so); both are held as hints.
    #[tokio::test]
    async fn a_silent_relay_is_bounded_and_its_mates_are_sent_to_directly() {
        let (replicator, _silent) =
            crate::replication::tests::replicator_with_a_silent_peer("a1", "b1").await;
        let (relay_tx, relay_rx) = oneshot::channel();
        let (mate_tx, mate_rx) = oneshot::channel();
        let bound = Duration::from_millis(200);
        replicator.relay_awaited(
            "k".into(),
            Entry::value(Version::new(1, 1), "v".to_string(), 0),
            AwaitedRelay {
                relay: "b1".into(),
                relay_ack: Some(relay_tx),
                mates: vec![("b2".into(), mate_tx)],
                within: bound / 2,
                bound,
            },
        );
        assert_eq!(
            relay_rx.await.unwrap(),
            Err(Undelivered::Peer(PeerError::Timeout(bound)))
        );
        assert_eq!(
            mate_rx.await.unwrap(),
            Err(Undelivered::Peer(PeerError::NoAddress)),
            "sent to directly once the relay failed"
        );
        let mut held: Vec<String> = replicator
            .held_hints()
            .into_iter()
            .map(|(peer, ..)| peer)
            .collect();
        held.sort();
        assert_eq!(held, ["b1", "b2"]);
    }
}
