//! Anti-entropy from a node: rounds of sessions with the peers it shares
//! partitions with, then handoffs of the partitions it no longer holds,
//! acknowledged collection, a tree check, and turning ready once filled,
//! as the production shell (`crate::anti_entropy::shell`) runs them.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::anti_entropy::plan::{filled, hand_offs, live_peers, shared_partitions};
use crate::anti_entropy::{merge_repairs, Initiator, Limits, Next, PartitionSet, Reply};

use super::{Out, Req, Rpc, SimNode, Timer};

/// One anti-entropy session's job: a peer and the partitions to compare,
/// as a round's sync or as a handoff.
pub(super) struct Job {
    peer: String,
    partitions: Vec<u32>,
    handoff: bool,
}

/// The anti-entropy round in progress.
pub(super) struct Round {
    jobs: VecDeque<Job>,
    handoffs_planned: bool,
    moved: BTreeSet<u32>,
    failed: BTreeSet<u32>,
    session: Option<(Job, Initiator, Instant)>,
}

impl SimNode {
    /// Starts a round now (or after the one running).
    pub(super) fn wake(&mut self) {
        if self.round.is_some() {
            self.wake_pending = true;
        } else {
            self.schedule_round(Duration::ZERO);
        }
    }

    pub(super) fn schedule_round(&mut self, after: Duration) {
        self.ae_timer += 1;
        self.timer(after, Timer::AntiEntropy(self.ae_timer));
    }

    pub(super) fn start_round(&mut self) {
        if self.round.is_some() {
            self.wake_pending = true;
            return;
        }
        for (peer, asked) in self.collector.outsiders(&self.id, &self.topology) {
            let req = Req::Holding(asked.clone());
            let at = self.now;
            self.call(&peer.clone(), Rpc::Holding { peer, asked, at }, req);
        }
        let ring = self.topology.ring();
        let jobs = live_peers(&self.topology, &self.id)
            .into_iter()
            .filter_map(|peer| {
                let shared = shared_partitions(ring, &self.id, &peer);
                (!shared.is_empty()).then(|| Job {
                    partitions: shared.as_slice().to_vec(),
                    peer,
                    handoff: false,
                })
            })
            .collect();
        self.round = Some(Round {
            jobs,
            handoffs_planned: false,
            moved: BTreeSet::new(),
            failed: BTreeSet::new(),
            session: None,
        });
        self.next_job();
    }

    /// Starts the round's next session, or ends the round.
    pub(super) fn next_job(&mut self) {
        let Some(round) = self.round.as_mut() else {
            return;
        };
        if round.jobs.is_empty() && !round.handoffs_planned {
            round.handoffs_planned = true;
            for (target, partitions) in hand_offs(&self.topology, &self.id, &self.store) {
                round.moved.extend(partitions.iter().copied());
                round.jobs.push_back(Job {
                    peer: target.to_string(),
                    partitions,
                    handoff: true,
                });
            }
        }
        let Some(job) = round.jobs.pop_front() else {
            return self.end_round();
        };
        let salt = self.clock.latest().time;
        let mut initiator = Initiator::new(
            PartitionSet::new(job.partitions.iter().copied()),
            Limits::default(),
            salt,
        );
        if job.handoff {
            initiator = initiator.handing_off();
        }
        let request = initiator.start(&self.store);
        let peer = job.peer.clone();
        round.session = Some((job, initiator, self.now));
        self.call(&peer, Rpc::Sync, Req::Sync(request));
    }

    /// The reply to the running session's last step.
    pub(super) fn session_step(&mut self, reply: Result<Reply, String>) {
        let grace = self.grace();
        let Some(round) = self.round.as_mut() else {
            return;
        };
        let Some((job, mut initiator, started)) = round.session.take() else {
            return;
        };
        let step = reply.and_then(|r| {
            initiator
                .on_reply(&self.store, r)
                .map_err(|e| e.to_string())
        });
        match step {
            Err(_) => {
                if job.handoff {
                    round.failed.extend(job.partitions.iter().copied());
                }
                self.next_job();
            }
            Ok(step) => {
                let changed = merge_repairs(&self.store, &self.clock, step.merge, grace, false);
                if let (Some(d), true) = (&self.disk, changed > 0) {
                    d.force_sync();
                }
                match step.next {
                    Next::Send(request) => {
                        let peer = job.peer.clone();
                        round.session = Some((job, initiator, started));
                        self.call(&peer, Rpc::Sync, Req::Sync(request));
                    }
                    Next::Done(_) => {
                        if !job.handoff {
                            self.collector.confirm(&job.peer, &job.partitions, started);
                            if !self.ready {
                                let peer = &job.peer;
                                self.synced
                                    .extend(job.partitions.iter().map(|p| (*p, peer.clone())));
                            }
                        }
                        self.next_job();
                    }
                }
            }
        }
    }

    /// After a round: drop what was handed off, collect acknowledged
    /// settled entries, check one tree, turn ready when filled, and set
    /// the next round.
    pub(super) fn end_round(&mut self) {
        let Some(round) = self.round.take() else {
            return;
        };
        for p in round.moved.difference(&round.failed) {
            self.store.drop_partition(*p);
        }
        // As the shell's: nothing while the wall clock is judged off.
        if self.clock.check_wall_offset().is_ok() {
            let collected = self.collector.collect(
                &self.id,
                &self.topology,
                &self.store,
                self.clock.now(),
                self.grace(),
                self.now,
            );
            if !collected.entries.is_empty() {
                self.out.push(Out::Collected(collected.entries));
            }
        }
        let p = self.next_check % self.settings.partitions;
        self.next_check = self.next_check.wrapping_add(1);
        if self.store.recompute_root(p) != self.store.root(p) {
            self.out.push(Out::TreeMismatch(p));
        }
        if !self.ready && filled(&self.topology, &self.id, &self.synced) {
            self.ready = true;
            self.out.push(Out::Ready);
        }
        let pause = if std::mem::take(&mut self.wake_pending) {
            Duration::ZERO
        } else if self.ready {
            self.settings.anti_entropy_interval
        } else {
            self.settings.syncing_retry
        };
        self.schedule_round(pause);
    }
}
