//! One client request's progress, as pure state: which replicas to ask,
//! what their answers add up to, and what to answer the client. The async
//! coordinator moves the messages and owns the timeouts; the simulator
//! drives the same calls over its own network, so what a request decides
//! is the same code in both.

use std::sync::Arc;

use super::{Answer, Consistency, Decision, Tally, Topology};
use crate::cluster::NodeState;
use crate::crdt::{Entry, Version};
use crate::error::Error;
use crate::store::Store;

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
        let mut tally = Tally::new(level, replicas.iter().cloned());
        if local {
            tally.record(me, Answer::Ok);
        }
        let mut routes = Vec::with_capacity(replicas.len());
        for replica in replicas.iter().filter(|r| ***r != *me) {
            let route = if !topology.is_alive(replica) {
                tally.record(
                    replica,
                    Answer::Failed("down (failure detector); hinted".into()),
                );
                Route::Hint
            } else if tally.decision() == Decision::Met {
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
            },
            routes,
        ))
    }

    /// The entry written, to send to the replicas.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Records a replica's answer; returns where the request stands.
    pub fn record(&mut self, replica: &str, answer: Answer) -> Decision {
        self.tally.record(replica, answer)
    }

    /// Where the request stands.
    pub fn decision(&self) -> Decision {
        self.tally.decision()
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
    /// The join of the answers.
    pub entry: Option<Entry>,
    /// Replicas that answered with something older or nothing, and the
    /// entry to send them (read repair).
    pub repairs: Vec<(Arc<str>, Entry)>,
    /// Replicas whose answers were joined.
    pub replicas: usize,
}

/// One read at QUORUM or ALL: every live replica is asked at once, and the
/// first answers that meet the level are joined.
pub struct ReadCall {
    tally: Tally,
    answers: Vec<(Arc<str>, Option<Entry>)>,
}

impl ReadCall {
    /// Starts a read of `key` at `level` (QUORUM or ALL) coordinated by `me`;
    /// returns the call and the remote replicas to ask. This node's own copy,
    /// when it is a replica, is its first answer.
    pub fn start(
        me: &str,
        topology: &Topology,
        store: &Store,
        key: &str,
        level: Consistency,
    ) -> (Self, Vec<Arc<str>>) {
        let replicas = topology.replicas(key);
        let mut call = Self {
            tally: Tally::new(level, replicas.iter().cloned()),
            answers: Vec::with_capacity(replicas.len()),
        };
        let mut ask = Vec::with_capacity(replicas.len());
        for replica in replicas {
            if **replica == *me {
                call.record(replica, Ok(store.get(key)));
            } else if topology.is_alive(replica) {
                ask.push(replica.clone());
            } else {
                call.tally
                    .record(replica, Answer::Failed("down (failure detector)".into()));
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
                if self.tally.decision() == Decision::Open {
                    self.tally.record(replica, Answer::Ok);
                    self.answers.push((replica.clone(), entry));
                }
            }
            Err(why) => {
                self.tally.record(replica, Answer::Failed(why));
            }
        }
        self.tally.decision()
    }

    /// Where the request stands.
    pub fn decision(&self) -> Decision {
        self.tally.decision()
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
        let repairs = match &entry {
            Some(newest) => self
                .answers
                .iter()
                .filter(|(_, held)| held.as_ref() != Some(newest))
                .map(|(replica, _)| (replica.clone(), newest.clone()))
                .collect(),
            None => Vec::new(),
        };
        Ok(Found {
            entry,
            repairs,
            replicas: self.answers.len(),
        })
    }
}

/// One read at ONE: the replicas are tried one after another until one
/// answers. Ready replicas first (a replica still refilling after a restart
/// may lack the key), this node first among equals; then the live ones that
/// are not ready, then the rest.
pub struct ReadOne {
    order: Vec<Arc<str>>,
    next: usize,
    tally: Tally,
}

impl ReadOne {
    /// Starts a read of `key` at ONE coordinated by `me`.
    pub fn start(me: &str, topology: &Topology, key: &str) -> Self {
        let mut order = topology.replicas(key).to_vec();
        let rank = |id: &str| match topology.member(id) {
            Some(m) if m.alive && m.state == NodeState::Ready => 0,
            Some(m) if m.alive => 1,
            _ => 2,
        };
        order.sort_by_key(|r| (rank(r), **r != *me));
        Self {
            tally: Tally::new(Consistency::One, order.iter().cloned()),
            order,
            next: 0,
        }
    }

    /// The replica to ask next, or `None` when every one failed.
    pub fn next_replica(&mut self) -> Option<Arc<str>> {
        let replica = self.order.get(self.next).cloned();
        self.next += 1;
        replica
    }

    /// Records that `replica` could not answer, and why.
    pub fn failed(&mut self, replica: &str, why: String) {
        self.tally.record(replica, Answer::Failed(why));
    }

    /// UNAVAILABLE naming each replica's fate, once every one failed.
    pub fn unavailable(&self) -> Error {
        Error::Unavailable(self.tally.report("not asked"))
    }
}
