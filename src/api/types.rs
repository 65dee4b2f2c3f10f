//! The API's JSON, shared by the server and the `cohort` command so the two
//! cannot drift apart.

use serde::{Deserialize, Serialize};

/// `GET /v1/status`: who this node is and what it runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub node: String,
    pub uuid: uuid::Uuid,
    /// Start time in µs; grows at every restart.
    pub generation: u64,
    pub cluster: String,
    pub bind: String,
    pub advertise: String,
    pub data_dir: String,
    pub pid: u32,
    /// The committed topology version; none until the first apply.
    pub config_version: Option<u64>,
    pub topology: TopologyFile,
    /// The two-phase commit side: committed version, the lock, the last
    /// apply and install. None until the apply driver runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<ApplyState>,
    /// The Raft group as this node sees it. None until its driver runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<Leaders>,
    /// Whether the cluster is assembled (`cluster_up_at`), as this node
    /// sees it. None until the agent has computed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_state: Option<ClusterStateInfo>,
    /// When this run started, RFC 3339 in UTC.
    pub started_at: String,
    /// The same instant in Unix ms, for scripts.
    pub started_at_ms: u64,
    pub uptime_seconds: u64,
    /// cohort's own version.
    pub version: String,
    /// Problems the node sees now, in plain words (gossip: undecryptable
    /// packets, UDP or TCP blocked, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `Status::cluster_state`: `assembling` until `up_at` nodes of the
/// committed topology are alive at once, then `up` for the rest of the
/// agent's run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClusterStateInfo {
    pub state: crate::roles::ClusterState,
    /// Alive members that are nodes of the committed topology, this node
    /// included.
    pub alive: usize,
    /// The topology's `cluster_up_at`; none when it sets none (the cluster
    /// is up once a topology is committed).
    pub up_at: Option<usize>,
    /// The nodes of the committed topology (0 before the first commit).
    pub nodes: usize,
}

/// What the agent found in its topology file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopologyFile {
    pub path: String,
    pub state: TopologyFileState,
    /// `FILE:LINE:COLUMN: message` lines when invalid or unreadable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Whether the file holds the committed text byte for byte (none
    /// before the driver ran or while the file cannot be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches_committed: Option<bool>,
    /// When the file differs from the committed text: why its content is
    /// not committed (rejected with problems, aborted with reasons, an
    /// apply in progress, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

/// `Status::apply`: this node's two-phase commit state.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ApplyState {
    /// The committed version (0 before the first apply) and its hash
    /// (SHA-256, hex).
    pub version: u64,
    pub hash: String,
    /// The 2PC lock in words: "no apply in progress", "prepared for txn T
    /// from node N", "waiting for the decision of txn T from node N".
    pub lock: String,
    /// Seconds the lock has been waiting for a decision (lease expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_seconds: Option<u64>,
    /// Txns this node coordinates that are not finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coordinating: Vec<String>,
    /// The last apply this node started (or rejected before starting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<LastApplyInfo>,
    /// The last version installed on this node (file, then roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallInfo>,
    /// Operator edits that lost (another version was installed over
    /// them): where each was kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_edits: Vec<String>,
    /// Set when the driver is not running (the agent is stopping): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Set while this node's 2PC writes fail: since when and the last
    /// error. It votes no on every change and retries by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LastApplyInfo {
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<u64>,
    /// From the request to the decision (a started txn), in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<f64>,
    /// What the caller was told, one line.
    pub summary: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InstallInfo {
    pub version: u64,
    pub at_ms: u64,
    /// None when the file and every role were applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/topology`: the committed topology.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CommittedTopology {
    /// 0 (and an empty text) before the first apply.
    pub version: u64,
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    /// Byte for byte as the operator wrote it.
    pub text: String,
}

/// `PUT /v1/topology?wait=BOOL&timeout=DURATION` (body: the YAML text):
/// what became of the apply. HTTP 200 when committed or unchanged, 409
/// when aborted, 422 when the text is invalid.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApplyResult {
    pub outcome: ApplyOutcome,
    /// The committed version (committed, unchanged), or the one the txn
    /// would have installed (aborted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    /// Where the decision was recorded: `raft` (the cluster's Raft log:
    /// no node waits for a dead coordinator) or `coordinator` (its data
    /// dir: no Raft leader was known when the change started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_log: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Aborted: every node's reason (node name, or its uuid when
    /// membership does not know its name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<NodeReason>,
    /// Participants whose vote never came.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub silent: Vec<String>,
    /// Nodes of the old or new topology that took no part (dead, left,
    /// unknown to membership): they catch up when they return.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_reached: Vec<NodeReason>,
    /// Invalid: `FILE:LINE:COLUMN: message`, one per problem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// With `wait`: whether every participant acknowledged the decision
    /// before the timeout (then each has the version committed and in its
    /// topology file; its roles run after, see its `apply.install`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<ApplyTimings>,
    /// The whole answer in one line, for people.
    pub message: String,
}

impl ApplyResult {
    /// A result with this outcome and nothing else yet.
    pub fn new(outcome: ApplyOutcome) -> ApplyResult {
        ApplyResult {
            outcome,
            version: None,
            txn: None,
            decision_log: None,
            hash: None,
            reasons: Vec::new(),
            silent: Vec::new(),
            not_reached: Vec::new(),
            problems: Vec::new(),
            finished: None,
            timings: None,
            message: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ApplyOutcome {
    Committed,
    Aborted,
    /// The text is the committed one already.
    Unchanged,
    /// The text does not parse or validate: see `problems`.
    Invalid,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeReason {
    pub node: String,
    pub reason: String,
}

/// Where the time of an apply went, on the coordinator.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApplyTimings {
    /// Looking the peers up and parsing, before PREPARE.
    pub resolve_ms: f64,
    /// PREPARE sent → decision recorded (validation and votes).
    pub prepare_ms: f64,
    /// Decision → every participant acknowledged (with `wait`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_ms: Option<f64>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TopologyFileState {
    Valid,
    Invalid,
    Missing,
    Unreadable,
}

/// Every error the API returns: a stable code for scripts, a message for people.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

/// One member as `GET /v1/members` and `cohort members` show it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MemberInfo {
    /// The node's name in the topology (from its gossip payload).
    pub name: String,
    pub uuid: uuid::Uuid,
    pub address: String,
    pub status: String,
    pub generation: u64,
    pub version: u64,
    pub replicaset: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Unix ms when this node saw the status change.
    pub since_ms: u64,
}

/// `GET /v1/members`: this node's view of the cluster and of its gossip.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Members {
    pub members: Vec<MemberInfo>,
    pub gossip: GossipHealth,
    /// Multicast discovery's counters, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multicast: Option<crate::discovery::multicast::MulticastStats>,
}

/// What a node can say about its own gossip traffic.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GossipHealth {
    pub encrypted: bool,
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    pub datagram_bytes_sent: u64,
    pub stream_bytes_sent: u64,
    /// Push-pull streams (TCP) opened, and those that failed.
    #[serde(default)]
    pub streams_sent: u64,
    #[serde(default)]
    pub stream_failures: u64,
    #[serde(default)]
    pub user_events_sent: u64,
    #[serde(default)]
    pub user_events_delivered: u64,
    /// Packets dropped, by reason (decode, decrypt, foreign_cluster, ...).
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// Plain words when something is wrong ("12 packets could not be decrypted: wrong key?").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One event on `GET /v1/events` (server-sent events, `data:` is this JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApiEvent {
    /// Unix ms on the node that reports it.
    pub at_ms: u64,
    /// `member-joined`, `member-status`, `member-address`, `member-payload`,
    /// `member-incarnation`, `member-forgotten`, `user`, `leader-changed`
    /// (subject: the leader, or empty; detail: the term), `master-changed`
    /// (subject: the replica set; detail: node and generation),
    /// `apply-committed` (subject: the version; detail: hash and txn),
    /// `apply-aborted` (subject: the txn), `cluster-state` (subject: `up`
    /// or `assembling`; detail: how many nodes are alive), `issue-raised`
    /// and `issue-cleared` (subject: `KIND SUBJECT`; see `issue`), and last
    /// on a stream `agent-stopping` (detail: the signal), then the stream
    /// ends.
    pub kind: String,
    /// The member's name, or for a user event its name.
    pub subject: String,
    pub uuid: Option<uuid::Uuid>,
    /// One line for people: "alive -> dead", "127.0.0.1:1 -> 127.0.0.1:2".
    pub detail: String,
    /// A user event's identity, `ORIGIN-UUID/GENERATION/SEQ`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A user event's payload when it is UTF-8 text...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// ...and in base64 when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// `member-*` events but `member-forgotten`: the member's row as `GET
    /// /v1/members` lists it now, so a reader updates it without a refetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<MemberInfo>,
    /// `leader-changed`, `master-changed`: this node's Raft view after the
    /// change (`GET /v1/leaders`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<Box<Leaders>>,
    /// `apply-committed`, `apply-aborted`: this node's apply state after it
    /// (`Status::apply`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<Box<ApplyState>>,
    /// `issue-raised`, `issue-cleared` (subject: `KIND SUBJECT`; detail:
    /// level and message): the issue as this node lists it in `GET
    /// /v1/issues?local` (when raised, with its level now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue: Option<Box<super::Issue>>,
}

impl ApiEvent {
    /// An event happening now, without user-event fields.
    pub fn now(kind: &str, subject: String, uuid: Option<uuid::Uuid>, detail: String) -> ApiEvent {
        ApiEvent {
            at_ms: super::unix_ms(std::time::SystemTime::now()),
            kind: kind.to_string(),
            subject,
            uuid,
            detail,
            id: None,
            payload: None,
            payload_base64: None,
            member: None,
            raft: None,
            apply: None,
            issue: None,
        }
    }
}

/// `POST /v1/events`: a user event for every node. Give the payload as
/// text, or as base64 for bytes; neither means empty.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct UserEventRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

/// `POST /v1/join`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JoinRequest {
    pub address: String,
}

/// The answer of a write that has nothing more to say.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Done {
    pub message: String,
}

/// `GET /v1/leaders` and `Status::raft`: the Raft group as one node sees it
/// (or, with `?consistent`, as the leader confirms it with a quorum).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Leaders {
    /// The node that answered.
    pub node: String,
    /// True when read through the leader after a quorum check
    /// (linearizable); false for this node's local view.
    pub consistent: bool,
    /// `disabled`, `eventual` or `raft` (from the committed topology).
    pub failover_mode: String,
    /// This node in the group: leader, follower, candidate, learner or off.
    pub role: String,
    pub term: u64,
    pub leader: Option<RaftPeer>,
    pub voters: Vec<RaftPeer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<RaftPeer>,
    /// The last log index this node knows committed.
    #[serde(default)]
    pub commit_index: Option<u64>,
    /// The last log index this node applied (committed entries only).
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    /// Each replica set's master and its fencing generation.
    pub masters: std::collections::BTreeMap<String, MasterInfo>,
    /// The topology version whose commit the log last recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<LoggedTopology>,
    /// How many recent 2PC decisions the log keeps.
    #[serde(default)]
    pub decisions: usize,
    /// Why the group is not what it should be yet, in plain words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LoggedTopology {
    pub version: u64,
    /// SHA-256 of the text, hex.
    pub hash: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RaftPeer {
    pub name: String,
    pub id: uuid::Uuid,
    pub addr: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MasterInfo {
    pub node: String,
    /// The fencing generation: grows at every appointment in the set (0
    /// when the master comes from the topology, not from Raft).
    pub generation: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// `POST /v1/failover/promote`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PromoteRequest {
    pub replicaset: String,
    pub node: String,
}

/// `POST /v1/raft/transfer-leader`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransferRequest {
    pub node: String,
}

/// `GET /v1/route?key=K`: the replica set a key belongs to (weighted
/// rendezvous hashing over the committed topology's replica sets) and its
/// master now, as this node sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Route {
    pub key: String,
    pub replicaset: String,
    /// The set's routing weight in the topology.
    pub weight: f64,
    /// None while the set has no master (see `note`).
    pub master: Option<RouteMaster>,
    /// The committed topology version the answer comes from.
    pub config_version: u64,
    /// Why there is no master, in plain words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RouteMaster {
    pub name: String,
    /// Its address in the topology (gossip and rpc, `ip:port`).
    pub address: String,
    /// Its status in this node's gossip: alive, suspect, dead, left, or
    /// unknown.
    pub status: String,
    /// The set's fencing generation (0 outside failover mode `raft`).
    pub generation: u64,
}

/// `GET /v1/health`: whether this agent works, for load balancers and
/// systemd checks. HTTP 200 with `status: ok` when every check passes;
/// 503 with `status: unhealthy` and the first failing check's `code` and
/// `message` otherwise. Every check runs each time and is listed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Health {
    pub status: HealthStatus,
    /// The node that answered.
    pub node: String,
    /// Unhealthy only: the first failing check's code (`stopping`,
    /// `agent_unresponsive`, `gossip_stopped`, `left`, `data_dir_unusable`,
    /// `apply_stopped`)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// ...and what is wrong, in plain words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub checks: Vec<HealthCheck>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Unhealthy,
}

/// One check of `GET /v1/health`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthCheck {
    /// `stopping`, `commands`, `gossip`, `membership`, `data_dir`, `apply`.
    pub name: String,
    pub ok: bool,
    /// Why it failed (failed checks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET /v1/topology/diff`: what applying the node's topology file as it
/// is now would change against the committed topology. (Serialize only:
/// `config::diff::TopologyDiff` is built here, never read back.)
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TopologyFileDiff {
    /// The node's topology file, read for this answer.
    pub file: String,
    /// SHA-256 of the file's text, hex.
    pub hash: String,
    /// The committed version compared with (0 before the first commit:
    /// then everything in the file is added).
    pub committed_version: u64,
    /// True when applying the file would change nothing (comments, key
    /// order and YAML style are not changes).
    pub unchanged: bool,
    /// One change per line, as `cohort topology diff` prints them.
    pub changes: Vec<String>,
    pub diff: crate::config::diff::TopologyDiff,
}
