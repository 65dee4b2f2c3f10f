//! The topology file drives applies, and the apply state shows everywhere
//! an operator looks.
//!
//! [`follow`] takes each change the watcher reports: a file whose hash is
//! the committed one needs nothing; a file with problems is rejected with
//! `FILE:LINE:COLUMN` (logged, in the status) and the cluster keeps its
//! version; otherwise this node coordinates an apply of it. An edit is
//! applied on the version it was made on: if another change is committed
//! first, the edit lost, and installing the winner keeps it beside the
//! file (`FILE.before-vN`, see the driver). Only contention is retried
//! (another txn holds a lock, voters were silent, too few nodes are up yet,
//! as at the first start of a cluster), after a random, growing pause, so
//! that nodes started with the same file settle on one version.
//!
//! [`publish`] mirrors the driver's status into the API and gossips the
//! committed version (the member payload's `config`), which is how lagging
//! nodes learn that they must catch up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::api::{self, ApplyState, InstallInfo, LastApplyInfo, NodeState, TopologyFileState};
use crate::config::{NodeConfig, Topology};
use crate::membership::driver::Handle;
use crate::membership::ConfigStamp;
use crate::twophase::{ConfigHash, LockStatus, Outcome, Version};

use super::apply::{ApplyError, ApplyHandle, ApplyReport, ApplyStatus, PeerDirectory};
use super::topology_watch::FileChange;

/// First pause before retrying a contended apply; it doubles up to
/// `MAX_PAUSE`, each pause drawn at random from its upper half.
const FIRST_PAUSE: Duration = Duration::from_millis(400);
const MAX_PAUSE: Duration = Duration::from_secs(8);
/// Applies of one edit lost to other applies before the edit is given up
/// (an edit waiting for enough nodes to come up is never given up).
const MAX_CONTENDED: u32 = 10;

/// Nodes started together with the same file would all coordinate its
/// first version and lock each other out (100 nodes took ~100 s to settle
/// with random pauses alone): only the first of them by name that is up
/// does. The others take over one at a time, in the same order, should it
/// not commit: the k-th waits k times this long once no more nodes of the
/// topology come up. (All of them at once after one grace, as before, was
/// 500 coordinators sending 500 PREPAREs each the moment a 500-node start
/// ran long; counting the grace from the file's first read still let 28
/// of them take over while a 500-node start was under way.)
const FIRST_VERSION_GRACE: Duration = Duration::from_secs(20);
/// The first of them starts once every node of the topology is up, or once
/// no more came up for this long. Started as soon as a majority was up, it
/// sent each attempt's PREPARE (the whole text, parsed and fsynced by each
/// node) to a set still growing under it; in a 500-node start the attempts
/// timed out and were retried while the last 200 agents started, and the
/// load tipped SWIM into a storm of false suspicions.
const FIRST_VERSION_SETTLE: Duration = Duration::from_secs(5);
const FIRST_VERSION_POLL: Duration = Duration::from_secs(1);

/// Where this node stands among the nodes of the first version that
/// membership sees alive or suspect.
#[derive(Debug, PartialEq, Eq)]
struct FirstVersionRank {
    /// How many of them come before this node by name: 0 coordinates at
    /// once.
    ahead: usize,
    /// The first of those.
    first: Option<String>,
    /// How many of them are up in all, this node included if named.
    up: usize,
}

/// [`FirstVersionRank`] of `me` in a topology naming `nodes` (sorted).
async fn first_version_rank(
    directory: &dyn PeerDirectory,
    nodes: &[String],
    me: &str,
) -> FirstVersionRank {
    // One pass over the members, each looked up in the sorted names: every
    // node polls this each second, and a scan of the members per name
    // ahead was N² a poll (about N²/2 string compares per node per second:
    // 125,000 at 500 nodes, an estimate, not measured).
    let peers = directory.peers().await;
    let mut up: Vec<&str> = peers
        .iter()
        .filter(|p| p.takes_part() && p.name != me)
        .filter(|p| nodes.binary_search(&p.name).is_ok())
        .map(|p| p.name.as_str())
        .collect();
    up.sort_unstable();
    up.dedup();
    let ahead = up.partition_point(|n| *n < me);
    let named = usize::from(nodes.binary_search_by(|n| n.as_str().cmp(me)).is_ok());
    FirstVersionRank {
        ahead,
        first: up[..ahead].first().map(|n| n.to_string()),
        up: up.len() + named,
    }
}

/// The file as last read, and the committed version it was edited on.
struct Edit {
    text: String,
    hash: ConfigHash,
    base: Version,
    /// The names of the nodes it describes, sorted.
    nodes: Vec<String>,
    seen: Instant,
}

/// What the trigger is doing about the current edit.
#[derive(Clone, Copy)]
enum Phase {
    /// Nothing to do until the file changes.
    Idle,
    /// An apply of the edit with `hash` is running (`contended`: attempts
    /// lost to other applies).
    Applying {
        hash: ConfigHash,
        tries: u32,
        contended: u32,
    },
    /// Apply at `at`.
    Due {
        at: Instant,
        tries: u32,
        contended: u32,
    },
}

/// Follows the watcher's changes until it stops.
pub async fn follow(
    mut changes: mpsc::Receiver<FileChange>,
    applies: ApplyHandle,
    state: Arc<NodeState>,
    path: PathBuf,
    directory: Arc<dyn PeerDirectory>,
    me: String,
) {
    let mut status = applies.watch();
    let mut edit: Option<Edit> = None;
    let mut phase = Phase::Idle;
    // The most nodes of the first version seen up, and since when: a
    // takeover's grace runs once no more come up.
    let mut growing = (0, Instant::now());
    let (done_tx, mut done_rx) = mpsc::channel::<Result<ApplyReport, ApplyError>>(1);
    loop {
        let due_at = match phase {
            Phase::Due { at, .. } => Some(at),
            _ => None,
        };
        tokio::select! {
            change = changes.recv() => {
                let Some(change) = change else { return };
                // The status first, then the file: the driver writes the
                // file of a version before the status shows it.
                let committed = applies.status();
                if let FileChange::Content { text, .. } = &change {
                    if !still_on_disk(&path, text).await {
                        // A stale read: the agent itself rewrote the file
                        // since (a newer commit); the watcher reports that.
                        continue;
                    }
                }
                edit = on_change(&state, &path, change, &committed);
                if !matches!(phase, Phase::Applying { .. }) {
                    phase = match edit {
                        Some(_) => Phase::Due { at: Instant::now(), tries: 0, contended: 0 },
                        None => Phase::Idle,
                    };
                }
            }
            done = done_rx.recv() => {
                let Some(done) = done else { return };
                let Phase::Applying { hash, tries, contended } = phase else { continue };
                phase = match &edit {
                    // The file changed while it ran: apply the new edit.
                    Some(e) if e.hash != hash => Phase::Due { at: Instant::now(), tries: 0, contended: 0 },
                    _ => {
                        let first = edit.as_ref().is_some_and(|e| e.base == Version(0));
                        on_done(&state, done, tries + 1, contended, first)
                    }
                };
            }
            changed = status.changed() => {
                if changed.is_err() { return }
                let committed = status.borrow_and_update().clone();
                // Committed meanwhile (by another node's apply of the same
                // text): nothing left to retry.
                if show_match(&state, edit.as_ref(), &committed) && matches!(phase, Phase::Due { .. }) {
                    phase = Phase::Idle;
                }
                continue;
            }
            () = sleep_until(due_at) => {}
        }
        let Phase::Due {
            at,
            tries,
            contended,
        } = phase
        else {
            continue;
        };
        let Some(current) = edit.as_ref().filter(|_| at <= Instant::now()) else {
            continue;
        };
        if show_match(&state, edit.as_ref(), &applies.status()) {
            phase = Phase::Idle;
            continue;
        }
        if !still_on_disk(&path, &current.text).await {
            // Changed since: the watcher's next report is the edit now.
            phase = Phase::Idle;
            continue;
        }
        if current.base == Version(0) {
            let rank = first_version_rank(&*directory, &current.nodes, &me).await;
            if rank.up > growing.0 {
                growing = (rank.up, Instant::now());
            }
            let all_up = rank.up >= current.nodes.len();
            let settle = if all_up {
                Duration::ZERO
            } else {
                FIRST_VERSION_SETTLE
            };
            let grace = settle.saturating_add(
                FIRST_VERSION_GRACE.saturating_mul(u32::try_from(rank.ahead).unwrap_or(u32::MAX)),
            );
            let waited = current.seen.elapsed().min(growing.1.elapsed());
            if waited < grace {
                let why = match &rank.first {
                    Some(first) => format!("waiting for {first} to commit the first version"),
                    None => format!(
                        "waiting for the topology's nodes to come up before the first version ({} of {} up)",
                        rank.up,
                        current.nodes.len()
                    ),
                };
                set_pending(&state, Some(why));
                phase = Phase::Due {
                    at: Instant::now() + FIRST_VERSION_POLL,
                    tries,
                    contended,
                };
                continue;
            }
        }
        if tries == 0 {
            info!(path = %path.display(), base = %current.base, "the topology file changed: applying it to the cluster");
        }
        set_pending(&state, Some("an apply of this file is in progress".into()));
        let (handle, text, base, done) = (
            applies.clone(),
            current.text.clone(),
            current.base,
            done_tx.clone(),
        );
        tokio::spawn(async move {
            let _ = done.send(handle.apply_on(text, Some(base)).await).await;
        });
        phase = Phase::Applying {
            hash: current.hash,
            tries,
            contended,
        };
    }
}

/// Whether the file holds `text` now. A watcher read can be stale by the
/// time it is handled: the file it read was the agent's own write of a
/// version that a later commit replaced, and taking it for an edit would
/// revert the cluster to that version (seen at 100 applies in a row).
async fn still_on_disk(path: &std::path::Path, text: &str) -> bool {
    tokio::fs::read(path)
        .await
        .is_ok_and(|bytes| bytes == text.as_bytes())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Shows the file's new state; returns the edit to apply, if any.
fn on_change(
    state: &NodeState,
    path: &std::path::Path,
    change: FileChange,
    committed: &ApplyStatus,
) -> Option<Edit> {
    let keeps = if committed.version > Version(0) {
        format!("; the cluster keeps version {}", committed.version)
    } else {
        String::new()
    };
    let (file_state, problems, edit, pending) = match change {
        FileChange::Missing => (
            TopologyFileState::Missing,
            Vec::new(),
            None,
            (committed.version > Version(0)).then(|| format!("the file is missing{keeps}")),
        ),
        FileChange::Unreadable { reason } => {
            warn!(path = %path.display(), "topology file rejected: {reason}");
            (
                TopologyFileState::Unreadable,
                vec![reason],
                None,
                Some(format!("the file cannot be read{keeps}")),
            )
        }
        // The committed text, as the agent itself writes it after each
        // commit: parsed already by the driver (a 500-node text is ~3.5 ms
        // on each node at each apply), not parsed again.
        FileChange::Content { hash, .. }
            if committed.is_committed(&hash)
                && committed.topology.is_some()
                && committed.left_over != Some(hash) =>
        {
            (TopologyFileState::Valid, Vec::new(), None, None)
        }
        FileChange::Content { text, hash, .. } => match Topology::parse(&text, path) {
            Err(problems) => {
                for problem in problems.iter() {
                    warn!(path = %path.display(), "topology change rejected: {problem}");
                }
                let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
                let pending = format!("rejected: {} problem(s){keeps}", lines.len());
                (TopologyFileState::Invalid, lines, None, Some(pending))
            }
            Ok(_) if committed.left_over == Some(hash) => {
                let pending = format!(
                    "the file holds the text of a version this node replaced, and the agent \
                     could not rewrite it (see its log){keeps}"
                );
                (TopologyFileState::Valid, Vec::new(), None, Some(pending))
            }
            Ok(topology) => {
                let matches = committed.is_committed(&hash);
                let mut nodes: Vec<String> = topology.nodes().map(|n| n.name.to_string()).collect();
                nodes.sort();
                let edit = (!matches).then_some(Edit {
                    text,
                    hash,
                    base: committed.version,
                    nodes,
                    seen: Instant::now(),
                });
                (TopologyFileState::Valid, Vec::new(), edit, None)
            }
        },
    };
    let matches = edit.is_none() && pending.is_none() && file_state == TopologyFileState::Valid;
    state.update(|s| {
        s.topology.state = file_state;
        s.topology.problems = problems;
        // Nothing to compare when there is no text.
        s.topology.matches_committed = matches!(
            file_state,
            TopologyFileState::Valid | TopologyFileState::Invalid
        )
        .then_some(matches);
        s.topology.pending = pending;
    });
    edit
}

/// After a commit elsewhere (or a catch-up): whether the edit is now the
/// committed text (then the status says the file matches).
fn show_match(state: &NodeState, edit: Option<&Edit>, committed: &ApplyStatus) -> bool {
    let matches = edit.is_some_and(|e| committed.is_committed(&e.hash));
    if matches {
        state.update(|s| {
            s.topology.matches_committed = Some(true);
            s.topology.pending = None;
        });
    }
    matches
}

fn set_pending(state: &NodeState, pending: Option<String>) {
    state.update(|s| {
        s.topology.matches_committed = Some(false);
        s.topology.pending = pending;
    });
}

/// What to do after an apply of the current edit finished.
fn on_done(
    state: &NodeState,
    done: Result<ApplyReport, ApplyError>,
    tries: u32,
    contended: u32,
    first_version: bool,
) -> Phase {
    let retry = |contended: u32, why: String| {
        let pause = FIRST_PAUSE
            .saturating_mul(1 << tries.min(8))
            .min(MAX_PAUSE)
            .mul_f64(rand::rng().random_range(0.5..=1.0));
        info!(
            attempt = tries,
            pause_ms = pause.as_millis() as u64,
            "the apply of the topology file will be retried: {why}"
        );
        set_pending(state, Some(format!("retrying: {why}")));
        Phase::Due {
            at: Instant::now() + pause,
            tries,
            contended,
        }
    };
    match done {
        Ok(report) => match &report.result.outcome {
            Outcome::Committed(_) => {
                state.update(|s| s.topology.pending = None);
                Phase::Idle
            }
            Outcome::Aborted { reasons } => {
                // Another change holding the lock, or a node whose 2PC
                // writes fail (it retries them and recovers by itself):
                // worth trying again, a bounded number of times.
                let contention = reasons
                    .values()
                    .all(|r| r.starts_with("locked by") || super::apply::is_disk_vote(r))
                    && (!reasons.is_empty() || !report.result.silent.is_empty());
                // Without a first version nothing runs: never give it up.
                if contention && (first_version || contended + 1 < MAX_CONTENDED) {
                    retry(contended + 1, report.to_string())
                } else {
                    warn!("the topology file was not applied: {report}");
                    set_pending(state, Some(report.to_string()));
                    Phase::Idle
                }
            }
        },
        Err(ApplyError::Unchanged(_)) => Phase::Idle,
        // Too few nodes are up to commit safely, or this node's 2PC writes
        // fail (it retries them): wait, the file is applied once they work.
        Err(ApplyError::Start(e)) => retry(contended, e.to_string()),
        Err(e @ ApplyError::Disk(_)) => retry(contended, e.to_string()),
        Err(e) => {
            warn!("the topology file was not applied: {e}");
            set_pending(state, Some(e.to_string()));
            Phase::Idle
        }
    }
}

/// Mirrors the driver's status into the API, and gossips the committed
/// version with the replica set and roles it gives this node.
pub async fn publish(
    applies: ApplyHandle,
    state: Arc<NodeState>,
    gossip: Handle,
    config: NodeConfig,
    advertise: SocketAddr,
) {
    let mut status = applies.watch();
    let mut gossiped = None;
    let mut changes = api::ApplyChanges::default();
    loop {
        let now = status.borrow_and_update().clone();
        let shown = api_state(&now);
        let lock_txn = now.lock.txn().map(|t| t.to_string());
        let events = changes.next(&shown, lock_txn, now.txn.map(|t| t.to_string()));
        state.update(|s| {
            s.config_version = (now.version > Version(0)).then_some(now.version.0);
            s.apply = Some(shown);
        });
        // `apply-committed`, `apply-aborted`: the web page lives on them.
        events.into_iter().for_each(|e| state.publish(e));
        if gossiped != Some((now.version, now.hash)) {
            let mut payload =
                super::membership::payload(&config, advertise, now.topology.as_deref());
            payload.config = (now.version > Version(0)).then_some(ConfigStamp {
                version: now.version.0,
                hash: now.hash.0,
            });
            if let Err(e) = gossip.set_payload(payload).await {
                warn!("cannot gossip the committed version: {e}");
            }
            gossiped = Some((now.version, now.hash));
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

fn api_state(s: &ApplyStatus) -> ApplyState {
    let ms = api::unix_ms;
    ApplyState {
        version: s.version.0,
        hash: s.hash.to_hex(),
        lock: s.lock.to_string(),
        waiting_seconds: match s.lock {
            LockStatus::Waiting { since, .. } => Some(since.elapsed().as_secs()),
            _ => None,
        },
        coordinating: s.coordinating.iter().map(ToString::to_string).collect(),
        last: s.last.as_ref().map(|l| LastApplyInfo {
            at_ms: ms(l.at),
            txn: l.txn.map(|t| t.to_string()),
            committed: l.committed.map(|v| v.0),
            took_ms: l.took.map(|d| d.as_secs_f64() * 1000.0),
            summary: l.summary.clone(),
        }),
        install: s.install.as_ref().map(|i| InstallInfo {
            version: i.version.0,
            at_ms: ms(i.at),
            error: i.result.clone().err(),
        }),
        kept_edits: s
            .kept_edits
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        stopped: s.stopped.clone(),
        disk_error: s.disk_error.as_ref().map(ToString::to_string),
    }
}

/// `PUT /v1/topology`: applies `text` with this node coordinating and
/// answers in the API's terms, node ids turned into names.
pub async fn apply_for_api(
    applies: &ApplyHandle,
    text: String,
    wait: bool,
    timeout: Duration,
) -> Result<api::ApplyResult, api::ApiError> {
    let deadline = Instant::now() + timeout;
    let hash = super::apply::config_hash(text.as_bytes());
    let timed_out = || api::ApiError {
        code: "timeout".into(),
        message: format!(
            "no decision within {}; the apply goes on: see `cohort status`",
            crate::config::HumanDuration(timeout)
        ),
    };
    let done = tokio::time::timeout_at(deadline, applies.apply(text))
        .await
        .map_err(|_| timed_out())?;
    let mut result = api::ApplyResult::new(api::ApplyOutcome::Aborted);
    let report = match done {
        Ok(report) => report,
        Err(ApplyError::Unchanged(version)) => {
            result.outcome = api::ApplyOutcome::Unchanged;
            result.version = Some(version.0);
            result.message = format!("unchanged: version {version} is this text already");
            return Ok(result);
        }
        Err(ApplyError::Invalid(problems)) => {
            result.outcome = api::ApplyOutcome::Invalid;
            result.problems = problems.iter().map(ToString::to_string).collect();
            result.message = format!("rejected: {} problem(s)", result.problems.len());
            return Ok(result);
        }
        Err(ApplyError::Stopped(why)) => {
            return Err(api::ApiError {
                code: "unavailable".into(),
                message: format!("the apply driver is not running: {why}"),
            })
        }
        // This node's disk, not the request: try again once it works.
        Err(e @ ApplyError::Disk(_)) => {
            return Err(api::ApiError {
                code: "unavailable".into(),
                message: e.to_string(),
            })
        }
        Err(e) => {
            return Err(api::ApiError {
                code: "rejected".into(),
                message: e.to_string(),
            })
        }
    };
    let name = |id: &crate::twophase::NodeId| report.name(id);
    let txn = report.result.txn;
    result.txn = Some(txn.to_string());
    result.decision_log = Some(super::apply::log_name(report.log).to_string());
    result.version = Some(report.result.version.0);
    result.silent = report.result.silent.iter().map(name).collect();
    result.not_reached = report
        .not_reached
        .iter()
        .map(|(node, reason)| api::NodeReason {
            node: node.clone(),
            reason: reason.clone(),
        })
        .collect();
    match &report.result.outcome {
        Outcome::Committed(version) => {
            result.outcome = api::ApplyOutcome::Committed;
            result.version = Some(version.0);
            result.hash = Some(hash.to_hex());
        }
        Outcome::Aborted { reasons } => {
            result.reasons = reasons
                .iter()
                .map(|(id, reason)| api::NodeReason {
                    node: name(id),
                    reason: reason.clone(),
                })
                .collect();
        }
    }
    let mut commit_ms = None;
    if wait {
        let decided = Instant::now();
        let left = deadline.saturating_duration_since(decided);
        let finished = applies.wait_finished(txn, left).await;
        result.finished = Some(finished);
        if finished {
            commit_ms = Some(decided.elapsed().as_secs_f64() * 1000.0);
        }
    }
    result.timings = Some(api::ApplyTimings {
        resolve_ms: report.resolve.as_secs_f64() * 1000.0,
        prepare_ms: report.prepare.as_secs_f64() * 1000.0,
        commit_ms,
    });
    result.message = report.to_string();
    Ok(result)
}

/// `GET /v1/topology`.
pub fn committed_topology(applies: &ApplyHandle) -> api::CommittedTopology {
    let status = applies.status();
    api::CommittedTopology {
        version: status.version.0,
        hash: status.hash.to_hex(),
        txn: status.txn.map(|t| t.to_string()),
        text: status.text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::apply::{Peer, StaticDirectory};
    use crate::membership::MemberStatus;
    use crate::twophase::NodeId;

    #[tokio::test]
    async fn the_first_version_waits_for_the_nodes_up_ahead_by_name() {
        let directory = StaticDirectory::new();
        let names = ["a", "b", "c", "d", "e"];
        let statuses = [
            MemberStatus::Dead,
            MemberStatus::Suspect,
            MemberStatus::Alive,
            MemberStatus::Alive,
            MemberStatus::Alive,
        ];
        for (i, (name, status)) in names.iter().zip(statuses).enumerate() {
            directory.insert(Peer {
                id: NodeId(uuid::Uuid::from_u128(i as u128 + 1)),
                name: name.to_string(),
                addr: SocketAddr::from(([127, 0, 0, 1], 7001 + i as u16)),
                status,
                config: None,
            });
        }
        // A member the topology does not name counts for nothing.
        directory.insert(Peer {
            id: NodeId(uuid::Uuid::from_u128(99)),
            name: "aa".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 7099)),
            status: MemberStatus::Alive,
            config: None,
        });
        let nodes: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let rank = |me: &'static str| {
            let (directory, nodes) = (directory.clone(), nodes.clone());
            async move { first_version_rank(&directory, &nodes, me).await }
        };
        let at = |ahead: usize, first: Option<&str>, up: usize| FirstVersionRank {
            ahead,
            first: first.map(String::from),
            up,
        };
        // Up: b (suspect), c, d, e; a is dead.
        assert_eq!(rank("a").await, at(0, None, 5));
        assert_eq!(rank("b").await, at(0, None, 4), "a is dead");
        assert_eq!(rank("d").await, at(2, Some("b"), 4));
        assert_eq!(rank("e").await, at(3, Some("b"), 4));
        // A node the topology does not name waits for all that are up.
        assert_eq!(rank("z").await, at(4, Some("b"), 4));
    }
}
