//! Cluster membership: which nodes exist, where they are reached, which
//! region they are in, what state they are in, and whether they are alive.
//! Gossip (chitchat) carries only this small metadata, never keys or values.

use std::fmt;

/// The lifecycle state a node announces about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Started, not yet serving as a replica.
    Joining,
    /// Restarted empty, refilling its partitions from peers.
    Syncing,
    /// Serving.
    Ready,
    /// Leaving gracefully; about to stop.
    Leaving,
}

impl NodeState {
    /// The state as the contract and gossip spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Syncing => "syncing",
            NodeState::Ready => "ready",
            NodeState::Leaving => "leaving",
        }
    }

    /// Parses the gossip spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "joining" => Some(NodeState::Joining),
            "syncing" => Some(NodeState::Syncing),
            "ready" => Some(NodeState::Ready),
            "leaving" => Some(NodeState::Leaving),
            _ => None,
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node id.
    pub id: String,
    /// host:port of its gRPC server for clients (and, same port number,
    /// its gossip).
    pub address: String,
    /// host:port of its peer listener (the node-to-node protocol).
    pub peer_address: String,
    /// Its region label; empty when unset.
    pub region: String,
    /// The state it announced.
    pub state: NodeState,
    /// Whether the failure detector holds it alive.
    pub alive: bool,
    /// Its incarnation: the start time of its process in milliseconds, so a
    /// restarted node is the same node with a greater generation.
    pub generation: u64,
}

/// Who this node is, as peers and clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node id.
    pub id: String,
    /// The host:port its gRPC server is reached at.
    pub address: String,
    /// The host:port its peer listener is reached at.
    pub peer_address: String,
    /// Its region label; empty when unset.
    pub region: String,
}

mod membership;
mod topology;
mod transport;

pub use membership::{ClusterError, Membership, MembershipConfig, PeerRun, StateAnnouncer};
pub use topology::Topology;
#[cfg(test)]
pub(crate) use topology::{six_in_three_regions, SIX_IN_THREE_REGIONS};
pub use transport::SwitchedTransport;
