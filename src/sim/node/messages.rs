//! What the simulator and a node exchange: the settings every node shares,
//! client operations and how they end, messages between nodes, timers, and
//! what a handler asks the simulator to do.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::anti_entropy::{Reply, Request};
use crate::coordinator::{Consistency, Read, Written};
use crate::crdt::{Entry, Version};
use crate::replication::{BatchLimits, HintLimits};
use crate::store::Key;

use super::super::disk::DiskMode;

/// Settings every simulated node shares.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Partitions of the keyspace.
    pub partitions: u32,
    /// Replicas of each key.
    pub replication_factor: usize,
    /// When set, replicas of each key in every region instead (as
    /// `--replicas-per-region`).
    pub replicas_per_region: Option<usize>,
    /// How long a request or a peer call waits for answers.
    pub request_timeout: Duration,
    /// Delta batching.
    pub batch: BatchLimits,
    /// Hint bounds.
    pub hints: HintLimits,
    /// Time between anti-entropy rounds.
    pub anti_entropy_interval: Duration,
    /// Time between rounds while a node is still refilling.
    pub syncing_retry: Duration,
    /// Age after which tombstones and expired values may be collected.
    pub settle_grace: Duration,
    /// How often hints are expired and replayed.
    pub hint_tick: Duration,
    /// The most wall-clock drift a remote version may move a clock.
    pub max_clock_drift: Duration,
    /// What a crash keeps (`--data-dir`, `--durability`).
    pub disk: DiskMode,
}

/// A client operation, as the workload issues it.
#[derive(Clone, Debug)]
pub struct ClientOp {
    /// Its number in the history.
    pub id: usize,
    /// The key it touches.
    pub key: Key,
    /// What it does.
    pub kind: OpKind,
    /// Its consistency level.
    pub level: Consistency,
}

/// What a client operation does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Set the key to a value, expiring after `ttl_ms` (0: never).
    Set {
        /// The value (unique per operation, so reads name their write).
        value: String,
        /// Time to live.
        ttl_ms: u64,
    },
    /// Delete the key.
    Delete,
    /// Read the key.
    Get,
    /// Set fields of the map at the key.
    MapSet {
        /// Field names and values (values unique per operation).
        fields: Vec<(String, String)>,
    },
    /// Remove fields of the map at the key (the values this coordinator
    /// sees).
    MapRemove {
        /// Field names.
        fields: Vec<String>,
    },
    /// Read every field of the map at the key.
    MapGet,
    /// Add `delta` to the counter at the key.
    Increment {
        /// The amount, possibly negative.
        delta: i64,
    },
    /// Read the counter at the key.
    GetCounter,
}

impl OpKind {
    /// Whether it writes.
    pub fn is_write(&self) -> bool {
        !matches!(self, OpKind::Get | OpKind::MapGet | OpKind::GetCounter)
    }

    /// Whether it is a map or counter write, which builds on the key's
    /// state and so first reads it where its coordinator is no replica.
    pub(super) fn observes(&self) -> bool {
        matches!(
            self,
            OpKind::MapSet { .. } | OpKind::MapRemove { .. } | OpKind::Increment { .. }
        )
    }
}

/// The size a simulated map may reach (`--max-value-bytes`): far above
/// what the workload's few short fields need.
pub const MAP_LIMIT: usize = 64 * 1024;

/// How a client operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// A write was acknowledged.
    Written(Written),
    /// A read answered, having joined `replicas` answers.
    Read {
        /// What it read.
        read: Read,
        /// Replicas whose answers it joined.
        replicas: usize,
    },
    /// A map read answered: the fields (`None`: no map), having joined
    /// `replicas` answers.
    MapRead {
        /// The fields read.
        fields: Option<BTreeMap<String, String>>,
        /// Replicas whose answers it joined.
        replicas: usize,
    },
    /// A counter read answered: the value (`None`: no counter), having
    /// joined `replicas` answers.
    CounterRead {
        /// The value read.
        value: Option<i128>,
        /// Replicas whose answers it joined.
        replicas: usize,
    },
    /// A map removal found none of its fields and wrote nothing.
    Unchanged,
    /// The request failed with this error.
    Failed(String),
}

/// A message between nodes.
#[derive(Clone, Debug)]
pub enum Msg {
    /// A peer call.
    Request {
        /// The call's number at the caller.
        rpc: u64,
        /// What is asked.
        req: Req,
    },
    /// The answer to a peer call.
    Response {
        /// The call's number at the caller.
        rpc: u64,
        /// The answer.
        resp: Resp,
        /// The answering node's physical clock (NTP64), as production
        /// answers carry it in their metadata.
        clock: u64,
    },
}

/// A peer call, as the peer protocol has them.
#[derive(Clone, Debug)]
pub enum Req {
    /// Merge these deltas.
    Apply(Vec<(Key, Entry)>),
    /// Merge these deltas, a replica of another region's write, and hand
    /// them on to the other replicas of their keys in your region
    /// (production's `ApplyRequest.relay`).
    Relay(Vec<(Key, Entry)>),
    /// Read one key.
    Read(Key),
    /// Tell your clock.
    Clock,
    /// One anti-entropy step.
    Sync(Request),
    /// Which of these partitions do you hold entries of?
    Holding(Vec<u32>),
}

/// The answer to a [`Req`].
#[derive(Clone, Debug)]
pub enum Resp {
    /// Deltas merged.
    Applied,
    /// The entry held.
    Read(Option<Entry>),
    /// A read refused: the node is still refilling after a restart.
    NotReady,
    /// The clock's time (NTP64).
    Clock(u64),
    /// The step's reply, or why it was refused.
    Sync(Result<Reply, String>),
    /// The partitions asked about that are held.
    Holding(Vec<u32>),
}

/// A timer a node sets.
#[derive(Clone, Debug)]
pub enum Timer {
    /// A delta queue's batch linger may have passed: the peer, and whether
    /// it is the queue of deltas it relays.
    Linger((String, bool)),
    /// A peer call's deadline.
    Rpc(u64),
    /// A peer call refused at once (cut link, node down), and why.
    Refused(u64, String),
    /// A client request's deadline (for a read at ONE, only the bound
    /// on a write's read of the key before it builds).
    Call(u64),
    /// A read at ONE may ask its next replica, or a silent one again: the
    /// peer call it sent last was sent its hedge delay ago (stale unless
    /// that call is still the read's newest).
    Hedge {
        /// The read.
        call: u64,
        /// The peer call.
        rpc: u64,
    },
    /// Time for an anti-entropy round (stale when its number is not the
    /// latest set).
    AntiEntropy(u64),
    /// Expire and replay hints.
    Hints,
}

/// What a handler asks the simulator to do.
#[derive(Debug)]
pub enum Out {
    /// Send a message to the node `to`.
    Send {
        /// The recipient's id.
        to: String,
        /// The message.
        msg: Msg,
    },
    /// Fire `timer` after `after`.
    Timer {
        /// How long from now.
        after: Duration,
        /// The timer.
        timer: Timer,
    },
    /// A client operation was stamped with this version (writes).
    Stamped {
        /// The operation.
        op: usize,
        /// Its version.
        version: Version,
        /// The delta a map or counter write built (its dots and contexts),
        /// which the checker needs to tell what it adds, removes or counts.
        delta: Option<Entry>,
        /// The expiry instant a Set wrote (0: none).
        expires_at: u64,
    },
    /// A client operation ended.
    Done {
        /// The operation.
        op: usize,
        /// How.
        result: OpResult,
    },
    /// The node has filled what it holds and announces itself ready.
    Ready,
    /// A partition's kept Merkle root differs from the recomputed one.
    TreeMismatch(u32),
    /// Hints past their age or over a bound were dropped (a copy of a
    /// write may be gone).
    HintsExpired,
    /// Settled entries collection removed.
    Collected(Vec<(Key, Version)>),
}

impl Settings {
    /// How many replicas each key has: per region when
    /// `replicas_per_region` is set, the total otherwise.
    pub fn replication(&self) -> crate::ring::Replication {
        match self.replicas_per_region {
            Some(k) => crate::ring::Replication::PerRegion(k),
            None => crate::ring::Replication::Total(self.replication_factor),
        }
    }
}
