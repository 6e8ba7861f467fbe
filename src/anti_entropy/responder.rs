//! The responder's side of a session: one stateless function that answers
//! each request from the replica alone, so that the server side is a plain
//! request handler that keeps nothing between messages.

use std::collections::HashMap;

use crate::crdt::Entry;
use crate::store::Key;

use super::{
    fingerprinted, group_digest, LeafId, LeafVersions, Limits, LocalStore, Reply, Request,
    SessionError, Wanted, BRANCHES, GROUP_PARTITIONS,
};
use crate::sync_message::{
    leaf_versions_item, leaf_versions_size, roots_item, EMPTY_REPLY, LEAVES_ITEM, STATE_ITEM,
    VERSION_ITEM,
};

/// The responder's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    /// The reply to send back.
    pub reply: Reply,
    /// Entries the initiator sent (in a [`Request::Repair`]) for this replica
    /// to merge; the caller merges them.
    pub merge: Vec<(Key, Entry)>,
    /// Whether they come from a handoff, whose sender drops its copy: then
    /// settled entries are kept too (see [`merge_repairs`]).
    ///
    /// [`merge_repairs`]: super::merge_repairs
    pub handoff: bool,
}

/// Answers `request` from `store`, within the smaller of the request's
/// `max_reply_bytes` and `limits`.
///
/// A request that breaks the protocol (a group count that does not match
/// its partitions, lists out of order) is refused with
/// [`SessionError::BadRequest`]; the shell reports it to the peer and logs
/// it. Nothing here panics on any input.
pub fn respond(
    store: &impl LocalStore,
    request: Request,
    limits: Limits,
) -> Result<Handled, SessionError> {
    let budget = request.max_reply_bytes().min(limits.max_message_bytes);
    let reply = match request {
        Request::Summary {
            partitions, groups, ..
        } => {
            if groups.len() != partitions.groups() {
                return Err(bad(format!(
                    "Summary has {} group digests for {} partitions; groups of {GROUP_PARTITIONS} make {}",
                    groups.len(),
                    partitions.len(),
                    partitions.groups()
                )));
            }
            roots(store, partitions.as_slice(), &groups, budget)
        }
        Request::Branches { partitions, .. } => {
            ascending(partitions.iter().map(|(p, _)| p), "Branches partitions")?;
            leaves(store, &partitions, budget)
        }
        Request::Versions {
            salt,
            leaves,
            after,
            ..
        } => {
            ascending(leaves.iter(), "Versions leaves")?;
            versions(store, salt, &leaves, after, budget)
        }
        Request::Repair {
            salt,
            entries,
            wanted,
            handoff,
            ..
        } => {
            ascending(wanted.iter(), "Repair wanted keys")?;
            return Ok(Handled {
                reply: wanted_entries(store, salt, &wanted, budget),
                merge: entries,
                handoff,
            });
        }
    };
    Ok(Handled {
        reply,
        merge: Vec::new(),
        handoff: false,
    })
}

fn bad(why: String) -> SessionError {
    SessionError::BadRequest(why)
}

/// Checks that `items` are strictly ascending.
fn ascending<T: Ord>(items: impl Iterator<Item = T>, what: &str) -> Result<(), SessionError> {
    let mut last = None;
    for item in items {
        if last.as_ref().is_some_and(|l| *l >= item) {
            return Err(bad(format!("{what} are not strictly ascending")));
        }
        last = Some(item);
    }
    Ok(())
}

/// Whether an item of `cost` bytes still goes into a reply of `size` bytes
/// that already answers `covered` items: always the first, then while the
/// budget lasts.
fn fits(covered: usize, size: usize, cost: usize, budget: usize) -> bool {
    covered == 0 || size + cost <= budget
}

fn roots(store: &impl LocalStore, partitions: &[u32], digests: &[u128], budget: usize) -> Reply {
    let mut groups = Vec::new();
    let mut size = EMPTY_REPLY;
    let mut covered = 0;
    for (i, (group, &theirs)) in partitions.chunks(GROUP_PARTITIONS).zip(digests).enumerate() {
        if group_digest(store, group) != theirs {
            let cost = roots_item(group.len());
            if !fits(covered, size, cost, budget) {
                break;
            }
            size += cost;
            groups.push((i as u32, group.iter().map(|&p| store.root(p)).collect()));
        }
        covered += 1;
    }
    Reply::Roots {
        groups,
        covered: covered as u32,
    }
}

fn leaves(store: &impl LocalStore, partitions: &[(u32, [u128; BRANCHES])], budget: usize) -> Reply {
    let mut branches = Vec::new();
    let mut size = EMPTY_REPLY;
    let mut covered = 0;
    for (p, theirs) in partitions {
        let mine = store.branches(*p);
        let differing: Vec<u8> = (0..BRANCHES as u8)
            .filter(|&b| mine[b as usize] != theirs[b as usize])
            .collect();
        let cost = differing.len() * LEAVES_ITEM;
        if !fits(covered, size, cost, budget) {
            break;
        }
        size += cost;
        branches.extend(differing.into_iter().map(|b| (*p, b, store.leaves(*p, b))));
        covered += 1;
    }
    Reply::Leaves {
        branches,
        covered: covered as u32,
    }
}

fn versions(
    store: &impl LocalStore,
    salt: u64,
    leaves: &[LeafId],
    after: Option<u64>,
    budget: usize,
) -> Reply {
    let mut out: Vec<LeafVersions> = Vec::new();
    let mut size = Reply::Versions { leaves: Vec::new() }.wire_size();
    // One store call per run of leaves of the same partition.
    'runs: for run in leaves.chunk_by(|a, b| a.partition == b.partition) {
        let indexes: Vec<u8> = run.iter().map(|l| l.leaf).collect();
        let lists = fingerprinted(store, salt, run[0].partition, &indexes);
        for (&leaf, list) in run.iter().zip(lists) {
            let mut list: Vec<_> = list.keys.into_iter().map(|(fp, v, _)| (fp, v)).collect();
            if out.is_empty() {
                if let Some(after) = after {
                    list.retain(|&(fp, _)| fp > after);
                }
            }
            let full = leaf_versions_size(&list);
            if size + full <= budget || out.is_empty() && list.len() <= 1 {
                size += full;
                out.push(LeafVersions {
                    leaf,
                    versions: list,
                    complete: true,
                });
                continue;
            }
            // Cut the list: as many as fit, and at least one in an otherwise
            // empty reply so that every reply makes progress.
            let (frame, per_item) = if list.iter().any(|(_, s)| s.state != 0) {
                (2, VERSION_ITEM + STATE_ITEM)
            } else {
                (0, VERSION_ITEM)
            };
            let room = budget.saturating_sub(size + leaf_versions_item(0) + frame) / per_item;
            let take = if out.is_empty() { room.max(1) } else { room };
            if take > 0 {
                list.truncate(take);
                out.push(LeafVersions {
                    leaf,
                    versions: list,
                    complete: false,
                });
            }
            break 'runs;
        }
    }
    Reply::Versions { leaves: out }
}

fn wanted_entries(store: &impl LocalStore, salt: u64, wanted: &[Wanted], budget: usize) -> Reply {
    let mut entries = Vec::new();
    let mut size = EMPTY_REPLY;
    let mut covered = 0;
    'runs: for run in wanted.chunk_by(|a, b| a.leaf.partition == b.leaf.partition) {
        let mut indexes: Vec<u8> = run.iter().map(|w| w.leaf.leaf).collect();
        indexes.dedup();
        let lists = fingerprinted(store, salt, run[0].leaf.partition, &indexes);
        let mut keys: HashMap<(u8, u64), Key> = HashMap::new();
        for (&leaf, list) in indexes.iter().zip(lists) {
            keys.extend(list.keys.into_iter().map(|(fp, _, key)| ((leaf, fp), key)));
        }
        let names: Vec<Option<&Key>> = run
            .iter()
            .map(|w| keys.get(&(w.leaf.leaf, w.fingerprint)))
            .collect();
        let found: Vec<&str> = names.iter().flatten().map(|k| &***k).collect();
        let mut held: HashMap<Key, Entry> = store.entries(&found).into_iter().collect();
        for name in names {
            if let Some(entry) = name.and_then(|k| held.remove_entry(k)) {
                let cost = super::entry_size(&entry.0, &entry.1);
                if !fits(covered, size, cost, budget) {
                    break 'runs;
                }
                size += cost;
                entries.push(entry);
            }
            covered += 1;
        }
    }
    Reply::Entries {
        entries,
        covered: covered as u32,
    }
}
