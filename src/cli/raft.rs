//! `cohort leaders`, `cohort raft peers|transfer-leader` and `cohort
//! failover promote`: the Raft group and the replica-set masters, through
//! the node's API.

use std::time::Duration;

use anyhow::{anyhow, Context};
use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use super::client::{Body, CallError, Client, Target};
use super::exit::exit_status;
use super::output::{self, key_values, Cell, Style, Table};
use super::OutputFormat;
use crate::api::{Done, Leaders, PromoteRequest, RaftPeer, TransferRequest};

pub const LEADERS_HELP: &str = concat!(
    "\
Without --consistent this is the answering node's own view: it may be behind \
the leader's (a partitioned node still names the leader it last heard of). \
With --consistent the node asks the leader, which answers only after a quorum \
confirmed that it still leads; without a quorum the command fails. --format \
json prints the agent's answer.

",
    exit_status!(
        "0  success",
        "1  no quorum or no consistent answer in time (--consistent)"
    )
);

pub const PEERS_HELP: &str = concat!(
    "\
Without --consistent this is the answering node's own view: it may be behind \
the leader's. With --consistent the node asks the leader, which answers only \
after a quorum confirmed that it still leads; without a quorum the command \
fails. --format json prints one {node, id, address, state, voter} object per \
peer.

",
    exit_status!(
        "0  success",
        "1  no quorum or no consistent answer in time (--consistent)"
    )
);

pub const TRANSFER_HELP: &str = concat!(
    "\
Prints the agent's answer in one line (--format json: {message}). A refusal \
(NODE may not lead, is not a voter yet, is not known to gossip, did not win its \
elections) is printed on stderr as `cohort: REASON (CODE)`. With no answer in \
time the transfer may still happen: `cohort leaders` shows.

",
    exit_status!("0  NODE leads", "1  refused")
);

pub const PROMOTE_HELP: &str = concat!(
    "\
Prints the agent's answer in one line (--format json: {message}). A refusal \
(the failover mode is not `raft`, NODE is not in REPLICASET, no leader, the \
master changed meanwhile) is printed on stderr as `cohort: REASON (CODE)`. With \
no answer in time the appointment may still happen: `cohort leaders` shows.

",
    exit_status!("0  NODE is the master", "1  refused")
);

/// How long a write through Raft may take: an election, a commit.
const WRITE_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, Default, PartialEq, Eq, clap::Args)]
pub struct ReadArgs {
    /// Ask the Raft leader, after it confirmed its leadership with a quorum
    /// (a linearizable read), instead of taking the answering node's own
    /// view, which may be stale. Fails when there is no quorum.
    #[arg(long)]
    pub consistent: bool,
}

#[derive(Debug, PartialEq, Eq, clap::Subcommand)]
pub enum RaftAction {
    /// List the Raft group's members: node, ID, address, state (leader,
    /// follower, learner) and whether it votes.
    #[command(after_help = PEERS_HELP)]
    Peers(ReadArgs),
    /// Hand the Raft leadership to NODE, a voter whose topology entry says
    /// `election: candidate`; returns once NODE leads.
    #[command(after_help = TRANSFER_HELP)]
    TransferLeader {
        /// The node to lead, by name.
        node: String,
    },
}

#[derive(Debug, PartialEq, Eq, clap::Subcommand)]
pub enum FailoverAction {
    /// Make NODE the master of REPLICASET now (failover mode `raft` only):
    /// the appointment is committed through Raft and takes the set's next
    /// fencing generation, so roles can refuse writes stamped with the old
    /// master's.
    #[command(after_help = PROMOTE_HELP)]
    Promote {
        /// The replica set, as the topology names it.
        replicaset: String,
        /// Its new master: one of its nodes.
        node: String,
    },
}

/// `cohort leaders [--consistent]`.
pub fn leaders(api: &Target, format: OutputFormat, args: &ReadArgs) -> anyhow::Result<()> {
    let (value, leaders) = fetch(api, args.consistent)?;
    match format {
        // As the agent sent it: fields a newer agent adds are not lost.
        OutputFormat::Json => output::print_json(&value)?,
        OutputFormat::Text => print!("{}", render_leaders(&leaders, Style::current())),
    }
    Ok(())
}

/// `cohort raft ...`.
pub fn raft(api: &Target, format: OutputFormat, action: RaftAction) -> anyhow::Result<()> {
    match action {
        RaftAction::Peers(args) => peers(api, format, &args),
        RaftAction::TransferLeader { node } => write(
            api,
            format,
            "/v1/raft/transfer-leader",
            &TransferRequest { node },
        ),
    }
}

/// `cohort failover ...`.
pub fn failover(api: &Target, format: OutputFormat, action: FailoverAction) -> anyhow::Result<()> {
    match action {
        FailoverAction::Promote { replicaset, node } => write(
            api,
            format,
            "/v1/failover/promote",
            &PromoteRequest { replicaset, node },
        ),
    }
}

/// `cohort raft peers [--consistent]`.
fn peers(api: &Target, format: OutputFormat, args: &ReadArgs) -> anyhow::Result<()> {
    let (_, leaders) = fetch(api, args.consistent)?;
    match format {
        OutputFormat::Json => output::print_json(&peer_rows(&leaders))?,
        OutputFormat::Text => {
            print!("{}", render_peers(&leaders, Style::current()));
            if let Some(note) = &leaders.note {
                eprintln!("note: {note}");
            }
        }
    }
    Ok(())
}

/// `GET /v1/leaders[?consistent]`: the answer as sent, and as this cohort
/// reads it.
fn fetch(api: &Target, consistent: bool) -> anyhow::Result<(serde_json::Value, Leaders)> {
    let path = if consistent {
        "/v1/leaders?consistent"
    } else {
        "/v1/leaders"
    };
    let value: serde_json::Value = Client::new(api)?
        .get(path)
        .map_err(|e| explain_read_failure(e, consistent))?;
    let leaders = Leaders::deserialize(&value)
        .with_context(|| format!("the answer to GET {path} is not what this cohort expects"))?;
    Ok((value, leaders))
}

/// A consistent read that found no quorum: say what still works.
fn explain_read_failure(e: anyhow::Error, consistent: bool) -> anyhow::Error {
    let no_quorum = match e.downcast_ref::<CallError>() {
        Some(CallError::Api { status, error }) => {
            error.code == "no_quorum"
                || error.code == "timeout"
                || *status == StatusCode::SERVICE_UNAVAILABLE
                || *status == StatusCode::GATEWAY_TIMEOUT
        }
        _ => false,
    };
    if consistent && no_quorum {
        anyhow!("{e:#}; without --consistent the node shows its own view, possibly stale")
    } else {
        e
    }
}

/// A POST through Raft; prints the agent's message (its answer with
/// `--format json`).
fn write(
    api: &Target,
    format: OutputFormat,
    path: &str,
    body: &impl Serialize,
) -> anyhow::Result<()> {
    let reply = Client::new(api)?
        .request::<Done>(
            hyper::Method::POST,
            path,
            Some(Body::json(body)?),
            WRITE_DEADLINE,
            &[],
        )
        .map_err(|e| match e.downcast_ref::<CallError>() {
            Some(CallError::Deadline { .. }) => {
                anyhow!("{e:#}; it may still happen: `cohort leaders` shows")
            }
            _ => e,
        })?;
    match format {
        OutputFormat::Json => output::print_json(&reply.body)?,
        OutputFormat::Text => println!("{}", reply.body.message),
    }
    Ok(())
}

fn is_leader(l: &Leaders, p: &RaftPeer) -> bool {
    l.leader.as_ref().is_some_and(|leader| leader.id == p.id)
}

/// A voter's state as the answering node knows it: the leader, the
/// answering node itself in its own role (a candidate), else follower.
fn voter_state(l: &Leaders, p: &RaftPeer) -> &'static str {
    if is_leader(l, p) {
        "leader"
    } else if p.name == l.node && l.role == "candidate" {
        "candidate"
    } else {
        "follower"
    }
}

/// One row of `cohort raft peers` (and of its JSON).
#[derive(Debug, Serialize, PartialEq)]
struct PeerRow {
    node: String,
    id: uuid::Uuid,
    address: String,
    state: &'static str,
    voter: bool,
}

fn peer_rows(l: &Leaders) -> Vec<PeerRow> {
    let row = |p: &RaftPeer, state, voter| PeerRow {
        node: p.name.clone(),
        id: p.id,
        address: p.addr.clone(),
        state,
        voter,
    };
    l.voters
        .iter()
        .map(|p| row(p, voter_state(l, p), true))
        .chain(l.learners.iter().map(|p| row(p, "learner", false)))
        .collect()
}

/// Like `consul operator raft list-peers`: voters, then learners.
fn render_peers(l: &Leaders, style: Style) -> String {
    let mut table = Table::new(&["NODE", "ID", "ADDRESS", "STATE", "VOTER"]);
    for r in peer_rows(l) {
        table.row([
            Cell::plain(r.node),
            Cell::plain(r.id.to_string()),
            Cell::plain(r.address),
            Cell::status(r.state),
            Cell::plain(r.voter.to_string()),
        ]);
    }
    table.render(style)
}

/// `cohort leaders`: the group in aligned rows, then a table of voters,
/// of learners (when there are) and of the replica sets' masters.
fn render_leaders(l: &Leaders, style: Style) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("leader", l.leader.as_ref().map_or("none".into(), peer_name)),
        ("term", l.term.to_string()),
        ("node", format!("{} ({})", l.node, l.role)),
        ("failover mode", l.failover_mode.clone()),
        (
            "applied index",
            match (l.applied_index, l.last_log_index) {
                (None, _) => "none".into(),
                (Some(applied), None) => applied.to_string(),
                (Some(applied), Some(last)) => match l.commit_index {
                    Some(commit) => {
                        format!("{applied} (commit index {commit}, last log index {last})")
                    }
                    None => format!("{applied} (last log index {last})"),
                },
            },
        ),
        (
            "logged config",
            match &l.topology {
                None => "none".into(),
                Some(t) => format!(
                    "version {} ({}), {} 2PC decision(s) kept",
                    t.version,
                    &t.hash[..t.hash.len().min(12)],
                    l.decisions
                ),
            },
        ),
        (
            "view",
            if l.consistent {
                "consistent: the leader confirmed it with a quorum".into()
            } else {
                format!(
                    "{}'s own, possibly stale (--consistent asks the leader)",
                    l.node
                )
            },
        ),
    ];
    if l.voters.is_empty() {
        rows.push(("voters", "none".into()));
    }
    if l.masters.is_empty() {
        rows.push(("masters", "none".into()));
    }
    if let Some(note) = &l.note {
        rows.push(("note", note.clone()));
    }
    let mut out = key_values(&rows);
    if !l.voters.is_empty() {
        let mut voters = Table::new(&["VOTER", "ADDRESS", ""]);
        for p in &l.voters {
            let marker = if is_leader(l, p) { "leader" } else { "" };
            voters.row([
                Cell::plain(p.name.as_str()),
                Cell::plain(p.addr.as_str()),
                Cell::status(marker),
            ]);
        }
        out.push('\n');
        out.push_str(&voters.render(style));
    }
    if !l.learners.is_empty() {
        let mut learners = Table::new(&["LEARNER", "ADDRESS"]);
        for p in &l.learners {
            learners.row([p.name.as_str(), p.addr.as_str()]);
        }
        out.push('\n');
        out.push_str(&learners.render(style));
    }
    if !l.masters.is_empty() {
        let mut masters = Table::new(&["REPLICASET", "MASTER", "GENERATION", "REASON"]);
        for (set, m) in &l.masters {
            masters.row([
                set.clone(),
                m.node.clone(),
                m.generation.to_string(),
                if m.reason.is_empty() {
                    "-".into()
                } else {
                    m.reason.clone()
                },
            ]);
        }
        out.push('\n');
        out.push_str(&masters.render(style));
    }
    out
}

/// The Raft rows of `cohort status`: role, term and leader; voters; each
/// replica set's master; the note.
pub fn status_rows(l: &Leaders) -> Vec<(String, String)> {
    let leader = l
        .leader
        .as_ref()
        .map_or("no leader".into(), |p| format!("leader {}", p.name));
    let mut rows = vec![
        (
            "raft".to_string(),
            format!("{}, term {}, {leader}", l.role, l.term),
        ),
        (
            "voters".to_string(),
            if l.voters.is_empty() {
                "none".to_string()
            } else {
                l.voters
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
    ];
    rows.extend(l.masters.iter().map(|(set, m)| {
        (
            format!("master {set}"),
            format!("{} (generation {})", m.node, m.generation),
        )
    }));
    if let Some(note) = &l.note {
        rows.push(("raft note".to_string(), note.clone()));
    }
    rows
}

fn peer_name(p: &RaftPeer) -> String {
    format!("{} ({})", p.name, p.addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MasterInfo;

    fn peer(n: u128, name: &str) -> RaftPeer {
        RaftPeer {
            name: name.into(),
            id: uuid::Uuid::from_u128(n),
            addr: format!("127.0.0.1:331{n}"),
        }
    }

    fn master(node: &str, generation: u64, reason: &str) -> MasterInfo {
        MasterInfo {
            node: node.into(),
            generation,
            reason: reason.into(),
        }
    }

    fn sample() -> Leaders {
        Leaders {
            node: "n2".into(),
            consistent: false,
            failover_mode: "raft".into(),
            role: "follower".into(),
            term: 4,
            leader: Some(peer(1, "n1")),
            voters: vec![peer(1, "n1"), peer(2, "n2"), peer(3, "n3")],
            learners: vec![peer(4, "n4")],
            commit_index: Some(18),
            applied_index: Some(17),
            last_log_index: Some(18),
            masters: [
                ("router-1".to_string(), master("r1", 0, "")),
                ("s1".to_string(), master("n3", 2, "n2 is dead")),
            ]
            .into(),
            topology: Some(crate::api::LoggedTopology {
                version: 7,
                hash: "0123456789abcdef".into(),
            }),
            decisions: 3,
            note: None,
        }
    }

    #[test]
    fn leaders_text_shows_the_group_and_the_masters() {
        assert_eq!(
            render_leaders(&sample(), Style::PLAIN),
            "\
leader         n1 (127.0.0.1:3311)
term           4
node           n2 (follower)
failover mode  raft
applied index  17 (commit index 18, last log index 18)
logged config  version 7 (0123456789ab), 3 2PC decision(s) kept
view           n2's own, possibly stale (--consistent asks the leader)

VOTER  ADDRESS
n1     127.0.0.1:3311  leader
n2     127.0.0.1:3312
n3     127.0.0.1:3313

LEARNER  ADDRESS
n4       127.0.0.1:3314

REPLICASET  MASTER  GENERATION  REASON
router-1    r1      0           -
s1          n3      2           n2 is dead
"
        );
    }

    #[test]
    fn leaders_text_without_a_group_says_none_and_shows_the_note() {
        let leaders = Leaders {
            node: "n5".into(),
            consistent: true,
            failover_mode: "disabled".into(),
            role: "off".into(),
            note: Some("no voters alive yet: 1 of 3".into()),
            ..Default::default()
        };
        assert_eq!(
            render_leaders(&leaders, Style::PLAIN),
            "\
leader         none
term           0
node           n5 (off)
failover mode  disabled
applied index  none
logged config  none
view           consistent: the leader confirmed it with a quorum
voters         none
masters        none
note           no voters alive yet: 1 of 3
"
        );
    }

    #[test]
    fn raft_peers_text_lists_voters_then_learners() {
        assert_eq!(
            render_peers(&sample(), Style::PLAIN),
            "\
NODE  ID                                    ADDRESS         STATE     VOTER
n1    00000000-0000-0000-0000-000000000001  127.0.0.1:3311  leader    true
n2    00000000-0000-0000-0000-000000000002  127.0.0.1:3312  follower  true
n3    00000000-0000-0000-0000-000000000003  127.0.0.1:3313  follower  true
n4    00000000-0000-0000-0000-000000000004  127.0.0.1:3314  learner   false
"
        );
    }

    #[test]
    fn raft_peers_shows_a_candidate_and_no_leader() {
        let mut leaders = sample();
        leaders.leader = None;
        leaders.role = "candidate".into();
        leaders.learners.clear();
        assert_eq!(
            render_peers(&leaders, Style::PLAIN),
            "\
NODE  ID                                    ADDRESS         STATE      VOTER
n1    00000000-0000-0000-0000-000000000001  127.0.0.1:3311  follower   true
n2    00000000-0000-0000-0000-000000000002  127.0.0.1:3312  candidate  true
n3    00000000-0000-0000-0000-000000000003  127.0.0.1:3313  follower   true
"
        );
        assert_eq!(
            render_peers(&Leaders::default(), Style::PLAIN),
            "NODE  ID  ADDRESS  STATE  VOTER\n"
        );
    }

    #[test]
    fn raft_peers_json_has_one_object_per_peer() {
        let json = serde_json::to_value(peer_rows(&sample())).unwrap();
        assert_eq!(
            json[0],
            serde_json::json!({
                "node": "n1",
                "id": "00000000-0000-0000-0000-000000000001",
                "address": "127.0.0.1:3311",
                "state": "leader",
                "voter": true,
            })
        );
        assert_eq!(json[3]["state"], "learner");
        assert_eq!(json[3]["voter"], false);
        assert_eq!(json.as_array().unwrap().len(), 4);
    }

    #[test]
    fn status_rows_name_the_role_the_voters_and_every_master() {
        let mut leaders = sample();
        leaders.note = Some("n3 is not reachable".into());
        let rows = status_rows(&leaders);
        let rows: Vec<(&str, &str)> = rows.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            rows,
            [
                ("raft", "follower, term 4, leader n1"),
                ("voters", "n1, n2, n3"),
                ("master router-1", "r1 (generation 0)"),
                ("master s1", "n3 (generation 2)"),
                ("raft note", "n3 is not reachable"),
            ]
        );
        let rows = status_rows(&Leaders {
            role: "candidate".into(),
            term: 9,
            ..Default::default()
        });
        assert_eq!(
            rows,
            [
                (
                    "raft".to_string(),
                    "candidate, term 9, no leader".to_string()
                ),
                ("voters".to_string(), "none".to_string()),
            ]
        );
    }

    #[test]
    fn a_consistent_read_without_quorum_says_what_still_works() {
        let e = || -> anyhow::Error {
            CallError::Api {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error: crate::api::ApiError {
                    code: "no_quorum".into(),
                    message: "no quorum: 1 of 3 voters answered".into(),
                },
            }
            .into()
        };
        assert_eq!(
            format!("{:#}", explain_read_failure(e(), true)),
            "no quorum: 1 of 3 voters answered (no_quorum); without --consistent the node shows its own view, possibly stale"
        );
        assert_eq!(
            format!("{:#}", explain_read_failure(e(), false)),
            "no quorum: 1 of 3 voters answered (no_quorum)"
        );
        let other = explain_read_failure(anyhow!("cannot reach"), true);
        assert_eq!(format!("{other:#}"), "cannot reach");
    }
}
