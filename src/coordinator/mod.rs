//! Coordinates each client request with the replicas of its key: stamps
//! writes with the node's clock, applies them locally when this node is a
//! replica, pushes them to the other replicas, and answers when the
//! requested consistency level is met. Reads at QUORUM and ALL merge the
//! replicas' answers and repair stale replicas in the background.

mod tally;
mod topology;

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::oneshot;

pub use tally::{required, Answer, Decision, Tally};
pub use topology::Topology;

use crate::clock::Clock;
use crate::cluster::NodeState;
use crate::crdt::{Entry, Version};
use crate::error::Error;
use crate::net::{PeerError, Peers};
use crate::replication::Replicator;
use crate::store::{Key, Store};

/// How many replicas must answer before a request succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority of the key's replicas.
    Quorum,
    /// Every replica of the key.
    All,
    /// Reads only: this node's own copy.
    Local,
}

impl Consistency {
    /// The level as the contract spells it.
    pub fn name(self) -> &'static str {
        match self {
            Consistency::One => "ONE",
            Consistency::Quorum => "QUORUM",
            Consistency::All => "ALL",
            Consistency::Local => "LOCAL",
        }
    }
}

/// What a read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The value, when the key holds one that has not expired.
    pub value: Option<Box<str>>,
    /// The version of the value or tombstone; `None` when never written.
    pub version: Option<Version>,
}

/// The request coordinator of one node.
pub struct Coordinator {
    me: String,
    store: Arc<Store>,
    clock: Arc<Clock>,
    peers: Arc<Peers>,
    replicator: Arc<Replicator>,
    topology: RwLock<Arc<Topology>>,
}

impl Coordinator {
    /// The coordinator of node `me`, starting from `topology`.
    pub fn new(
        me: String,
        store: Arc<Store>,
        clock: Arc<Clock>,
        peers: Arc<Peers>,
        replicator: Arc<Replicator>,
        topology: Topology,
    ) -> Self {
        Self {
            me,
            store,
            clock,
            peers,
            replicator,
            topology: RwLock::new(Arc::new(topology)),
        }
    }

    /// The current topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the topology (on a membership change).
    pub fn set_topology(&self, topology: Topology) {
        *self
            .topology
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(topology);
    }

    /// Writes `value` at `key`, expiring after `ttl_ms` (0: never). Returns
    /// the version the write was stamped with.
    pub async fn set(
        &self,
        key: &str,
        value: &str,
        ttl_ms: u64,
        level: Consistency,
    ) -> Result<Version, Error> {
        self.write(key, level, |stored| {
            let version = self.clock.stamp_after(stored)?;
            let expires_at = expiry(version.time, ttl_ms)?;
            Ok(Entry::value(version, value, expires_at))
        })
        .await
    }

    /// Deletes `key` by writing a tombstone. Returns its version.
    pub async fn delete(&self, key: &str, level: Consistency) -> Result<Version, Error> {
        self.write(key, level, |stored| {
            Ok(Entry::tombstone(self.clock.stamp_after(stored)?))
        })
        .await
    }

    /// Reads `key` at `level`.
    pub async fn get(&self, key: &str, level: Consistency) -> Result<Read, Error> {
        let entry = match level {
            Consistency::Local => self.store.get(key),
            Consistency::One => self.read_one(key).await?,
            Consistency::Quorum | Consistency::All => self.read_many(key, level).await?,
        };
        let now = self.clock.now();
        Ok(Read {
            value: entry
                .as_ref()
                .and_then(|e| e.live_value(now))
                .map(Box::from),
            version: entry.map(|e| e.version),
        })
    }

    /// The write path shared by set and delete. `make` builds the entry
    /// from the key's stored version (known only when this node is a
    /// replica), under the key's lock.
    async fn write(
        &self,
        key: &str,
        level: Consistency,
        make: impl FnOnce(Option<Version>) -> Result<Entry, Error>,
    ) -> Result<Version, Error> {
        if level == Consistency::Local {
            return Err(Error::LocalWrite);
        }
        let topology = self.topology();
        let replicas = topology.replicas(key);
        let local = replicas.contains(&self.me);
        let entry = if local {
            self.store
                .write(key, |stored| make(stored.map(|e| e.version)))?
        } else {
            make(None)?
        };
        let version = entry.version;

        let mut tally = Tally::new(level, replicas.iter().cloned());
        if local {
            tally.record(&self.me, Answer::Ok);
        }
        let acks = FuturesUnordered::new();
        for replica in replicas.iter().filter(|r| **r != self.me) {
            let key: Key = key.into();
            if !topology.is_alive(replica) {
                self.replicator.hint(replica, key, entry.clone());
                tally.record(
                    replica,
                    Answer::Failed("down (failure detector); hinted".into()),
                );
                continue;
            }
            if tally.decision() == Decision::Met {
                // Nobody waits for this one; it still arrives or is hinted.
                self.replicator.push(replica, key, entry.clone(), None);
                continue;
            }
            let (tx, rx) = oneshot::channel();
            self.replicator.push(replica, key, entry.clone(), Some(tx));
            let replica = replica.clone();
            acks.push(async move { (replica, rx.await) });
        }

        let timeout = self.peers.timeout();
        let timed_out = gather(&mut tally, acks, timeout, |tally, (replica, ack)| {
            tally.record(&replica, answer_of(ack));
        })
        .await;
        match tally.decision() {
            Decision::Met => Ok(version),
            // Sloppy quorum: at ONE a write is never refused for want of
            // replicas. Whatever did not arrive is held as a hint.
            _ if level == Consistency::One => Ok(version),
            _ => Err(Error::Unavailable(
                tally.report(&unanswered(timed_out, timeout)),
            )),
        }
    }

    /// ONE: the first replica that answers, ready replicas first (a
    /// replica still refilling after a restart may lack the key), this node
    /// first among equals; then the live ones that are not ready, then the
    /// rest.
    async fn read_one(&self, key: &str) -> Result<Option<Entry>, Error> {
        let topology = self.topology();
        let mut replicas = topology.replicas(key);
        let rank = |id: &str| match topology.member(id) {
            Some(m) if m.alive && m.state == NodeState::Ready => 0,
            Some(m) if m.alive => 1,
            _ => 2,
        };
        replicas.sort_by_key(|r| (rank(r), *r != self.me));
        let mut tally = Tally::new(Consistency::One, replicas.iter().cloned());
        for replica in &replicas {
            if *replica == self.me {
                return Ok(self.store.get(key));
            }
            match self.peers.read(replica, &[key]).await {
                Ok(entries) => return Ok(entries.into_iter().next().map(|(_, e)| e)),
                Err(e) => {
                    tally.record(replica, Answer::Failed(e.to_string()));
                }
            }
        }
        Err(Error::Unavailable(tally.report("not asked")))
    }

    /// QUORUM and ALL: ask every replica at once, merge what the first
    /// `required` answers hold, and repair the replicas that answered with
    /// something older.
    async fn read_many(&self, key: &str, level: Consistency) -> Result<Option<Entry>, Error> {
        let topology = self.topology();
        let replicas = topology.replicas(key);
        let mut tally = Tally::new(level, replicas.iter().cloned());
        let mut answers: Vec<(String, Option<Entry>)> = Vec::new();
        if replicas.contains(&self.me) {
            tally.record(&self.me, Answer::Ok);
            answers.push((self.me.clone(), self.store.get(key)));
        }
        let pending = FuturesUnordered::new();
        for replica in replicas.iter().filter(|r| **r != self.me) {
            if !topology.is_alive(replica) {
                tally.record(replica, Answer::Failed("down (failure detector)".into()));
                continue;
            }
            let replica = replica.clone();
            let peers = &self.peers;
            pending.push(async move {
                let read = peers.read(&replica, &[key]).await;
                (replica, read)
            });
        }
        let timeout = self.peers.timeout();
        let timed_out = gather(
            &mut tally,
            pending,
            timeout,
            |tally, (replica, read)| match read {
                Ok(entries) => {
                    tally.record(&replica, Answer::Ok);
                    answers.push((replica, entries.into_iter().next().map(|(_, e)| e)));
                }
                Err(e) => {
                    tally.record(&replica, Answer::Failed(e.to_string()));
                }
            },
        )
        .await;
        if tally.decision() != Decision::Met {
            return Err(Error::Unavailable(
                tally.report(&unanswered(timed_out, timeout)),
            ));
        }
        let merged = answers
            .iter()
            .filter_map(|(_, e)| e.clone())
            .reduce(|mut a, b| {
                a.merge_from(b);
                a
            });
        if let Some(newest) = &merged {
            self.repair(key, newest, &answers);
        }
        Ok(merged)
    }

    /// Read repair: sends `newest` to every replica whose answer was older
    /// or missing, in the background.
    fn repair(&self, key: &str, newest: &Entry, answers: &[(String, Option<Entry>)]) {
        for (replica, held) in answers {
            if held.as_ref() == Some(newest) {
                continue;
            }
            if *replica == self.me {
                self.store.merge(key, newest.clone());
            } else {
                self.replicator
                    .push(replica, key.into(), newest.clone(), None);
            }
        }
    }
}

/// Feeds answers into `tally` until the level is decided, the answers run
/// out, or `timeout` passes; returns whether the timeout passed.
async fn gather<F: Future>(
    tally: &mut Tally,
    mut pending: FuturesUnordered<F>,
    timeout: Duration,
    mut record: impl FnMut(&mut Tally, F::Output),
) -> bool {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    while tally.decision() == Decision::Open {
        tokio::select! {
            next = pending.next() => match next {
                Some(answer) => record(tally, answer),
                None => return false,
            },
            () = &mut deadline => return true,
        }
    }
    false
}

/// What an UNAVAILABLE report says of replicas that had not answered.
fn unanswered(timed_out: bool, timeout: Duration) -> String {
    if timed_out {
        format!("no answer within {timeout:?}")
    } else {
        "not waited for (the level could no longer be met)".into()
    }
}

fn answer_of(ack: Result<Result<(), PeerError>, oneshot::error::RecvError>) -> Answer {
    match ack {
        Ok(Ok(())) => Answer::Ok,
        Ok(Err(e)) => Answer::Failed(format!("{e}; hinted")),
        Err(_) => Answer::Failed("delta queue closed; hinted".into()),
    }
}

/// The expiry instant (NTP64) of a value written at `time` with `ttl_ms`,
/// or 0 for no expiry.
fn expiry(time: u64, ttl_ms: u64) -> Result<u64, Error> {
    if ttl_ms == 0 {
        return Ok(0);
    }
    let too_long = || Error::TtlTooLong {
        ttl_ms,
        limit: ntp64_to_ms(u64::MAX - time),
    };
    let ttl = ms_to_ntp64(ttl_ms).ok_or_else(too_long)?;
    time.checked_add(ttl).ok_or_else(too_long)
}

/// Milliseconds as an NTP64 span, or `None` past its 2^32 seconds.
fn ms_to_ntp64(ms: u64) -> Option<u64> {
    let secs = u32::try_from(ms / 1000).ok()?;
    let frac = ((ms % 1000) << 32) / 1000;
    Some((u64::from(secs) << 32) | frac)
}

fn ntp64_to_ms(span: u64) -> u64 {
    (span >> 32) * 1000 + (((span & 0xffff_ffff) * 1000) >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::system_time;
    use crate::cluster::{Member, NodeState};
    use crate::net::Switch;
    use crate::replication::{BatchLimits, HintLimits};

    /// A coordinator alone in its cluster: every key's one replica.
    fn alone() -> Coordinator {
        let me = Member {
            id: "n1".into(),
            address: "127.0.0.1:1".into(),
            region: String::new(),
            state: NodeState::Ready,
            alive: true,
            generation: 1,
        };
        let peers = Arc::new(Peers::new(
            "n1".into(),
            Arc::new(Switch::new()),
            Duration::from_secs(1),
        ));
        let replicator = Replicator::new(
            peers.clone(),
            BatchLimits {
                max_bytes: 1024,
                linger: Duration::from_millis(1),
            },
            HintLimits {
                max_hints: 10,
                max_bytes: 1024,
                max_age: Duration::from_secs(1),
            },
        );
        Coordinator::new(
            "n1".into(),
            Arc::new(Store::new(16)),
            Arc::new(Clock::new("n1", system_time, Duration::from_millis(500))),
            peers,
            replicator,
            Topology::new(vec![me], 16, 3),
        )
    }

    #[tokio::test]
    async fn writes_are_stamped_in_increasing_order_and_local_writes_refused() {
        let c = alone();
        let a = c.set("k", "1", 0, Consistency::One).await.unwrap();
        let b = c.delete("k", Consistency::All).await.unwrap();
        assert!(b > a);
        for level in [
            Consistency::Local,
            Consistency::One,
            Consistency::Quorum,
            Consistency::All,
        ] {
            let read = c.get("k", level).await.unwrap();
            assert_eq!(
                read,
                Read {
                    value: None,
                    version: Some(b)
                }
            );
        }
        assert_eq!(
            c.set("k", "1", 0, Consistency::Local).await,
            Err(Error::LocalWrite)
        );
        assert_eq!(
            c.delete("k", Consistency::Local).await,
            Err(Error::LocalWrite)
        );
    }

    #[tokio::test]
    async fn a_refused_ttl_leaves_the_stored_value() {
        let c = alone();
        c.set("k", "kept", 0, Consistency::One).await.unwrap();
        assert!(c.set("k", "x", u64::MAX, Consistency::One).await.is_err());
        let read = c.get("k", Consistency::One).await.unwrap();
        assert_eq!(read.value.as_deref(), Some("kept"));
    }

    #[test]
    fn ttl_conversion_round_trips_and_bounds() {
        assert_eq!(ms_to_ntp64(1500), Some((1 << 32) | (1 << 31)));
        assert_eq!(ntp64_to_ms(ms_to_ntp64(123_456).unwrap()), 123_455);
        assert_eq!(ms_to_ntp64(u64::MAX), None);
        assert_eq!(expiry(10, 0), Ok(0));
    }

    #[test]
    fn an_overflowing_ttl_names_the_limit() {
        let now = 200u64 << 32;
        let Err(Error::TtlTooLong { ttl_ms, limit }) = expiry(now, u64::MAX) else {
            panic!("expected TtlTooLong");
        };
        assert_eq!(ttl_ms, u64::MAX);
        assert!(expiry(now, limit).is_ok());
        assert!(expiry(now, limit + 1).is_err());
    }
}
