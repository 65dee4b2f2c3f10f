//! The replicated decision log as the apply driver uses it: the cluster's
//! Raft group, reached through this node's Raft driver (which forwards to
//! the leader). A txn started while the group has a leader is decided
//! there, so a prepared node never waits for a dead coordinator; a txn
//! started without one (the first version, or the group down) is decided
//! by its coordinator as before. The choice is the coordinator's, made
//! once per txn and carried in its PREPARE.
//!
//! Raft starts after the apply driver (it follows the committed topology
//! the driver publishes), so the log is handed over once it runs
//! ([`super::ApplyHandle::use_replicated_log`]).

use super::BoxFuture;
use crate::twophase::{ConfigHash, Decision, TxnId, Version};

pub trait ReplicatedLog: Send + Sync {
    /// A txn started now may be decided through the log: the group is
    /// formed and this node knows its leader.
    fn available(&self) -> bool;

    /// Records `decision` for `txn` unless the log holds one (a commit
    /// names the version it installs and its hash); answers the decision
    /// the log holds. An error (no leader, no quorum in time) is retried
    /// by the state machines on their own timers.
    fn record(
        &self,
        txn: TxnId,
        decision: Decision,
        installs: Option<(Version, ConfigHash)>,
    ) -> BoxFuture<'_, Result<Decision, String>>;
}
