//! The coordinator's side of a node: client operations, built and answered
//! as the production coordinator does (its write and read calls, its entry
//! builders), over simulated peer calls.

use std::sync::Arc;

use crate::clock::Clock;
use crate::coordinator::{
    increment_entry, map_remove_entry, map_set_entry, relay, tombstone_entry, value_entry,
    Consistency, Decision, Read, ReadCall, ReadOne, ReplicaAnswer, Route, WriteCall,
    VIEW_WAIT_AT_ONE,
};
use crate::crdt::{ops, Entry};
use crate::dots::Dots;
use crate::net::latency::OBSERVE_AT_ONE;
use crate::store::Key;

use super::{ClientOp, OpKind, OpResult, Out, Req, Rpc, SimNode, Timer, MAP_LIMIT};

/// A client request in progress at its coordinator.
pub(super) enum Call {
    Write {
        op: usize,
        call: WriteCall,
    },
    ReadMany {
        op: ClientOp,
        call: ReadCall,
    },
    ReadOne {
        op: ClientOp,
        call: ReadOne,
        /// The peer call whose hedge timer is the one that counts (the
        /// newest request sent); none once nobody is left to ask.
        hedge: Option<u64>,
        /// Set while every replica refused and the read waits for a newer
        /// view: the error it fails with if none comes in time.
        parked: Option<String>,
        /// Whether the read has waited for a view (its wait is running or
        /// over).
        replan: bool,
    },
}

impl SimNode {
    /// Starts a client operation coordinated here.
    pub fn invoke(&mut self, op: ClientOp) {
        match &op.kind {
            OpKind::Set { value, ttl_ms } => {
                let (value, ttl_ms) = (value.as_str().into(), *ttl_ms);
                self.write(op.id, &op.key, op.level, |clock, _, stored| {
                    value_entry(clock, &op.key, stored, value, ttl_ms)
                });
            }
            OpKind::Delete => {
                self.write(op.id, &op.key, op.level, |clock, _, stored| {
                    tombstone_entry(clock, &op.key, stored)
                });
            }
            kind if kind.observes() => {
                let replica = self
                    .topology
                    .replicas(&op.key)
                    .iter()
                    .any(|r| **r == *self.id);
                if op.level == Consistency::Local || replica {
                    self.build(op, None);
                } else {
                    // Where the coordinator is no replica, production first
                    // reads the key at ONE (`observe`), then builds on it.
                    self.read_one(op);
                }
            }
            _ => self.read(op),
        }
    }

    /// A map or counter write, built as the production coordinator builds
    /// it on the key's stored entry, or on `observed` (what a replica held,
    /// read first where this node is not one).
    pub(super) fn build(&mut self, op: ClientOp, observed: Option<Option<Entry>>) {
        let seen = observed.clone().flatten();
        let (id, key, level) = (op.id, op.key.clone(), op.level);
        match op.kind {
            OpKind::MapSet { fields } => {
                let fields: Vec<(&str, &str)> = fields
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                self.write(id, &key, level, |clock, dots, stored| {
                    let stored = stored.or(seen.as_ref());
                    map_set_entry(clock, dots, &key, stored, &fields, MAP_LIMIT)
                });
            }
            OpKind::MapRemove { fields } => {
                let names: Vec<&str> = fields.iter().map(String::as_str).collect();
                let now = self.clock.now();
                let removes = match &observed {
                    Some(seen) => ops::removes_any(seen.as_ref(), now, &names),
                    None => self
                        .store
                        .peek(&key, |e| ops::removes_any(Some(e), now, &names))
                        .unwrap_or(Ok(false)),
                };
                match removes {
                    Err(e) => return self.done(id, OpResult::Failed(e.to_string())),
                    Ok(false) => return self.done(id, OpResult::Unchanged),
                    Ok(true) => {}
                }
                self.write(id, &key, level, |clock, _, stored| {
                    let stored = stored.or(seen.as_ref());
                    map_remove_entry(clock, &key, stored, &names)
                });
            }
            OpKind::Increment { delta } => {
                self.write(id, &key, level, |clock, dots, stored| {
                    let stored = stored.or(seen.as_ref());
                    Ok(increment_entry(clock, dots, &key, stored, delta)?.0)
                });
            }
            _ => {}
        }
    }

    pub(super) fn write(
        &mut self,
        op: usize,
        key: &Key,
        level: Consistency,
        make: impl FnOnce(&Clock, &Dots, Option<&Entry>) -> Result<Entry, crate::error::Error>,
    ) {
        if level != Consistency::Local {
            if let Err(e) = self.clock.check_offset() {
                return self.done(op, OpResult::Failed(e.to_string()));
            }
        }
        let (clock, dots) = (&self.clock, &self.dots);
        let started = WriteCall::start(&self.id, &self.topology, &self.store, key, level, |s| {
            make(clock, dots, s)
        });
        let (call, routes) = match started {
            Ok(started) => started,
            Err(e) => return self.done(op, OpResult::Failed(e.to_string())),
        };
        let entry = call.entry();
        self.out.push(Out::Stamped {
            op,
            version: entry.version,
            delta: matches!(
                entry.payload,
                crate::crdt::Payload::Map(_) | crate::crdt::Payload::Counter(_)
            )
            .then(|| entry.clone()),
            expires_at: entry.expires_at,
        });
        let id = self.next_id();
        let entry = call.entry().clone();
        // ONE never fails for want of replicas: once the replicas awaited
        // have been silent for longer than they usually take, the write is
        // answered from its queued copies (each becomes a hint if delivery
        // fails), as production's is.
        let wait = match level {
            Consistency::One => self.latencies.longest_hedge(
                routes
                    .iter()
                    .filter(|(_, route)| *route == Route::Await)
                    .map(|(replica, _)| &**replica),
            ),
            _ => self.settings.request_timeout,
        };
        // The call waits before the deltas are queued: a full queue answers
        // at once.
        if call.decision() == Decision::Open {
            self.calls.insert(id, Call::Write { op, call });
            self.timer(wait, Timer::Call(id));
        } else {
            let result = finish_write(&call, "not waited for");
            self.done(op, result);
        }
        // One copy per remote region where the plan relays a copy nobody
        // waits for, as production's write does. A region whose copies
        // the request awaits still gets them directly here: the simulated
        // node does not relay awaited copies (docs/testing.md).
        let all = routes.clone();
        let latencies = &self.latencies;
        let relayed = relay::plan(routes, &self.topology, &self.id, |r| latencies.rtt(r));
        for replica in relayed.relays {
            self.relay(&replica, key.clone(), entry.clone());
        }
        let awaited_regions: Vec<&str> = relayed
            .awaited
            .iter()
            .map(|plan| self.topology.region_of(&plan.relay))
            .collect();
        let awaited_direct = all.into_iter().filter(|(replica, route)| {
            *route != Route::Hint && awaited_regions.contains(&self.topology.region_of(replica))
        });
        let direct: Vec<_> = relayed.direct.into_iter().chain(awaited_direct).collect();
        for (replica, route) in direct {
            let entry = entry.clone();
            match route {
                Route::Hint => self.hint(&replica, key.clone(), entry),
                Route::Push => self.push(&replica, key.clone(), entry, None),
                Route::Await => self.push(&replica, key.clone(), entry, Some(id)),
            }
        }
    }

    pub(super) fn read(&mut self, op: ClientOp) {
        match op.level {
            Consistency::Local => {
                let entry = self.store.get(&op.key);
                self.read_done(op, Ok(entry), 1);
            }
            Consistency::One | Consistency::LocalOne => self.read_one(op),
            Consistency::Quorum
            | Consistency::All
            | Consistency::LocalQuorum
            | Consistency::EachQuorum => {
                let (call, ask) = ReadCall::start(
                    &self.id,
                    &self.topology,
                    &self.store,
                    &op.key,
                    op.level,
                    self.clock.now(),
                    self.grace(),
                );
                let id = self.next_id();
                let key = op.key.clone();
                for replica in ask {
                    let req = Req::Read(key.clone());
                    self.call(
                        &replica.clone(),
                        Rpc::Read {
                            call: id,
                            peer: replica,
                        },
                        req,
                    );
                }
                self.calls.insert(id, Call::ReadMany { op, call });
                self.timer(self.settings.request_timeout, Timer::Call(id));
                self.settle_read(id);
            }
        }
    }

    /// Starts a read at ONE: a client's, or a write's `observe` (which, at
    /// ONE, gives up after [`OBSERVE_AT_ONE`] and builds on nothing, as
    /// production's does).
    pub(super) fn read_one(&mut self, op: ClientOp) {
        let level = one_level(&op);
        let latencies = &self.latencies;
        let call = ReadOne::start(&self.id, &self.topology, &op.key, level, |r| {
            latencies.rtt(r)
        });
        let id = self.next_id();
        if op.kind.is_write() && op.level == Consistency::One {
            self.timer(OBSERVE_AT_ONE, Timer::Call(id));
        }
        self.calls.insert(
            id,
            Call::ReadOne {
                op,
                call,
                hedge: None,
                parked: None,
                replan: false,
            },
        );
        self.read_one_next(id, false);
    }

    /// What a read found, or why it found nothing: the client's answer, as
    /// the production coordinator makes it of the entry, or, for a write
    /// that observed the key first, the write built on it. A write at ONE
    /// that no replica answered builds on nothing, as production's does.
    pub(super) fn read_done(
        &mut self,
        op: ClientOp,
        entry: Result<Option<Entry>, String>,
        replicas: usize,
    ) {
        let now = self.clock.now();
        let result = match (&op.kind, entry) {
            (kind, Ok(entry)) if kind.is_write() => return self.build(op, Some(entry)),
            (kind, Err(_)) if kind.is_write() && op.level == Consistency::One => {
                return self.build(op, Some(None))
            }
            (_, Err(e)) => OpResult::Failed(e),
            (OpKind::MapGet, Ok(entry)) => match ops::read_map(entry.as_ref(), now, &[]) {
                Ok(fields) => OpResult::MapRead { fields, replicas },
                Err(e) => OpResult::Failed(e.to_string()),
            },
            (OpKind::GetCounter, Ok(entry)) => match ops::read_counter(entry.as_ref(), now) {
                Ok(value) => OpResult::CounterRead { value, replicas },
                Err(e) => OpResult::Failed(e.to_string()),
            },
            (_, Ok(entry)) => OpResult::Read {
                read: Read::of(entry, now),
                replicas,
            },
        };
        self.done(op.id, result);
    }

    /// Asks the next replica of a ONE read, or answers from this node; when
    /// every replica has been asked and `hedged` (the newest request stayed
    /// silent past its hedge delay), asks a silent one again; when there is
    /// nobody to ask, waits for those still silent, or fails when none is.
    /// As production's `read_one` does.
    pub(super) fn read_one_next(&mut self, id: u64, hedged: bool) {
        let Some(Call::ReadOne {
            op,
            call,
            hedge,
            parked,
            replan,
        }) = self.calls.get_mut(&id)
        else {
            return;
        };
        let key = op.key.clone();
        let next = match call.next_replica() {
            None if hedged || !call.waiting() => call.ask_again(),
            next => next,
        };
        match next {
            None if call.waiting() => {
                if hedged {
                    *hedge = None;
                }
            }
            // A client's read that no replica answered waits for a newer
            // view, as production's `read_one_by_views` does.
            None if !op.kind.is_write() => {
                *parked = Some(call.unavailable().to_string());
                if !std::mem::replace(replan, true) {
                    self.timer(VIEW_WAIT_AT_ONE, Timer::Call(id));
                }
            }
            None => {
                let error = call.unavailable().to_string();
                if let Some(Call::ReadOne { op, .. }) = self.calls.remove(&id) {
                    self.read_done(op, Err(error), 0);
                }
            }
            Some(replica) if *replica == *self.id => {
                if let Some(Call::ReadOne { op, .. }) = self.calls.remove(&id) {
                    let entry = self.store.get(&key);
                    self.read_done(op, Ok(entry), 1);
                }
            }
            Some(replica) => {
                let after = self.latencies.read_hedge_after(&replica);
                let rpc = self.call(
                    &replica.clone(),
                    Rpc::Read {
                        call: id,
                        peer: replica,
                    },
                    Req::Read(key),
                );
                if let Some(Call::ReadOne { hedge, .. }) = self.calls.get_mut(&id) {
                    *hedge = Some(rpc);
                }
                self.timer(after, Timer::Hedge { call: id, rpc });
            }
        }
    }

    /// Reads at ONE that wait for a newer view, every replica having
    /// refused: each starts again by this one.
    pub(super) fn replan_reads(&mut self) {
        let parked: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                matches!(
                    c,
                    Call::ReadOne {
                        parked: Some(_),
                        ..
                    }
                )
            })
            .map(|(id, _)| *id)
            .collect();
        for id in parked {
            let latencies = &self.latencies;
            if let Some(Call::ReadOne {
                op, call, parked, ..
            }) = self.calls.get_mut(&id)
            {
                *call = ReadOne::start(&self.id, &self.topology, &op.key, one_level(op), |r| {
                    latencies.rtt(r)
                });
                *parked = None;
            }
            self.read_one_next(id, false);
        }
    }

    /// Answers a QUORUM or ALL read once it is decided.
    pub(super) fn settle_read(&mut self, id: u64) {
        if let Some(Call::ReadMany { call, .. }) = self.calls.get(&id) {
            if call.decision() != Decision::Open {
                self.finish_read(id, "not waited for (the level was decided)");
            }
        }
    }

    pub(super) fn finish_read(&mut self, id: u64, waiting: &str) {
        let Some(Call::ReadMany { op, call }) = self.calls.remove(&id) else {
            return;
        };
        match call.finish(waiting) {
            Err(e) => self.done(op.id, OpResult::Failed(e.to_string())),
            Ok(found) => {
                for (replica, newest) in found.repairs {
                    if *replica == *self.id {
                        self.store.merge(&op.key, newest);
                    } else {
                        self.push(&replica, op.key.clone(), newest, None);
                    }
                }
                self.read_done(op, Ok(found.entry), found.replicas);
            }
        }
    }

    /// A replica's answer to a write this node coordinates.
    pub(super) fn write_answer(&mut self, id: u64, replica: &str, answer: ReplicaAnswer) {
        let Some(Call::Write { call, .. }) = self.calls.get_mut(&id) else {
            return;
        };
        if call.record(replica, answer) != Decision::Open {
            self.finish_write_call(id, "not waited for (the level was decided)");
        }
    }

    pub(super) fn finish_write_call(&mut self, id: u64, waiting: &str) {
        if let Some(Call::Write { op, call }) = self.calls.remove(&id) {
            let result = finish_write(&call, waiting);
            self.done(op, result);
        }
    }

    /// A replica's silence past the request timeout on a read this node
    /// coordinates: at ONE the replica may be asked again, as
    /// production's `read_one` does on a timeout.
    pub(super) fn read_silent(&mut self, id: u64, peer: &Arc<str>, why: String) {
        match self.calls.get_mut(&id) {
            Some(Call::ReadOne { call, .. }) => {
                call.silent(peer, why);
                self.read_one_next(id, true);
            }
            Some(Call::ReadMany { .. }) => self.read_answer(id, peer, Err(why)),
            _ => {}
        }
    }

    pub(super) fn read_answer(
        &mut self,
        id: u64,
        peer: &Arc<str>,
        entry: Result<Option<Entry>, String>,
    ) {
        match self.calls.get_mut(&id) {
            Some(Call::ReadOne { call, .. }) => match entry {
                Ok(entry) => {
                    if let Some(Call::ReadOne { op, .. }) = self.calls.remove(&id) {
                        self.read_done(op, Ok(entry), 1);
                    }
                }
                Err(why) => {
                    call.failed(peer, why);
                    self.read_one_next(id, false);
                }
            },
            Some(Call::ReadMany { call, .. }) => {
                call.record(peer, entry);
                self.settle_read(id);
            }
            _ => {}
        }
    }
}

/// The level `op` reads at through [`ReadOne`]: a write at a regional level
/// reads its key in the region only, as production's `observe` does; any
/// other write reads at ONE; a read at its own level.
fn one_level(op: &ClientOp) -> Consistency {
    match op.level {
        Consistency::LocalOne | Consistency::LocalQuorum => Consistency::LocalOne,
        _ if op.kind.is_write() => Consistency::One,
        level => level,
    }
}

fn finish_write(call: &WriteCall, waiting: &str) -> OpResult {
    match call.finish(waiting) {
        Ok(written) => OpResult::Written(written),
        Err(e) => OpResult::Failed(e.to_string()),
    }
}
