//! The small, opaque-to-SWIM data each member publishes about itself (RPC
//! address, roles, committed config, raft role, tags). It is versioned by
//! the member's incarnation: a new payload bumps the version.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// What a member tells the others about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The node's name in the topology, for people (`cohort members`).
    pub name: String,
    pub rpc_addr: Option<SocketAddr>,
    pub replica_set: Option<String>,
    pub roles: Vec<String>,
    pub config: Option<ConfigStamp>,
    pub raft_role: RaftRole,
    pub tags: BTreeMap<String, String>,
}

/// The committed topology a member runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStamp {
    pub version: u64,
    pub hash: [u8; 32],
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRole {
    /// Not in the raft group.
    #[default]
    Off,
    Follower,
    Candidate,
    Leader,
    Learner,
}

/// A payload must fit in one packet next to the protocol message, or it
/// would never be gossiped; refused up front instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("payload takes {size} bytes encoded but at most {limit} fit in one {max_packet_size}-byte gossip packet; shorten tags or roles")]
pub struct PayloadTooLarge {
    pub size: usize,
    pub limit: usize,
    pub max_packet_size: usize,
}
