//! Whether a node back from disk after longer than the dead-node grace
//! keeps what it loaded (docs/durability.md, "Nodes away longer than the
//! dead-node grace").
//!
//! A peer collects a delete without this node only while this node is not
//! among its members: after the peer ran for the dead-node grace with this
//! node dead (it then forgets it), or in a run that started without it.
//! So the node, before it serves or sends anything it loaded, waits for a
//! live peer and reads from every live peer's gossip when its current run
//! started and when its previous run was last alive. It keeps its data
//! only if every one of them was down within the grace of this node
//! stopping and has been running for less than the grace since: the
//! cluster (or this set of nodes) was down together. Every node restarted
//! from disk collects nothing for the grace (the anti-entropy's hold), so
//! that a member still away, which no live node may remember, is not
//! collected around before it can come back and judge the same way.

use std::time::Duration;

use crate::cluster::{Membership, PeerRun};

/// How long the node waits between looks at gossip.
const LOOK: Duration = Duration::from_millis(50);
/// How often it says that it is still waiting for a live peer.
const SAY_EVERY: Duration = Duration::from_secs(5);

/// What a stale node does with the data it loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every live peer was down with it: keep the data.
    Keep,
    /// Some peer may have collected deletes without it: discard and refill.
    Discard {
        /// Why, naming the peer.
        reason: String,
    },
}

/// The rule, for a node last alive at `alive_ms` (unix ms) judging at
/// `now_ms` from `peers` (live, at least one): keep only if every peer
/// recovered a data directory last alive less than `grace` after this
/// node's, and started its current run less than `grace` ago.
pub fn judge(alive_ms: u64, now_ms: u64, grace: Duration, peers: &[PeerRun]) -> Verdict {
    let grace_ms = grace.as_millis() as u64;
    let ago = |ms: u64| humantime::format_duration(Duration::from_millis(ms));
    for peer in peers {
        let running = now_ms.saturating_sub(peer.started_ms);
        let reason = match peer.previous_alive_ms {
            None => Some(format!(
                "peer {} recovered no data directory: how long it ran without this node is unknown",
                peer.id
            )),
            Some(_) if running >= grace_ms => Some(format!(
                "peer {} has been running for {}, longer than the dead-node grace",
                peer.id,
                ago(running)
            )),
            Some(last) if last >= alive_ms.saturating_add(grace_ms) => Some(format!(
                "peer {} was still running {} after this node stopped, longer than the dead-node grace",
                peer.id,
                ago(last - alive_ms)
            )),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            return Verdict::Discard { reason };
        }
    }
    Verdict::Keep
}

/// Waits until gossip shows at least one live peer, then judges from
/// every live peer ([`judge`]). Logs every few seconds while no peer is
/// live: the node serves nothing meanwhile.
pub async fn await_verdict(membership: &Membership, alive_ms: u64, grace: Duration) -> Verdict {
    let waiting = tokio::time::Instant::now();
    let mut said = waiting;
    loop {
        let peers = membership.live_peer_runs().await;
        if !peers.is_empty() {
            let now = super::log::unix_ms();
            let verdict = judge(alive_ms, now, grace, &peers);
            tracing::info!(?verdict, peers = ?peers, waited = ?waiting.elapsed(), "judged whether to keep the data of a stale data directory");
            return verdict;
        }
        if said.elapsed() >= SAY_EVERY {
            said = tokio::time::Instant::now();
            tracing::warn!(
                waited = ?waiting.elapsed(),
                "data directory older than the dead-node grace: waiting for a live peer before deciding whether to keep it"
            );
        }
        tokio::time::sleep(LOOK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(3600);
    const H: u64 = 3_600_000;

    fn run(id: &str, started_ms: u64, previous_alive_ms: Option<u64>) -> PeerRun {
        PeerRun {
            id: id.into(),
            started_ms,
            previous_alive_ms,
        }
    }

    #[test]
    fn a_cluster_down_together_keeps_its_data() {
        // Everyone stopped within a minute of each other, 5 h ago, and
        // started again a minute ago.
        let (alive, now) = (10 * H, 15 * H);
        let peers = [
            run("b", now - 60_000, Some(alive + 30_000)),
            run("c", now - 1_000, Some(alive - 30_000)),
        ];
        assert_eq!(judge(alive, now, GRACE, &peers), Verdict::Keep);
    }

    #[test]
    fn a_peer_that_ran_on_without_it_means_discard() {
        let (alive, now) = (10 * H, 15 * H);
        // Ran all along.
        let v = judge(alive, now, GRACE, &[run("b", 9 * H, Some(8 * H))]);
        assert!(
            matches!(v, Verdict::Discard { reason } if reason.contains("peer b has been running"))
        );
        // Restarted lately, but its previous run went on 2 h past this node.
        let v = judge(alive, now, GRACE, &[run("b", now - 1_000, Some(12 * H))]);
        assert!(matches!(v, Verdict::Discard { reason } if reason.contains("still running 2h")));
        // No data directory: unknown.
        let v = judge(alive, now, GRACE, &[run("b", now - 1_000, None)]);
        assert!(matches!(v, Verdict::Discard { reason } if reason.contains("no data directory")));
        // One such peer among good ones is enough.
        let peers = [
            run("b", now - 1_000, Some(alive)),
            run("c", now - 2 * H, Some(alive)),
        ];
        assert!(matches!(
            judge(alive, now, GRACE, &peers),
            Verdict::Discard { .. }
        ));
    }
}
