//! Anti-entropy messages on the wire: the session's Rust types to and from
//! `proto/cluster.proto`, checked on the way in. A peer that sends a
//! malformed step gets an error, never a panic.

use crate::config::MAX_PARTITIONS;
use crate::crdt::Version;
use crate::keyspace::Stamp;
use crate::proto::cluster as wire;
use crate::proto::cluster::sync_reply::Step as ReplyStep;
use crate::proto::cluster::sync_request::Step as RequestStep;
use crate::sync_message::{
    LeafId, LeafVersions, PartitionSet, Reply, Request, Wanted, GROUP_PARTITIONS,
};

use super::wire::{from_wire, to_wire, WireError};

/// Why a sync message from a peer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SyncWireError {
    /// The message has no step.
    #[error("sync message without a step")]
    NoStep,
    /// A digest list whose length is not a multiple of 16, or not the
    /// count the step needs.
    #[error("sync message with {0} digest bytes where {1} were expected")]
    Digests(usize, usize),
    /// An index out of its range.
    #[error("sync message with {what} {value}; the limit is {limit}")]
    Range {
        /// What the index is.
        what: &'static str,
        /// Its value.
        value: u32,
        /// The greatest allowed.
        limit: u32,
    },
    /// Parallel arrays of different lengths.
    #[error("sync version list with {0} fingerprints, {1} times and {2} nodes")]
    Ragged(usize, usize, usize),
    /// A list of states that is neither empty nor one per fingerprint.
    #[error("sync version list with {0} fingerprints and {1} states")]
    RaggedStates(usize, usize),
    /// A bad entry.
    #[error(transparent)]
    Entry(#[from] WireError),
}

fn digests_to_bytes(digests: &[u128]) -> Vec<u8> {
    digests.iter().flat_map(|d| d.to_le_bytes()).collect()
}

fn digests_from_bytes(bytes: &[u8]) -> Result<Vec<u128>, SyncWireError> {
    if bytes.len() % 16 != 0 {
        return Err(SyncWireError::Digests(bytes.len(), bytes.len() / 16 * 16));
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|c| {
            let mut b = [0u8; 16];
            b.copy_from_slice(c);
            u128::from_le_bytes(b)
        })
        .collect())
}

/// Checks a summary's sizes without expanding it: a bitmap no longer than
/// [`MAX_PARTITIONS`] needs, and one group digest per
/// [`GROUP_PARTITIONS`] partitions it names.
fn summary_sizes(bitmap: &[u8], groups: &[u8]) -> Result<(), SyncWireError> {
    let limit = MAX_PARTITIONS / 8;
    if bitmap.len() > limit as usize {
        return Err(SyncWireError::Range {
            what: "partition bitmap bytes",
            value: u32::try_from(bitmap.len()).unwrap_or(u32::MAX),
            limit,
        });
    }
    let partitions: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
    let expected = partitions.div_ceil(GROUP_PARTITIONS) * 16;
    if groups.len() != expected {
        return Err(SyncWireError::Digests(groups.len(), expected));
    }
    Ok(())
}

fn sixteen(bytes: &[u8]) -> Result<[u128; 16], SyncWireError> {
    let v = digests_from_bytes(bytes)?;
    <[u128; 16]>::try_from(v.as_slice()).map_err(|_| SyncWireError::Digests(bytes.len(), 256))
}

fn small(what: &'static str, value: u32, limit: u32) -> Result<u8, SyncWireError> {
    if value > limit {
        return Err(SyncWireError::Range { what, value, limit });
    }
    Ok(value as u8)
}

fn leaf_to_wire(l: LeafId) -> wire::LeafRef {
    wire::LeafRef {
        partition: l.partition,
        leaf: u32::from(l.leaf),
    }
}

fn leaf_from_wire(l: Option<wire::LeafRef>) -> Result<LeafId, SyncWireError> {
    let l = l.unwrap_or_default();
    Ok(LeafId {
        partition: l.partition,
        leaf: small("leaf", l.leaf, 255)?,
    })
}

fn entries_from_wire(
    entries: Vec<wire::Entry>,
) -> Result<Vec<(crate::store::Key, crate::crdt::Entry)>, SyncWireError> {
    Ok(entries
        .into_iter()
        .map(from_wire)
        .collect::<Result<_, _>>()?)
}

/// A session request for the wire, with the sender's header.
pub fn request_to_wire(header: wire::Header, request: &Request) -> wire::SyncRequest {
    let step = match request {
        Request::Summary {
            partitions, groups, ..
        } => RequestStep::Summary(wire::SummaryStep {
            partitions: partitions.to_bitmap(),
            groups: digests_to_bytes(groups),
        }),
        Request::Branches { partitions, .. } => RequestStep::Branches(wire::BranchesStep {
            partitions: partitions
                .iter()
                .map(|(p, d)| wire::PartitionDigests {
                    partition: *p,
                    digests: digests_to_bytes(d),
                })
                .collect(),
        }),
        Request::Versions {
            salt,
            leaves,
            after,
            ..
        } => RequestStep::Versions(wire::VersionsStep {
            salt: *salt,
            leaves: leaves.iter().copied().map(leaf_to_wire).collect(),
            after: *after,
        }),
        Request::Repair {
            salt,
            entries,
            wanted,
            handoff,
            ..
        } => RequestStep::Repair(wire::RepairStep {
            salt: *salt,
            handoff: *handoff,
            entries: entries.iter().map(|(k, e)| to_wire(k, e)).collect(),
            wanted: wanted
                .iter()
                .map(|w| wire::WantedKey {
                    leaf: Some(leaf_to_wire(w.leaf)),
                    fingerprint: w.fingerprint,
                })
                .collect(),
        }),
    };
    wire::SyncRequest {
        header: Some(header),
        max_reply_bytes: request.max_reply_bytes() as u32,
        step: Some(step),
    }
}

/// A session request from the wire, checked.
pub fn request_from_wire(r: wire::SyncRequest) -> Result<Request, SyncWireError> {
    let max_reply_bytes = r.max_reply_bytes;
    Ok(match r.step.ok_or(SyncWireError::NoStep)? {
        RequestStep::Summary(s) => {
            // Checked before the bitmap is expanded: each byte names up to
            // 8 partitions of 4 bytes each.
            summary_sizes(&s.partitions, &s.groups)?;
            Request::Summary {
                partitions: PartitionSet::from_bitmap(&s.partitions),
                groups: digests_from_bytes(&s.groups)?,
                max_reply_bytes,
            }
        }
        RequestStep::Branches(b) => Request::Branches {
            partitions: b
                .partitions
                .into_iter()
                .map(|p| Ok((p.partition, sixteen(&p.digests)?)))
                .collect::<Result<_, SyncWireError>>()?,
            max_reply_bytes,
        },
        RequestStep::Versions(v) => Request::Versions {
            salt: v.salt,
            leaves: v
                .leaves
                .into_iter()
                .map(|l| leaf_from_wire(Some(l)))
                .collect::<Result<_, _>>()?,
            after: v.after,
            max_reply_bytes,
        },
        RequestStep::Repair(rp) => Request::Repair {
            salt: rp.salt,
            entries: entries_from_wire(rp.entries)?,
            wanted: rp
                .wanted
                .into_iter()
                .map(|w| {
                    Ok(Wanted {
                        leaf: leaf_from_wire(w.leaf)?,
                        fingerprint: w.fingerprint,
                    })
                })
                .collect::<Result<_, SyncWireError>>()?,
            max_reply_bytes,
            handoff: rp.handoff,
        },
    })
}

/// A session reply for the wire.
pub fn reply_to_wire(reply: &Reply) -> wire::SyncReply {
    let step = match reply {
        Reply::Roots { groups, covered } => ReplyStep::Roots(wire::RootsStep {
            groups: groups
                .iter()
                .map(|(g, roots)| wire::GroupRoots {
                    group: *g,
                    roots: digests_to_bytes(roots),
                })
                .collect(),
            covered: *covered,
        }),
        Reply::Leaves { branches, covered } => ReplyStep::Leaves(wire::LeavesStep {
            branches: branches
                .iter()
                .map(|(p, b, d)| wire::BranchLeaves {
                    partition: *p,
                    branch: u32::from(*b),
                    digests: digests_to_bytes(d),
                })
                .collect(),
            covered: *covered,
        }),
        Reply::Versions { leaves } => ReplyStep::Versions(wire::VersionListsStep {
            leaves: leaves
                .iter()
                .map(|l| wire::LeafVersionList {
                    leaf: Some(leaf_to_wire(l.leaf)),
                    fingerprints: l.versions.iter().map(|(f, _)| *f).collect(),
                    times: l.versions.iter().map(|(_, v)| v.version.time).collect(),
                    nodes: l.versions.iter().map(|(_, v)| v.version.node).collect(),
                    complete: l.complete,
                    states: if l.versions.iter().any(|(_, v)| v.state != 0) {
                        l.versions.iter().map(|(_, v)| v.state).collect()
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
        }),
        Reply::Entries { entries, covered } => ReplyStep::Entries(wire::EntriesStep {
            entries: entries.iter().map(|(k, e)| to_wire(k, e)).collect(),
            covered: *covered,
        }),
    };
    wire::SyncReply { step: Some(step) }
}

/// A session reply from the wire, checked.
pub fn reply_from_wire(r: wire::SyncReply) -> Result<Reply, SyncWireError> {
    Ok(match r.step.ok_or(SyncWireError::NoStep)? {
        ReplyStep::Roots(s) => Reply::Roots {
            groups: s
                .groups
                .into_iter()
                .map(|g| Ok((g.group, digests_from_bytes(&g.roots)?)))
                .collect::<Result<_, SyncWireError>>()?,
            covered: s.covered,
        },
        ReplyStep::Leaves(s) => Reply::Leaves {
            branches: s
                .branches
                .into_iter()
                .map(|b| {
                    Ok((
                        b.partition,
                        small("branch", b.branch, 15)?,
                        sixteen(&b.digests)?,
                    ))
                })
                .collect::<Result<_, SyncWireError>>()?,
            covered: s.covered,
        },
        ReplyStep::Versions(s) => Reply::Versions {
            leaves: s
                .leaves
                .into_iter()
                .map(|l| {
                    let (f, t, n) = (l.fingerprints.len(), l.times.len(), l.nodes.len());
                    if f != t || f != n {
                        return Err(SyncWireError::Ragged(f, t, n));
                    }
                    if !l.states.is_empty() && l.states.len() != f {
                        return Err(SyncWireError::RaggedStates(f, l.states.len()));
                    }
                    let states = l.states.into_iter().chain(std::iter::repeat(0));
                    Ok(LeafVersions {
                        leaf: leaf_from_wire(l.leaf)?,
                        versions: l
                            .fingerprints
                            .into_iter()
                            .zip(l.times.into_iter().zip(l.nodes))
                            .zip(states)
                            .map(|((fp, (time, node)), state)| {
                                let version = Version::new(time, node);
                                (fp, Stamp { version, state })
                            })
                            .collect(),
                        complete: l.complete,
                    })
                })
                .collect::<Result<_, _>>()?,
        },
        ReplyStep::Entries(s) => Reply::Entries {
            entries: entries_from_wire(s.entries)?,
            covered: s.covered,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::Entry;

    fn header() -> wire::Header {
        wire::Header {
            protocol: 1,
            from: "a".into(),
        }
    }

    #[test]
    fn every_step_round_trips() {
        let leaf = LeafId {
            partition: 7,
            leaf: 200,
        };
        let requests = vec![
            Request::Summary {
                partitions: PartitionSet::new((0..40).chain([900])),
                groups: vec![1, u128::MAX],
                max_reply_bytes: 100,
            },
            Request::Branches {
                partitions: vec![(3, [9; 16])],
                max_reply_bytes: 100,
            },
            Request::Versions {
                salt: 5,
                leaves: vec![leaf],
                after: Some(17),
                max_reply_bytes: 100,
            },
            Request::Repair {
                salt: 5,
                entries: vec![("k".into(), Entry::value(Version::new(1, 2), "v", 0))],
                wanted: vec![Wanted {
                    leaf,
                    fingerprint: 99,
                }],
                max_reply_bytes: 100,
                handoff: false,
            },
            Request::Repair {
                salt: 6,
                entries: vec![("k".into(), Entry::tombstone(Version::new(1, 2)))],
                wanted: vec![],
                max_reply_bytes: 100,
                handoff: true,
            },
        ];
        for r in requests {
            assert_eq!(request_from_wire(request_to_wire(header(), &r)), Ok(r));
        }
        let replies = vec![
            Reply::Roots {
                groups: vec![(0, vec![1, 2, 3])],
                covered: 1,
            },
            Reply::Leaves {
                branches: vec![(3, 15, [4; 16])],
                covered: 1,
            },
            Reply::Versions {
                leaves: vec![LeafVersions {
                    leaf,
                    versions: vec![(1, Stamp::register(Version::new(2, 3)))],
                    complete: false,
                }],
            },
            Reply::Versions {
                leaves: vec![LeafVersions {
                    leaf,
                    versions: vec![
                        (1, Stamp::register(Version::new(2, 3))),
                        (
                            2,
                            Stamp {
                                version: Version::new(4, 5),
                                state: 0xabc2,
                            },
                        ),
                    ],
                    complete: true,
                }],
            },
            Reply::Entries {
                entries: vec![("k".into(), Entry::tombstone(Version::new(4, 5)))],
                covered: 2,
            },
        ];
        for r in replies {
            assert_eq!(reply_from_wire(reply_to_wire(&r)), Ok(r));
        }
    }

    fn summary(bitmap: Vec<u8>, groups: usize) -> wire::SyncRequest {
        wire::SyncRequest {
            header: Some(header()),
            max_reply_bytes: 100,
            step: Some(RequestStep::Summary(wire::SummaryStep {
                partitions: bitmap,
                groups: vec![0; groups * 16],
            })),
        }
    }

    #[test]
    fn a_summary_bitmap_is_checked_before_it_is_expanded() {
        // 1 MiB of bitmap would expand to 8 Mi partitions, 32 MiB.
        assert_eq!(
            request_from_wire(summary(vec![0xff; 1 << 20], 0)).err(),
            Some(SyncWireError::Range {
                what: "partition bitmap bytes",
                value: 1 << 20,
                limit: 8192,
            })
        );
        // The group digests must match the partitions the bitmap names.
        assert_eq!(
            request_from_wire(summary(vec![0xff; 8192], 1)).err(),
            Some(SyncWireError::Digests(16, 2048 * 16))
        );
        let all = request_from_wire(summary(vec![0xff; 8192], 2048));
        assert!(
            matches!(all, Ok(Request::Summary { partitions, .. }) if partitions.len() == 65536)
        );
    }

    #[test]
    fn malformed_steps_are_refused() {
        assert_eq!(
            reply_from_wire(wire::SyncReply { step: None }),
            Err(SyncWireError::NoStep)
        );
        let bad_digests = wire::SyncReply {
            step: Some(ReplyStep::Leaves(wire::LeavesStep {
                branches: vec![wire::BranchLeaves {
                    partition: 1,
                    branch: 2,
                    digests: vec![0; 17],
                }],
                covered: 1,
            })),
        };
        assert!(reply_from_wire(bad_digests).is_err());
        let bad_branch = wire::SyncReply {
            step: Some(ReplyStep::Leaves(wire::LeavesStep {
                branches: vec![wire::BranchLeaves {
                    partition: 1,
                    branch: 16,
                    digests: vec![0; 256],
                }],
                covered: 1,
            })),
        };
        assert!(matches!(
            reply_from_wire(bad_branch),
            Err(SyncWireError::Range { .. })
        ));
        let ragged = wire::SyncReply {
            step: Some(ReplyStep::Versions(wire::VersionListsStep {
                leaves: vec![wire::LeafVersionList {
                    fingerprints: vec![1, 2],
                    times: vec![1],
                    nodes: vec![1, 2],
                    ..Default::default()
                }],
            })),
        };
        assert_eq!(reply_from_wire(ragged), Err(SyncWireError::Ragged(2, 1, 2)));
        let ragged_states = wire::SyncReply {
            step: Some(ReplyStep::Versions(wire::VersionListsStep {
                leaves: vec![wire::LeafVersionList {
                    fingerprints: vec![1, 2],
                    times: vec![1, 2],
                    nodes: vec![1, 2],
                    states: vec![7],
                    ..Default::default()
                }],
            })),
        };
        assert_eq!(
            reply_from_wire(ragged_states),
            Err(SyncWireError::RaggedStates(2, 1))
        );
    }
}
