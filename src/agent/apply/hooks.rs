//! What the roles add to an apply: their `validate_config` before a node
//! votes, and their `apply_config` after it installed a version. The roles
//! engine implements `RoleHooks`; until then `AcceptAll` does nothing.

use std::sync::Arc;

use crate::config::Topology;
use crate::twophase::{ConfigHash, TxnId, Version};

use super::BoxFuture;

/// A version this node just installed (the topology file is written).
#[derive(Clone, Debug)]
pub struct Installed {
    pub txn: TxnId,
    pub version: Version,
    pub hash: ConfigHash,
    pub text: Arc<str>,
    pub topology: Arc<Topology>,
    /// The version it replaces (none for the first).
    pub previous: Option<Arc<Topology>>,
}

pub trait RoleHooks: Send + Sync + 'static {
    /// Whether this node's roles accept `new` as `version` (replacing
    /// `old`, none for the first version). The text itself is already
    /// valid. An error is
    /// this node's no vote, in words for the operator. It must finish
    /// within the lease, or the node refuses the change.
    fn validate<'a>(
        &'a self,
        new: &'a Topology,
        old: Option<&'a Topology>,
        version: Version,
    ) -> BoxFuture<'a, Result<(), String>> {
        let _ = (new, old, version);
        Box::pin(async { Ok(()) })
    }

    /// Runs the roles for a newly installed version, in dependency order.
    /// Runs one at a time, in version order. A failure is shown in the
    /// status; it is not rolled back (the next apply fixes it).
    fn installed<'a>(&'a self, change: &'a Installed) -> BoxFuture<'a, Result<(), String>> {
        let _ = change;
        Box::pin(async { Ok(()) })
    }
}

/// No roles: every change is accepted, nothing runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptAll;

impl RoleHooks for AcceptAll {}

/// The node's roles (`roles::RoleSet`) as the apply's hooks: validation
/// asks every role that would run, an install applies them in dependency
/// order.
pub struct RoleSetHooks(pub Arc<crate::roles::RoleSet>);

impl RoleHooks for RoleSetHooks {
    fn validate<'a>(
        &'a self,
        new: &'a Topology,
        old: Option<&'a Topology>,
        version: Version,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .validate_all(new, old, Some(version))
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn installed<'a>(&'a self, change: &'a Installed) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .apply(change.topology.clone(), Some(change.version))
                .await
                .result()
        })
    }
}
