//! The cluster's Raft group: who leads, who is master of each replica set,
//! which topology version is committed, and the 2PC decisions of recent
//! transactions.
//!
//! Raft itself is openraft 0.9 (pinned), behind this module: nothing
//! outside `raft/` names an openraft type. What is ours:
//! - [`state`]: the replicated state machine (no I/O): commands in, state
//!   and answers out;
//! - [`failover`]: what the leader should write (masters to appoint, voters
//!   to add or remove), computed from the topology, the member table and
//!   the replicated state (no I/O);
//! - [`election`]: when a node stands for election (no I/O): a new random
//!   timeout in every term, where openraft keeps one per instance;
//! - [`store`]: the durable log, vote and snapshot in `data_dir/raft`
//!   (fsync'd, a torn tail after kill -9 is cut off at open);
//! - [`network`]: Raft messages over the cluster's authenticated rpc;
//! - [`elector`]: the election timer's tokio task, and the inbound side
//!   of Raft messages that resets it;
//! - [`runtime`]: tokio, with a random source that a test can seed;
//! - [`driver`]: the tokio side in the agent.

pub mod driver;
pub mod election;
pub mod elector;
pub mod failover;
pub mod network;
pub mod runtime;
pub mod sim;
pub mod state;
pub mod store;

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use crate::membership::NodeId;
pub use state::{ClusterState, Command, Master, Response};

/// A voter as the group knows it: enough to reach it and to name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
}

impl Default for Peer {
    fn default() -> Peer {
        Peer {
            name: String::new(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// cohort's Raft types: our commands, node ids and peers.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = Peer,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = runtime::SeededTokio,
);

/// The openraft instance for our types.
pub type Raft = openraft::Raft<TypeConfig>;
/// One log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A position in the log.
pub type LogId = openraft::LogId<NodeId>;
/// A term and the node voted for.
pub type Vote = openraft::Vote<NodeId>;
/// The group's voters and learners as recorded in the log.
pub type Membership = openraft::StoredMembership<NodeId, Peer>;
/// openraft's storage error for our ids.
pub type StorageError = openraft::StorageError<NodeId>;
