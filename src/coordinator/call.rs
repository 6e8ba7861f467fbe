//! One client request's progress, as pure state: which replicas to ask,
//! what their answers add up to, and what to answer the client. The async
//! coordinator moves the messages and owns the timeouts; the simulator
//! drives the same calls over its own network, so what a request decides
//! is the same code in both.

use std::sync::Arc;
use std::time::Duration;

use super::{Consistency, Decision, ReplicaAnswer, Tally};
use crate::cluster::{NodeState, Topology};
use crate::crdt::{Entry, Version};
use crate::error::Error;
use crate::store::{is_settled, Store};

/// How a write reaches one remote replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The failure detector holds the replica down: hold the write as a hint.
    Hint,
    /// Queue the write for the replica; the request does not wait for it
    /// (the level is met already).
    Push,
    /// Queue the write and report the replica's answer to
    /// [`WriteCall::record`].
    Await,
}

/// Each remote replica of a write and how the write reaches it.
pub type Routes = Vec<(Arc<str>, Route)>;

/// A write acknowledged to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// The version the write was stamped with.
    pub version: Version,
    /// Replicas that held the write when the client was answered. At ONE it
    /// may be 0: the write was held as hints (ONE is always available).
    pub replicas: usize,
}

/// One write on its way to the key's replicas.
pub struct WriteCall {
    level: Consistency,
    tally: Tally,
    entry: Entry,
    local: bool,
}

impl WriteCall {
    /// Starts a write of `key` at `level` coordinated by `me`: builds the
    /// entry with `make` from the key's stored entry (under the key's lock,
    /// when `me` is a replica, which applies it at once) and says how the
    /// entry reaches each other replica.
    pub fn start(
        me: &str,
        topology: &Topology,
        store: &Store,
        key: &str,
        level: Consistency,
        make: impl FnOnce(Option<&Entry>) -> Result<Entry, Error>,
    ) -> Result<(Self, Routes), Error> {
        if level == Consistency::Local {
            return Err(Error::LocalWrite);
        }
        let replicas = topology.replicas(key);
        let local = replicas.iter().any(|r| **r == *me);
        let entry = if local {
            store.write(key, make)?
        } else {
            make(None)?
        };
        let mut tally = Tally::for_replicas(topology, level, replicas, me);
        if local {
            tally.record(me, ReplicaAnswer::Ok);
        }
        // No allocation when this node is the only replica.
        let mut routes = Vec::with_capacity(replicas.len().saturating_sub(usize::from(local)));
        for replica in replicas.iter().filter(|r| ***r != *me) {
            let route = if !topology.is_alive(replica) {
                tally.record(
                    replica,
                    ReplicaAnswer::Failed("down (failure detector); hinted".into()),
                );
                Route::Hint
            } else if tally.decision() == Decision::Met || !tally.counts(replica) {
                // Replicas of other regions, at a regional level, get the
                // write in the background: the request never waits on them.
                Route::Push
            } else {
                Route::Await
            };
            routes.push((replica.clone(), route));
        }
        Ok((
            Self {
                level,
                tally,
                entry,
                local,
            },
            routes,
        ))
    }

    /// Whether this node is a replica of the key and applied the write.
    pub fn local(&self) -> bool {
        self.local
    }

    /// The entry written, to send to the replicas.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Records a replica's answer; returns where the request stands.
    pub fn record(&mut self, replica: &str, answer: ReplicaAnswer) -> Decision {
        self.tally.record(replica, answer)
    }

    /// Where the request stands.
    pub fn decision(&self) -> Decision {
        self.tally.decision()
    }

    /// Each replica's fate so far, as an UNAVAILABLE report names them
    /// (`waiting` describes the ones that have not answered).
    pub fn report(&self, waiting: &str) -> String {
        self.tally.report(waiting)
    }

    /// The client's answer, once the request is decided or no more answers
    /// will come (`waiting` says why, for the replicas that never answered).
    ///
    /// At ONE a write is never refused for want of replicas: whatever did
    /// not arrive is held as a hint (the sloppy quorum the contract
    /// promises). A write no replica took lives only in hints, so only for
    /// `--max-hint-age`: a copy outside the replicas must not outlive the
    /// tombstone grace, or it could bring back a value the replicas deleted
    /// and collected meanwhile.
    pub fn finish(&self, waiting: &str) -> Result<Written, Error> {
        match self.tally.decision() {
            Decision::Met => {}
            _ if self.level == Consistency::One => {}
            _ => return Err(Error::Unavailable(self.tally.report(waiting))),
        }
        Ok(Written {
            version: self.entry.version,
            replicas: self.tally.answered(),
        })
    }
}

/// What a read at QUORUM or ALL found, and whom it must repair.
#[derive(Debug)]
pub struct Found {
    /// The join of the answers; `None` when it is settled (see
    /// [`ReadCall::start`]).
    pub entry: Option<Entry>,
    /// Replicas that answered with something older or nothing, and the
    /// entry to send them (read repair).
    pub repairs: Vec<(Arc<str>, Entry)>,
    /// Replicas whose answers were joined.
    pub replicas: usize,
}

/// One read at QUORUM or ALL: every live, ready replica is asked at once,
/// and the first answers that meet the level are joined. A replica that is
/// not `ready` (syncing: restarted empty and refilling) still takes writes,
/// but its answer does not count: its "not found" may hide a write it lost,
/// which another replica still holds.
pub struct ReadCall {
    tally: Tally,
    answers: Vec<(Arc<str>, Option<Entry>)>,
    /// Physical time and the grace (NTP64) by which an answer is settled.
    now: u64,
    grace: u64,
}

impl ReadCall {
    /// Starts a read of `key` at `level` (QUORUM, ALL, LOCAL_QUORUM or
    /// EACH_QUORUM) coordinated by `me`; returns the call and the remote
    /// replicas to ask: those the level counts (at LOCAL_QUORUM only the
    /// region's, so that neither the read nor its repairs leave the region).
    /// This node's own copy, when it is a ready replica, is its first
    /// answer. Replicas that are not ready fail at once, with their state as
    /// their fate.
    ///
    /// A join settled at `now` with `grace` (NTP64; a tombstone or an
    /// expired value old enough to be collected, see
    /// [`crate::store::is_settled`]) reads as nothing, without a version:
    /// a replica that answered nothing may have collected something newer
    /// meanwhile (a delete that replaced it), so the join's version could be
    /// older than a write the level promises to see. Each answer still
    /// joins, so a settled tombstone keeps shadowing an older value.
    pub fn start(
        me: &str,
        topology: &Topology,
        store: &Store,
        key: &str,
        level: Consistency,
        now: u64,
        grace: u64,
    ) -> (Self, Vec<Arc<str>>) {
        let replicas = topology.replicas(key);
        let mut call = Self {
            tally: Tally::for_replicas(topology, level, replicas, me),
            answers: Vec::with_capacity(replicas.len()),
            now,
            grace,
        };
        let mut ask = Vec::with_capacity(replicas.len());
        let counted: Vec<&Arc<str>> = replicas.iter().filter(|r| call.tally.counts(r)).collect();
        for replica in counted {
            let state = topology.member(replica).map(|m| m.state);
            if let Some(state) = state.filter(|s| *s != NodeState::Ready) {
                call.tally
                    .record(replica, ReplicaAnswer::Failed(not_counted(state).into()));
            } else if **replica == *me {
                call.record(replica, Ok(store.get(key)));
            } else if topology.is_alive(replica) {
                ask.push(replica.clone());
            } else {
                call.tally.record(
                    replica,
                    ReplicaAnswer::Failed("down (failure detector)".into()),
                );
            }
        }
        (call, ask)
    }

    /// Records a replica's answer (its entry, or why it failed); returns
    /// where the request stands.
    pub fn record(
        &mut self,
        replica: &Arc<str>,
        answer: Result<Option<Entry>, String>,
    ) -> Decision {
        match answer {
            Ok(entry) => {
                let asked = self.tally.waiting().any(|r| r == &**replica);
                if asked && self.tally.decision() == Decision::Open {
                    self.tally.record(replica, ReplicaAnswer::Ok);
                    self.answers.push((replica.clone(), entry));
                }
            }
            Err(why) => {
                self.tally.record(replica, ReplicaAnswer::Failed(why));
            }
        }
        self.tally.decision()
    }

    /// Where the request stands.
    pub fn decision(&self) -> Decision {
        self.tally.decision()
    }

    /// Each replica's fate so far, as an UNAVAILABLE report names them
    /// (`waiting` describes the ones that have not answered).
    pub fn report(&self, waiting: &str) -> String {
        self.tally.report(waiting)
    }

    /// The join of the answers and the repairs it calls for, once the level
    /// is met; UNAVAILABLE naming each replica's fate otherwise (`waiting`
    /// describes the ones that never answered).
    pub fn finish(self, waiting: &str) -> Result<Found, Error> {
        if self.tally.decision() != Decision::Met {
            return Err(Error::Unavailable(self.tally.report(waiting)));
        }
        let entry = self
            .answers
            .iter()
            .filter_map(|(_, e)| e.clone())
            .reduce(|mut a, b| {
                a.merge_from(b);
                a
            });
        let settled = entry
            .as_ref()
            .is_some_and(|e| is_settled(e, self.now, self.grace));
        // A replica that answered nothing may have collected a settled
        // join: it is not sent back there.
        let repairs = match &entry {
            Some(newest) => self
                .answers
                .iter()
                .filter(|(_, held)| held.as_ref() != Some(newest))
                .filter(|(_, held)| !(settled && held.is_none()))
                .map(|(replica, _)| (replica.clone(), newest.clone()))
                .collect(),
            None => Vec::new(),
        };
        Ok(Found {
            entry: entry.filter(|_| !settled),
            repairs,
            replicas: self.answers.len(),
        })
    }
}

/// Why a replica in `state` does not count toward a read.
fn not_counted(state: NodeState) -> &'static str {
    match state {
        NodeState::Syncing => "syncing (refilling after a restart; not counted for reads)",
        NodeState::Joining => "joining (not yet a replica; not counted for reads)",
        NodeState::Leaving => "leaving (not counted for reads)",
        NodeState::Ready => "ready",
    }
}

/// How long a client's read at ONE or LOCAL_ONE that no replica answered
/// (every one refused, or stayed silent through its re-asks) waits, from
/// that moment, for this node's view of the cluster to change, and reads
/// again by each newer view, before it fails. Views lag the truth by the
/// failure detector's and gossip's delay: just after a join, a leave or a
/// restart the replica that can answer may be one this node's view does not
/// name yet, or does not hold ready yet (its own turn to ready included).
pub const VIEW_WAIT_AT_ONE: Duration = Duration::from_millis(600);

/// How many times a read at ONE may ask one replica that stays silent (a
/// request or its answer lost on the way): each time after the hedge delay.
const ASKS_PER_REPLICA: usize = 6;

/// One read at ONE or LOCAL_ONE: the ready replicas (at LOCAL_ONE only
/// those of this node's region) are tried one after another, nearest first
/// (this node, then its region, then by smoothed round-trip time), until
/// one answers. The shell asks the next replica ([`ReadOne::next_replica`])
/// when the last one asked refused, or stayed silent past its hedge delay
/// ([`crate::net::latency::Latencies::read_hedge_after`]); once every replica
/// has been asked, it asks a silent one again ([`ReadOne::ask_again`]) when
/// the hedge delay of the newest request passes or a request times out
/// (its request or answer was lost), never on a refusal (which would only
/// spend the re-asks at once), and never a replica that refused. Replicas
/// asked earlier may still answer meanwhile, and the first answer wins. A replica that is not ready (syncing: restarted empty and
/// refilling) does not count, at ONE as at QUORUM and ALL: its "not found"
/// may hide a write acknowledged at ALL.
pub struct ReadOne {
    order: Vec<Arc<str>>,
    next: usize,
    /// Per replica of `order`: the requests sent to it that have neither
    /// answered nor failed, how many were sent in all, and whether it
    /// refused one.
    pending: Vec<usize>,
    sent: Vec<usize>,
    refused: Vec<bool>,
    tally: Tally,
}

impl ReadOne {
    /// Whether `me` is the replica a ONE or LOCAL_ONE read of `key` asks
    /// first in [`ReadOne::start`]'s order: a replica of the key, alive and
    /// ready in `topology`. The read is then answered from the local store
    /// and no call needs to be built (most reads, on a replica).
    pub fn answered_here(me: &str, topology: &Topology, key: &str) -> bool {
        topology.replicas(key).iter().any(|r| **r == *me)
            && topology.is_alive(me)
            && topology
                .member(me)
                .is_none_or(|m| m.state == NodeState::Ready)
    }

    /// Starts a read of `key` at `level` (ONE or LOCAL_ONE) coordinated by
    /// `me`; `rtt` is the smoothed round-trip time to a peer, when measured.
    pub fn start(
        me: &str,
        topology: &Topology,
        key: &str,
        level: Consistency,
        rtt: impl Fn(&str) -> Option<Duration>,
    ) -> Self {
        let replicas = topology.replicas(key);
        let mut tally = Tally::for_replicas(topology, level, replicas, me);
        let mut order = Vec::with_capacity(replicas.len());
        let syncing = |r: &str| topology.member(r).map(|m| m.state) == Some(NodeState::Syncing);
        let region = topology.region_of(me);
        let counted: Vec<&Arc<str>> = replicas.iter().filter(|r| tally.counts(r)).collect();
        for replica in counted {
            match topology.member(replica).map(|m| m.state) {
                // A peer this view holds syncing may have turned ready since
                // (views lag): it is asked last, and refuses while it is
                // still refilling. This node knows its own state.
                Some(NodeState::Syncing) if **replica != *me => order.push(replica.clone()),
                Some(state) if state != NodeState::Ready => {
                    tally.record(replica, ReplicaAnswer::Failed(not_counted(state).into()));
                }
                _ => order.push(replica.clone()),
            }
        }
        // Stable: among peers not measured yet, placement order stands.
        order.sort_by_key(|r| {
            (
                !topology.is_alive(r),
                syncing(r),
                **r != *me,
                topology.region_of(r) != region,
                rtt(r).unwrap_or(Duration::MAX),
            )
        });
        Self {
            tally,
            pending: vec![0; order.len()],
            sent: vec![0; order.len()],
            refused: vec![false; order.len()],
            order,
            next: 0,
        }
    }

    /// The replica to ask next among those not asked yet (a request to it
    /// counts as pending from now on), or `None` when every one has been.
    pub fn next_replica(&mut self) -> Option<Arc<str>> {
        let i = self.next;
        if i >= self.order.len() {
            return None;
        }
        self.next += 1;
        Some(self.ask(i))
    }

    /// A replica asked already that has not answered nor refused, to ask
    /// again (its request or answer may have been lost, or is late): the
    /// one asked fewest times, nearest first, up to [`ASKS_PER_REPLICA`]
    /// times in all; `None` when there is none. A request lost on the way
    /// is then not the end of the read while its replica is there.
    pub fn ask_again(&mut self) -> Option<Arc<str>> {
        let i = (0..self.next)
            .filter(|&i| !self.refused[i] && self.sent[i] < ASKS_PER_REPLICA)
            .min_by_key(|&i| self.sent[i])?;
        Some(self.ask(i))
    }

    fn ask(&mut self, i: usize) -> Arc<str> {
        self.pending[i] += 1;
        self.sent[i] += 1;
        self.order[i].clone()
    }

    /// Whether a request sent has neither answered nor failed yet: when
    /// there is no replica left to ask, the read waits for those rather
    /// than fail.
    pub fn waiting(&self) -> bool {
        self.pending.iter().any(|&p| p > 0)
    }

    /// Records that `replica` refused a request (its link is cut, it is
    /// down, not ready, or failed the call), and why: it is not asked
    /// again, and counts as failed once no request to it is pending.
    pub fn failed(&mut self, replica: &str, why: String) {
        self.ended(replica, why, true);
    }

    /// Records that a request to `replica` got no answer within the request
    /// timeout (it or its answer may have been lost): the replica may be
    /// asked again ([`ReadOne::ask_again`]), and counts as failed, for
    /// now, once no request to it is pending.
    pub fn silent(&mut self, replica: &str, why: String) {
        self.ended(replica, why, false);
    }

    fn ended(&mut self, replica: &str, why: String, refused: bool) {
        if let Some(i) = self.order.iter().position(|r| **r == *replica) {
            self.pending[i] = self.pending[i].saturating_sub(1);
            self.refused[i] |= refused;
            if self.pending[i] > 0 {
                return;
            }
        }
        self.tally.record(replica, ReplicaAnswer::Failed(why));
    }

    /// Each replica's fate so far, as an UNAVAILABLE report names them
    /// (`waiting` describes the ones that have not answered).
    pub fn report(&self, waiting: &str) -> String {
        self.tally.report(waiting)
    }

    /// UNAVAILABLE naming each replica's fate, once every one failed.
    pub fn unavailable(&self) -> Error {
        Error::Unavailable(self.tally.report("not asked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Member;

    fn topology(states: &[(&str, NodeState)]) -> Topology {
        let members = states
            .iter()
            .map(|(id, state)| Member {
                id: (*id).into(),
                address: String::new(),
                peer_address: String::new(),
                region: String::new(),
                state: *state,
                alive: true,
                generation: 1,
            })
            .collect();
        Topology::new(members, 16, 3)
    }

    /// A read at ONE coordinated by `n4` of four ready nodes, of a key
    /// whose three replicas are the others.
    fn read_at_one_by_a_non_replica() -> ReadOne {
        let t = topology(&[
            ("n1", NodeState::Ready),
            ("n2", NodeState::Ready),
            ("n3", NodeState::Ready),
            ("n4", NodeState::Ready),
        ]);
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| !t.replicas(k).iter().any(|r| **r == *"n4"))
            .unwrap();
        ReadOne::start("n4", &t, &key, Consistency::One, |_| None)
    }

    #[test]
    fn a_replica_restarted_empty_does_not_count_toward_a_read_quorum() {
        // n1 and n2 took a QUORUM write; n2 then restarted empty and is
        // syncing. n3 (ready, without the write) coordinates a QUORUM read.
        let t = topology(&[
            ("n1", NodeState::Ready),
            ("n2", NodeState::Syncing),
            ("n3", NodeState::Ready),
        ]);
        let store = Store::new(16);
        let written = Entry::value(Version::new(7, 1), "v", 0);
        let (mut call, ask) = ReadCall::start("n3", &t, &store, "k", Consistency::Quorum, 0, 0);
        assert_eq!(ask, vec![Arc::from("n1")], "a syncing replica is not asked");
        // Were n2 asked, its "not found" would complete the quorum.
        assert_eq!(call.record(&Arc::from("n2"), Ok(None)), Decision::Open);
        assert_eq!(
            call.record(&Arc::from("n1"), Ok(Some(written.clone()))),
            Decision::Met
        );
        let found = call.finish("-").unwrap();
        assert_eq!((found.entry, found.replicas), (Some(written), 2));
    }

    /// Found by the soak (seed 2259670507): one replica answered with an
    /// expired value from before a delete it had not yet received, another
    /// had collected that delete and answered nothing; the join's version
    /// was older than the acknowledged delete.
    #[test]
    fn a_settled_join_reads_as_nothing_but_still_shadows_older_values() {
        let t = topology(&[
            ("n1", NodeState::Ready),
            ("n2", NodeState::Ready),
            ("n3", NodeState::Ready),
        ]);
        let store = Store::new(16);
        let (now, grace) = (1000, 100);
        let expired = Entry::value(Version::new(10, 1), "v", 20);
        let (mut call, _) = ReadCall::start("n1", &t, &store, "k", Consistency::Quorum, now, grace);
        call.record(&Arc::from("n2"), Ok(Some(expired)));
        let found = call.finish("-").unwrap();
        assert_eq!(found.entry, None, "settled: nothing, no version");
        assert!(found.repairs.is_empty(), "n1 may have collected it");

        // A settled tombstone still wins over the older value it deleted.
        let old = Entry::value(Version::new(5, 1), "old", 0);
        let tomb = Entry::tombstone(Version::new(30, 1));
        let (mut call, _) = ReadCall::start("n1", &t, &store, "k", Consistency::All, now, grace);
        call.record(&Arc::from("n2"), Ok(Some(old)));
        call.record(&Arc::from("n3"), Ok(Some(tomb.clone())));
        let found = call.finish("-").unwrap();
        assert_eq!(found.entry, None);
        assert!(found.repairs.iter().all(|(_, e)| *e == tomb));
    }

    #[test]
    fn too_few_ready_replicas_fail_naming_each_fate() {
        let t = topology(&[
            ("n1", NodeState::Ready),
            ("n2", NodeState::Syncing),
            ("n3", NodeState::Syncing),
        ]);
        let store = Store::new(16);
        let (call, ask) = ReadCall::start("n1", &t, &store, "k", Consistency::Quorum, 0, 0);
        assert!(ask.is_empty());
        assert_eq!(call.decision(), Decision::Failed);
        let Err(Error::Unavailable(why)) = call.finish("-") else {
            panic!("expected UNAVAILABLE");
        };
        assert_eq!(
            why,
            "consistency QUORUM needs 2 of 3 replicas; 1 answered; n1: ok; \
             n2: syncing (refilling after a restart; not counted for reads); \
             n3: syncing (refilling after a restart; not counted for reads)"
        );
    }

    #[test]
    fn a_read_at_one_waits_on_replicas_asked_before_it_fails() {
        let mut call = read_at_one_by_a_non_replica();
        assert!(!call.waiting(), "nobody asked yet");
        // The first replica stays silent past its hedge delay: the second
        // is asked too, and fails at once.
        let first = call.next_replica().unwrap();
        let second = call.next_replica().unwrap();
        call.failed(&second, "link cut".into());
        assert!(call.waiting(), "the first may still answer");
        let third = call.next_replica().unwrap();
        call.failed(&third, "link cut".into());
        assert!(call.waiting(), "the first may still answer");
        // Three replicas, all asked: the silent one is asked again (its
        // request may have been lost), up to its limit in all, and no
        // other.
        assert_eq!(call.next_replica(), None);
        for _ in 1..ASKS_PER_REPLICA {
            assert_eq!(call.ask_again(), Some(first.clone()));
        }
        assert_eq!(call.ask_again(), None);
        // Its first request times out; the later ones may still answer.
        call.silent(&first, "no answer within 500ms".into());
        assert!(call.waiting());
        for _ in 1..ASKS_PER_REPLICA {
            call.silent(&first, "no answer within 500ms".into());
        }
        assert!(!call.waiting());
        assert_eq!(call.next_replica(), None);
        assert_eq!(call.ask_again(), None);
    }

    #[test]
    fn a_read_at_one_asks_again_a_replica_that_timed_out_but_never_one_that_refused() {
        let mut call = read_at_one_by_a_non_replica();
        // The first replica's request times out (lost on the way); the
        // second had a request in flight when its link was cut, and
        // refuses the next at once.
        let first = call.next_replica().unwrap();
        let second = call.next_replica().unwrap();
        let third = call.next_replica().unwrap();
        call.failed(&third, "link cut".into());
        call.silent(&first, "no answer within 500ms".into());
        call.failed(&second, "link cut".into());
        // The one that only timed out is asked again, though no request to
        // it is pending; the one that refused never is.
        let again: Vec<Arc<str>> = std::iter::from_fn(|| call.ask_again()).collect();
        assert_eq!(again, vec![first.clone(); ASKS_PER_REPLICA - 1]);
    }

    #[test]
    fn a_read_at_one_asks_a_silent_replica_again_only_when_told_and_the_least_asked_first() {
        let mut call = read_at_one_by_a_non_replica();
        // Two replicas asked stay silent; the third fails at once. The
        // failure asks nobody again (a re-ask waits for the hedge delay,
        // which the shell counts): the silent two are not asked again
        // together, all at the start of the read.
        let first = call.next_replica().unwrap();
        let second = call.next_replica().unwrap();
        let third = call.next_replica().unwrap();
        call.failed(&third, "link cut".into());
        assert_eq!(call.next_replica(), None);
        assert!(call.waiting());
        // Each hedge delay asks one again, the least asked first, nearest
        // first among equals, never the one that failed.
        let again: Vec<Arc<str>> = std::iter::from_fn(|| call.ask_again()).collect();
        let turns: Vec<Arc<str>> = (1..ASKS_PER_REPLICA)
            .flat_map(|_| [first.clone(), second.clone()])
            .collect();
        assert_eq!(again, turns);
    }

    /// The shortcut agrees with the full order: whenever it answers a read
    /// locally, the call would have asked this node first.
    #[test]
    fn a_read_answered_here_is_one_the_call_would_ask_this_node_first() {
        let states = [NodeState::Ready, NodeState::Syncing, NodeState::Leaving];
        let mut here = 0;
        for (s1, s2, alive) in states
            .iter()
            .flat_map(|a| states.iter().map(move |b| (*a, *b)))
            .flat_map(|(a, b)| [(a, b, true), (a, b, false)])
        {
            let mut t = topology(&[
                ("n1", s1),
                ("n2", s2),
                ("n3", NodeState::Ready),
                ("n4", NodeState::Ready),
            ]);
            if !alive {
                t = Topology::new(
                    t.members()
                        .map(|m| Member {
                            alive: m.id != "n1",
                            ..m.clone()
                        })
                        .collect(),
                    16,
                    3,
                );
            }
            for key in (0..40).map(|i| format!("k{i}")) {
                for level in [Consistency::One, Consistency::LocalOne] {
                    if ReadOne::answered_here("n1", &t, &key) {
                        here += 1;
                        let mut call = ReadOne::start("n1", &t, &key, level, |_| None);
                        assert_eq!(call.next_replica().as_deref(), Some("n1"), "{key}");
                    }
                }
            }
        }
        assert!(here > 0, "some reads are answered here");
    }

    #[test]
    fn a_read_at_one_asks_only_ready_replicas() {
        let t = topology(&[
            ("n1", NodeState::Syncing),
            ("n2", NodeState::Ready),
            ("n3", NodeState::Ready),
        ]);
        let mut call = ReadOne::start("n1", &t, "k", Consistency::One, |_| None);
        let mut asked = Vec::new();
        while let Some(r) = call.next_replica() {
            call.failed(&r, "cut".into());
            asked.push(r);
        }
        asked.sort();
        assert_eq!(asked, vec![Arc::from("n2"), Arc::from("n3")]);
        assert!(call
            .unavailable()
            .to_string()
            .contains("n1: syncing (refilling after a restart; not counted for reads)"));
    }

    /// Six ready nodes, two in each of three regions, two replicas of every
    /// key per region: every node holds every key.
    fn regions() -> Topology {
        crate::cluster::six_in_three_regions(crate::ring::Replication::PerRegion(2))
    }

    #[test]
    fn a_local_quorum_read_asks_and_repairs_only_its_region() {
        let t = regions();
        let store = Store::new(16);
        let (mut call, ask) =
            ReadCall::start("a1", &t, &store, "k", Consistency::LocalQuorum, 0, 0);
        assert_eq!(
            ask,
            vec![Arc::from("a2")],
            "only the region's other replica"
        );
        let newer = Entry::value(Version::new(9, 1), "v", 0);
        // An answer from another region is not counted, nor repaired.
        assert_eq!(
            call.record(&Arc::from("b1"), Ok(Some(newer.clone()))),
            Decision::Open
        );
        assert_eq!(
            call.record(&Arc::from("a2"), Ok(Some(newer.clone()))),
            Decision::Met
        );
        let found = call.finish("-").unwrap();
        assert_eq!(found.entry, Some(newer.clone()));
        assert_eq!(found.repairs.len(), 1);
        assert_eq!(&*found.repairs[0].0, "a1", "the repair stays in r1");

        // EACH_QUORUM asks everyone.
        let (_, mut ask) = ReadCall::start("a1", &t, &store, "k", Consistency::EachQuorum, 0, 0);
        ask.sort();
        assert_eq!(ask.len(), 5);
    }

    #[test]
    fn a_local_write_waits_only_on_its_region() {
        let t = regions();
        let store = Store::new(16);
        let entry = Entry::value(Version::new(9, 1), "v", 0);
        let (call, routes) =
            WriteCall::start("a1", &t, &store, "k", Consistency::LocalQuorum, |_| {
                Ok(entry.clone())
            })
            .unwrap();
        for (replica, route) in &routes {
            let want = if &**replica == "a2" {
                Route::Await
            } else {
                Route::Push
            };
            assert_eq!(*route, want, "{replica}");
        }
        assert_eq!(call.decision(), Decision::Open);

        // With the region's other replica down, LOCAL_QUORUM fails at once
        // naming it, though every other region is up.
        let mut members: Vec<Member> = t.members().cloned().collect();
        for m in &mut members {
            m.alive = m.id != "a2";
        }
        let t = Topology::new(members, 16, crate::ring::Replication::PerRegion(2));
        let (call, _) = WriteCall::start("a1", &t, &store, "k", Consistency::LocalQuorum, |_| {
            Ok(entry.clone())
        })
        .unwrap();
        let Err(Error::Unavailable(why)) = call.finish("-") else {
            panic!("expected UNAVAILABLE");
        };
        assert!(
            why.contains("needs 2 of 2 replicas in region \"r1\""),
            "{why}"
        );
        assert!(why.contains("a2: down (failure detector); hinted"), "{why}");
        // LOCAL_ONE is met by this node alone.
        let (call, _) = WriteCall::start("a1", &t, &store, "k", Consistency::LocalOne, |_| {
            Ok(entry.clone())
        })
        .unwrap();
        assert_eq!(call.decision(), Decision::Met);
    }

    #[test]
    fn a_read_at_one_asks_the_nearest_replica_first() {
        // Three regions, one replica of every key in each: a non-replica in
        // r1 asks r1's replica first, then the remote one with the lower
        // round-trip time.
        let t = crate::cluster::six_in_three_regions(crate::ring::Replication::PerRegion(1));
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| !t.replicas(k).iter().any(|r| **r == *"a1"))
            .unwrap();
        let rtt = |r: &str| match r.as_bytes()[0] {
            b'b' => Some(Duration::from_millis(80)),
            b'c' => Some(Duration::from_millis(20)),
            _ => Some(Duration::from_millis(1)),
        };
        let mut call = ReadOne::start("a1", &t, &key, Consistency::One, rtt);
        let order: Vec<Arc<str>> = std::iter::from_fn(|| call.next_replica()).take(3).collect();
        let regions: Vec<&str> = order.iter().map(|r| t.region_of(r)).collect();
        assert_eq!(regions, ["r1", "r3", "r2"]);

        // LOCAL_ONE asks its region only, and fails naming it.
        let mut call = ReadOne::start("a1", &t, &key, Consistency::LocalOne, rtt);
        let local = call.next_replica().unwrap();
        assert_eq!(t.region_of(&local), "r1");
        call.failed(&local, "cut".into());
        assert_eq!(call.next_replica(), None);
        assert!(call
            .unavailable()
            .to_string()
            .contains("LOCAL_ONE needs 1 of 1 replicas in region \"r1\""));
    }
}
