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

/// What the agent found in its topology file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopologyFile {
    pub path: String,
    pub state: TopologyFileState,
    /// `FILE:LINE:COLUMN: message` lines when invalid or unreadable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
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
    /// `member-incarnation`, `member-forgotten`, `user`, and last on a
    /// stream `agent-stopping` (detail: the signal), then the stream ends.
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
