//! The simulated world: nodes, the network between them, virtual time and
//! the membership oracle, run as one queue of events on one thread.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::history::{Disruption, History, OpRecord, StampClock, ONE_DEADLINE};
use super::node::{ClientOp, Msg, OpKind, Out, Req, Resp, SimNode, Timer};
use super::rng::Rng;
use super::schedule::{Fault, Planned, PlannedFault};
use super::{time, Config};
use crate::cluster::Topology;
use crate::cluster::{Member, NodeState};
use crate::coordinator::Consistency;
use crate::crdt::{Entry, Version};
use crate::store::{Key, Store};

/// How long after the settle time the run may go on for the replicas to
/// agree before the checker is called anyway.
const QUIESCE_LIMIT: Duration = Duration::from_secs(30);

/// The longest a node takes to notice a change of membership or
/// reachability (the failure detector's delay), in microseconds.
const VIEW_DELAY_MAX_US: u64 = 1_000_000;

/// The one-way delay (microseconds) a message between regions `a` and `b`
/// takes on top of the local network's: none within a region, and a
/// different WAN latency for each pair of regions (7, 10 and 13 ms between
/// r0-r1, r0-r2 and r1-r2), so that nearest-first reads have a nearest.
pub fn wan_delay_us(a: usize, b: usize) -> u64 {
    if a == b {
        0
    } else {
        4_000 + 3_000 * (a + b) as u64
    }
}

/// Something that happens at an instant.
enum Event {
    Deliver {
        from: usize,
        to: usize,
        incarnation: u32,
        msg: Msg,
    },
    Timer {
        node: usize,
        incarnation: u32,
        timer: Timer,
    },
    Invoke(Planned),
    FinalRead {
        node: usize,
        key: usize,
        kind: OpKind,
    },
    Fault(PlannedFault),
    Heal(Heal),
    View(usize),
}

/// Undoing a fault.
enum Heal {
    Partition(u64),
    Restart(usize),
    Calm(u64),
    Clock(usize, u64),
}

/// Message loss, duplication and delay while a lossy fault lasts.
#[derive(Clone, Copy)]
struct Lossy {
    drop: u64,
    duplicate: u64,
    delay_us: u64,
}

/// One node's place in the world, up or down.
struct Slot {
    id: String,
    node: Option<SimNode>,
    incarnation: u32,
    member: bool,
    /// The state it last announced.
    ready: bool,
    /// The incarnation of its last life (0: never started).
    last_incarnation: u64,
    /// What its disk kept when it crashed, replayed when it restarts.
    kept: Vec<Vec<u8>>,
    /// The same, as a store, while it is down: the checker counts it as a
    /// copy of what it holds.
    disk_store: Option<Store>,
}

impl Slot {
    /// Every copy of `key` this slot holds: its running node's (store,
    /// queues, hints, calls), or while it is down its disk's.
    fn each_copy(&self, key: &str, mut f: impl FnMut(&Entry)) {
        if let Some(n) = &self.node {
            n.each_copy(key, f);
        } else if let Some(e) = self.disk_store.as_ref().and_then(|s| s.get(key)) {
            f(&e);
        }
    }

    /// The entry at `key` in its store, or while it is down on its disk.
    fn stored(&self, key: &str) -> Option<Entry> {
        match &self.node {
            Some(n) => n.store.get(key),
            None => self.disk_store.as_ref().and_then(|s| s.get(key)),
        }
    }
}

/// The world of one run.
pub struct World {
    config: Config,
    rng: Rng,
    epoch: Instant,
    now: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Event>,
    slots: Vec<Slot>,
    /// The links each active partition cuts, by partition number;
    /// partitions overlap.
    cuts: BTreeMap<u64, BTreeSet<(usize, usize)>>,
    partition_gen: u64,
    lossy: Option<Lossy>,
    lossy_gen: u64,
    clock_gen: Vec<u64>,
    /// Per node, the furthest its wall clock has read (NTP64).
    wall_high: Vec<u64>,
    /// Everything that happened.
    pub history: History,
    /// Tree mismatches nodes reported: (node, partition).
    pub tree_mismatches: Vec<(String, u32)>,
    /// Per ONE read pending, its coordinator and the replicas that have
    /// been up, ready and linked to it since it was invoked
    /// ([`History::replicas_gone`]).
    reads_watched: BTreeMap<usize, (usize, Vec<usize>)>,
}

impl World {
    /// A world of `config.nodes` nodes forming one cluster (and room for
    /// the nodes that may join), its randomness from `rng`.
    pub fn new(config: Config, rng: Rng) -> Self {
        let total = config.nodes + config.joiners;
        time::reset(total);
        let slots = (0..total)
            .map(|i| Slot {
                id: format!("n{}", i + 1),
                node: None,
                incarnation: 0,
                member: i < config.nodes,
                ready: true,
                last_incarnation: 0,
                kept: Vec::new(),
                disk_store: None,
            })
            .collect();
        // Every node routes by the new placement, and the new replicas have
        // had three rounds to fill.
        let placement_settles =
            VIEW_DELAY_MAX_US + 3 * config.settings.anti_entropy_interval.as_micros() as u64;
        let mut world = Self {
            config,
            rng,
            epoch: Instant::now(),
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            slots,
            cuts: BTreeMap::new(),
            partition_gen: 0,
            lossy: None,
            lossy_gen: 0,
            clock_gen: vec![0; total],
            wall_high: vec![0; total],
            history: History {
                placement_settles,
                ..History::default()
            },
            tree_mismatches: Vec::new(),
            reads_watched: BTreeMap::new(),
        };
        for i in 0..world.config.nodes {
            world.boot(i, true);
        }
        // The cluster has formed: every founder sees every other.
        for i in 0..world.config.nodes {
            let view = world.view_of(Some(i));
            world.with_node(i, |n| n.set_topology(view));
        }
        world
    }

    /// Runs `ops` and `faults`, heals everything at the end of the chaos
    /// window, reads every key from every node after the heal, and stops
    /// once the settle time has passed.
    pub fn run(&mut self, ops: Vec<Planned>, faults: Vec<PlannedFault>) {
        for op in ops {
            self.at(op.at, Event::Invoke(op));
        }
        for fault in faults {
            self.at(fault.at, Event::Fault(fault));
        }
        let heal = self.config.chaos.as_micros() as u64;
        let end = heal + self.config.settle.as_micros() as u64;
        let final_reads = end - 2_000_000;
        self.run_until(heal);
        self.heal_all();
        self.run_until(final_reads);
        for node in 0..self.slots.len() {
            let typed = self.config.typed_keys;
            let reads = (0..self.config.keys)
                .map(|key| (key, OpKind::Get))
                .chain((0..typed).map(|key| (key, OpKind::MapGet)))
                .chain((0..typed).map(|key| (key, OpKind::GetCounter)));
            for (key, kind) in reads {
                self.at(final_reads, Event::FinalRead { node, key, kind });
            }
        }
        self.run_until(end);
        // Collection (of tombstones, expired values, removed map fields) may
        // still be under way on some replicas: give the cluster a bounded
        // while more to agree.
        let limit = end + QUIESCE_LIMIT.as_micros() as u64;
        while !self.converged() && self.now < limit {
            self.run_until(self.now + 500_000);
        }
    }

    /// Whether every partition's replicas hold equal trees, every key the
    /// workload touched is held alike by its replicas, and no node up holds
    /// a partition it does not replicate. Equal trees are not enough: a
    /// map's digest covers its live fields only, so replicas that have and
    /// have not yet pruned a settled removed field agree on the tree while
    /// each prunes in its own round (docs/tombstones.md).
    pub fn converged(&self) -> bool {
        let truth = self.truth();
        let ring = truth.ring();
        let trees = (0..ring.partitions()).all(|p| {
            let mut roots = self.up().into_iter().filter_map(|i| {
                let node = self.node(i)?;
                let replica = ring.is_replica(p, &node.id);
                (replica || node.store.partition_len(p) > 0).then(|| (replica, node.store.root(p)))
            });
            let first = roots.next();
            first.is_none_or(|(r, root)| r && roots.all(|(r, x)| r && x == root))
        });
        let keys: BTreeSet<&Key> = self.history.ops.iter().map(|op| &op.key).collect();
        trees
            && keys.into_iter().all(|key| {
                let replicas = truth.replicas(key);
                let mut held = self
                    .up()
                    .into_iter()
                    .filter_map(|i| self.node(i))
                    .filter(|n| replicas.iter().any(|r| **r == *n.id))
                    .map(|n| n.store.get(key));
                let first = held.next();
                first.is_none_or(|e| held.all(|x| x == e))
            })
    }

    /// The nodes up and members now, by index.
    pub fn up(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].member && self.slots[i].node.is_some())
            .collect()
    }

    /// Node `i`, when up.
    pub fn node(&self, i: usize) -> Option<&SimNode> {
        self.slots[i].node.as_ref()
    }

    /// The true topology: every member, alive when up.
    pub fn truth(&self) -> Topology {
        self.view_of(None)
    }

    /// Virtual microseconds now.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The settings every node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn run_until(&mut self, until: u64) {
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > until {
                break;
            }
            let ((at, _), event) = entry.remove_entry();
            self.now = at;
            time::advance_to(at);
            self.handle(event);
        }
        self.now = until;
        time::advance_to(until);
    }

    fn at(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.events.insert((at.max(self.now), self.seq), event);
    }

    fn after(&mut self, d: Duration, event: Event) {
        self.at(self.now + d.as_micros() as u64, event);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver {
                from,
                to,
                incarnation,
                msg,
            } => {
                if self.slots[to].incarnation != incarnation || self.is_cut(from, to) {
                    return;
                }
                let from_id = self.slots[from].id.clone();
                self.with_node(to, |n| n.receive(&from_id, msg));
            }
            Event::Timer {
                node,
                incarnation,
                timer,
            } => {
                if self.slots[node].incarnation == incarnation {
                    self.with_node(node, |n| n.fire(timer));
                }
            }
            Event::Invoke(planned) => self.invoke(planned),
            Event::FinalRead { node, key, kind } => {
                if self.slots[node].member && self.slots[node].node.is_some() {
                    let op = self.record(node, key, kind, Consistency::All, true);
                    self.with_node(node, |n| n.invoke(op));
                }
            }
            Event::Fault(f) => {
                self.inject(f);
                self.watch_reads();
            }
            Event::Heal(heal) => self.heal(heal),
            Event::View(i) => {
                if self.slots[i].node.is_some() {
                    let view = self.view_of(Some(i));
                    self.with_node(i, |n| n.set_topology(view));
                }
            }
        }
    }

    /// Runs `f` on node `i` (when up) as the running node, then carries out
    /// what it asked for.
    fn with_node(&mut self, i: usize, f: impl FnOnce(&mut SimNode)) {
        let now = self.epoch + Duration::from_micros(self.now);
        let Some(node) = self.slots[i].node.as_mut() else {
            return;
        };
        time::run_as(i);
        node.set_now(now);
        f(node);
        let out = std::mem::take(&mut node.out);
        for o in out {
            self.carry_out(i, o);
        }
    }

    fn carry_out(&mut self, i: usize, out: Out) {
        let incarnation = self.slots[i].incarnation;
        match out {
            Out::Send { to, msg } => self.send(i, &to, msg),
            Out::Timer { after, timer } => self.after(
                after,
                Event::Timer {
                    node: i,
                    incarnation,
                    timer,
                },
            ),
            Out::Stamped {
                op,
                version,
                delta,
                expires_at,
            } => {
                let wall = time::wall(i);
                self.wall_high[i] = self.wall_high[i].max(wall);
                self.history.ops[op].stamped = Some(version);
                self.history.ops[op].delta = delta;
                self.history.ops[op].clock = Some(StampClock {
                    at: self.now,
                    true_time: time::true_ntp64(self.now),
                    wall,
                    wall_high: self.wall_high[i],
                    offset_us: time::offset(i),
                    expires_at,
                });
            }
            Out::Done { op, result } => self.history.ops[op].ended = Some((self.now, result)),
            Out::Ready => {
                self.slots[i].ready = true;
                let id = self.slots[i].id.clone();
                self.history.note(self.now, format!("{id} is ready"));
                // The node publishes its own new state at once, as
                // production's announcement does; peers learn it later.
                self.at(self.now, Event::View(i));
                self.views_change();
            }
            Out::HintsExpired => self.mark_lost(),
            Out::Collected(entries) => self.history.collected.extend(entries),
            Out::TreeMismatch(p) => {
                let id = self.slots[i].id.clone();
                self.tree_mismatches.push((id, p));
            }
        }
    }

    /// Puts a message on the network: refused at once over a cut link or to
    /// a node that is down (a request's caller learns it), otherwise
    /// delivered after a delay, unless lost; perhaps twice.
    fn send(&mut self, from: usize, to_id: &str, msg: Msg) {
        let Some(to) = self.slots.iter().position(|s| s.id == to_id) else {
            return;
        };
        let refused = if self.is_cut(from, to) {
            Some("link cut")
        } else if self.slots[to].node.is_none() {
            Some("connection refused")
        } else {
            None
        };
        if let Some(why) = refused {
            if let Msg::Request { rpc, .. } = msg {
                let incarnation = self.slots[from].incarnation;
                self.after(
                    Duration::ZERO,
                    Event::Timer {
                        node: from,
                        incarnation,
                        timer: Timer::Refused(rpc, why.into()),
                    },
                );
            }
            return;
        }
        let copies = match self.lossy {
            Some(l) if self.rng.percent(l.drop) => 0,
            Some(l) if self.rng.percent(l.duplicate) => 2,
            _ => 1,
        };
        let incarnation = self.slots[to].incarnation;
        let wan = wan_delay_us(self.region(from), self.region(to));
        for _ in 0..copies {
            let mut delay = wan + self.rng.between(100, 1_500);
            if let Some(l) = self.lossy {
                delay += self.rng.below(l.delay_us);
            }
            self.at(
                self.now + delay,
                Event::Deliver {
                    from,
                    to,
                    incarnation,
                    msg: msg.clone(),
                },
            );
        }
    }

    fn invoke(&mut self, planned: Planned) {
        let up = self.up();
        let Some(&node) = up.get((planned.pick % up.len().max(1) as u64) as usize) else {
            return;
        };
        let op = self.record(node, planned.key, planned.kind, planned.level, false);
        self.with_node(node, |n| n.invoke(op));
    }

    /// Adds an operation to the history and returns it to invoke.
    fn record(
        &mut self,
        node: usize,
        key: usize,
        kind: OpKind,
        level: Consistency,
        after_heal: bool,
    ) -> ClientOp {
        let id = self.history.ops.len();
        let kind = match kind {
            OpKind::Set { ttl_ms, .. } => OpKind::Set {
                value: format!("v{id}"),
                ttl_ms,
            },
            OpKind::MapSet { fields } => OpKind::MapSet {
                fields: fields
                    .into_iter()
                    .map(|(name, _)| (name, format!("v{id}")))
                    .collect(),
            },
            other => other,
        };
        let prefix = match kind {
            OpKind::MapSet { .. } | OpKind::MapRemove { .. } | OpKind::MapGet => "m",
            OpKind::Increment { .. } | OpKind::GetCounter => "c",
            _ => "k",
        };
        let key: Key = format!("{prefix}{key}").into();
        if level == Consistency::One && !kind.is_write() {
            let reachable = self.reachable_replicas(node, &key);
            if reachable.is_empty() {
                self.history.no_replica.insert(id);
            } else {
                self.reads_watched.insert(id, (node, reachable));
            }
        }
        if self.lossy.is_some() {
            self.history.lossy.insert(id);
        }
        self.history.ops.push(OpRecord {
            id,
            node: self.slots[node].id.clone(),
            key: key.clone(),
            kind: kind.clone(),
            level,
            invoked: self.now,
            stamped: None,
            delta: None,
            clock: None,
            ended: None,
            after_heal,
        });
        ClientOp {
            id,
            key,
            kind,
            level,
        }
    }

    /// The ready replicas of `key` (by the true placement) that are up
    /// and linked to node `from`, or are `from`: those a read at ONE there
    /// can be answered by.
    fn reachable_replicas(&self, from: usize, key: &str) -> Vec<usize> {
        let truth = self.truth();
        let replicas = truth.replicas(key);
        (0..self.slots.len())
            .filter(|&j| replicas.iter().any(|r| **r == *self.slots[j].id))
            .filter(|&j| self.linked(from, j))
            .collect()
    }

    /// Whether node `j` is up and ready, and is node `from` or linked to it.
    fn linked(&self, from: usize, j: usize) -> bool {
        let s = &self.slots[j];
        s.node.is_some() && s.ready && (j == from || !self.is_cut(from, j))
    }

    /// After a fault: drops from each ONE read pending the replicas it
    /// can no longer reach, and marks the reads left with none
    /// ([`History::replicas_gone`]).
    fn watch_reads(&mut self) {
        let now = self.now;
        let watched = std::mem::take(&mut self.reads_watched);
        for (id, (node, mut replicas)) in watched {
            let op = &self.history.ops[id];
            if op.ended.is_some() || now > op.invoked + ONE_DEADLINE {
                continue;
            }
            // Only going down or being cut off takes a replica away (not a
            // placement change: the coordinator may still ask it).
            replicas.retain(|&j| self.linked(node, j));
            if replicas.is_empty() {
                self.history.replicas_gone.insert(id);
            } else {
                self.reads_watched.insert(id, (node, replicas));
            }
        }
    }

    // --- Membership ----------------------------------------------------------

    /// Starts node `i` empty: ready when it starts the cluster, syncing
    /// when it joins or restarts.
    fn boot(&mut self, i: usize, ready: bool) {
        self.slots[i].ready = ready;
        let view = self.view_of(Some(i));
        let now = self.epoch + Duration::from_micros(self.now);
        time::run_as(i);
        let last = self.slots[i].last_incarnation;
        let kept = std::mem::take(&mut self.slots[i].kept);
        self.slots[i].disk_store = None;
        let node = SimNode::start(
            &self.slots[i].id,
            self.config.settings,
            view,
            ready,
            now,
            last,
            kept,
        );
        self.slots[i].last_incarnation = node.incarnation();
        self.slots[i].node = Some(node);
        self.with_node(i, |_| {});
    }

    /// The membership node `viewer` sees (or the truth, for `None`): every
    /// member, alive when up and not cut off from the viewer.
    fn view_of(&self, viewer: Option<usize>) -> Topology {
        let members = (0..self.slots.len())
            .filter(|&j| self.slots[j].member)
            .map(|j| {
                let slot = &self.slots[j];
                let alive = slot.node.is_some() && viewer.is_none_or(|v| !self.is_cut(v, j));
                Member {
                    id: slot.id.clone(),
                    address: String::new(),
                    peer_address: String::new(),
                    region: region_name(self.region(j)),
                    state: if slot.ready {
                        NodeState::Ready
                    } else {
                        NodeState::Syncing
                    },
                    alive,
                    generation: u64::from(slot.incarnation),
                }
            })
            .collect();
        let s = &self.config.settings;
        Topology::new(members, s.partitions, s.replication())
    }

    /// Tells every node up of a change, each after its own detection delay.
    fn views_change(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].node.is_some() {
                let delay = self.rng.between(50_000, VIEW_DELAY_MAX_US);
                self.at(self.now + delay, Event::View(i));
            }
        }
    }

    /// The region of node `i` (an index into the slots).
    pub fn region(&self, i: usize) -> usize {
        i % self.config.regions.max(1)
    }

    /// The region of the node with id `id` (0 for an unknown id).
    pub fn region_of(&self, id: &str) -> usize {
        self.slots
            .iter()
            .position(|s| s.id == id)
            .map_or(0, |i| self.region(i))
    }

    // --- Faults --------------------------------------------------------------

    fn is_cut(&self, a: usize, b: usize) -> bool {
        let pair = (a.min(b), a.max(b));
        self.cuts.values().any(|cut| cut.contains(&pair))
    }

    fn inject(&mut self, planned: PlannedFault) {
        let lasts = planned.lasts;
        match planned.fault {
            Fault::Halves { pick } => {
                let nodes = self.shuffled_members(pick);
                let (a, b) = nodes.split_at(nodes.len() / 2);
                self.partition(&[a, b], &[], lasts);
            }
            Fault::Isolate { pick } => {
                let nodes = self.shuffled_members(pick);
                if let Some((one, rest)) = nodes.split_first() {
                    self.partition(&[std::slice::from_ref(one), rest], &[], lasts);
                }
            }
            Fault::CutRegion { pick } => {
                let regions = self.config.regions.max(1);
                let cut = (pick % regions as u64) as usize;
                let (inside, outside): (Vec<usize>, Vec<usize>) = (0..self.slots.len())
                    .filter(|&i| self.slots[i].member)
                    .partition(|&i| self.region(i) == cut);
                self.history
                    .note(self.now, format!("region {} cut off", region_name(cut)));
                self.partition(&[&inside, &outside], &[], lasts);
            }
            Fault::Bridge { pick } => {
                let nodes = self.shuffled_members(pick);
                if let Some((bridge, rest)) = nodes.split_first() {
                    let (a, b) = rest.split_at(rest.len() / 2);
                    self.partition(&[a, b], &[*bridge], lasts);
                }
            }
            Fault::Crash { pick, down } => {
                let up = self.up();
                if up.len() <= 1 {
                    return;
                }
                let i = up[(pick % up.len() as u64) as usize];
                self.crash(i, "crashes (memory lost)");
                self.after(down, Event::Heal(Heal::Restart(i)));
            }
            Fault::Lossy {
                drop,
                duplicate,
                delay,
            } => {
                self.lossy = Some(Lossy {
                    drop,
                    duplicate,
                    delay_us: delay.as_micros() as u64,
                });
                self.lossy_gen += 1;
                self.history.note(
                    self.now,
                    format!(
                        "network drops {drop}%, duplicates {duplicate}%, delays up to {delay:?}"
                    ),
                );
                self.after(lasts, Event::Heal(Heal::Calm(self.lossy_gen)));
            }
            Fault::ClockJump { pick, offset_us } => {
                let up = self.up();
                let Some(&i) = up.get((pick % up.len().max(1) as u64) as usize) else {
                    return;
                };
                self.set_offset(i, offset_us);
                self.clock_gen[i] += 1;
                let id = self.slots[i].id.clone();
                self.history
                    .note(self.now, format!("{id}'s clock jumps {offset_us}us"));
                self.after(lasts, Event::Heal(Heal::Clock(i, self.clock_gen[i])));
            }
            Fault::JoinDuringPartition { pick } => {
                let Some(i) = (0..self.slots.len())
                    .find(|&i| !self.slots[i].member && self.slots[i].incarnation == 0)
                else {
                    return;
                };
                self.inject(PlannedFault {
                    at: self.now,
                    lasts,
                    fault: Fault::Halves { pick },
                });
                self.slots[i].member = true;
                let id = self.slots[i].id.clone();
                self.history.note(self.now, format!("{id} joins"));
                self.history
                    .disruptions
                    .push((self.now, Disruption::Placement));
                self.boot(i, false);
                self.views_change();
            }
            Fault::LeaveDuringPartition { pick } => {
                let up = self.up();
                if up.len() <= self.truth().ring().replication_factor() {
                    return;
                }
                self.inject(PlannedFault {
                    at: self.now,
                    lasts,
                    fault: Fault::Halves { pick },
                });
                let i = up[(pick % up.len() as u64) as usize];
                self.with_node(i, |n| n.leave());
                self.slots[i].member = false;
                self.history
                    .disruptions
                    .push((self.now, Disruption::Placement));
                self.crash(i, "leaves the cluster");
                // A node that left never comes back with what it held.
                self.slots[i].kept.clear();
                self.slots[i].disk_store = None;
                self.mark_unheld();
                self.mark_lost();
            }
        }
    }

    /// Cuts every link between different `sides`, except those of the
    /// `bridges`, which keep their links to every side.
    fn partition(&mut self, sides: &[&[usize]], bridges: &[usize], lasts: Duration) {
        let mut cut = BTreeSet::new();
        for (x, a) in sides.iter().enumerate() {
            for b in sides.iter().skip(x + 1) {
                for &i in a.iter() {
                    for &j in b.iter() {
                        cut.insert((i.min(j), i.max(j)));
                    }
                }
            }
        }
        self.partition_gen += 1;
        self.cuts.insert(self.partition_gen, cut);
        let name = |w: &Self, nodes: &[usize]| {
            nodes
                .iter()
                .map(|&i| w.slots[i].id.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let described: Vec<String> = sides
            .iter()
            .map(|s| format!("{{{}}}", name(self, s)))
            .collect();
        let bridge = if bridges.is_empty() {
            String::new()
        } else {
            format!(" bridged by {}", name(self, bridges))
        };
        self.history.note(
            self.now,
            format!(
                "partition #{} {}{bridge}",
                self.partition_gen,
                described.join(" | ")
            ),
        );
        self.after(lasts, Event::Heal(Heal::Partition(self.partition_gen)));
        self.views_change();
    }

    fn shuffled_members(&self, pick: u64) -> Vec<usize> {
        let mut nodes: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].member)
            .collect();
        let mut rng = Rng::new(pick);
        for i in (1..nodes.len()).rev() {
            nodes.swap(i, rng.below(i as u64 + 1) as usize);
        }
        nodes
    }

    /// Takes node `i` down, losing its memory, and marks the writes whose
    /// every copy went with it.
    fn crash(&mut self, i: usize, what: &str) {
        let Some(node) = self.slots[i].node.take() else {
            return;
        };
        let kept = node.kept(self.epoch + Duration::from_micros(self.now));
        drop(node);
        self.slots[i].disk_store = (!kept.is_empty())
            .then(|| super::disk::store_of(self.config.settings.partitions, &kept));
        let what = if self.config.settings.disk == super::disk::DiskMode::Memory {
            what.to_string()
        } else {
            format!("{what}; its disk keeps {} records", kept.len())
        };
        self.slots[i].kept = kept;
        self.slots[i].incarnation += 1;
        let id = self.slots[i].id.clone();
        let now = self.now;
        let pending: Vec<usize> = self
            .history
            .ops
            .iter()
            .filter(|op| op.node == id && op.ended.is_none() && now < op.invoked + ONE_DEADLINE)
            .map(|op| op.id)
            .collect();
        self.history.coordinator_lost.extend(pending);
        self.history.note(self.now, format!("{id} {what}"));
        self.mark_unheld();
        self.mark_lost();
        self.views_change();
    }

    /// Marks every acknowledged write that no node's store holds any more
    /// (nor a newer version of its key): every replica that had it lost its
    /// memory. A read after that may miss it; one before may not.
    fn mark_unheld(&mut self) {
        let now = self.now;
        let unheld: Vec<usize> = self
            .history
            .ops
            .iter()
            .filter(|op| {
                op.written()
                    .is_some_and(|(at, w)| at <= now && w.replicas > 0)
            })
            .filter(|op| !self.history.unheld.iter().any(|&(o, _)| o == op.id))
            .filter(|op| {
                !self.slots.iter().any(|s| {
                    s.stored(&op.key).is_some_and(|e| match &op.delta {
                        Some(delta) => holds(&e, delta),
                        None => op.stamped.is_some_and(|v| e.version >= v),
                    })
                })
            })
            .map(|op| op.id)
            .collect();
        self.history
            .unheld
            .extend(unheld.into_iter().map(|op| (op, now)));
    }

    /// Marks every stamped write of which no copy (nor a newer version of
    /// its key) survives anywhere: in a store, a queue, a hint, a call that
    /// may be retried, or a message on the network. Called when copies are
    /// destroyed: a crash, a leave, hints aging out. A tombstone or expired
    /// value that some node collected is never marked: collection removes
    /// it by design, and the checker must still see it if an older value
    /// comes back.
    fn mark_lost(&mut self) {
        let typed: Vec<usize> = self
            .history
            .ops
            .iter()
            .filter(|op| !self.history.is_lost(op.id))
            .filter(|op| {
                op.delta.as_ref().is_some_and(|delta| {
                    !self.slots.iter().any(|s| {
                        let mut held = false;
                        s.each_copy(&op.key, |e| held |= holds(e, delta));
                        held
                    }) && !self.events.values().any(|event| match event {
                        Event::Deliver { msg, .. } => entries_in(msg)
                            .iter()
                            .any(|(k, e)| **k == op.key && holds(e, delta)),
                        _ => false,
                    })
                })
            })
            .map(|op| op.id)
            .collect();
        let now = self.now;
        self.history
            .lost
            .extend(typed.into_iter().map(|op| (op, now)));
        let mut greatest: BTreeMap<Key, Version> = BTreeMap::new();
        let keys: BTreeSet<Key> = self.history.ops.iter().map(|op| op.key.clone()).collect();
        for key in &keys {
            let mut best: Option<Version> = None;
            for slot in &self.slots {
                slot.each_copy(key, |e| best = best.max(Some(e.version)));
            }
            if let Some(v) = best {
                greatest.insert(key.clone(), v);
            }
        }
        for event in self.events.values() {
            if let Event::Deliver { msg, .. } = event {
                for (key, entry) in entries_in(msg) {
                    let slot = greatest.entry(key.clone()).or_default();
                    *slot = (*slot).max(entry.version);
                }
            }
        }
        let now = self.now;
        let lost: Vec<usize> = self
            .history
            .ops
            .iter()
            .filter(|op| op.is_write() && op.delta.is_none() && !self.history.is_lost(op.id))
            .filter(|op| {
                !op.stamped
                    .is_some_and(|v| self.history.collected.contains(&(op.key.clone(), v)))
            })
            .filter(|op| {
                op.stamped
                    .is_some_and(|v| greatest.get(&op.key).is_none_or(|g| *g < v))
            })
            .map(|op| op.id)
            .collect();
        self.history
            .lost
            .extend(lost.into_iter().map(|op| (op, now)));
    }

    fn heal(&mut self, heal: Heal) {
        match heal {
            Heal::Partition(gen) => {
                if self.cuts.remove(&gen).is_some() {
                    self.history
                        .note(self.now, format!("partition #{gen} healed"));
                    self.views_change();
                }
            }
            Heal::Restart(i) => self.restart(i),
            Heal::Calm(gen) => {
                if gen == self.lossy_gen && self.lossy.take().is_some() {
                    self.history.note(self.now, "network calm");
                }
            }
            Heal::Clock(i, gen) => {
                if gen == self.clock_gen[i] && time::offset(i) != 0 {
                    self.set_offset(i, 0);
                    let id = self.slots[i].id.clone();
                    self.history
                        .note(self.now, format!("{id}'s clock is true again"));
                }
            }
        }
    }

    /// Sets node `i`'s clock offset, noting how far its wall clock had read.
    fn set_offset(&mut self, i: usize, offset_us: i64) {
        self.wall_high[i] = self.wall_high[i].max(time::wall(i));
        time::set_offset(i, offset_us);
    }

    fn restart(&mut self, i: usize) {
        if self.slots[i].member && self.slots[i].node.is_none() {
            let id = self.slots[i].id.clone();
            self.history.note(self.now, format!("{id} restarts empty"));
            self.boot(i, false);
            self.views_change();
        }
    }

    /// The end of the chaos: links restored, the network calm, clocks true,
    /// crashed members restarted.
    fn heal_all(&mut self) {
        self.history.note(self.now, "final heal");
        self.cuts.clear();
        self.lossy = None;
        self.partition_gen += 1;
        self.lossy_gen += 1;
        for i in 0..self.slots.len() {
            self.set_offset(i, 0);
            self.clock_gen[i] += 1;
            self.restart(i);
        }
        self.views_change();
    }
}

/// Whether `copy` holds what the map or counter write `delta` wrote: a
/// counter of its generation that counts its increment, or a map of its
/// generation whose every field's context covers the delta's and which
/// keeps no add the delta superseded or removed. A copy that superseded the write holds it too;
/// a copy whose removed fields were pruned after the grace no longer does.
pub fn holds(copy: &Entry, delta: &Entry) -> bool {
    use crate::crdt::Payload;
    match (&copy.payload, &delta.payload) {
        (Payload::Counter(c), Payload::Counter(d)) => {
            let held = super::checker::counter_dots(c);
            c.generation() == d.generation()
                && super::checker::counter_dots(d)
                    .iter()
                    .all(|dot| held.contains(dot))
        }
        (Payload::Map(c), Payload::Map(d)) => {
            c.generation() == d.generation()
                && d.fields().all(|(name, df)| {
                    c.field(name).is_some_and(|cf| {
                        let covered = |ctx: &[(crate::crdt::Actor, u64)], actor, t| {
                            ctx.iter().any(|(a, ct)| *a == actor && *ct >= t)
                        };
                        df.context()
                            .iter()
                            .all(|&(a, t)| covered(cf.context(), a, t))
                            && cf.adds().iter().all(|add| {
                                df.adds().contains(add)
                                    || !covered(df.context(), add.actor, add.time)
                            })
                    })
                })
        }
        _ => false,
    }
}

/// The entries a message carries (deltas, repairs), for the search for
/// surviving copies.
fn entries_in(msg: &Msg) -> Vec<(&Key, &Entry)> {
    use crate::anti_entropy::{Reply, Request};
    match msg {
        Msg::Request {
            req: Req::Apply(deltas) | Req::Relay(deltas),
            ..
        } => deltas.iter().map(|(k, e)| (k, e)).collect(),
        Msg::Request {
            req: Req::Sync(Request::Repair { entries, .. }),
            ..
        } => entries.iter().map(|(k, e)| (k, e)).collect(),
        Msg::Response {
            resp: Resp::Sync(Ok(Reply::Entries { entries, .. })),
            ..
        } => entries.iter().map(|(k, e)| (k, e)).collect(),
        _ => Vec::new(),
    }
}

/// The label of region `r`.
fn region_name(r: usize) -> String {
    format!("r{r}")
}
