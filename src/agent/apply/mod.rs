//! Applying a topology change on the running agent: the driver of the
//! two-phase commit state machines (`crate::twophase`) over the rpc layer,
//! with its durable state in `DATA_DIR/twophase/`.
//!
//! One task per node ([`spawn`]) owns the node's `Coordinator` and
//! `Participant`. It is fed by 2PC messages from peers (the rpc methods
//! [`EXCHANGE_METHOD`] and [`METHOD`], served by the [`ApplyEndpoint`]
//! made by [`channel`]; see `outbox` for how replies travel), its
//! timeouts, the results of validations it started, and the commands of
//! [`ApplyHandle`]. It carries out the machines' actions strictly in
//! order: a `Persist` is on disk, fsynced, before the next action starts,
//! and events are taken only once every pending action is done. Nothing
//! slow runs inside the loop: sends (each to the address the
//! [`PeerDirectory`] gives), validations (the text, then
//! [`RoleHooks::validate`]) and installs (the topology file, then
//! [`RoleHooks::installed`]) run on tasks of their own and report back as
//! inputs.
//!
//! An apply ([`ApplyHandle::apply`]): the coordinator parses the text
//! (`FILE:LINE:COLUMN` problems reject it before anything is sent), takes
//! as participants this node and every node of the committed and the new
//! topology that membership sees alive or suspect (names are matched to
//! node ids through the member payload's `name`; a name membership does
//! not know, or knows dead or left, is reported as not reached), and
//! starts the txn. The caller gets the `TxnResult`, and the status shows
//! it.
//!
//! A write that fails (a full or read-only disk) never stops the driver.
//! A failed `Staged` becomes a no vote naming the error, and a failed
//! `Started` an [`ApplyError::Disk`] for the caller: nothing of either had
//! left the node. Any other record is written again (after 100 ms,
//! doubling up to 3.2 s) and every action after it waits, as on a slow
//! disk, while PREPAREs get a no at once and applies are refused. The
//! store changes only once every file of a step is on disk, so writing
//! the same record again is safe. Meanwhile the status says "retrying
//! after a disk error since …" ([`ApplyStatus::disk_error`]); the first
//! write that works clears it, and
//! the driver goes on by itself (the held record, then catch-up).

mod catch_up;
pub mod decision_log;
pub mod directory;
mod driver;
pub mod hooks;
mod outbox;
pub mod rpc;
pub mod store;

pub use crate::agent::topology_watch::config_hash;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Diagnostics, NodeConfig};
use crate::twophase::{
    ConfigHash, CoordinatorConfig, DecisionLog, LockStatus, NodeId, ParticipantConfig, StartError,
    TxnId, TxnResult, Version,
};

pub use decision_log::ReplicatedLog;
pub use directory::{Peer, PeerDirectory, StaticDirectory};
pub use hooks::{AcceptAll, Installed, RoleHooks, RoleSetHooks};
pub use rpc::{ApplyEndpoint, Envelope, COMMITTED_METHOD, EXCHANGE_METHOD, METHOD};
pub use store::{ApplyStore, StoreError};

use driver::Input;

/// The hooks and the directory return these (the roles' own type).
pub use crate::roles::BoxFuture;

/// Inputs waiting for the driver at most; the rpc handler waits beyond.
const INBOX: usize = 1024;

/// How a no vote cast for a failing 2PC write begins (the error follows):
/// a change this node could not stage...
pub const NO_VOTE_CANNOT_STAGE: &str = "this node cannot stage the change";
/// ...or any change asked while its 2PC writes fail.
pub const NO_VOTE_CANNOT_WRITE: &str = "this node cannot write its 2PC state";

/// A no vote for a disk error: worth trying the change again later, since
/// the node retries its writes and recovers by itself.
pub fn is_disk_vote(reason: &str) -> bool {
    reason.starts_with(NO_VOTE_CANNOT_STAGE) || reason.starts_with(NO_VOTE_CANNOT_WRITE)
}

#[derive(Clone, Debug)]
pub struct ApplyConfig {
    pub me: NodeId,
    /// This node's name in the topology (it always takes part in the
    /// applies it coordinates, whatever membership says of the name).
    pub name: String,
    /// A topology for another cluster is refused.
    pub cluster: String,
    /// The node's data dir; the state lives in its `twophase/`.
    pub data_dir: PathBuf,
    /// The topology file, rewritten byte for byte on every install.
    pub topology_path: PathBuf,
    /// The file name problems in a proposed text point at.
    pub text_name: PathBuf,
    pub coordinator: CoordinatorConfig,
    pub participant: ParticipantConfig,
    /// Deadline of one 2PC message send (lost ones are re-sent by the
    /// state machines).
    pub send_deadline: Duration,
}

impl ApplyConfig {
    /// The settings of the node `me` running `config`.
    pub fn new(me: NodeId, config: &NodeConfig) -> ApplyConfig {
        ApplyConfig {
            me,
            name: config.node.clone(),
            cluster: config.cluster.clone(),
            data_dir: config.data_dir.clone(),
            topology_path: config.topology.clone(),
            text_name: text_name(&config.topology),
            coordinator: CoordinatorConfig::default(),
            participant: ParticipantConfig::default(),
            send_deadline: Duration::from_secs(2),
        }
    }
}

/// `topology.yaml` for `/etc/cohort/topology.yaml`: what messages about a
/// proposed text call it (the text may come from elsewhere).
pub fn text_name(topology_path: &Path) -> PathBuf {
    topology_path
        .file_name()
        .map_or_else(|| PathBuf::from("topology.yaml"), PathBuf::from)
}

/// The rpc endpoint and the inbox of a driver not started yet: the
/// endpoint goes into the rpc router, the inbox to [`spawn`].
pub fn channel() -> (ApplyEndpoint, ApplyInbox) {
    let (tx, rx) = mpsc::channel(INBOX);
    (ApplyEndpoint { inbox: tx.clone() }, ApplyInbox { tx, rx })
}

/// See [`channel`].
pub struct ApplyInbox {
    tx: mpsc::Sender<Input>,
    rx: mpsc::Receiver<Input>,
}

pub use driver::{log_name, spawn};

/// What the caller of an apply hears.
#[derive(Clone, Debug)]
pub struct ApplyReport {
    pub result: TxnResult,
    /// Nodes of the old or new topology that did not take part: unknown
    /// to membership, dead or left (name, why).
    pub not_reached: Vec<(String, String)>,
    /// From the request to PREPARE (parsing, looking the peers up).
    pub resolve: Duration,
    /// From PREPARE to the decision on disk.
    pub prepare: Duration,
    /// The names of the participants, as membership knew them at the
    /// start (messages name nodes, not ids).
    pub names: std::collections::BTreeMap<NodeId, String>,
    /// Where the decision was recorded: the Raft log, or the coordinator's
    /// data dir (no Raft leader known when the txn started).
    pub log: DecisionLog,
}

impl ApplyReport {
    /// A node's name, or its id when membership did not know the name.
    pub fn name(&self, id: &NodeId) -> String {
        self.names
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }
}

impl ApplyReport {
    pub fn committed(&self) -> Option<Version> {
        match self.result.outcome {
            crate::twophase::Outcome::Committed(version) => Some(version),
            crate::twophase::Outcome::Aborted { .. } => None,
        }
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result.outcome {
            crate::twophase::Outcome::Committed(version) => {
                write!(f, "committed version {version}")?
            }
            crate::twophase::Outcome::Aborted { reasons } => {
                write!(f, "aborted {}", self.result.txn)?;
                for (node, why) in reasons {
                    write!(f, "; {}: {why}", self.name(node))?;
                }
            }
        }
        if !self.result.silent.is_empty() {
            let silent: Vec<String> = self.result.silent.iter().map(|n| self.name(n)).collect();
            write!(f, "; no answer from {}", silent.join(", "))?;
        }
        if !self.not_reached.is_empty() {
            write!(f, "; not reached:")?;
            for (i, (name, why)) in self.not_reached.iter().enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                write!(f, "{sep}{name} ({why})")?;
            }
        }
        Ok(())
    }
}

/// Why an apply did not run.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ApplyError {
    /// The text is not a valid topology: every problem, `FILE:LINE:COLUMN:
    /// what`, one a line.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// The text is the committed one already: nothing to do.
    #[error("this text is committed already as version {0}")]
    Unchanged(Version),
    /// The edit was made on a version that is no longer the committed
    /// one: another change was committed first.
    #[error("the edit was made on version {based_on}, but version {committed} was committed since: another change won")]
    Stale {
        based_on: Version,
        committed: Version,
    },
    #[error("{0}")]
    Start(#[from] StartError),
    /// The driver is not running (the agent is stopping).
    #[error("the apply driver is not running: {0}")]
    Stopped(String),
    /// This node's 2PC writes fail (a full or read-only disk): it starts
    /// no change until one works again (the driver retries by itself).
    #[error("this node cannot write its 2PC state, so it starts no change until it can: {0}")]
    Disk(String),
}

/// The last apply this node coordinated (or rejected).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastApply {
    pub at: SystemTime,
    pub txn: Option<TxnId>,
    pub committed: Option<Version>,
    /// From the request to the decision on disk (resolve + prepare), for
    /// a txn that was started.
    pub took: Option<Duration>,
    /// What the caller was told.
    pub summary: String,
}

/// The outcome of installing a version on this node (the topology file,
/// then the roles).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallStatus {
    pub version: Version,
    pub at: SystemTime,
    pub result: Result<(), String>,
}

/// The node's apply state, for `cohort status`.
#[derive(Clone, Debug)]
pub struct ApplyStatus {
    pub node: NodeId,
    pub version: Version,
    pub hash: ConfigHash,
    pub lock: LockStatus,
    /// Txns this node coordinates and has not finished.
    pub coordinating: Vec<TxnId>,
    pub last: Option<LastApply>,
    pub install: Option<InstallStatus>,
    /// Set when the driver stopped (the agent is stopping): why.
    pub stopped: Option<String>,
    /// Set while this node's 2PC writes fail (the driver runs on and
    /// retries them); cleared by the first write that works.
    pub disk_error: Option<DiskError>,
    /// The committed text (empty at version 0) and the txn that
    /// committed it.
    pub text: Arc<str>,
    pub txn: Option<TxnId>,
    /// The committed text, parsed (none at version 0, or if this build
    /// no longer accepts it).
    pub topology: Option<Arc<crate::config::Topology>>,
    /// Operator edits found in the topology file when a version was
    /// installed over them: where each was kept.
    pub kept_edits: Vec<PathBuf>,
    /// The hash of a topology file found at start with the text of a
    /// version this node replaced, which could not be rewritten: not an
    /// edit. Cleared when a version's file is written.
    pub left_over: Option<ConfigHash>,
}

/// 2PC writes failing on this node: meanwhile it votes no on every
/// change, starts none, and holds whatever waits for the failed write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskError {
    /// The first failure of this streak.
    pub since: SystemTime,
    /// The last failure.
    pub error: String,
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "retrying after a disk error since {}: {}",
            crate::api::rfc3339(self.since),
            self.error
        )
    }
}

impl ApplyStatus {
    /// Whether the text with `hash` is the committed version (never at
    /// version 0: nothing is committed).
    pub fn is_committed(&self, hash: &ConfigHash) -> bool {
        self.version > Version(0) && self.hash == *hash
    }
}

/// Talks to a running driver. Cheap to clone.
#[derive(Clone)]
pub struct ApplyHandle {
    tx: mpsc::Sender<Input>,
    status: watch::Receiver<ApplyStatus>,
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl ApplyHandle {
    /// Proposes `text` as the next version and waits for the decision.
    pub async fn apply(&self, text: String) -> Result<ApplyReport, ApplyError> {
        self.apply_on(text, None).await
    }

    /// The same, refused as `Stale` unless `base` (when given) is still
    /// the committed version: an edit made on version B must not undo a
    /// change committed after B.
    pub async fn apply_on(
        &self,
        text: String,
        base: Option<Version>,
    ) -> Result<ApplyReport, ApplyError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Input::Apply { text, base, reply })
            .await
            .map_err(|_| self.stopped())?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// The status now.
    pub fn status(&self) -> ApplyStatus {
        self.status.borrow().clone()
    }

    /// The status, updated as it changes.
    pub fn watch(&self) -> watch::Receiver<ApplyStatus> {
        self.status.clone()
    }

    /// Waits until `txn`, coordinated here, is finished (every participant
    /// acknowledged its decision), at most `timeout`. Returns whether it
    /// finished.
    pub async fn wait_finished(&self, txn: TxnId, timeout: Duration) -> bool {
        let mut status = self.status.clone();
        let done = async {
            // A driver held up by a failing disk still runs: wait on.
            status
                .wait_for(|s| !s.coordinating.contains(&txn) || s.stopped.is_some())
                .await
                .is_ok_and(|s| s.stopped.is_none())
        };
        tokio::time::timeout(timeout, done).await.unwrap_or(false)
    }

    /// Decide txns started from now on through `log` while it is
    /// available (see [`decision_log`]).
    pub async fn use_replicated_log(&self, log: std::sync::Arc<dyn ReplicatedLog>) {
        let _ = self.tx.send(Input::UseLog(log)).await;
    }

    /// Stops the driver and waits for it (what is on disk stays).
    pub async fn stop(&self) {
        let _ = self.tx.send(Input::Stop).await;
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn stopped(&self) -> ApplyError {
        let why = self.status.borrow().stopped.clone();
        ApplyError::Stopped(why.unwrap_or_else(|| "stopped".into()))
    }
}
