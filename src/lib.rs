//! cohort: a cluster agent. Each node gossips membership with SWIM, takes
//! part in a Raft group that elects the cluster leader and replica-set
//! masters, and applies every topology change on all nodes at once through
//! two-phase commit. The modules follow the layers, bottom up.

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod membership;
pub mod raft;
pub mod roles;
pub mod routing;
pub mod rpc;
mod sim_queue;
pub mod storage;
pub mod twophase;
