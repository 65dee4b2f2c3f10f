//! The issues list (Cartridge's "issues"): what this node sees wrong, in
//! one list an operator reads first. `compute` is a pure function of what
//! the node knows (status, members, the Raft view, the topology file, the
//! data dir, gossip drops, clock offsets); `Tracker` keeps each issue's
//! `since` while it lasts, hides the ones that heal within their grace
//! period, and says what was raised and cleared; `spawn` runs both every
//! second (and soon after each event). `endpoint` answers the rpc
//! `issues.local`, through which the node asked for `GET /v1/issues`
//! collects every node's list. Thresholds and rules: docs/issues.md.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use crate::api::{self, ApiEvent, Issue, IssueKind, IssueLevel, NodeState, PeerAnswers, Status};
use crate::config::{Election, Topology};
use crate::membership::driver::Handle;
use crate::membership::{by_name, MemberStatus, NamedMember, NodeId, Swim};
use crate::rpc::{RpcClient, RpcError};
use crate::twophase::ConfigHash;

/// The rpc method that answers this node's own list (JSON `[Issue]`).
pub const METHOD: &str = "issues.local";

/// A peer's clock this far from ours (either way) is skew.
pub const CLOCK_SKEW_MS: i64 = 1_000;
/// Free space on the data dir's filesystem under both is a warning...
/// Both, because a percentage alone cries wolf on a big disk (5 % of
/// 2 TiB is 100 GiB, years of this agent's writes) and bytes alone on a
/// small one; the percentage is capped by the bytes, as Elasticsearch's
/// disk watermarks are by their `max_headroom`.
pub const DISK_WARN_FREE_BYTES: u64 = 1 << 30;
pub const DISK_WARN_FREE_PERCENT: f64 = 5.0;
/// ...and under both of these, critical.
pub const DISK_CRITICAL_FREE_BYTES: u64 = 100 << 20;
pub const DISK_CRITICAL_FREE_PERCENT: f64 = 1.0;
/// Undecryptable packets are an issue while the count grew this recently.
pub const UNDECRYPTABLE_WINDOW: Duration = Duration::from_secs(60);
/// Created, fsynced and removed in the data dir at each write probe.
pub const PROBE_FILE: &str = ".issues-probe";
/// The longest this node's gossip counts as still spreading news, for
/// `Snapshot::gossip_settling`: past it a busy gossip (churn, a storm of
/// suspicions) no longer hides a peer that is behind. Well above the 73 s
/// the payloads of an apply took to drain at 500 agents (`bench apply`).
const GOSSIP_SETTLE_MAX: Duration = Duration::from_secs(300);
/// How often the data dir is probed (a write, an fsync and a statvfs).
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// A probe still running after this is a hung disk.
const PROBE_HUNG: Duration = Duration::from_secs(10);
/// The list is recomputed this often, and no sooner after an event: a
/// recompute copies the member table (in the gossip task) and the
/// topology's view, and 100 ms after every event (as until 1a003ea) was
/// ten a second while events flow (500 nodes starting, a storm of
/// suspicions) on each of 500 agents, more than two cores have.
const RECOMPUTE_EVERY: Duration = Duration::from_secs(1);
/// How long a test-only clock offset may be (a day either way).
const MAX_TEST_OFFSET_MS: i64 = 86_400_000;

/// How long a kind must hold before it is listed: states every normal
/// change passes through (nodes install a commit a moment apart, an
/// election takes a second or two, failover appoints a new master) are
/// not issues unless they last.
pub fn grace(kind: &IssueKind) -> Duration {
    match kind {
        IssueKind::ConfigMismatch | IssueKind::CatchingUp => Duration::from_secs(5),
        IssueKind::NoLeader | IssueKind::NoQuorum | IssueKind::NoMaster => Duration::from_secs(3),
        _ => Duration::ZERO,
    }
}

// ---- what the node knows ---------------------------------------------

/// One other member, as this node's gossip shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub id: NodeId,
    /// Its name in the topology (empty until its payload arrived).
    pub name: String,
    pub status: MemberStatus,
    /// When this node saw its status change, Unix ms.
    pub since_ms: u64,
    /// The committed topology it runs: version and hash.
    pub config: Option<(u64, ConfigHash)>,
    /// Its wall clock minus ours, in ms, once estimated.
    pub clock_offset_ms: Option<i64>,
    /// Where its rpc answers.
    pub rpc: SocketAddr,
}

impl NamedMember for Peer {
    fn name(&self) -> &str {
        &self.name
    }
    fn id(&self) -> NodeId {
        self.id
    }
    fn status(&self) -> MemberStatus {
        self.status
    }
}

/// What the committed topology says that matters here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopologyView {
    pub nodes: BTreeSet<String>,
    pub sets: Vec<String>,
    /// Nodes with `election: candidate` or `voter`.
    pub group: Vec<String>,
}

impl TopologyView {
    pub fn of(topology: &Topology) -> TopologyView {
        TopologyView {
            nodes: topology.nodes().map(|n| n.name.to_string()).collect(),
            sets: topology
                .replicasets
                .value
                .keys()
                .map(str::to_string)
                .collect(),
            group: topology
                .nodes()
                .filter(|n| n.spec.election != Election::Off)
                .map(|n| n.name.to_string())
                .collect(),
        }
    }
}

/// Recent undecryptable gossip packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Undecryptable {
    /// Dropped within `UNDECRYPTABLE_WINDOW`.
    pub recent: u64,
    /// Where the last one came from.
    pub last_from: Option<SocketAddr>,
}

/// Free space on the data dir's filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub available: u64,
    pub total: u64,
}

/// The data dir as the last probe found it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataDirView {
    pub path: String,
    /// The write probe: None before the first one finished.
    pub write: Option<Result<(), String>>,
    pub space: Option<Space>,
}

/// Everything `compute` looks at.
#[derive(Clone, Debug)]
pub struct Snapshot<'a> {
    /// This node's name.
    pub me: &'a str,
    pub status: &'a Status,
    /// The committed topology (none before the first commit).
    pub topology: Option<&'a TopologyView>,
    /// Every other member gossip knows (tombstones included).
    pub peers: &'a [Peer],
    pub undecryptable: Undecryptable,
    pub data_dir: &'a DataDirView,
    /// This node's gossip still has member updates to spread (for under
    /// `GOSSIP_SETTLE_MAX`). After an apply every node publishes its new
    /// version at once, and at 200 agents every node's queue of updates
    /// drained only ~18 s later (`bench apply`): until the wave is out, a
    /// peer seen behind may only be seen late, so it is not yet a config
    /// mismatch.
    pub gossip_settling: bool,
}

/// An issue as computed, before the tracker gives it a `since`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub kind: IssueKind,
    pub level: IssueLevel,
    pub subject: String,
    pub message: String,
    /// When it began, when the node knows (a member's status change).
    pub since_ms: Option<u64>,
}

impl Found {
    fn new(
        kind: IssueKind,
        level: IssueLevel,
        subject: impl Into<String>,
        message: String,
    ) -> Found {
        Found {
            kind,
            level,
            subject: subject.into(),
            message,
            since_ms: None,
        }
    }
}

// ---- the rules ---------------------------------------------------------

/// Every issue this node sees in `s`, at most one per (kind, subject).
pub fn compute(s: &Snapshot) -> Vec<Found> {
    let named = by_name(s.peers);
    let mut found = Vec::new();
    members(s, &named, &mut found);
    configs(s, &named, &mut found);
    raft(s, &named, &mut found);
    masters(s, &named, &mut found);
    clocks(s, &named, &mut found);
    topology_file(s, &mut found);
    data_dir(s, &mut found);
    if s.undecryptable.recent > 0 {
        let from = s
            .undecryptable
            .last_from
            .map_or(String::new(), |a| format!(" (the last from {a})"));
        found.push(Found::new(
            IssueKind::UndecryptablePackets,
            IssueLevel::Warning,
            s.me,
            format!(
                "{} gossip packets could not be decrypted in the last {}s{from}: a node uses a key this node lacks, or something else sends to the gossip port",
                s.undecryptable.recent,
                UNDECRYPTABLE_WINDOW.as_secs()
            ),
        ));
    }
    found
}

type Named<'a> = BTreeMap<&'a str, &'a Peer>;

/// How `name` looks from here: this node is alive; None when unknown.
fn status_of(s: &Snapshot, named: &Named, name: &str) -> Option<MemberStatus> {
    if name == s.me {
        return Some(MemberStatus::Alive);
    }
    named.get(name).map(|p| p.status)
}

fn members(s: &Snapshot, named: &Named, found: &mut Vec<Found>) {
    for (&name, peer) in named {
        // An earlier life of this node (its data dir was wiped).
        if name == s.me {
            continue;
        }
        let issue = match peer.status {
            MemberStatus::Suspect => Found::new(
                IssueKind::MemberSuspect,
                IssueLevel::Warning,
                name,
                format!("{name} is suspect: it did not answer probes, and is declared dead unless it refutes soon"),
            ),
            // A dead member the topology no longer names is a leftover
            // record, not a node missing.
            MemberStatus::Dead if s.topology.is_none_or(|t| t.nodes.contains(name)) => Found::new(
                IssueKind::MemberDead,
                IssueLevel::Critical,
                name,
                format!("{name} is dead: it stopped answering without leaving"),
            ),
            _ => continue,
        };
        found.push(Found {
            since_ms: Some(peer.since_ms),
            ..issue
        });
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn configs(s: &Snapshot, named: &Named, found: &mut Vec<Found>) {
    // Before the apply driver runs, this node knows nothing to compare.
    let Some(apply) = &s.status.apply else {
        return;
    };
    let mine = (apply.version, ConfigHash::from_hex(&apply.hash));
    let alive: Vec<(&str, (u64, Option<ConfigHash>))> = named
        .iter()
        .filter(|(&name, p)| name != s.me && p.status == MemberStatus::Alive)
        .map(|(&name, p)| (name, p.config.map_or((0, None), |(v, h)| (v, Some(h)))))
        .collect();
    let newest = alive
        .iter()
        .map(|(name, c)| (c.0, *name))
        .max_by_key(|(v, _)| *v);
    if let Some((version, holder)) = newest.filter(|(v, _)| *v > mine.0) {
        found.push(Found::new(
            IssueKind::CatchingUp,
            IssueLevel::Warning,
            s.me,
            format!(
                "this node runs topology version {} while {holder} runs {version}: it is catching up",
                mine.0
            ),
        ));
    }
    let newest = newest.map_or(mine.0, |(v, _)| v.max(mine.0));
    for (name, (version, hash)) in &alive {
        if *version < newest && !s.gossip_settling {
            let what = if *version == 0 {
                "no topology".to_string()
            } else {
                format!("topology version {version}")
            };
            found.push(Found::new(
                IssueKind::ConfigMismatch,
                IssueLevel::Warning,
                *name,
                format!("{name} runs {what}, behind version {newest}"),
            ));
        } else if let Some(hash) = hash.filter(|h| *version == mine.0 && mine.1 != Some(*h)) {
            found.push(Found::new(
                IssueKind::ConfigMismatch,
                IssueLevel::Critical,
                *name,
                format!(
                    "{name} runs topology version {version} with hash {}, this node the same version with hash {}: two texts were committed as one version",
                    short(&hash.to_hex()),
                    short(&apply.hash)
                ),
            ));
        }
    }
}

fn raft(s: &Snapshot, named: &Named, found: &mut Vec<Found>) {
    let Some(view) = &s.status.raft else {
        return;
    };
    let group: Vec<&str> = if view.voters.is_empty() {
        s.topology
            .map(|t| t.group.iter().map(String::as_str).collect())
            .unwrap_or_default()
    } else {
        view.voters.iter().map(|v| v.name.as_str()).collect()
    };
    if group.is_empty() {
        return;
    }
    let up = |name: &&str| {
        matches!(
            status_of(s, named, name),
            Some(MemberStatus::Alive | MemberStatus::Suspect)
        )
    };
    let total = group.len();
    let (up_voters, down): (Vec<&str>, Vec<&str>) = group.into_iter().partition(up);
    let majority = total / 2 + 1;
    if up_voters.len() < majority {
        found.push(Found::new(
            IssueKind::NoQuorum,
            IssueLevel::Critical,
            "raft",
            format!(
                "only {} of {} Raft voters are up ({} down): {majority} are needed to elect a leader or commit",
                up_voters.len(),
                total,
                down.join(", ")
            ),
        ));
    }
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let gone = leader.filter(|name| {
        matches!(
            status_of(s, named, name),
            Some(MemberStatus::Dead | MemberStatus::Left)
        )
    });
    let message = match (leader, gone) {
        (None, _) => Some(format!(
            "no Raft leader is known (term {}): masters cannot be moved and topology changes are decided without the log",
            view.term
        )),
        (Some(_), Some(name)) => Some(format!(
            "the Raft leader {name} is {}: no new leader is known yet",
            status_of(s, named, name).map_or("gone".to_string(), |st| st.to_string())
        )),
        (Some(_), None) => None,
    };
    if let Some(message) = message {
        found.push(Found::new(
            IssueKind::NoLeader,
            IssueLevel::Critical,
            "raft",
            message,
        ));
    }
}

fn masters(s: &Snapshot, named: &Named, found: &mut Vec<Found>) {
    let (Some(topology), Some(view)) = (s.topology, &s.status.raft) else {
        return;
    };
    for set in &topology.sets {
        let message = match view.masters.get(set) {
            None => format!("replica set {set} has no master"),
            Some(m) => match status_of(s, named, &m.node) {
                Some(MemberStatus::Alive | MemberStatus::Suspect) => continue,
                Some(status) => format!("the master of replica set {set}, {}, is {status}", m.node),
                None => format!(
                    "the master of replica set {set}, {}, is not a known member",
                    m.node
                ),
            },
        };
        found.push(Found::new(
            IssueKind::NoMaster,
            IssueLevel::Critical,
            set.clone(),
            message,
        ));
    }
}

fn seconds(ms: i64) -> String {
    format!("{:.1}s", ms.unsigned_abs() as f64 / 1000.0)
}

fn ahead_or_behind(ms: i64) -> &'static str {
    if ms >= 0 {
        "ahead of"
    } else {
        "behind"
    }
}

fn clocks(s: &Snapshot, named: &Named, found: &mut Vec<Found>) {
    let measured: Vec<(&str, i64)> = named
        .iter()
        .filter(|(&name, p)| name != s.me && p.status == MemberStatus::Alive)
        .filter_map(|(&name, p)| p.clock_offset_ms.map(|o| (name, o)))
        .collect();
    let skewed: Vec<(&str, i64)> = measured
        .iter()
        .copied()
        .filter(|(_, o)| o.abs() > CLOCK_SKEW_MS)
        .collect();
    if skewed.is_empty() {
        return;
    }
    // Most of the peers off the same way: the odd one is this node.
    if measured.len() >= 2 && skewed.len() * 2 > measured.len() {
        let mut offsets: Vec<i64> = skewed.iter().map(|(_, o)| *o).collect();
        offsets.sort_unstable();
        let median = offsets[offsets.len() / 2];
        // Peers ahead of us: we are behind them.
        let ours = -median;
        found.push(Found::new(
            IssueKind::ClockSkew,
            IssueLevel::Warning,
            s.me,
            format!(
                "this node's clock is {} {} {} of its {} peers: check NTP on this host",
                seconds(ours),
                ahead_or_behind(ours),
                skewed.len(),
                measured.len()
            ),
        ));
        return;
    }
    for (name, offset) in skewed {
        found.push(Found::new(
            IssueKind::ClockSkew,
            IssueLevel::Warning,
            name,
            format!(
                "{name}'s clock is {} {} this node's: check NTP on both hosts",
                seconds(offset),
                ahead_or_behind(offset)
            ),
        ));
    }
}

fn topology_file(s: &Snapshot, found: &mut Vec<Found>) {
    let file = &s.status.topology;
    let what = match file.state {
        api::TopologyFileState::Invalid => "is rejected",
        api::TopologyFileState::Unreadable => "cannot be read",
        api::TopologyFileState::Valid | api::TopologyFileState::Missing => return,
    };
    let first = file
        .problems
        .first()
        .map_or(String::new(), |p| format!(": {p}"));
    let more = match file.problems.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    found.push(Found::new(
        IssueKind::TopologyRejected,
        IssueLevel::Warning,
        file.path.clone(),
        format!("the topology file {what}{first}{more}; the cluster keeps the committed version"),
    ));
}

fn data_dir(s: &Snapshot, found: &mut Vec<Found>) {
    let dir = s.data_dir;
    if let Some(Err(why)) = &dir.write {
        found.push(Found::new(
            IssueKind::DataDirUnwritable,
            IssueLevel::Critical,
            dir.path.clone(),
            format!("the data dir {} takes no writes: {why}", dir.path),
        ));
    }
    if let Some(why) = s.status.apply.as_ref().and_then(|a| a.disk_error.as_ref()) {
        let store = format!("{}/{}", dir.path.trim_end_matches('/'), "twophase");
        found.push(Found::new(
            IssueKind::DataDirUnwritable,
            IssueLevel::Critical,
            store,
            format!("the apply driver cannot write its 2PC state ({why}): this node votes no on every topology change and catches up only once a write works again; it retries by itself"),
        ));
    }
    if let Some(space) = dir.space.filter(|s| s.total > 0) {
        let percent = space.available as f64 * 100.0 / space.total as f64;
        let level =
            if space.available < DISK_CRITICAL_FREE_BYTES && percent < DISK_CRITICAL_FREE_PERCENT {
                IssueLevel::Critical
            } else if space.available < DISK_WARN_FREE_BYTES && percent < DISK_WARN_FREE_PERCENT {
                IssueLevel::Warning
            } else {
                return;
            };
        found.push(Found::new(
            IssueKind::DiskFull,
            level,
            dir.path.clone(),
            format!(
                "the data dir's filesystem has {} free of {} ({percent:.1}%)",
                bytes(space.available),
                bytes(space.total)
            ),
        ));
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

// ---- since, grace, raised and cleared -----------------------------------

/// A change of the listed issues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Listed now (new, or its level changed).
    Raised(Issue),
    /// No longer seen: the issue as it was last listed.
    Cleared(Issue),
}

#[derive(Debug)]
struct Tracked {
    first_seen_ms: u64,
    since_ms: u64,
    /// As listed; None while within its grace.
    shown: Option<Issue>,
}

/// Keeps `since` stable while an issue lasts, lists it once it outlasted
/// its grace, and reports what was raised and cleared.
#[derive(Debug, Default)]
pub struct Tracker {
    tracked: BTreeMap<(IssueKind, String), Tracked>,
}

impl Tracker {
    /// The listed issues after this round (sorted), and the changes.
    pub fn update(
        &mut self,
        me: &str,
        now_ms: u64,
        found: Vec<Found>,
    ) -> (Vec<Issue>, Vec<Change>) {
        let mut changes = Vec::new();
        let mut seen = BTreeSet::new();
        for f in found {
            let key = (f.kind.clone(), f.subject.clone());
            if !seen.insert(key.clone()) {
                continue;
            }
            let tracked = self.tracked.entry(key).or_insert_with(|| Tracked {
                first_seen_ms: now_ms,
                since_ms: f.since_ms.unwrap_or(now_ms).min(now_ms),
                shown: None,
            });
            let held = now_ms.saturating_sub(tracked.first_seen_ms);
            if u128::from(held) < grace(&f.kind).as_millis() {
                continue;
            }
            let issue = Issue::new(f.kind, f.level, me, f.subject, f.message, tracked.since_ms);
            let raised = tracked
                .shown
                .as_ref()
                .is_none_or(|was| was.level != issue.level);
            if raised {
                changes.push(Change::Raised(issue.clone()));
            }
            tracked.shown = Some(issue);
        }
        let gone: Vec<(IssueKind, String)> = self
            .tracked
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(Tracked {
                shown: Some(issue), ..
            }) = self.tracked.remove(&key)
            {
                changes.push(Change::Cleared(issue));
            }
        }
        let mut listed: Vec<Issue> = self
            .tracked
            .values()
            .filter_map(|t| t.shown.clone())
            .collect();
        api::sort_issues(&mut listed);
        (listed, changes)
    }
}

// ---- the task ------------------------------------------------------------

/// The rpc answer of [`METHOD`]: this node's list as JSON (a newer node's
/// new kinds and fields reach an older one intact).
pub fn endpoint(state: Arc<NodeState>) -> impl crate::rpc::RpcHandler {
    crate::rpc::handler_fn(move |_from, _method, _body| {
        let state = Arc::clone(&state);
        async move { serde_json::to_vec(&state.issues()).map_err(|e| RpcError::internal(e.to_string())) }
    })
}

/// Reads `COHORT_TEST_CLOCK_OFFSET_MS`: for tests only, it shifts the wall
/// clock this node reports in gossip (clock-skew detection is tested by
/// starting one agent with it). Logged at warn when set.
pub fn test_clock_offset() -> Option<i64> {
    let text = std::env::var("COHORT_TEST_CLOCK_OFFSET_MS").ok()?;
    match parse_clock_offset(&text) {
        Some(ms) => {
            warn!(
                offset_ms = ms,
                "COHORT_TEST_CLOCK_OFFSET_MS is set: this node reports a wall clock {ms} ms off in gossip (for tests only)"
            );
            Some(ms)
        }
        None => {
            warn!(value = %text, "COHORT_TEST_CLOCK_OFFSET_MS is not a number of ms within a day; ignored");
            None
        }
    }
}

/// Milliseconds, either way, at most a day.
fn parse_clock_offset(text: &str) -> Option<i64> {
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|ms| ms.abs() <= MAX_TEST_OFFSET_MS)
}

/// The gossip side of a snapshot, read on the membership driver.
struct GossipView {
    peers: Vec<(Peer, Instant)>,
    decrypt_drops: u64,
    last_decrypt_from: Option<SocketAddr>,
    pending_updates: u64,
}

impl GossipView {
    fn of(swim: &Swim) -> GossipView {
        let peers = swim
            .members()
            .map(|m| {
                let peer = Peer {
                    id: m.id,
                    name: m.payload.name.clone(),
                    status: m.status,
                    since_ms: 0,
                    config: m.payload.config.map(|c| (c.version, ConfigHash(c.hash))),
                    clock_offset_ms: swim.clock_offset(m.id).map(|o| o.offset_ms),
                    rpc: m.payload.rpc_addr.unwrap_or(m.addr),
                };
                (peer, m.status_since)
            })
            .collect();
        let stats = swim.stats();
        GossipView {
            peers,
            decrypt_drops: stats.dropped.decrypt,
            last_decrypt_from: stats.last_undecryptable_from,
            pending_updates: stats.pending_updates,
        }
    }
}

/// Decrypt-drop counts over the last `UNDECRYPTABLE_WINDOW`.
#[derive(Default)]
struct DropWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl DropWindow {
    /// How many more were dropped than at the start of the window.
    fn recent(&mut self, now: Instant, total: u64) -> u64 {
        self.samples.push_back((now, total));
        while self
            .samples
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= UNDECRYPTABLE_WINDOW)
        {
            self.samples.pop_front();
        }
        let base = self.samples.front().map_or(total, |(_, n)| *n);
        total.saturating_sub(base)
    }
}

/// What one probe of the data dir found.
struct Probe {
    write: Result<(), String>,
    space: Option<Space>,
}

fn probe(dir: &Path) -> Probe {
    let write = write_probe(dir).map_err(|e| crate::storage::describe(&e));
    let space = nix::sys::statvfs::statvfs(dir).ok().map(|st| {
        // The C types differ between platforms.
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        let (available, total, fragment) = (
            st.blocks_available() as u64,
            st.blocks() as u64,
            st.fragment_size() as u64,
        );
        Space {
            available: available.saturating_mul(fragment),
            total: total.saturating_mul(fragment),
        }
    });
    Probe { write, space }
}

/// Create, write, fsync, remove: what every durable write here needs.
fn write_probe(dir: &Path) -> io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    file.write_all(b"cohort")?;
    file.sync_all()?;
    drop(file);
    std::fs::remove_file(&path)
}

/// Probes the data dir off the runtime, at most one probe at a time.
struct DataDirProbe {
    dir: PathBuf,
    view: DataDirView,
    running: Option<(Instant, tokio::task::JoinHandle<Probe>)>,
    last: Option<Instant>,
}

impl DataDirProbe {
    fn new(dir: PathBuf) -> DataDirProbe {
        DataDirProbe {
            view: DataDirView {
                path: dir.display().to_string(),
                ..DataDirView::default()
            },
            dir,
            running: None,
            last: None,
        }
    }

    async fn view(&mut self, now: Instant) -> &DataDirView {
        if let Some((started, task)) = self.running.take() {
            if task.is_finished() {
                if let Ok(probe) = task.await {
                    self.view.write = Some(probe.write);
                    self.view.space = probe.space;
                }
            } else {
                if now.duration_since(started) >= PROBE_HUNG {
                    self.view.write = Some(Err(format!(
                        "a write probe has not finished after {}s: the disk hangs",
                        now.duration_since(started).as_secs()
                    )));
                }
                self.running = Some((started, task));
            }
        }
        let due = self
            .last
            .is_none_or(|at| now.duration_since(at) >= PROBE_EVERY);
        if self.running.is_none() && due {
            let dir = self.dir.clone();
            self.last = Some(now);
            self.running = Some((now, tokio::task::spawn_blocking(move || probe(&dir))));
        }
        &self.view
    }
}

/// Asks every other alive (or suspect) member for its list over rpc.
struct RpcPeers {
    gossip: Handle,
    rpc: RpcClient,
}

impl api::PeerIssues for RpcPeers {
    fn ask(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = PeerAnswers> + Send + '_>> {
        Box::pin(async move {
            let read = |swim: &Swim| (GossipView::of(swim), swim.local().payload.name.clone());
            let Some((view, me)) = self.gossip.inspect(read).await else {
                return PeerAnswers::default();
            };
            let peers: Vec<Peer> = view.peers.into_iter().map(|(p, _)| p).collect();
            let asked: Vec<(String, SocketAddr)> = by_name(&peers)
                .into_iter()
                .filter(|(name, p)| *name != me && p.status.is_active())
                .map(|(name, p)| (name.to_string(), p.rpc))
                .collect();
            // Collected first: a borrowing iterator held across the await
            // makes the future's Send bound unprovable.
            let addrs: Vec<SocketAddr> = asked.iter().map(|(_, addr)| *addr).collect();
            let results = self
                .rpc
                .fan_out(addrs, METHOD, &[], api::ISSUES_PEER_DEADLINE, 64)
                .await;
            let mut answers = PeerAnswers::default();
            for ((name, _), (_, result)) in asked.into_iter().zip(results) {
                match result
                    .ok()
                    .and_then(|body| serde_json::from_slice::<Vec<Issue>>(&body).ok())
                {
                    Some(list) => answers.answered.push((name, list)),
                    None => answers.unanswered.push(name),
                }
            }
            answers
        })
    }
}

/// Starts computing this node's list, and lets `/v1/issues` ask the
/// others through `rpc`. Runs until the gossip driver stops.
pub fn spawn(state: Arc<NodeState>, gossip: Handle, rpc: RpcClient, data_dir: PathBuf) {
    state.set_peer_issues(Arc::new(RpcPeers {
        gossip: gossip.clone(),
        rpc,
    }));
    tokio::spawn(run(state, gossip, data_dir));
}

async fn run(state: Arc<NodeState>, gossip: Handle, data_dir: PathBuf) {
    let me = state.snapshot().node;
    // An Instant → wall clock anchor for the members' "since".
    let anchor = (Instant::now(), SystemTime::now());
    let wall_ms = |at: Instant| {
        let (base, wall) = anchor;
        let wall = match at.checked_duration_since(base) {
            Some(later) => wall + later,
            None => wall - base.duration_since(at),
        };
        api::unix_ms(wall)
    };
    // Only the end is heard between rounds: any other news waits for the
    // round (RECOMPUTE_EVERY). (Subscribed to the event feed for it, the
    // task made every event be kept and cloned for it, to be dropped.)
    let mut stopping = state.watch_stopping();
    let mut tracker = Tracker::default();
    let mut drops = DropWindow::default();
    let mut disk = DataDirProbe::new(data_dir);
    let mut next = tokio::time::Instant::now();
    // The committed topology's view, rebuilt only when another is committed.
    let mut topology: Option<(Arc<Topology>, TopologyView)> = None;
    let mut spreading_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stopping.wait_for(|stopping| *stopping) => return,
        }
        next = tokio::time::Instant::now() + RECOMPUTE_EVERY;
        let Some(view) = gossip.inspect(|swim: &Swim| GossipView::of(swim)).await else {
            return;
        };
        let now = Instant::now();
        spreading_since = (view.pending_updates > 0).then(|| spreading_since.unwrap_or(now));
        let gossip_settling =
            spreading_since.is_some_and(|since| now.duration_since(since) < GOSSIP_SETTLE_MAX);
        let peers: Vec<Peer> = view
            .peers
            .into_iter()
            .map(|(peer, since)| Peer {
                since_ms: wall_ms(since),
                ..peer
            })
            .collect();
        let undecryptable = Undecryptable {
            recent: drops.recent(now, view.decrypt_drops),
            last_from: view.last_decrypt_from,
        };
        let status = state.snapshot();
        topology = state.committed().map(|c| match topology.take() {
            Some((seen, view)) if Arc::ptr_eq(&seen, &c.topology) => (seen, view),
            _ => {
                let view = TopologyView::of(&c.topology);
                (c.topology, view)
            }
        });
        let dir = disk.view(now).await.clone();
        let found = compute(&Snapshot {
            me: &me,
            status: &status,
            topology: topology.as_ref().map(|(_, view)| view),
            peers: &peers,
            undecryptable,
            data_dir: &dir,
            gossip_settling,
        });
        let (listed, changes) = tracker.update(&me, api::unix_ms(SystemTime::now()), found);
        state.set_issues(listed);
        for change in changes {
            publish(&state, change);
        }
    }
}

fn publish(state: &NodeState, change: Change) {
    let (kind, issue) = match change {
        Change::Raised(issue) => {
            warn!(kind = %issue.kind, subject = %issue.subject, level = %issue.level, "issue raised: {}", issue.message);
            ("issue-raised", issue)
        }
        Change::Cleared(issue) => {
            info!(kind = %issue.kind, subject = %issue.subject, "issue cleared: {}", issue.message);
            ("issue-cleared", issue)
        }
    };
    let event = ApiEvent::now(
        kind,
        format!("{} {}", issue.kind, issue.subject),
        None,
        format!("{}: {}", issue.level, issue.message),
    );
    state.publish(ApiEvent {
        issue: Some(Box::new(issue)),
        ..event
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApplyState, Leaders, MasterInfo, RaftPeer};
    use uuid::Uuid;

    const GIB: u64 = 1 << 30;

    /// What a node knows, owned, with a healthy cluster by default: n1
    /// (this node), n2, n3 candidates in set s1, n4 in set s2; version 2
    /// everywhere; n1 leads; each set has its master alive.
    struct World {
        status: Status,
        topology: Option<TopologyView>,
        peers: Vec<Peer>,
        undecryptable: Undecryptable,
        gossip_settling: bool,
        dir: DataDirView,
    }

    const HASH: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn peer(n: u8, status: MemberStatus) -> Peer {
        Peer {
            id: NodeId(Uuid::from_u128(u128::from(n))),
            name: format!("n{n}"),
            status,
            since_ms: 1_000 * u64::from(n),
            config: Some((2, ConfigHash([0xaa; 32]))),
            clock_offset_ms: Some(3),
            rpc: format!("127.0.0.1:{}", 3300 + u16::from(n))
                .parse()
                .unwrap(),
        }
    }

    fn raft_peer(name: &str) -> RaftPeer {
        RaftPeer {
            name: name.into(),
            ..RaftPeer::default()
        }
    }

    impl World {
        fn healthy() -> World {
            // From JSON, so fields added to `Status` later need no edit here.
            let mut status: Status = serde_json::from_value(serde_json::json!({
                "node": "n1", "uuid": Uuid::nil(), "generation": 1, "cluster": "c",
                "bind": "127.0.0.1:3301", "advertise": "127.0.0.1:3301",
                "data_dir": "/var/lib/cohort", "pid": 1, "config_version": 2,
                "topology": { "path": "/etc/cohort/topology.yaml", "state": "valid" },
                "started_at": "", "started_at_ms": 0, "uptime_seconds": 0, "version": "0",
            }))
            .unwrap();
            status.apply = Some(ApplyState {
                version: 2,
                hash: HASH.into(),
                lock: "no apply in progress".into(),
                ..ApplyState::default()
            });
            let master = |node: &str| MasterInfo {
                node: node.into(),
                ..MasterInfo::default()
            };
            status.raft = Some(Leaders {
                node: "n1".into(),
                role: "leader".into(),
                term: 3,
                leader: Some(raft_peer("n1")),
                voters: ["n1", "n2", "n3"].map(raft_peer).to_vec(),
                masters: [("s1".into(), master("n1")), ("s2".into(), master("n4"))].into(),
                ..Leaders::default()
            });
            World {
                status,
                topology: Some(TopologyView {
                    nodes: ["n1", "n2", "n3", "n4"].map(String::from).into(),
                    sets: vec!["s1".into(), "s2".into()],
                    group: vec!["n1".into(), "n2".into(), "n3".into()],
                }),
                peers: (2..=4).map(|n| peer(n, MemberStatus::Alive)).collect(),
                undecryptable: Undecryptable::default(),
                gossip_settling: false,
                dir: DataDirView {
                    path: "/var/lib/cohort".into(),
                    write: Some(Ok(())),
                    space: Some(Space {
                        available: 50 * GIB,
                        total: 100 * GIB,
                    }),
                },
            }
        }

        fn found(&self) -> Vec<Found> {
            compute(&Snapshot {
                me: "n1",
                status: &self.status,
                topology: self.topology.as_ref(),
                peers: &self.peers,
                undecryptable: self.undecryptable,
                data_dir: &self.dir,
                gossip_settling: self.gossip_settling,
            })
        }

        fn peer(&mut self, name: &str) -> &mut Peer {
            self.peers.iter_mut().find(|p| p.name == name).unwrap()
        }

        fn raft(&mut self) -> &mut Leaders {
            self.status.raft.as_mut().unwrap()
        }
    }

    /// (kind, level, subject) of each issue found.
    fn summary(found: &[Found]) -> Vec<(String, IssueLevel, String)> {
        let mut list: Vec<_> = found
            .iter()
            .map(|f| (f.kind.to_string(), f.level, f.subject.clone()))
            .collect();
        list.sort();
        list
    }

    fn one(kind: &str, level: IssueLevel, subject: &str) -> Vec<(String, IssueLevel, String)> {
        vec![(kind.to_string(), level, subject.to_string())]
    }

    use IssueLevel::{Critical, Warning};

    #[test]
    fn a_healthy_cluster_has_no_issues() {
        assert_eq!(World::healthy().found(), Vec::new());
    }

    #[test]
    fn suspect_and_dead_members() {
        let mut w = World::healthy();
        w.peer("n4").status = MemberStatus::Suspect;
        let found = w.found();
        assert_eq!(summary(&found), one("member-suspect", Warning, "n4"));
        assert_eq!(found[0].since_ms, Some(4_000), "since its status changed");

        w.peer("n4").status = MemberStatus::Dead;
        let found = w.found();
        // n4 is also set s2's master.
        assert_eq!(
            summary(&found),
            [
                ("member-dead".into(), Critical, "n4".into()),
                ("no-master".into(), Critical, "s2".into()),
            ]
        );
        assert!(found[0].message.contains("n4 is dead"), "{:?}", found[0]);

        // Left on purpose: not an issue in itself (its set still is).
        w.peer("n4").status = MemberStatus::Left;
        assert_eq!(summary(&w.found()), one("no-master", Critical, "s2"));
    }

    #[test]
    fn a_dead_record_the_topology_no_longer_names_is_no_issue() {
        let mut w = World::healthy();
        let mut old = peer(9, MemberStatus::Dead);
        old.name = "gone".into();
        w.peers.push(old);
        assert_eq!(w.found(), Vec::new());
        // Nor is an earlier life of a node that came back with a new id.
        let mut earlier = peer(8, MemberStatus::Dead);
        earlier.name = "n2".into();
        w.peers.push(earlier);
        assert_eq!(w.found(), Vec::new());
        // Nor this node's own earlier life.
        let mut mine = peer(7, MemberStatus::Dead);
        mine.name = "n1".into();
        w.peers.push(mine);
        assert_eq!(w.found(), Vec::new());
    }

    #[test]
    fn a_peer_behind_is_a_mismatch_and_this_node_behind_is_catching_up() {
        let mut w = World::healthy();
        w.peer("n3").config = Some((1, ConfigHash([0xbb; 32])));
        let found = w.found();
        assert_eq!(summary(&found), one("config-mismatch", Warning, "n3"));
        assert_eq!(
            found[0].message,
            "n3 runs topology version 1, behind version 2"
        );

        w.peer("n3").config = None;
        let found = w.found();
        assert_eq!(found[0].message, "n3 runs no topology, behind version 2");

        // While gossip still spreads news, n3 may only be seen late...
        w.gossip_settling = true;
        assert_eq!(w.found(), Vec::new());
        // ...but two versions under one number are never a late view.
        w.peer("n3").config = Some((2, ConfigHash([0xbb; 32])));
        assert_eq!(summary(&w.found()), one("config-mismatch", Critical, "n3"));
        w.gossip_settling = false;

        let mut w = World::healthy();
        w.peer("n2").config = Some((3, ConfigHash([0xcc; 32])));
        let found = w.found();
        assert_eq!(
            summary(&found),
            [
                ("catching-up".into(), Warning, "n1".into()),
                ("config-mismatch".into(), Warning, "n3".into()),
                ("config-mismatch".into(), Warning, "n4".into()),
            ]
        );
        assert_eq!(
            found[0].message,
            "this node runs topology version 2 while n2 runs 3: it is catching up"
        );
    }

    #[test]
    fn one_version_with_two_texts_is_critical() {
        let mut w = World::healthy();
        w.peer("n2").config = Some((2, ConfigHash([0xbb; 32])));
        let found = w.found();
        assert_eq!(summary(&found), one("config-mismatch", Critical, "n2"));
        assert!(found[0].message.contains("hash bbbbbbbbbbbb,"), "{found:?}");
    }

    #[test]
    fn dead_or_suspect_peers_and_an_idle_apply_driver_compare_nothing() {
        let mut w = World::healthy();
        w.peer("n2").config = Some((1, ConfigHash([0xbb; 32])));
        w.peer("n2").status = MemberStatus::Suspect;
        assert_eq!(summary(&w.found()), one("member-suspect", Warning, "n2"));
        let mut w = World::healthy();
        w.peer("n2").config = Some((1, ConfigHash([0xbb; 32])));
        w.status.apply = None;
        assert_eq!(w.found(), Vec::new());
    }

    #[test]
    fn no_leader_and_no_quorum() {
        let mut w = World::healthy();
        w.raft().leader = None;
        let found = w.found();
        assert_eq!(summary(&found), one("no-leader", Critical, "raft"));
        assert!(found[0].message.contains("term 3"), "{found:?}");

        // The leader this node still names is dead.
        let mut w = World::healthy();
        w.raft().leader = Some(raft_peer("n2"));
        w.peer("n2").status = MemberStatus::Dead;
        let found = w.found();
        assert_eq!(
            summary(&found),
            [
                ("member-dead".into(), Critical, "n2".into()),
                ("no-leader".into(), Critical, "raft".into()),
            ]
        );

        // Two of three voters down.
        let mut w = World::healthy();
        w.peer("n2").status = MemberStatus::Dead;
        w.peer("n3").status = MemberStatus::Dead;
        w.raft().leader = None;
        let found = w.found();
        let quorum = found
            .iter()
            .find(|f| f.kind == IssueKind::NoQuorum)
            .expect("no quorum");
        assert_eq!(quorum.level, Critical);
        assert_eq!(
            quorum.message,
            "only 1 of 3 Raft voters are up (n2, n3 down): 2 are needed to elect a leader or commit"
        );
        // A suspect voter still counts: it may only be slow.
        w.peer("n3").status = MemberStatus::Suspect;
        assert!(!w.found().iter().any(|f| f.kind == IssueKind::NoQuorum));
    }

    #[test]
    fn the_group_comes_from_the_topology_until_raft_names_its_voters() {
        let mut w = World::healthy();
        w.raft().voters.clear();
        w.peer("n2").status = MemberStatus::Left;
        w.peer("n3").status = MemberStatus::Left;
        assert!(w.found().iter().any(|f| f.kind == IssueKind::NoQuorum));
        // No candidates and no voters: no Raft group, no Raft issues.
        w.topology.as_mut().unwrap().group.clear();
        w.raft().leader = None;
        assert!(!w
            .found()
            .iter()
            .any(|f| matches!(f.kind, IssueKind::NoQuorum | IssueKind::NoLeader)));
        // Before the Raft driver runs, nothing is known.
        let mut w = World::healthy();
        w.status.raft = None;
        w.peer("n4").status = MemberStatus::Left;
        assert_eq!(w.found(), Vec::new());
    }

    #[test]
    fn a_set_without_a_master_or_with_a_dead_one() {
        let mut w = World::healthy();
        w.raft().masters.remove("s2");
        let found = w.found();
        assert_eq!(summary(&found), one("no-master", Critical, "s2"));
        assert_eq!(found[0].message, "replica set s2 has no master");
        let mut w = World::healthy();
        w.raft().masters.get_mut("s2").unwrap().node = "n9".into();
        assert_eq!(
            w.found()[0].message,
            "the master of replica set s2, n9, is not a known member"
        );
        // A suspect master may only be slow.
        let mut w = World::healthy();
        w.peer("n4").status = MemberStatus::Suspect;
        assert_eq!(summary(&w.found()), one("member-suspect", Warning, "n4"));
    }

    #[test]
    fn a_skewed_peer_is_named_and_a_skewed_self_names_itself() {
        let mut w = World::healthy();
        w.peer("n3").clock_offset_ms = Some(5_000);
        let found = w.found();
        assert_eq!(summary(&found), one("clock-skew", Warning, "n3"));
        assert_eq!(
            found[0].message,
            "n3's clock is 5.0s ahead of this node's: check NTP on both hosts"
        );
        w.peer("n3").clock_offset_ms = Some(-1_000);
        assert_eq!(w.found(), Vec::new(), "1s is within bounds");

        // Every peer sees n1 (this node) 5 s behind.
        let mut w = World::healthy();
        for p in &mut w.peers {
            p.clock_offset_ms = Some(5_000 + i64::from(p.name.len() as u8));
        }
        let found = w.found();
        assert_eq!(summary(&found), one("clock-skew", Warning, "n1"));
        assert_eq!(
            found[0].message,
            "this node's clock is 5.0s behind 3 of its 3 peers: check NTP on this host"
        );

        // With one peer, there is no telling who is off: the peer is named.
        let mut w = World::healthy();
        w.peers.truncate(1);
        w.peers[0].clock_offset_ms = Some(-3_000);
        w.topology = None;
        w.status.raft = None;
        assert_eq!(summary(&w.found()), one("clock-skew", Warning, "n2"));

        // Unmeasured peers and dead ones say nothing.
        let mut w = World::healthy();
        w.peer("n3").clock_offset_ms = None;
        w.peer("n2").clock_offset_ms = Some(9_000);
        w.peer("n2").status = MemberStatus::Suspect;
        assert_eq!(summary(&w.found()), one("member-suspect", Warning, "n2"));
    }

    #[test]
    fn a_rejected_topology_file() {
        let mut w = World::healthy();
        w.status.topology.state = api::TopologyFileState::Invalid;
        w.status.topology.problems = vec![
            "/etc/cohort/topology.yaml:3:5: unknown field `nodez`".into(),
            "/etc/cohort/topology.yaml:9:1: something else".into(),
        ];
        let found = w.found();
        assert_eq!(
            summary(&found),
            one("topology-rejected", Warning, "/etc/cohort/topology.yaml")
        );
        assert_eq!(
            found[0].message,
            "the topology file is rejected: /etc/cohort/topology.yaml:3:5: unknown field `nodez` (and 1 more); the cluster keeps the committed version"
        );
        w.status.topology.state = api::TopologyFileState::Unreadable;
        w.status.topology.problems = vec!["permission denied".into()];
        assert!(w.found()[0]
            .message
            .starts_with("the topology file cannot be read: permission denied;"));
        w.status.topology.state = api::TopologyFileState::Missing;
        assert_eq!(w.found(), Vec::new());
    }

    #[test]
    fn a_data_dir_that_takes_no_writes_and_an_apply_driver_held_up_by_its_disk() {
        let mut w = World::healthy();
        w.dir.write = Some(Err("Read-only file system".into()));
        let found = w.found();
        assert_eq!(
            summary(&found),
            one("data-dir-unwritable", Critical, "/var/lib/cohort")
        );
        assert_eq!(
            found[0].message,
            "the data dir /var/lib/cohort takes no writes: Read-only file system"
        );
        let mut w = World::healthy();
        let why = "retrying after a disk error since 2026-11-23T07:57:46.176Z: cannot write \
                   /var/lib/cohort/twophase/state.bin: No space left on device";
        w.status.apply.as_mut().unwrap().disk_error = Some(why.into());
        let found = w.found();
        assert_eq!(
            summary(&found),
            one("data-dir-unwritable", Critical, "/var/lib/cohort/twophase")
        );
        assert_eq!(
            found[0].message,
            format!("the apply driver cannot write its 2PC state ({why}): this node votes no on every topology change and catches up only once a write works again; it retries by itself")
        );
        // A write worked: the driver clears the field, and the issue goes.
        w.status.apply.as_mut().unwrap().disk_error = None;
        assert_eq!(w.found(), Vec::new());
    }

    #[test]
    fn disk_space_thresholds() {
        let level = |available: u64, total: u64| {
            let mut w = World::healthy();
            w.dir.space = Some(Space { available, total });
            let found = w.found();
            assert!(
                found.iter().all(|f| f.kind == IssueKind::DiskFull),
                "{found:?}"
            );
            found.first().map(|f| f.level)
        };
        assert_eq!(level(50 * GIB, 100 * GIB), None);
        assert_eq!(level(2 * GIB, 20 * GIB), None);
        // Both thresholds must be crossed: a big disk under 5 % but with
        // gigabytes free, and a small one under 1 GiB but mostly free, are
        // not nearly full (the CI machine's 12 GiB of 252 GiB were).
        assert_eq!(level(12 * GIB, 252 * GIB), None, "4.8 % but 12 GiB");
        assert_eq!(level(GIB - 1, 2 * GIB), None, "under 1 GiB but 50 %");
        assert_eq!(level(GIB - 1, 21 * GIB), Some(Warning), "under both");
        assert_eq!(level(3 << 20, 100 << 20), Some(Warning), "small disk");
        assert_eq!(level(99 << 20, 2 * GIB), Some(Warning), "100 MiB but 4.8 %");
        assert_eq!(level(99 << 20, 10_000 << 20), Some(Critical), "under both");
        assert_eq!(level(512 << 10, 100 << 20), Some(Critical), "small disk");
        assert_eq!(level(9 * GIB, 1000 * GIB), None, "under 1 % but 9 GiB");
        assert_eq!(
            level(0, 0),
            None,
            "a filesystem without blocks says nothing"
        );
        let mut w = World::healthy();
        w.dir.space = Some(Space {
            available: 512 << 20,
            total: 20 * GIB,
        });
        assert_eq!(
            w.found()[0].message,
            "the data dir's filesystem has 512.0 MiB free of 20.0 GiB (2.5%)"
        );
    }

    #[test]
    fn undecryptable_packets_name_their_source() {
        let mut w = World::healthy();
        w.undecryptable = Undecryptable {
            recent: 3,
            last_from: Some("10.0.0.9:4000".parse().unwrap()),
        };
        let found = w.found();
        assert_eq!(summary(&found), one("undecryptable-packets", Warning, "n1"));
        assert!(
            found[0]
                .message
                .starts_with("3 gossip packets could not be decrypted in the last 60s (the last from 10.0.0.9:4000):"),
            "{found:?}"
        );
        w.undecryptable.recent = 0;
        assert_eq!(w.found(), Vec::new());
    }

    /// Each kind, made to appear and then healed, through the tracker:
    /// raised once past its grace, cleared when it goes.
    #[test]
    fn every_kind_is_raised_and_cleared() {
        type Break = fn(&mut World);
        let cases: [(&str, Break); 12] = [
            ("member-suspect", |w| {
                w.peer("n3").status = MemberStatus::Suspect
            }),
            ("member-dead", |w| w.peer("n3").status = MemberStatus::Dead),
            ("config-mismatch", |w| {
                w.peer("n3").config = Some((1, ConfigHash([0xbb; 32])))
            }),
            ("catching-up", |w| {
                for p in &mut w.peers {
                    p.config = Some((3, ConfigHash([0xcc; 32])));
                }
            }),
            ("no-leader", |w| w.raft().leader = None),
            ("no-quorum", |w| {
                w.peer("n2").status = MemberStatus::Left;
                w.peer("n3").status = MemberStatus::Left;
            }),
            ("no-master", |w| {
                w.raft().masters.remove("s1");
            }),
            ("clock-skew", |w| {
                w.peer("n2").clock_offset_ms = Some(-4_000)
            }),
            ("topology-rejected", |w| {
                w.status.topology.state = api::TopologyFileState::Invalid
            }),
            ("data-dir-unwritable", |w| {
                w.dir.write = Some(Err("Operation not permitted".into()))
            }),
            ("disk-full", |w| {
                w.dir.space = Some(Space {
                    available: 1 << 20,
                    total: GIB,
                })
            }),
            ("undecryptable-packets", |w| w.undecryptable.recent = 1),
        ];
        for (kind, make) in cases {
            let kind = IssueKind::from(kind.to_string());
            let mut tracker = Tracker::default();
            let healthy = World::healthy();
            let mut broken = World::healthy();
            make(&mut broken);
            let (listed, changes) = tracker.update("n1", 1_000, healthy.found());
            assert!(listed.is_empty() && changes.is_empty(), "{kind}");
            let start = 2_000;
            let (listed, changes) = tracker.update("n1", start, broken.found());
            let wait = u64::try_from(grace(&kind).as_millis()).unwrap();
            let listed = if wait > 0 {
                assert!(
                    !listed.iter().any(|i| i.kind == kind) && changes.is_empty(),
                    "{kind} waits for its grace: {listed:?}"
                );
                let (listed, changes) = tracker.update("n1", start + wait, broken.found());
                assert!(
                    changes
                        .iter()
                        .any(|c| matches!(c, Change::Raised(i) if i.kind == kind)),
                    "{kind}: {changes:?}"
                );
                listed
            } else {
                assert!(
                    changes
                        .iter()
                        .any(|c| matches!(c, Change::Raised(i) if i.kind == kind)),
                    "{kind}: {changes:?}"
                );
                listed
            };
            let issue = listed.iter().find(|i| i.kind == kind).expect("listed");
            assert_eq!(issue.node, "n1");
            assert_eq!(issue.reported_by, ["n1"]);
            let (listed, changes) = tracker.update("n1", start + wait + 1_000, healthy.found());
            assert!(listed.is_empty(), "{kind}: {listed:?}");
            assert!(
                changes
                    .iter()
                    .any(|c| matches!(c, Change::Cleared(i) if i.kind == kind)),
                "{kind}: {changes:?}"
            );
        }
    }

    fn found(kind: IssueKind, level: IssueLevel, subject: &str, since: Option<u64>) -> Found {
        Found {
            since_ms: since,
            ..Found::new(kind, level, subject, format!("{subject} at {level}"))
        }
    }

    #[test]
    fn since_stays_while_an_issue_lasts_and_a_new_level_is_raised_again() {
        let mut t = Tracker::default();
        let disk = |level| found(IssueKind::DiskFull, level, "/d", None);
        let (listed, changes) = t.update("n1", 10_000, vec![disk(Warning)]);
        assert_eq!(listed[0].since_ms, 10_000);
        assert_eq!(listed[0].since, "1970-01-01T00:00:10.000Z");
        assert_eq!(changes.len(), 1);
        let (listed, changes) = t.update("n1", 11_000, vec![disk(Warning)]);
        assert_eq!(listed[0].since_ms, 10_000, "unchanged while it lasts");
        assert!(changes.is_empty(), "nothing new: {changes:?}");
        let (listed, changes) = t.update("n1", 12_000, vec![disk(Critical)]);
        assert_eq!((listed[0].level, listed[0].since_ms), (Critical, 10_000));
        assert!(matches!(&changes[..], [Change::Raised(i)] if i.level == Critical));
        // Gone, then back: a new issue with a new since.
        let (_, changes) = t.update("n1", 13_000, Vec::new());
        assert!(matches!(&changes[..], [Change::Cleared(i)] if i.level == Critical));
        let (listed, _) = t.update("n1", 14_000, vec![disk(Warning)]);
        assert_eq!(listed[0].since_ms, 14_000);
    }

    #[test]
    fn a_known_start_is_the_since_and_a_short_blip_within_grace_is_never_listed() {
        let mut t = Tracker::default();
        let dead = found(IssueKind::MemberDead, Critical, "n3", Some(4_000));
        let (listed, _) = t.update("n1", 9_000, vec![dead]);
        assert_eq!(listed[0].since_ms, 4_000);
        let leaderless = || found(IssueKind::NoLeader, Critical, "raft", None);
        let mut t = Tracker::default();
        let (listed, changes) = t.update("n1", 0, vec![leaderless()]);
        assert!(listed.is_empty() && changes.is_empty());
        let (listed, changes) = t.update("n1", 2_999, vec![leaderless()]);
        assert!(listed.is_empty() && changes.is_empty());
        // Healed within its grace: never raised, so never cleared.
        let (listed, changes) = t.update("n1", 3_500, Vec::new());
        assert!(listed.is_empty() && changes.is_empty());
        let (_, changes) = t.update("n1", 4_000, vec![leaderless()]);
        assert!(changes.is_empty(), "the grace starts over");
        let (listed, changes) = t.update("n1", 7_000, vec![leaderless()]);
        assert_eq!(listed[0].since_ms, 4_000);
        assert_eq!(changes.len(), 1);
    }

    #[test]
    fn the_listed_issues_are_critical_first_then_oldest() {
        let mut t = Tracker::default();
        let (listed, _) = t.update(
            "n1",
            10_000,
            vec![
                found(IssueKind::ClockSkew, Warning, "n2", Some(1_000)),
                found(IssueKind::MemberDead, Critical, "n3", Some(5_000)),
                found(IssueKind::MemberSuspect, Warning, "n4", Some(500)),
            ],
        );
        let order: Vec<&str> = listed.iter().map(|i| i.subject.as_str()).collect();
        assert_eq!(order, ["n3", "n4", "n2"]);
    }

    #[test]
    fn the_drop_window_counts_the_last_minute() {
        let mut w = DropWindow::default();
        let t0 = Instant::now();
        assert_eq!(w.recent(t0, 0), 0);
        assert_eq!(w.recent(t0 + Duration::from_secs(1), 0), 0);
        assert_eq!(w.recent(t0 + Duration::from_secs(2), 4), 4);
        assert_eq!(w.recent(t0 + Duration::from_secs(30), 5), 5);
        // The sample from before the drops leaves the window at 61 s.
        assert_eq!(w.recent(t0 + Duration::from_secs(61), 5), 5);
        assert_eq!(w.recent(t0 + Duration::from_secs(62), 5), 1);
        assert_eq!(w.recent(t0 + Duration::from_secs(91), 5), 0);
    }

    #[test]
    fn the_write_probe_writes_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let found = probe(dir.path());
        assert_eq!(found.write, Ok(()));
        let space = found.space.expect("statvfs");
        assert!(
            space.total > 0 && space.available <= space.total,
            "{space:?}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let missing = probe(&dir.path().join("nope"));
        assert!(
            matches!(missing.write, Err(ref e) if e.contains("No such file")),
            "{:?}",
            missing.write
        );
    }

    #[test]
    fn the_test_clock_offset_is_milliseconds_within_a_day() {
        assert_eq!(parse_clock_offset("5000"), Some(5_000));
        assert_eq!(parse_clock_offset(" -1500\n"), Some(-1_500));
        assert_eq!(parse_clock_offset("86400000"), Some(86_400_000));
        assert_eq!(parse_clock_offset("86400001"), None);
        assert_eq!(parse_clock_offset("5s"), None);
        assert_eq!(parse_clock_offset(""), None);
    }
}
