//! `GET /v1/issues`: what is wrong in the cluster now (Cartridge's issues
//! list). Every node computes its own list (`agent::issues`) and keeps it
//! here; the node asked merges its list with every alive member's (asked
//! over rpc by the agent, behind `PeerIssues`), one entry per kind and
//! subject. `?local` (or `?scope=local`) answers with this node's list
//! alone. See docs/issues.md.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{error, read, write, NodeState};

/// What an issue is about. Unknown kinds (from a newer peer) are kept as
/// they were sent, so a mixed-version cluster still merges them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum IssueKind {
    /// Nodes run different committed topology versions (or one version
    /// with different texts).
    ConfigMismatch,
    /// This node runs an older version than a live peer: fetching it.
    CatchingUp,
    MemberSuspect,
    MemberDead,
    /// A member did not answer the cluster-wide `/v1/issues` in time.
    MemberUnreachable,
    NoLeader,
    NoQuorum,
    /// A replica set whose master is unknown, dead or gone.
    NoMaster,
    ClockSkew,
    TopologyRejected,
    DataDirUnwritable,
    DiskFull,
    UndecryptablePackets,
    Other(String),
}

impl IssueKind {
    pub const ALL: [IssueKind; 13] = [
        IssueKind::ConfigMismatch,
        IssueKind::CatchingUp,
        IssueKind::MemberSuspect,
        IssueKind::MemberDead,
        IssueKind::MemberUnreachable,
        IssueKind::NoLeader,
        IssueKind::NoQuorum,
        IssueKind::NoMaster,
        IssueKind::ClockSkew,
        IssueKind::TopologyRejected,
        IssueKind::DataDirUnwritable,
        IssueKind::DiskFull,
        IssueKind::UndecryptablePackets,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            IssueKind::ConfigMismatch => "config-mismatch",
            IssueKind::CatchingUp => "catching-up",
            IssueKind::MemberSuspect => "member-suspect",
            IssueKind::MemberDead => "member-dead",
            IssueKind::MemberUnreachable => "member-unreachable",
            IssueKind::NoLeader => "no-leader",
            IssueKind::NoQuorum => "no-quorum",
            IssueKind::NoMaster => "no-master",
            IssueKind::ClockSkew => "clock-skew",
            IssueKind::TopologyRejected => "topology-rejected",
            IssueKind::DataDirUnwritable => "data-dir-unwritable",
            IssueKind::DiskFull => "disk-full",
            IssueKind::UndecryptablePackets => "undecryptable-packets",
            IssueKind::Other(kind) => kind,
        }
    }
}

impl From<String> for IssueKind {
    fn from(kind: String) -> IssueKind {
        IssueKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .unwrap_or(IssueKind::Other(kind))
    }
}

impl From<IssueKind> for String {
    fn from(kind: IssueKind) -> String {
        kind.as_str().to_string()
    }
}

impl std::fmt::Display for IssueKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How bad: `critical` needs an operator now (no leader, a set without a
/// master, a disk that refuses writes); `warning` may heal or is degraded
/// service. Ordered: critical first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum IssueLevel {
    Critical,
    Warning,
}

impl IssueLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueLevel::Critical => "critical",
            IssueLevel::Warning => "warning",
        }
    }
}

impl From<String> for IssueLevel {
    /// A level this build does not know counts as a warning.
    fn from(level: String) -> IssueLevel {
        if level == "critical" {
            IssueLevel::Critical
        } else {
            IssueLevel::Warning
        }
    }
}

impl From<IssueLevel> for String {
    fn from(level: IssueLevel) -> String {
        level.as_str().to_string()
    }
}

impl std::fmt::Display for IssueLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One issue, as one node reports it or as merged from several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    pub kind: IssueKind,
    pub level: IssueLevel,
    /// The node that reports it (merged: the answering node when it
    /// reports it too, else the one that has seen it longest).
    pub node: String,
    /// What it is about: a node, a replica set, a path, `raft`.
    pub subject: String,
    /// One sentence for people.
    pub message: String,
    /// Since when (Unix ms), as the reporter saw it start (merged: the
    /// earliest).
    pub since_ms: u64,
    /// The same instant, RFC 3339 in UTC.
    pub since: String,
    /// Every node that reports it, by name.
    #[serde(default)]
    pub reported_by: Vec<String>,
}

impl Issue {
    /// An issue `node` reports, seen since `since_ms`.
    pub fn new(
        kind: IssueKind,
        level: IssueLevel,
        node: &str,
        subject: impl Into<String>,
        message: impl Into<String>,
        since_ms: u64,
    ) -> Issue {
        Issue {
            kind,
            level,
            node: node.to_string(),
            subject: subject.into(),
            message: message.into(),
            since_ms,
            since: super::rfc3339(UNIX_EPOCH + Duration::from_millis(since_ms)),
            reported_by: vec![node.to_string()],
        }
    }

    /// What makes two reports the same issue.
    pub fn key(&self) -> (IssueKind, String) {
        (self.kind.clone(), self.subject.clone())
    }
}

/// The answer of `GET /v1/issues`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issues {
    /// Critical first, then the oldest first.
    pub issues: Vec<Issue>,
    /// Nodes asked for their list, the answering node included.
    pub nodes_asked: usize,
    pub nodes_answered: usize,
    /// Nodes asked that did not answer in time, by name.
    #[serde(default)]
    pub unanswered: Vec<String>,
}

/// Critical first, then the oldest first; then by kind and subject so
/// the order is stable.
pub fn sort(issues: &mut [Issue]) {
    issues.sort_by(|a, b| {
        (a.level, a.since_ms, &a.kind, &a.subject).cmp(&(b.level, b.since_ms, &b.kind, &b.subject))
    });
}

/// How long the answering node waits for the others' lists.
pub const PEER_DEADLINE: Duration = Duration::from_secs(1);

/// Merges this node's list with the lists other nodes answered: one entry
/// per (kind, subject), at the worst level any reporter gives it, since
/// the earliest `since`, with every reporter in `reported_by`. A node that
/// did not answer is listed in `unanswered` and becomes a
/// `member-unreachable` warning (reported by `me`, since `now_ms`).
pub fn merge(
    me: &str,
    own: Vec<Issue>,
    answers: Vec<(String, Vec<Issue>)>,
    unanswered: Vec<String>,
    now_ms: u64,
) -> Issues {
    let nodes_answered = 1 + answers.len();
    let nodes_asked = nodes_answered + unanswered.len();
    let mut reports: BTreeMap<(IssueKind, String), Vec<Issue>> = BTreeMap::new();
    let silent = unanswered.iter().map(|name| {
        let message = format!(
            "{name} did not answer for its issues within {}s: it may be overloaded, stopped or cut off",
            PEER_DEADLINE.as_secs()
        );
        let issue = Issue::new(
            IssueKind::MemberUnreachable,
            IssueLevel::Warning,
            me,
            name.clone(),
            message,
            now_ms,
        );
        (me.to_string(), vec![issue])
    });
    for (reporter, list) in std::iter::once((me.to_string(), own))
        .chain(answers)
        .chain(silent)
    {
        for mut issue in list {
            // Whatever a peer claims, it reports its own list.
            issue.node = reporter.clone();
            reports.entry(issue.key()).or_default().push(issue);
        }
    }
    let merged = reports.into_values().filter_map(|mut same| {
        // The answering node speaks for an issue it sees itself (a page
        // on this node updates the entry from this node's events); else
        // the worst report, then the oldest.
        same.sort_by(|a, b| {
            (a.node != me, a.level, a.since_ms, &a.node).cmp(&(
                b.node != me,
                b.level,
                b.since_ms,
                &b.node,
            ))
        });
        let level = same.iter().map(|i| i.level).min()?;
        let oldest = same.iter().min_by_key(|i| i.since_ms)?.clone();
        let mut reporters: Vec<String> = same.iter().map(|i| i.node.clone()).collect();
        reporters.sort();
        reporters.dedup();
        let mut speaker = same.into_iter().next()?;
        speaker.level = level;
        speaker.since_ms = oldest.since_ms;
        speaker.since = oldest.since;
        speaker.reported_by = reporters;
        Some(speaker)
    });
    let mut issues: Vec<Issue> = merged.collect();
    sort(&mut issues);
    Issues {
        issues,
        nodes_asked,
        nodes_answered,
        unanswered,
    }
}

/// What the other nodes answered: their names and lists, and the names of
/// those asked that did not answer in time.
#[derive(Clone, Debug, Default)]
pub struct PeerAnswers {
    pub answered: Vec<(String, Vec<Issue>)>,
    pub unanswered: Vec<String>,
}

/// Asks every alive member for its own list (the agent implements it over
/// rpc; the API never talks to peers itself).
pub trait PeerIssues: Send + Sync + 'static {
    fn ask(&self) -> Pin<Box<dyn Future<Output = PeerAnswers> + Send + '_>>;
}

/// This node's list, and how to ask the others.
#[derive(Default)]
pub struct IssueBoard {
    local: RwLock<Vec<Issue>>,
    peers: RwLock<Option<Arc<dyn PeerIssues>>>,
}

impl NodeState {
    /// This node's current list (sorted), as the agent computed it last.
    pub fn set_issues(&self, mut issues: Vec<Issue>) {
        sort(&mut issues);
        *write(&self.issues.local) = issues;
    }

    pub fn issues(&self) -> Vec<Issue> {
        read(&self.issues.local).clone()
    }

    /// How `/v1/issues` reaches the other nodes (until set, it answers
    /// with this node's list alone).
    pub fn set_peer_issues(&self, peers: Arc<dyn PeerIssues>) {
        *write(&self.issues.peers) = Some(peers);
    }
}

#[derive(Deserialize)]
pub(super) struct IssuesQuery {
    /// Present (any value, or none): this node's list only.
    local: Option<String>,
    /// `cluster` (the default) or `local`.
    scope: Option<String>,
}

pub(super) async fn get_issues(
    State(state): State<Arc<NodeState>>,
    query: Result<Query<IssuesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(e) => return error(StatusCode::BAD_REQUEST, "rejected", e.body_text()),
    };
    let local = match query.scope.as_deref() {
        None | Some("cluster") => query.local.is_some(),
        Some("local") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "rejected",
                format!("scope must be `cluster` or `local`, not {other:?}"),
            )
        }
    };
    let me = read(&state.status).node.clone();
    let own = state.issues();
    let peers = read(&state.issues.peers).clone();
    let answers = match peers.filter(|_| !local) {
        Some(peers) => peers.ask().await,
        None => PeerAnswers::default(),
    };
    let now_ms = super::unix_ms(SystemTime::now());
    Json(merge(
        &me,
        own,
        answers.answered,
        answers.unanswered,
        now_ms,
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(kind: IssueKind, level: IssueLevel, node: &str, subject: &str, since: u64) -> Issue {
        Issue::new(kind, level, node, subject, format!("{node} says"), since)
    }

    #[test]
    fn kinds_and_levels_are_strings_and_unknown_ones_survive() {
        for kind in IssueKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<IssueKind>(&json).unwrap(), kind);
        }
        let future: IssueKind = serde_json::from_str("\"quantum-flux\"").unwrap();
        assert_eq!(future, IssueKind::Other("quantum-flux".into()));
        assert_eq!(serde_json::to_string(&future).unwrap(), "\"quantum-flux\"");
        let level: IssueLevel = serde_json::from_str("\"catastrophic\"").unwrap();
        assert_eq!(level, IssueLevel::Warning);
        assert_eq!(
            serde_json::to_string(&IssueLevel::Critical).unwrap(),
            "\"critical\""
        );
    }

    #[test]
    fn an_issue_has_the_documented_shape() {
        let i = issue(
            IssueKind::MemberDead,
            IssueLevel::Critical,
            "n1",
            "n3",
            1_795_420_666_175,
        );
        let json = serde_json::to_value(&i).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "member-dead",
                "level": "critical",
                "node": "n1",
                "subject": "n3",
                "message": "n1 says",
                "since_ms": 1_795_420_666_175u64,
                "since": "2026-11-23T07:57:46.175Z",
                "reported_by": ["n1"],
            })
        );
    }

    #[test]
    fn the_same_issue_from_many_nodes_is_one_entry() {
        use IssueKind::*;
        use IssueLevel::*;
        let answers = vec![
            (
                "n2".to_string(),
                vec![
                    issue(MemberDead, Critical, "n2", "n3", 100),
                    issue(DiskFull, Warning, "n2", "/var/lib/cohort", 50),
                ],
            ),
            (
                "n4".to_string(),
                vec![issue(MemberDead, Critical, "n4", "n3", 90)],
            ),
        ];
        let own = vec![issue(MemberDead, Critical, "n1", "n3", 120)];
        let merged = merge("n1", own, answers, vec!["n5".into()], 1000);
        assert_eq!(merged.nodes_asked, 4);
        assert_eq!(merged.nodes_answered, 3);
        assert_eq!(merged.unanswered, vec!["n5".to_string()]);
        let kinds: Vec<&str> = merged.issues.iter().map(|i| i.kind.as_str()).collect();
        // Critical first, then oldest first.
        assert_eq!(kinds, ["member-dead", "disk-full", "member-unreachable"]);
        let dead = &merged.issues[0];
        assert_eq!(dead.reported_by, ["n1", "n2", "n4"]);
        assert_eq!(dead.since_ms, 90, "the earliest report");
        assert_eq!(
            dead.node, "n1",
            "the answering node speaks for what it sees"
        );
        assert_eq!(dead.message, "n1 says");
        let disk = &merged.issues[1];
        assert_eq!((disk.node.as_str(), disk.reported_by.len()), ("n2", 1));
        let silent = &merged.issues[2];
        assert_eq!(
            (silent.node.as_str(), silent.subject.as_str(), silent.level),
            ("n1", "n5", Warning)
        );
        assert_eq!(silent.since_ms, 1000);
    }

    #[test]
    fn without_the_answering_node_the_earliest_reporter_speaks_and_the_worst_level_wins() {
        use IssueKind::*;
        use IssueLevel::*;
        let answers = vec![
            (
                "n3".to_string(),
                vec![issue(DiskFull, Warning, "n3", "/d", 10)],
            ),
            (
                "n2".to_string(),
                vec![issue(DiskFull, Critical, "n2", "/d", 40)],
            ),
            (
                "n4".to_string(),
                vec![issue(DiskFull, Warning, "n4", "/d", 5)],
            ),
        ];
        let merged = merge("n1", Vec::new(), answers, Vec::new(), 0);
        assert_eq!(merged.issues.len(), 1);
        let disk = &merged.issues[0];
        assert_eq!(disk.level, Critical);
        assert_eq!(disk.node, "n2", "the worst report speaks");
        assert_eq!(disk.since_ms, 5);
        assert_eq!(disk.reported_by, ["n2", "n3", "n4"]);
    }

    #[test]
    fn a_peer_cannot_claim_to_be_another_node() {
        let forged = issue(IssueKind::NoLeader, IssueLevel::Critical, "n9", "raft", 1);
        let merged = merge(
            "n1",
            Vec::new(),
            vec![("n2".into(), vec![forged])],
            vec![],
            5,
        );
        assert_eq!(merged.issues[0].node, "n2");
        assert_eq!(merged.issues[0].reported_by, ["n2"]);
    }

    #[test]
    fn a_local_answer_is_this_nodes_list() {
        let own = vec![issue(
            IssueKind::ClockSkew,
            IssueLevel::Warning,
            "n1",
            "n2",
            7,
        )];
        let merged = merge("n1", own.clone(), Vec::new(), Vec::new(), 9);
        assert_eq!(merged.issues, own);
        assert_eq!((merged.nodes_asked, merged.nodes_answered), (1, 1));
    }
}
