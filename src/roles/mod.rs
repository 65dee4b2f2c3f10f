//! Roles: the named units of behaviour a node runs because the topology
//! assigns them to its replica set. This module holds the `Role` trait, the
//! set of roles one node runs (`RoleSet`: dependency order, validate, apply,
//! stop) and the roles themselves: built-in (`http`, `router`, `storage`)
//! and external (an executable called with `validate`, `apply`, `stop`).

mod external;
mod http;
mod order;
mod registry;
mod section;
mod set;

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;
use uuid::Uuid;

use crate::config::{RoleSpec, Topology};
use crate::twophase::Version;

pub use external::{ExternalRole, DEFAULT_TIMEOUT};
pub use http::{HttpRole, DEFAULT_PORT_WAIT};
pub use order::{plan, PlanError};
pub use registry::{Marker, Registry};
pub use section::section_yaml;
pub use set::{
    ApplyReport, NodeIdentity, RoleAction, RoleFailure, RoleSet, RoleStep, ValidationError,
};

/// A boxed `Send` future: what the trait's async methods return (no
/// async-trait crate for five methods).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A role's reason for refusing or failing, in words for the operator.
pub type RoleResult = Result<(), String>;

fn ready<'a>(result: RoleResult) -> BoxFuture<'a, RoleResult> {
    Box::pin(std::future::ready(result))
}

/// Whether the cluster is assembled, as this node sees it: `assembling`
/// until `cluster_up_at` nodes of the committed topology are alive at once
/// (or until a topology is committed, when it sets none), then `up`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    #[default]
    Assembling,
    Up,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Assembling => "assembling",
            ClusterState::Up => "up",
        }
    }
}

impl std::fmt::Display for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One role. The `RoleSet` calls `init` once when the role starts, then
/// `apply_config` for every topology it applies, `master_changed` when
/// the node becomes or stops being its replica set's master,
/// `cluster_state_changed` when the cluster becomes up (or assembling),
/// and `stop` once when the role leaves the node (or the agent stops).
/// Calls on one role never overlap. Every method has a do-nothing default.
pub trait Role: Send + Sync + 'static {
    /// Roles this one needs started before it, besides the `depends:` the
    /// topology gives it.
    fn dependencies(&self) -> Vec<String> {
        Vec::new()
    }

    /// Starts the role; `apply_config` follows at once.
    fn init<'a>(&'a self, ctx: &'a RoleContext) -> BoxFuture<'a, RoleResult> {
        let _ = ctx;
        ready(Ok(()))
    }

    /// Whether the role accepts `new` in place of `old` (none when the
    /// node has applied nothing yet). Must change nothing: the change may
    /// be aborted. Called also for a role that is not running yet and
    /// would start with `new`.
    fn validate_config<'a>(
        &'a self,
        ctx: &'a RoleContext,
        new: &'a Topology,
        old: Option<&'a Topology>,
    ) -> BoxFuture<'a, RoleResult> {
        let _ = (ctx, new, old);
        ready(Ok(()))
    }

    /// Makes `new` so. `old` is the topology the node ran before (none at
    /// the first apply), also for a role starting now. A failure is
    /// reported, not rolled back; the next apply is the fix.
    fn apply_config<'a>(
        &'a self,
        ctx: &'a RoleContext,
        new: &'a Topology,
        old: Option<&'a Topology>,
    ) -> BoxFuture<'a, RoleResult> {
        let _ = (ctx, new, old);
        ready(Ok(()))
    }

    /// The node became, or stopped being, its replica set's master;
    /// `ctx.is_master()` tells which. A role may instead watch
    /// `ctx.watch_master()` from a task of its own.
    fn master_changed<'a>(&'a self, ctx: &'a RoleContext) -> BoxFuture<'a, RoleResult> {
        let _ = ctx;
        ready(Ok(()))
    }

    /// The cluster became up or assembling; `ctx.cluster_state()` tells
    /// which. A role started later finds the state in its context (and an
    /// external role in `COHORT_CLUSTER_STATE`) instead.
    fn cluster_state_changed<'a>(&'a self, ctx: &'a RoleContext) -> BoxFuture<'a, RoleResult> {
        let _ = ctx;
        ready(Ok(()))
    }

    /// Stops the role; it may be started again later with `init`.
    fn stop<'a>(&'a self, ctx: &'a RoleContext) -> BoxFuture<'a, RoleResult> {
        let _ = ctx;
        ready(Ok(()))
    }
}

/// What a role knows about the node it runs on.
#[derive(Clone, Debug)]
pub struct RoleContext {
    /// The node's name in the topology.
    pub node: String,
    pub uuid: Uuid,
    /// The node's replica set in the topology being validated or applied
    /// (for `stop`, the last one applied).
    pub replicaset: String,
    /// The role's own name.
    pub role: String,
    /// The version being validated or applied, when the caller knows it.
    pub version: Option<Version>,
    master: watch::Receiver<bool>,
    cluster: watch::Receiver<ClusterState>,
}

impl RoleContext {
    pub fn new(
        identity: &NodeIdentity,
        replicaset: impl Into<String>,
        role: impl Into<String>,
        version: Option<Version>,
        master: watch::Receiver<bool>,
    ) -> RoleContext {
        RoleContext {
            node: identity.name.clone(),
            uuid: identity.uuid,
            replicaset: replicaset.into(),
            role: role.into(),
            version,
            master,
            cluster: watch::Sender::new(ClusterState::default()).subscribe(),
        }
    }

    /// The same context, following `cluster` for the cluster's state.
    pub fn with_cluster_state(mut self, cluster: watch::Receiver<ClusterState>) -> RoleContext {
        self.cluster = cluster;
        self
    }

    /// Whether the cluster is up now, as this node sees it.
    pub fn cluster_state(&self) -> ClusterState {
        *self.cluster.borrow()
    }

    /// Changes whenever the cluster becomes up or assembling.
    pub fn watch_cluster_state(&self) -> watch::Receiver<ClusterState> {
        self.cluster.clone()
    }

    /// Whether this node is its replica set's master now.
    pub fn is_master(&self) -> bool {
        *self.master.borrow()
    }

    /// Changes whenever the node becomes or stops being master.
    pub fn watch_master(&self) -> watch::Receiver<bool> {
        self.master.clone()
    }

    /// The role's section (`roles.NAME`) of `topology`, if it has one.
    pub fn section<'t>(&self, topology: &'t Topology) -> Option<&'t RoleSpec> {
        topology.roles.get(&self.role)
    }
}
