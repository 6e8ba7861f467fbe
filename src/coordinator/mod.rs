//! Coordinates each client request with the replicas of its key: stamps
//! writes with the node's clock, applies them locally when this node is a
//! replica, pushes them to the other replicas, and answers when the
//! requested consistency level is met. Reads at QUORUM and ALL merge the
//! replicas' answers and repair stale replicas in the background.
//!
//! Every write goes through one path ([`Coordinator::write`]): an entry
//! builder gets the key's stored entry (under the key's lock, when this
//! node is a replica) and returns the entry to merge and ship. Map and
//! counter operations, and `Set` (which must not overwrite a map or a
//! counter), need to see the key's state even where this node is not a
//! replica: there they first read it from a replica (`observe`) and build
//! on that copy.

mod call;
mod entries;
pub mod relay;
mod tally;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::oneshot;

pub use call::{Found, ReadCall, ReadOne, Route, Routes, WriteCall, Written, VIEW_WAIT_AT_ONE};
pub use entries::{increment_entry, map_remove_entry, map_set_entry, tombstone_entry, value_entry};
pub use tally::{required, Decision, ReplicaAnswer, Tally};

use crate::clock::Clock;
use crate::cluster::Topology;
use crate::crdt::{ops, Entry, Payload, Version};
use crate::dots::Dots;
use crate::error::Error;
use crate::net::latency::OBSERVE_AT_ONE;
use crate::net::{PeerError, Peers};
use crate::replication::{AwaitedRelay, Replicator, Undelivered};
use crate::store::Store;

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
    /// One replica in this node's region; never another region's.
    LocalOne,
    /// A majority of the key's replicas in this node's region; never
    /// waits on another region.
    LocalQuorum,
    /// A majority of the key's replicas in every region that holds some.
    EachQuorum,
}

impl Consistency {
    /// The level as the contract spells it.
    pub fn name(self) -> &'static str {
        match self {
            Consistency::One => "ONE",
            Consistency::Quorum => "QUORUM",
            Consistency::All => "ALL",
            Consistency::Local => "LOCAL",
            Consistency::LocalOne => "LOCAL_ONE",
            Consistency::LocalQuorum => "LOCAL_QUORUM",
            Consistency::EachQuorum => "EACH_QUORUM",
        }
    }

    /// Whether the level counts only replicas of the coordinator's region
    /// (LOCAL_ONE, LOCAL_QUORUM): such a request never asks or waits on
    /// another region.
    pub fn is_regional(self) -> bool {
        matches!(self, Consistency::LocalOne | Consistency::LocalQuorum)
    }
}

/// What a read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The value, when the key holds one that has not expired.
    pub value: Option<Box<str>>,
    /// The version of the value or tombstone; `None` when never written, or
    /// (at QUORUM and ALL) when what the replicas hold is settled: a
    /// tombstone or expired value old enough to be collected.
    pub version: Option<Version>,
}

impl Read {
    /// What a client reads of `entry` at `now` (NTP64): tombstones and
    /// expired values read as no value, with their version.
    pub fn of(entry: Option<Entry>, now: u64) -> Self {
        let Some(entry) = entry else {
            return Self {
                value: None,
                version: None,
            };
        };
        let live = entry.live_value(now).is_some();
        let version = Some(entry.version);
        // The entry is ours: move its string out rather than copy it.
        let value = match entry.payload {
            Payload::Value(v) if live => Some(v),
            _ => None,
        };
        Self { value, version }
    }
}

/// The request coordinator of one node.
pub struct Coordinator {
    me: String,
    store: Arc<Store>,
    clock: Arc<Clock>,
    peers: Arc<Peers>,
    replicator: Arc<Replicator>,
    topology: RwLock<Arc<Topology>>,
    /// Woken on every new topology: reads at ONE that no replica answered
    /// wait on it ([`VIEW_WAIT_AT_ONE`]).
    topology_changed: tokio::sync::Notify,
    dots: Dots,
    /// The grace in force (NTP64): reads count settled answers as nothing.
    grace: u64,
    /// Requests slower than this are logged with their replicas' fates.
    slow_request: Duration,
}

impl Coordinator {
    /// The coordinator of node `me`, starting from `topology`, with the
    /// grace in force (NTP64, [`crate::config::Config::settle_grace`]).
    pub fn new(
        me: String,
        store: Arc<Store>,
        clock: Arc<Clock>,
        peers: Arc<Peers>,
        replicator: Arc<Replicator>,
        topology: Topology,
        grace: u64,
    ) -> Self {
        Self {
            me,
            grace,
            dots: Dots::new(clock.id(), clock.now()),
            store,
            clock,
            peers,
            replicator,
            topology: RwLock::new(Arc::new(topology)),
            topology_changed: tokio::sync::Notify::new(),
            slow_request: Duration::MAX,
        }
    }

    /// Logs every request slower than `slow` (`--slow-request`), with its
    /// key's hash, level and replicas' fates.
    pub fn with_slow_request(mut self, slow: Duration) -> Self {
        self.slow_request = slow;
        self
    }

    /// Logs one line for a request to `key` at `level` that failed at
    /// QUORUM or ALL (`failed`), or took longer than `--slow-request`
    /// since `started`: the key's hash (never the key or value), the level
    /// and every replica's fate (`report`, called only then).
    fn log_outcome(
        &self,
        key: &str,
        level: Consistency,
        started: Instant,
        failed: bool,
        report: impl FnOnce() -> String,
    ) {
        let elapsed = started.elapsed();
        let failed = failed && !matches!(level, Consistency::One | Consistency::Local);
        if !failed && elapsed <= self.slow_request {
            return;
        }
        tracing::warn!(
            key_hash = %format_args!("{:016x}", crate::keyspace::key_hash(key)),
            level = level.name(),
            elapsed_ms = elapsed.as_millis() as u64,
            outcome = if failed { "failed" } else { "slow" },
            replicas = %report(),
            "request {}",
            if failed { "failed at its consistency level" } else { "slower than --slow-request" }
        );
    }

    /// The current topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The smoothed round-trip time to `peer`, once measured: reads ask the
    /// nearest replica first.
    pub fn round_trip(&self, peer: &str) -> Option<Duration> {
        self.peers.rtt(peer)
    }

    /// Replaces the topology (on a membership change).
    pub fn set_topology(&self, topology: Topology) {
        *self
            .topology
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(topology);
        self.topology_changed.notify_waiters();
    }

    /// Writes `value` at `key`, expiring after `ttl_ms` (0: never). Returns
    /// the version the write was stamped with. Refused when the key holds a
    /// map or a counter.
    pub async fn set(
        &self,
        key: &str,
        value: impl Into<Box<str>>,
        ttl_ms: u64,
        level: Consistency,
    ) -> Result<Version, Error> {
        let value = value.into();
        let observed = self.observe(key, level).await?.flatten();
        self.write(key, level, |stored| {
            value_entry(
                &self.clock,
                key,
                stored.or(observed.as_ref()),
                value,
                ttl_ms,
            )
        })
        .await
    }

    /// Deletes `key`, whatever it holds, by writing a tombstone. Returns its
    /// version.
    pub async fn delete(&self, key: &str, level: Consistency) -> Result<Version, Error> {
        self.write(key, level, |stored| {
            tombstone_entry(&self.clock, key, stored)
        })
        .await
    }

    /// Reads the string at `key` at `level`. Refused when the key holds a
    /// map or a counter.
    pub async fn get(&self, key: &str, level: Consistency) -> Result<Read, Error> {
        let entry = self.read(key, level).await?;
        let now = self.clock.now();
        ops::read_string(entry.as_ref(), now)?;
        Ok(Read::of(entry, now))
    }

    /// Sets `fields` of the map at `key`, creating it where the key holds
    /// nothing; the map's size (names, values and a per-value overhead, see
    /// [`crate::crdt::OrMap::bytes`]) may not pass `limit`.
    /// Returns the version of the write. Refused when the key holds a string
    /// or a counter.
    pub async fn map_set(
        &self,
        key: &str,
        fields: &[(&str, &str)],
        limit: usize,
        level: Consistency,
    ) -> Result<Version, Error> {
        let observed = self.observe(key, level).await?.flatten();
        self.write(key, level, |stored| {
            let stored = stored.or(observed.as_ref());
            map_set_entry(&self.clock, &self.dots, key, stored, fields, limit)
        })
        .await
    }

    /// Reads the named fields (all when `names` is empty) of the map at
    /// `key` at `level`; `None` when the key holds no map. Refused when it
    /// holds a string or a counter.
    pub async fn map_get(
        &self,
        key: &str,
        names: &[&str],
        level: Consistency,
    ) -> Result<Option<BTreeMap<String, String>>, Error> {
        let entry = self.read(key, level).await?;
        Ok(ops::read_map(entry.as_ref(), self.clock.now(), names)?)
    }

    /// Removes the named fields from the map at `key`: the values this node
    /// sees (values set concurrently elsewhere survive). Returns whether
    /// there was anything to remove; nothing is written when there was not.
    /// Refused when the key holds a string or a counter.
    pub async fn map_remove(
        &self,
        key: &str,
        names: &[&str],
        level: Consistency,
    ) -> Result<bool, Error> {
        if level == Consistency::Local {
            return Err(Error::LocalWrite);
        }
        let observed = self.observe(key, level).await?;
        let now = self.clock.now();
        let removes = match &observed {
            Some(seen) => ops::removes_any(seen.as_ref(), now, names)?,
            None => self
                .store
                .peek(key, |e| ops::removes_any(Some(e), now, names))
                .unwrap_or(Ok(false))?,
        };
        if !removes {
            return Ok(false);
        }
        self.write(key, level, |stored| {
            let stored = stored.or(observed.as_ref().and_then(Option::as_ref));
            map_remove_entry(&self.clock, key, stored, names)
        })
        .await?;
        Ok(true)
    }

    /// Adds `delta` to the counter at `key`, creating it at 0 where the key
    /// holds nothing. Returns the counter's value after the increment as
    /// this node sees it. Refused when the key holds a string or a map, or
    /// when the value would leave the signed 64-bit range.
    pub async fn increment(&self, key: &str, delta: i64, level: Consistency) -> Result<i64, Error> {
        let observed = self.observe(key, level).await?.flatten();
        let mut after = 0;
        self.write(key, level, |stored| {
            let stored = stored.or(observed.as_ref());
            let (entry, value) = increment_entry(&self.clock, &self.dots, key, stored, delta)?;
            after = value;
            Ok(entry)
        })
        .await?;
        Ok(after)
    }

    /// Reads the counter at `key` at `level`: its exact value, `None` when
    /// the key holds no counter. Refused when it holds a string or a map.
    pub async fn get_counter(&self, key: &str, level: Consistency) -> Result<Option<i128>, Error> {
        let entry = self.read(key, level).await?;
        Ok(ops::read_counter(entry.as_ref(), self.clock.now())?)
    }

    /// The entry at `key` read at `level`, tombstones and expired values
    /// included.
    async fn read(&self, key: &str, level: Consistency) -> Result<Option<Entry>, Error> {
        match level {
            Consistency::Local => Ok(self.store.get(key)),
            Consistency::One | Consistency::LocalOne => self.read_one_by_views(key, level).await,
            Consistency::Quorum
            | Consistency::All
            | Consistency::LocalQuorum
            | Consistency::EachQuorum => self.read_many(key, level).await,
        }
    }

    /// What a write to `key` builds on where this node is not a replica of
    /// it: the key's entry read from the nearest replica (`Some(None)` when
    /// never written), so that kinds are checked and maps and counters
    /// continue their state. `None` where this node is a replica: the write
    /// path hands the stored entry to the builder, under the key's lock. A
    /// write at LOCAL reads nothing (the write path refuses it).
    ///
    /// The read is at LOCAL_ONE for the regional levels (a LOCAL_ONE or
    /// LOCAL_QUORUM write never waits on another region, its kind check
    /// included) and at ONE otherwise, which asks this node's region first.
    ///
    /// When no replica answers (at ONE: within [`OBSERVE_AT_ONE`]), a write
    /// at ONE, which is never refused for want of replicas, builds on
    /// nothing (`Some(None)`): it is checked against nothing, a map or
    /// counter write continues the generation of a key never written (it
    /// merges unless the key was deleted or held another kind since), and a
    /// removal finds nothing to remove. At the other levels the write fails
    /// as it would have anyway.
    async fn observe(&self, key: &str, level: Consistency) -> Result<Option<Option<Entry>>, Error> {
        if level == Consistency::Local
            || self
                .topology()
                .replicas(key)
                .iter()
                .any(|r| **r == *self.me)
        {
            return Ok(None);
        }
        let read = match level {
            Consistency::One => tokio::time::timeout(OBSERVE_AT_ONE, self.read_one(key, level))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Unavailable(format!(
                        "no replica answered within {OBSERVE_AT_ONE:?}"
                    )))
                }),
            Consistency::LocalOne | Consistency::LocalQuorum => {
                self.read_one(key, Consistency::LocalOne).await
            }
            _ => self.read_one(key, Consistency::One).await,
        };
        match read {
            Ok(entry) => Ok(Some(entry)),
            Err(e) if level == Consistency::One => {
                tracing::debug!(key, error = %e, "no replica to read before a write at ONE; building on nothing");
                Ok(Some(None))
            }
            Err(e) => Err(e),
        }
    }

    /// The write path shared by every kind of write. `make` builds the entry
    /// from the key's stored entry (known only when this node is a replica),
    /// under the key's lock.
    pub async fn write(
        &self,
        key: &str,
        level: Consistency,
        make: impl FnOnce(Option<&Entry>) -> Result<Entry, Error>,
    ) -> Result<Version, Error> {
        let started = Instant::now();
        if level != Consistency::Local {
            self.clock.check_offset()?;
            self.store.check_journal().map_err(unlogged)?;
        }
        let topology = self.topology();
        let (mut call, routes) =
            WriteCall::start(&self.me, &topology, &self.store, key, level, make)?;
        let mut acks = Vec::new();
        let mut awaited = Vec::new();
        // Hints are logged too: a write answered while some copy is held as
        // a hint waits for that record as it waits for its own.
        let mut hinted = routes.iter().any(|(_, route)| *route == Route::Hint);
        let peers = &self.peers;
        let relayed = relay::plan(routes, &topology, &self.me, |r| peers.rtt(r));
        for replica in relayed.relays {
            self.replicator
                .relay(&replica, key.into(), call.entry().clone());
        }
        // A remote region's awaited copy goes to its relay, which answers
        // for the mates; it leaves half the timeout for sending to a mate
        // it does not vouch for directly.
        let request_timeout = self.peers.timeout();
        for plan in relayed.awaited {
            let mut counted = |replica: Arc<str>| {
                let (tx, rx) = oneshot::channel();
                awaited.push(replica.clone());
                acks.push(ack_of(replica, rx));
                tx
            };
            let relay_ack = plan.relay_counts.then(|| counted(plan.relay.clone()));
            let mates = plan
                .mates
                .into_iter()
                .map(|mate| (mate.clone(), counted(mate)))
                .collect();
            let copy = AwaitedRelay {
                relay: plan.relay,
                relay_ack,
                mates,
                within: request_timeout / 4,
                bound: request_timeout / 2,
            };
            self.replicator
                .relay_awaited(key.into(), call.entry().clone(), copy);
        }
        for (replica, route) in relayed.direct {
            let entry = call.entry().clone();
            match route {
                Route::Hint => self.replicator.hint(&replica, key.into(), entry),
                Route::Push => self.replicator.push(&replica, key.into(), entry, None),
                Route::Await => {
                    let (tx, rx) = oneshot::channel();
                    self.replicator.push(&replica, key.into(), entry, Some(tx));
                    awaited.push(replica.clone());
                    acks.push(ack_of(replica, rx));
                }
            }
        }
        // ONE never fails for want of replicas: once the replicas have been
        // silent for longer than they usually take, the write is answered
        // from its queued copies (each becomes a hint if delivery fails)
        // rather than after the full timeout.
        let timeout = match level {
            Consistency::One => self.peers.longest_hedge(awaited.iter().map(|r| &**r)),
            _ => self.peers.timeout(),
        };
        // This replica's own copy counts once it is as durable as the mode
        // promises (in `sync` mode, fsynced), while the others answer.
        let local = call.local();
        let logged = async {
            if local {
                self.store.durable().await.map_err(unlogged)
            } else {
                Ok(())
            }
        };
        let mut answered = Vec::new();
        let gathered = gather(&mut call, acks, timeout, |call, (replica, ack)| {
            let answer = answer_of(ack);
            hinted |= answer != ReplicaAnswer::Ok;
            answered.push(replica.clone());
            call.record(&replica, answer)
        });
        let (timed_out, logged) = tokio::join!(gathered, logged);
        logged?;
        // A ONE write answered from its queued copies: with a data
        // directory, the silent replicas' copies are held as hints too, so
        // that the write is on this node's disk (in `sync` mode before the
        // answer) and survives its crash; delivered twice, it merges to
        // nothing the second time.
        if level == Consistency::One
            && call.decision() != Decision::Met
            && self.replicator.logs_hints()
        {
            for replica in awaited.iter().filter(|r| !answered.contains(r)) {
                self.replicator
                    .hint(replica, key.into(), call.entry().clone());
                hinted = true;
            }
        }
        if hinted {
            self.store.durable().await.map_err(unlogged)?;
        }
        let waiting = unanswered(timed_out, timeout);
        let written = call.finish(&waiting);
        self.log_outcome(key, level, started, written.is_err(), || {
            call.report(&waiting)
        });
        Ok(written?.version)
    }

    /// A client's read at ONE or LOCAL_ONE ([`Coordinator::read_one`]);
    /// when no replica answers, read again by each newer view of the
    /// cluster that comes within [`VIEW_WAIT_AT_ONE`] of that failure, and
    /// fail only then.
    async fn read_one_by_views(
        &self,
        key: &str,
        level: Consistency,
    ) -> Result<Option<Entry>, Error> {
        let mut until = None;
        loop {
            let view = self.topology();
            let failed = match self.read_one_in(&view, key, level).await {
                Err(e @ Error::Unavailable(_)) => e,
                read => return read,
            };
            let until =
                *until.get_or_insert_with(|| tokio::time::Instant::now() + VIEW_WAIT_AT_ONE);
            // Registered before the view is compared, so that no change is
            // missed: one made since the read took its view shows in the
            // comparison, a later one wakes the wait. Only a failed read
            // pays for it.
            let mut changed = std::pin::pin!(self.topology_changed.notified());
            changed.as_mut().enable();
            let newer = !Arc::ptr_eq(&view, &self.topology());
            if tokio::time::Instant::now() >= until
                || (!newer && tokio::time::timeout_at(until, changed).await.is_err())
            {
                return Err(failed);
            }
        }
    }

    /// ONE or LOCAL_ONE: the first replica that answers, in [`ReadOne`]'s
    /// order (nearest first). A replica silent for longer than it usually
    /// takes (its hedge delay) is not waited for alone: the next one is
    /// asked too, and the first answer wins; a failure moves on at once.
    /// Once every replica has been asked, each hedge delay that passes asks
    /// a silent one again.
    async fn read_one(&self, key: &str, level: Consistency) -> Result<Option<Entry>, Error> {
        self.read_one_in(&self.topology(), key, level).await
    }

    /// [`Coordinator::read_one`] by the view `topology`.
    async fn read_one_in(
        &self,
        topology: &Topology,
        key: &str,
        level: Consistency,
    ) -> Result<Option<Entry>, Error> {
        if ReadOne::answered_here(&self.me, topology, key) {
            return Ok(self.store.get(key));
        }
        let started = Instant::now();
        let peers = &self.peers;
        let mut call = ReadOne::start(&self.me, topology, key, level, |r| peers.rtt(r));
        let mut asking = FuturesUnordered::new();
        // Each turn asks the next replica: at the start and after a
        // refusal; when the newest request stayed silent past its hedge
        // delay (`hedge_at`) or a request timed out (`silent`), the next
        // replica or, every one asked, a silent one again. `None` once
        // there is nobody left to ask: then only the answers in flight are
        // waited for.
        let mut hedge_at = None;
        let mut hedged = false;
        loop {
            let next = match call.next_replica() {
                None if hedged || !call.waiting() => call.ask_again(),
                next => next,
            };
            match next {
                Some(replica) if *replica == *self.me => return Ok(self.store.get(key)),
                Some(replica) => {
                    hedge_at =
                        Some(tokio::time::Instant::now() + self.peers.read_hedge_after(&replica));
                    let peers = &self.peers;
                    asking.push(async move {
                        let read = peers.read(&replica, &[key]).await;
                        (replica, read)
                    });
                }
                None if !call.waiting() => return Err(call.unavailable()),
                None if hedged => hedge_at = None,
                None => {}
            }
            hedged = false;
            let next = match hedge_at {
                Some(at) => match tokio::time::timeout_at(at, asking.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        hedged = true;
                        continue;
                    }
                },
                None => asking.next().await,
            };
            match next {
                Some((replica, Ok(entries))) => {
                    self.log_outcome(key, level, started, false, || {
                        format!("{}; answered by {replica}", call.report("not asked"))
                    });
                    return Ok(self.answer(key, entries));
                }
                Some((replica, Err(e @ PeerError::Timeout(_)))) => {
                    call.silent(&replica, e.to_string());
                    hedged = true;
                }
                Some((replica, Err(e))) => call.failed(&replica, e.to_string()),
                None => {}
            }
        }
    }

    /// What a replica's answer to a read of `key` holds: its entry, unless
    /// the clock refuses it ([`Clock::admit`]), as it refuses any entry from
    /// elsewhere.
    fn answer(&self, key: &str, entries: Vec<(crate::store::Key, Entry)>) -> Option<Entry> {
        let entry = entries.into_iter().next().map(|(_, e)| e);
        entry.filter(|e| self.clock.admit(key, e))
    }

    /// QUORUM and ALL: ask every replica at once, join what the first
    /// answers that meet the level hold, and repair the replicas that
    /// answered with something older.
    async fn read_many(&self, key: &str, level: Consistency) -> Result<Option<Entry>, Error> {
        let started = Instant::now();
        let topology = self.topology();
        let (mut call, ask) = ReadCall::start(
            &self.me,
            &topology,
            &self.store,
            key,
            level,
            self.clock.now(),
            self.grace,
        );
        let peers = &self.peers;
        let pending: Vec<_> = ask
            .into_iter()
            .map(|replica| async move {
                let read = peers.read(&replica, &[key]).await;
                (replica, read)
            })
            .collect();
        let timeout = self.peers.timeout();
        let timed_out = gather(&mut call, pending, timeout, |call, (replica, read)| {
            let answer = read
                .map(|entries| self.answer(key, entries))
                .map_err(|e| e.to_string());
            call.record(&replica, answer)
        })
        .await;
        let waiting = unanswered(timed_out, timeout);
        let failed = call.decision() != Decision::Met;
        self.log_outcome(key, level, started, failed, || call.report(&waiting));
        let found = call.finish(&waiting)?;
        for (replica, newest) in found.repairs {
            if *replica == *self.me {
                self.store.merge(key, newest);
            } else {
                self.replicator.push(&replica, key.into(), newest, None);
            }
        }
        Ok(found.entry)
    }
}

impl crate::net::Relay for Coordinator {
    /// Queues each relayed entry for the key's other replicas in this
    /// node's region (held as a hint for one the failure detector holds
    /// down).
    fn relay(&self, from: &str, entries: Vec<(crate::store::Key, Entry)>) {
        let topology = self.topology();
        for (key, entry) in entries {
            for mate in relay::region_mates(&topology, &key, &self.me, from) {
                if topology.is_alive(mate) {
                    self.replicator.push(mate, key.clone(), entry.clone(), None);
                } else {
                    self.replicator.hint(mate, key.clone(), entry.clone());
                }
            }
        }
    }

    /// Hands each entry on as [`Coordinator::relay`] does, awaiting the
    /// named `mates` that are replicas of its key in this region (others
    /// are not vouched for); `within` is capped at the request timeout.
    fn relay_awaited(
        &self,
        from: &str,
        entries: Vec<(crate::store::Key, Entry)>,
        mates: Vec<String>,
        within: Duration,
    ) -> futures_util::future::BoxFuture<'static, Vec<String>> {
        let topology = self.topology();
        let mut acks = Vec::new();
        let mut refused: Vec<String> = Vec::new();
        for (key, entry) in entries {
            let region_mates: Vec<&Arc<str>> =
                relay::region_mates(&topology, &key, &self.me, from).collect();
            for mate in &mates {
                if !region_mates.iter().any(|r| ***r == **mate) && !refused.contains(mate) {
                    refused.push(mate.clone());
                }
            }
            for mate in region_mates {
                let named = mates.iter().any(|m| **m == **mate);
                if !topology.is_alive(mate) {
                    self.replicator.hint(mate, key.clone(), entry.clone());
                    if named && !refused.iter().any(|r| **r == **mate) {
                        refused.push(mate.to_string());
                    }
                } else if named {
                    let (tx, rx) = oneshot::channel();
                    self.replicator
                        .push(mate, key.clone(), entry.clone(), Some(tx));
                    acks.push((mate.to_string(), rx));
                } else {
                    self.replicator.push(mate, key.clone(), entry.clone(), None);
                }
            }
        }
        let me = self.me.clone();
        let deadline = tokio::time::Instant::now() + within.min(self.peers.timeout());
        Box::pin(async move {
            let mut failed = refused;
            for (mate, ack) in acks {
                let took = matches!(tokio::time::timeout_at(deadline, ack).await, Ok(Ok(Ok(()))));
                if !took && !failed.contains(&mate) {
                    failed.push(mate);
                }
            }
            // A mate took the batch only if it took every entry in time.
            let mut answer = vec![me];
            answer.extend(mates.into_iter().filter(|m| !failed.contains(m)));
            answer.dedup();
            answer
        })
    }
}

/// Waits for one awaited replica's ack: the same future type for every
/// replica, whether sent to directly or through its region's relay.
async fn ack_of(
    replica: Arc<str>,
    rx: oneshot::Receiver<Result<(), Undelivered>>,
) -> (
    Arc<str>,
    Result<Result<(), Undelivered>, oneshot::error::RecvError>,
) {
    (replica, rx.await)
}

/// The error of a write this node cannot log: UNAVAILABLE, with the cause.
fn unlogged(e: crate::store::JournalError) -> Error {
    Error::Unavailable(format!("this node cannot log writes to disk: {e}"))
}

/// Feeds answers into `call` with `record` (which returns where the call
/// stands) until it is decided, the answers run out, or `timeout` passes;
/// returns whether the timeout passed.
async fn gather<C: Pending, F: Future>(
    call: &mut C,
    pending: Vec<F>,
    timeout: Duration,
    mut record: impl FnMut(&mut C, F::Output) -> Decision,
) -> bool {
    // Most requests are decided at once (ONE on a replica): no timer and
    // no set of futures then.
    if pending.is_empty() || call.decision() != Decision::Open {
        return false;
    }
    let mut pending: FuturesUnordered<F> = pending.into_iter().collect();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    while call.decision() == Decision::Open {
        tokio::select! {
            next = pending.next() => match next {
                Some(answer) => {
                    record(call, answer);
                }
                None => return false,
            },
            () = &mut deadline => return true,
        }
    }
    false
}

/// A call that [`gather`] feeds: it knows where it stands.
trait Pending {
    fn decision(&self) -> Decision;
}

impl Pending for WriteCall {
    fn decision(&self) -> Decision {
        WriteCall::decision(self)
    }
}

impl Pending for ReadCall {
    fn decision(&self) -> Decision {
        ReadCall::decision(self)
    }
}

/// What an UNAVAILABLE report says of replicas that had not answered.
fn unanswered(timed_out: bool, timeout: Duration) -> Cow<'static, str> {
    if timed_out {
        format!("no answer within {timeout:?}").into()
    } else {
        // Most requests: nothing to format or allocate.
        "not waited for (the level could no longer be met)".into()
    }
}

fn answer_of(ack: Result<Result<(), Undelivered>, oneshot::error::RecvError>) -> ReplicaAnswer {
    match ack {
        Ok(Ok(())) => ReplicaAnswer::Ok,
        Ok(Err(e)) => ReplicaAnswer::Failed(format!("{e}; hinted")),
        Err(_) => ReplicaAnswer::Failed("delta queue closed; hinted".into()),
    }
}

/// The coordinator of node `n1` over `members` (16 partitions, 3 replicas,
/// small queue and hint limits, no peer reachable), and its replicator: for
/// unit tests here and in the layers that drive a coordinator.
#[cfg(test)]
pub(crate) fn test_coordinator(
    members: Vec<crate::cluster::Member>,
) -> (Coordinator, Arc<Replicator>) {
    use crate::replication::{BatchLimits, HintLimits};
    let clock = Arc::new(Clock::new(
        "n1",
        crate::clock::system_time,
        Duration::from_millis(500),
    ));
    let peers = Arc::new(Peers::new(
        "n1".into(),
        clock.clone(),
        Arc::new(crate::switch::Switch::new()),
        Duration::from_secs(1),
        1 << 20,
        None,
    ));
    let replicator = Replicator::new(
        peers.clone(),
        BatchLimits {
            max_bytes: 1024,
            linger: Duration::from_millis(1),
            max_queued_bytes: 1 << 20,
        },
        HintLimits {
            max_hints: 10,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(60),
        },
    );
    let coordinator = Coordinator::new(
        "n1".into(),
        Arc::new(Store::new(16)),
        clock,
        peers,
        replicator.clone(),
        Topology::new(members, 16, 3),
        crate::clock::ntp64(Duration::from_secs(4 * 3600)),
    );
    (coordinator, replicator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Member, NodeState};

    /// A coordinator alone in its cluster: every key's one replica.
    fn alone() -> Coordinator {
        let me = Member {
            id: "n1".into(),
            address: "127.0.0.1:1".into(),
            peer_address: String::new(),
            region: String::new(),
            state: NodeState::Ready,
            alive: true,
            generation: 1,
        };
        test_coordinator(vec![me]).0
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

    /// Every operation takes the regional levels, on one node alone in its
    /// (unnamed) region.
    #[tokio::test]
    async fn every_operation_runs_at_the_regional_levels() {
        let c = alone();
        for level in [
            Consistency::LocalOne,
            Consistency::LocalQuorum,
            Consistency::EachQuorum,
        ] {
            let name = level.name();
            c.set(name, "v", 0, level).await.unwrap();
            assert_eq!(
                c.get(name, level).await.unwrap().value.as_deref(),
                Some("v")
            );
            c.delete(name, level).await.unwrap();
            assert_eq!(c.get(name, level).await.unwrap().value, None);
            let map = format!("{name}-map");
            c.map_set(&map, &[("a", "1"), ("b", "2")], 100, level)
                .await
                .unwrap();
            assert!(c.map_remove(&map, &["a"], level).await.unwrap());
            assert_eq!(
                c.map_get(&map, &[], level).await.unwrap().map(|m| m.len()),
                Some(1)
            );
            let counter = format!("{name}-counter");
            assert_eq!(c.increment(&counter, 2, level).await, Ok(2));
            assert_eq!(c.get_counter(&counter, level).await, Ok(Some(2)));
        }
    }

    #[tokio::test]
    async fn a_refused_ttl_leaves_the_stored_value() {
        let c = alone();
        c.set("k", "kept", 0, Consistency::One).await.unwrap();
        assert!(c.set("k", "x", u64::MAX, Consistency::One).await.is_err());
        let read = c.get("k", Consistency::One).await.unwrap();
        assert_eq!(read.value.as_deref(), Some("kept"));
    }

    #[tokio::test]
    async fn maps_and_counters_go_through_the_write_path_and_kinds_are_kept() {
        use crate::crdt::ops::TypeError;
        use crate::crdt::Kind;
        let c = alone();
        let one = Consistency::One;
        let v1 = c
            .map_set("m", &[("a", "1"), ("b", "2")], 100, one)
            .await
            .unwrap();
        let v2 = c
            .map_set("m", &[("a", "3")], 100, Consistency::All)
            .await
            .unwrap();
        assert!(v2 > v1);
        let got = c.map_get("m", &[], one).await.unwrap().unwrap();
        assert_eq!(got.get("a").map(String::as_str), Some("3"));
        assert_eq!(got.len(), 2);
        assert!(c.map_remove("m", &["a", "zz"], one).await.unwrap());
        assert!(!c.map_remove("m", &["zz"], one).await.unwrap());
        assert!(!c.map_remove("never", &["a"], one).await.unwrap());
        assert!(c.store.get("never").is_none(), "nothing written");
        let got = c
            .map_get("m", &["a", "b"], Consistency::Local)
            .await
            .unwrap();
        assert_eq!(got.map(|m| m.len()), Some(1));
        assert!(matches!(
            c.map_set("m", &[("big", "0123456789")], 10, one).await,
            Err(Error::Type(TypeError::MapTooLarge { .. }))
        ));

        assert_eq!(c.increment("n", 5, one).await, Ok(5));
        assert_eq!(c.increment("n", -7, Consistency::Quorum).await, Ok(-2));
        assert_eq!(c.get_counter("n", one).await, Ok(Some(-2)));
        assert_eq!(c.get_counter("absent", one).await, Ok(None));

        let wrong = |e: Result<_, Error>, holds| matches!(e, Err(Error::Type(TypeError::WrongKind { holds: h, .. })) if h == holds);
        assert!(wrong(c.set("m", "s", 0, one).await.map(|_| ()), Kind::Map));
        assert!(wrong(c.get("n", one).await.map(|_| ()), Kind::Counter));
        assert!(wrong(c.increment("m", 1, one).await.map(|_| ()), Kind::Map));
        assert!(wrong(
            c.map_get("n", &[], one).await.map(|_| ()),
            Kind::Counter
        ));
        c.set("s", "v", 0, one).await.unwrap();
        assert!(wrong(
            c.map_remove("s", &["a"], one).await.map(|_| ()),
            Kind::String
        ));
        assert!(wrong(
            c.get_counter("s", one).await.map(|_| ()),
            Kind::String
        ));

        // Delete removes any kind; the key can then hold another.
        c.delete("m", one).await.unwrap();
        assert_eq!(c.map_get("m", &[], one).await, Ok(None));
        assert_eq!(c.increment("m", 1, one).await, Ok(1));
        c.delete("n", one).await.unwrap();
        c.set("n", "now a string", 0, one).await.unwrap();

        for local in [
            c.map_set("m", &[("a", "1")], 100, Consistency::Local)
                .await
                .map(|_| ()),
            c.map_remove("m", &["a"], Consistency::Local)
                .await
                .map(|_| ()),
            c.increment("m", 1, Consistency::Local).await.map(|_| ()),
        ] {
            assert_eq!(local, Err(Error::LocalWrite));
        }
    }

    /// A far-future version of one key raises that key's next stamp only:
    /// the node's writes to other keys keep following its clock, and a TTL
    /// counts from the coordinator's physical time, not from the version.
    #[tokio::test]
    async fn a_far_future_version_raises_only_its_own_keys_stamp_and_not_ttls() {
        let c = alone();
        let drift = 500u64 << 32 >> 10; // a little under the 500 ms bound
        let hour = 3600u64 << 32;
        let far = Version::new(c.clock.now() + hour, 7);
        c.store
            .merge("far", Entry::value(far, "from the future", 0));

        let mine = c.set("far", "mine", 0, Consistency::One).await.unwrap();
        assert!(mine > far, "a write still wins over the future value");
        for key in ["other", "another"] {
            let before = c.clock.now();
            let v = c.set(key, "x", 0, Consistency::One).await.unwrap();
            assert!(
                v.time < before + drift,
                "{key} stamped {}s ahead of the clock",
                (v.time - before) >> 32
            );
        }
        c.map_set("map", &[("f", "1")], 100, Consistency::One)
            .await
            .unwrap();
        let before = c.clock.now();
        let v = c.store.get("map").unwrap().version;
        assert!(v.time < before + drift, "map write stamped ahead");

        // A TTL over the far-future value expires a second from now.
        let before = c.clock.now();
        c.set("far", "brief", 1000, Consistency::One).await.unwrap();
        let expires = c.store.get("far").unwrap().expires_at;
        let second = 1u64 << 32;
        assert!(
            expires >= before + second && expires < before + second + drift,
            "expires {}s after the request",
            (expires.saturating_sub(before)) >> 32
        );
    }
}
