//! The initiator's side of a session: a state machine that sends one
//! request at a time, checks each reply against the request it answers, and
//! says what to merge and what to send next.

use std::collections::{HashSet, VecDeque};

use crate::crdt::Entry;
use crate::keyspace::{Flow, Stamp};
use crate::store::Key;

use super::{
    entry_size, fingerprint, fingerprinted, group_digest, LeafId, LeafVersions, Limits, LocalStore,
    PartitionSet, Reply, Request, SessionError, Wanted, BRANCHES, GROUP_PARTITIONS,
    LEAVES_PER_BRANCH,
};
use crate::sync_message::{
    summary_size, BRANCHES_ITEM, EMPTY_REPAIR_REQUEST, EMPTY_REQUEST, EMPTY_VERSIONS_REQUEST,
    LEAF_ID_ITEM, WANTED_ITEM,
};

/// Keys read from the replica at a time while filling a repair message.
const READ_BATCH: usize = 64;

/// What a session found and did, for logs, Stats and cost figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Requests answered.
    pub round_trips: u32,
    /// Shared partitions whose roots were compared.
    pub partitions_compared: u32,
    /// Partitions whose roots differed.
    pub partitions_differing: u32,
    /// Branches whose digests differed.
    pub branches_differing: u32,
    /// Leaves whose digests differed (their version lists were compared).
    pub leaves_differing: u32,
    /// Entries sent for the responder to merge.
    pub keys_sent: u64,
    /// Entries received for this replica to merge.
    pub keys_received: u64,
    /// Keys left out because another key of their leaf had the same
    /// fingerprint; the next session, with another salt, repairs them.
    pub ambiguous_keys: u64,
    /// Estimated bytes of the requests sent.
    pub bytes_sent: u64,
    /// Estimated bytes of the replies received.
    pub bytes_received: u64,
}

/// What the caller does after a reply: merge these entries into the local
/// replica, then send the next request or close the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Entries from the responder to merge locally (may be empty).
    pub merge: Vec<(Key, Entry)>,
    /// What comes next.
    pub next: Next,
}

/// The next move of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send this request and feed its reply to [`Initiator::on_reply`].
    Send(Request),
    /// The session is over; both replicas now hold the join of what they
    /// held for the compared partitions (as of the messages exchanged).
    Done(SessionStats),
}

/// The initiator of one session with one peer, over the partitions both
/// hold. Drive it with [`start`](Self::start), then
/// [`on_reply`](Self::on_reply) for each reply until [`Next::Done`] or an
/// error. It reads the local replica at every step, so writes that land
/// meanwhile are simply part of what is compared next.
pub struct Initiator {
    partitions: PartitionSet,
    limits: Limits,
    salt: u64,
    handoff: bool,
    work: Work,
    awaiting: Option<Awaiting>,
    stats: SessionStats,
}

/// What is left to do, level by level; each queue is kept ascending, which
/// the responder requires of every list.
#[derive(Default)]
struct Work {
    /// Partitions whose roots are still to be compared.
    summarize: VecDeque<u32>,
    /// Partitions whose roots differ: their branches are to be compared.
    branches: VecDeque<u32>,
    /// Leaves whose digests differ: their version lists are to be compared.
    leaves: VecDeque<LeafId>,
    /// Where the list of the first leaf in `leaves` resumes, when an earlier
    /// reply cut it.
    after: Option<u64>,
    /// Keys whose entries the responder needs, not yet read.
    push: VecDeque<Key>,
    /// Entries read for the responder, not yet sent.
    outbox: VecDeque<(Key, Entry)>,
    /// Keys wanted from the responder.
    pull: VecDeque<Wanted>,
}

/// The request in flight, as much of it as checking its reply needs.
enum Awaiting {
    Roots {
        partitions: Vec<u32>,
    },
    Leaves {
        partitions: Vec<u32>,
    },
    Versions {
        leaves: Vec<LeafId>,
        after: Option<u64>,
    },
    Entries {
        wanted: Vec<Wanted>,
    },
}

impl Awaiting {
    fn kind(&self) -> &'static str {
        match self {
            Awaiting::Roots { .. } => "Roots",
            Awaiting::Leaves { .. } => "Leaves",
            Awaiting::Versions { .. } => "Versions",
            Awaiting::Entries { .. } => "Entries",
        }
    }
}

fn bad(why: String) -> SessionError {
    SessionError::BadReply(why)
}

/// Puts `rest` back at the front of `queue`, in order.
fn requeue<T>(queue: &mut VecDeque<T>, rest: impl DoubleEndedIterator<Item = T>) {
    for item in rest.rev() {
        queue.push_front(item);
    }
}

impl Initiator {
    /// A session over the `shared` partitions, with messages within
    /// `limits`. `salt` seeds the key fingerprints: give every session a
    /// fresh one (the simulator from its seeded RNG), so that two keys
    /// whose fingerprints collide in one session do not in the next.
    pub fn new(shared: PartitionSet, limits: Limits, salt: u64) -> Self {
        Self {
            partitions: shared,
            limits,
            salt,
            handoff: false,
            work: Work::default(),
            awaiting: None,
            stats: SessionStats::default(),
        }
    }

    /// The same session as a handoff: this node no longer replicates the
    /// partitions and drops them once the session succeeds, so its repairs
    /// ask the responder to keep settled entries too.
    pub fn handing_off(mut self) -> Self {
        self.handoff = true;
        self
    }

    /// The first request: the summary of the shared partitions. Calling it
    /// again restarts the session from scratch (after a timeout, say): every
    /// step is safe to repeat because merge is idempotent.
    pub fn start(&mut self, store: &impl LocalStore) -> Request {
        self.work = Work {
            summarize: self.partitions.as_slice().iter().copied().collect(),
            ..Work::default()
        };
        self.stats = SessionStats::default();
        self.summary(store)
    }

    /// Takes the reply to the request last sent. Returns the entries to
    /// merge locally and the next request, or the end of the session.
    ///
    /// A reply that does not match its request (another kind, partitions or
    /// leaves not asked for, indexes out of range, lists out of order, no
    /// progress) ends the session with an error; nothing of that reply is
    /// to be merged. So does a reply when none is awaited.
    pub fn on_reply(
        &mut self,
        store: &impl LocalStore,
        reply: Reply,
    ) -> Result<Step, SessionError> {
        let awaiting = self.awaiting.take().ok_or(SessionError::NotAwaiting)?;
        self.stats.round_trips += 1;
        self.stats.bytes_received += reply.wire_size() as u64;
        let merge = match (awaiting, reply) {
            (Awaiting::Roots { partitions }, Reply::Roots { groups, covered }) => {
                self.on_roots(store, partitions, groups, covered)
            }
            (Awaiting::Leaves { partitions }, Reply::Leaves { branches, covered }) => {
                self.on_leaves(store, partitions, branches, covered)
            }
            (Awaiting::Versions { leaves, after }, Reply::Versions { leaves: lists }) => {
                self.on_versions(store, leaves, after, lists)
            }
            (Awaiting::Entries { wanted }, Reply::Entries { entries, covered }) => {
                self.on_entries(wanted, entries, covered)
            }
            (awaiting, reply) => Err(SessionError::UnexpectedReply {
                expected: awaiting.kind(),
                got: reply.kind(),
            }),
        };
        let merge = merge.inspect_err(|_| self.work = Work::default())?;
        let next = match self.next_request(store) {
            Some(request) => Next::Send(request),
            None => Next::Done(self.stats.clone()),
        };
        Ok(Step { merge, next })
    }

    /// What the session has found and done so far.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    fn budget(&self) -> usize {
        self.limits.max_message_bytes
    }

    fn send(&mut self, request: Request, awaiting: Awaiting) -> Request {
        self.stats.bytes_sent += request.wire_size() as u64;
        self.awaiting = Some(awaiting);
        request
    }

    /// The next request: the rest of the summary first, then branches, then
    /// version lists, with a repair once the version lists are done or
    /// whenever the keys to repair pile up to about a message's worth (64
    /// bytes a key), which bounds what a large repair holds in memory.
    fn next_request(&mut self, store: &impl LocalStore) -> Option<Request> {
        loop {
            if !self.work.summarize.is_empty() {
                return Some(self.summary(store));
            }
            if !self.work.branches.is_empty() {
                return Some(self.branches(store));
            }
            let w = &self.work;
            let backlog = w.push.len() + w.outbox.len() + w.pull.len();
            if backlog > 0 && (w.leaves.is_empty() || backlog >= (self.budget() / 64).max(1)) {
                match self.repair(store) {
                    Some(request) => return Some(request),
                    // The keys to send are gone from the replica; go on.
                    None => continue,
                }
            }
            if !self.work.leaves.is_empty() {
                return Some(self.versions());
            }
            return None;
        }
    }

    fn summary(&mut self, store: &impl LocalStore) -> Request {
        let bitmap = self
            .work
            .summarize
            .back()
            .map_or(0, |&p| p as usize / 8 + 1);
        let fixed = EMPTY_REQUEST + summary_size(bitmap, 0);
        // 16 bytes a group digest.
        let groups = (self.budget().saturating_sub(fixed) / 16).max(1);
        let take = self.work.summarize.len().min(groups * GROUP_PARTITIONS);
        let sent: Vec<u32> = self.work.summarize.drain(..take).collect();
        let groups = sent
            .chunks(GROUP_PARTITIONS)
            .map(|group| group_digest(store, group))
            .collect();
        let request = Request::Summary {
            partitions: PartitionSet::new(sent.iter().copied()),
            groups,
            max_reply_bytes: self.max_reply(),
        };
        self.send(request, Awaiting::Roots { partitions: sent })
    }

    fn on_roots(
        &mut self,
        store: &impl LocalStore,
        sent: Vec<u32>,
        groups: Vec<(u32, Vec<u128>)>,
        covered: u32,
    ) -> Result<Vec<(Key, Entry)>, SessionError> {
        let chunks: Vec<&[u32]> = sent.chunks(GROUP_PARTITIONS).collect();
        let covered = covered as usize;
        if covered > chunks.len() || (covered == 0 && !chunks.is_empty()) {
            return Err(bad(format!(
                "Roots covers {covered} groups of the {} asked about",
                chunks.len()
            )));
        }
        let mut last = None;
        for (i, roots) in &groups {
            let i = *i as usize;
            if i >= covered || last.is_some_and(|l| l >= i) {
                return Err(bad(format!(
                    "Roots names group {i}, out of order or beyond the {covered} covered"
                )));
            }
            if roots.len() != chunks[i].len() {
                return Err(bad(format!(
                    "Roots has {} roots for group {i} of {} partitions",
                    roots.len(),
                    chunks[i].len()
                )));
            }
            last = Some(i);
        }
        for (i, roots) in groups {
            for (&p, theirs) in chunks[i as usize].iter().zip(roots) {
                if store.root(p) != theirs {
                    self.work.branches.push_back(p);
                    self.stats.partitions_differing += 1;
                }
            }
        }
        let done = (covered * GROUP_PARTITIONS).min(sent.len());
        self.stats.partitions_compared += done as u32;
        requeue(&mut self.work.summarize, sent[done..].iter().copied());
        Ok(Vec::new())
    }

    fn branches(&mut self, store: &impl LocalStore) -> Request {
        let room = self.budget().saturating_sub(EMPTY_REQUEST) / BRANCHES_ITEM;
        let take = self.work.branches.len().min(room.max(1));
        let sent: Vec<u32> = self.work.branches.drain(..take).collect();
        let request = Request::Branches {
            partitions: sent.iter().map(|&p| (p, store.branches(p))).collect(),
            max_reply_bytes: self.max_reply(),
        };
        self.send(request, Awaiting::Leaves { partitions: sent })
    }

    fn on_leaves(
        &mut self,
        store: &impl LocalStore,
        sent: Vec<u32>,
        branches: Vec<(u32, u8, [u128; LEAVES_PER_BRANCH])>,
        covered: u32,
    ) -> Result<Vec<(Key, Entry)>, SessionError> {
        let covered = covered as usize;
        if covered == 0 || covered > sent.len() {
            return Err(bad(format!(
                "Leaves covers {covered} of the {} partitions asked about",
                sent.len()
            )));
        }
        let asked: HashSet<u32> = sent[..covered].iter().copied().collect();
        let mut last = None;
        for &(p, b, _) in &branches {
            if !asked.contains(&p) || b as usize >= BRANCHES || last.is_some_and(|l| l >= (p, b)) {
                return Err(bad(format!(
                    "Leaves names branch {b} of partition {p}: not asked about, out of range or out of order"
                )));
            }
            last = Some((p, b));
        }
        self.stats.branches_differing += branches.len() as u32;
        for (p, b, theirs) in branches {
            let mine = store.leaves(p, b);
            for i in 0..LEAVES_PER_BRANCH {
                if mine[i] != theirs[i] {
                    let leaf = b * LEAVES_PER_BRANCH as u8 + i as u8;
                    self.work.leaves.push_back(LeafId { partition: p, leaf });
                    self.stats.leaves_differing += 1;
                }
            }
        }
        requeue(&mut self.work.branches, sent[covered..].iter().copied());
        Ok(Vec::new())
    }

    fn versions(&mut self) -> Request {
        let room = self.budget().saturating_sub(EMPTY_VERSIONS_REQUEST) / LEAF_ID_ITEM;
        let take = self.work.leaves.len().min(room.max(1));
        let sent: Vec<LeafId> = self.work.leaves.drain(..take).collect();
        let after = self.work.after.take();
        let request = Request::Versions {
            salt: self.salt,
            leaves: sent.clone(),
            after,
            max_reply_bytes: self.max_reply(),
        };
        self.send(
            request,
            Awaiting::Versions {
                leaves: sent,
                after,
            },
        )
    }

    fn on_versions(
        &mut self,
        store: &impl LocalStore,
        sent: Vec<LeafId>,
        after: Option<u64>,
        lists: Vec<LeafVersions>,
    ) -> Result<Vec<(Key, Entry)>, SessionError> {
        if lists.is_empty() || lists.len() > sent.len() {
            return Err(bad(format!(
                "Versions lists {} leaves of the {} asked about",
                lists.len(),
                sent.len()
            )));
        }
        for (i, list) in lists.iter().enumerate() {
            if list.leaf != sent[i] {
                return Err(bad(format!(
                    "Versions lists {:?} where {:?} was asked about",
                    list.leaf, sent[i]
                )));
            }
            let first = if i == 0 { after } else { None };
            let mut last = first;
            for &(fp, _) in &list.versions {
                if last.is_some_and(|l| l >= fp) {
                    return Err(bad(format!(
                        "Versions list of {:?} is out of order or repeats the previous reply",
                        list.leaf
                    )));
                }
                last = Some(fp);
            }
            if !list.complete && (i + 1 < lists.len() || list.versions.is_empty()) {
                return Err(bad(format!(
                    "Versions cuts the list of {:?} before its last leaf or without progress",
                    list.leaf
                )));
            }
        }
        // Join each list with this replica's, one store call per partition.
        let mut resumed = after;
        for run in lists.chunk_by(|a, b| a.leaf.partition == b.leaf.partition) {
            let indexes: Vec<u8> = run.iter().map(|l| l.leaf.leaf).collect();
            let mine = fingerprinted(store, self.salt, run[0].leaf.partition, &indexes);
            for (theirs, mine) in run.iter().zip(mine) {
                // A resumed leaf had its ambiguous keys counted already.
                if resumed.is_none() {
                    self.stats.ambiguous_keys += mine.ambiguous;
                }
                self.join(theirs, mine.keys, resumed.take());
            }
        }
        let last = lists.last().expect("checked non-empty");
        let done = lists.len() - usize::from(!last.complete);
        self.work.after = (!last.complete).then(|| last.versions.last().expect("checked").0);
        requeue(&mut self.work.leaves, sent[done..].iter().copied());
        Ok(Vec::new())
    }

    /// Joins the responder's list of a leaf with this replica's, over the
    /// fingerprints it covers: above `after`, and up to its last one when it
    /// was cut.
    fn join(&mut self, theirs: &LeafVersions, mine: Vec<(u64, Stamp, Key)>, after: Option<u64>) {
        let upto = if theirs.complete {
            u64::MAX
        } else {
            theirs.versions.last().map_or(0, |v| v.0)
        };
        let leaf = theirs.leaf;
        let mut mine = mine
            .into_iter()
            .filter(|&(fp, _, _)| after.is_none_or(|a| fp > a) && fp <= upto)
            .peekable();
        let mut theirs = theirs.versions.iter().peekable();
        let want = |fingerprint| Wanted { leaf, fingerprint };
        loop {
            match (mine.peek(), theirs.peek()) {
                (Some(m), Some(&&(fp, stamp))) if m.0 == fp => {
                    let (_, mine_stamp, key) = mine.next().expect("peeked");
                    theirs.next();
                    match mine_stamp.flow(&stamp) {
                        Flow::InSync => {}
                        Flow::Push => self.work.push.push_back(key),
                        Flow::Pull => self.work.pull.push_back(want(fp)),
                        Flow::Both => {
                            self.work.push.push_back(key);
                            self.work.pull.push_back(want(fp));
                        }
                    }
                }
                (Some(m), Some(&&(fp, _))) if m.0 > fp => {
                    self.work.pull.push_back(want(fp));
                    theirs.next();
                }
                (Some(_), _) => self.work.push.push_back(mine.next().expect("peeked").2),
                (None, Some(&&(fp, _))) => {
                    self.work.pull.push_back(want(fp));
                    theirs.next();
                }
                (None, None) => break,
            }
        }
    }

    fn repair(&mut self, store: &impl LocalStore) -> Option<Request> {
        let budget = self.budget();
        let w = &mut self.work;
        let room = (budget / 2 / WANTED_ITEM).max(1);
        let wanted: Vec<Wanted> = w.pull.drain(..w.pull.len().min(room)).collect();
        let mut size = EMPTY_REPAIR_REQUEST + wanted.len() * WANTED_ITEM;
        let mut entries = Vec::new();
        loop {
            let Some((key, entry)) = w.outbox.front() else {
                if w.push.is_empty() {
                    break;
                }
                let keys: Vec<Key> = w.push.drain(..w.push.len().min(READ_BATCH)).collect();
                let names: Vec<&str> = keys.iter().map(|k| &**k).collect();
                w.outbox.extend(store.entries(&names));
                continue;
            };
            let cost = entry_size(key, entry);
            if !(entries.is_empty() && wanted.is_empty()) && size + cost > budget {
                break;
            }
            size += cost;
            entries.extend(w.outbox.pop_front());
        }
        if entries.is_empty() && wanted.is_empty() {
            return None;
        }
        self.stats.keys_sent += entries.len() as u64;
        let request = Request::Repair {
            salt: self.salt,
            entries,
            wanted: wanted.clone(),
            max_reply_bytes: self.max_reply(),
            handoff: self.handoff,
        };
        Some(self.send(request, Awaiting::Entries { wanted }))
    }

    fn on_entries(
        &mut self,
        sent: Vec<Wanted>,
        entries: Vec<(Key, Entry)>,
        covered: u32,
    ) -> Result<Vec<(Key, Entry)>, SessionError> {
        let covered = covered as usize;
        if covered > sent.len() || (covered == 0 && !sent.is_empty()) || entries.len() > covered {
            return Err(bad(format!(
                "Entries covers {covered} of the {} keys asked for with {} entries",
                sent.len(),
                entries.len()
            )));
        }
        let asked: HashSet<u64> = sent[..covered].iter().map(|w| w.fingerprint).collect();
        let mut seen = HashSet::new();
        for (key, _) in &entries {
            if !asked.contains(&fingerprint(self.salt, key)) || !seen.insert(&**key) {
                return Err(bad(format!(
                    "Entries holds {key:?}, which was not asked for or comes twice"
                )));
            }
        }
        self.stats.keys_received += entries.len() as u64;
        requeue(&mut self.work.pull, sent[covered..].iter().copied());
        Ok(entries)
    }

    fn max_reply(&self) -> u32 {
        u32::try_from(self.budget()).unwrap_or(u32::MAX)
    }
}
