//! `GET /v1/health`: does this agent work? For load balancers and systemd
//! checks, so cheap enough to ask every second: one round trip through the
//! agent's command loop to the gossip driver, a stat in the data dir, and
//! reads of what the agent publishes. Whether the data dir takes writes is
//! the issues task's probe (create, write, fsync, remove, every 5 s): a
//! check that wrote a file would put disk writes behind every load
//! balancer's request.
//! Cluster-wide trouble (no quorum, a dead peer) is not this node's health:
//! restarting it would not help; `/v1/issues` reports that.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::oneshot;

use super::{read, AgentCommand, Health, HealthCheck, HealthStatus, IssueKind, NodeState};

/// How long the agent and the data dir get to answer: under the usual
/// load balancer and systemd check timeouts (3–5 s).
const DEADLINE: Duration = Duration::from_secs(2);

/// A failed check: its code in the answer, and why.
struct Failure {
    code: &'static str,
    detail: String,
}

impl Failure {
    fn new(code: &'static str, detail: impl Into<String>) -> Failure {
        Failure {
            code,
            detail: detail.into(),
        }
    }
}

type Outcome = Result<(), Failure>;

/// Every check runs each time; the answer is 503 with the first failure's
/// code when any fails.
pub(super) async fn get_health(State(state): State<Arc<NodeState>>) -> Response {
    let (node, uuid, data_dir, apply_stopped, apply_disk_error) = {
        let status = read(&state.status);
        (
            status.node.clone(),
            status.uuid,
            PathBuf::from(&status.data_dir),
            status.apply.as_ref().and_then(|a| a.stopped.clone()),
            status.apply.as_ref().and_then(|a| a.disk_error.clone()),
        )
    };
    let stopping: Outcome = if *state.stopping.borrow() {
        Err(Failure::new("stopping", "the agent is shutting down"))
    } else {
        Ok(())
    };
    let unwritable = state
        .issues()
        .into_iter()
        .find(|i| i.kind == IssueKind::DataDirUnwritable && Path::new(&i.subject) == data_dir)
        .map(|i| i.message);
    let ((commands, gossip), data_dir) =
        tokio::join!(agent(&state), data_dir_usable(data_dir, unwritable));
    let left = read(&state.members)
        .members
        .iter()
        .any(|m| m.uuid == uuid && m.status == "left");
    let membership: Outcome = if left {
        Err(Failure::new(
            "left",
            "this node left the cluster (POST /v1/leave or `cohort leave`): POST /v1/join or a restart brings it back",
        ))
    } else {
        Ok(())
    };
    let apply: Outcome = match (apply_stopped, apply_disk_error) {
        (Some(why), _) => Err(Failure::new(
            "apply_stopped",
            format!("the apply driver stopped: {why}"),
        )),
        (None, Some(failing)) => Err(Failure::new(
            "apply_disk_error",
            format!("this node cannot write its 2PC state ({failing}): it votes no on every topology change until a write works; it retries by itself"),
        )),
        (None, None) => Ok(()),
    };
    let checks = [
        ("stopping", stopping),
        ("commands", commands),
        ("gossip", gossip),
        ("membership", membership),
        ("data_dir", data_dir),
        ("apply", apply),
    ];
    let first = checks
        .iter()
        .find_map(|(_, outcome)| outcome.as_ref().err())
        .map(|f| (f.code.to_string(), f.detail.clone()));
    let health = Health {
        status: if first.is_some() {
            HealthStatus::Unhealthy
        } else {
            HealthStatus::Ok
        },
        node,
        code: first.as_ref().map(|(code, _)| code.clone()),
        message: first.map(|(_, message)| message),
        checks: checks
            .into_iter()
            .map(|(name, outcome)| HealthCheck {
                name: name.to_string(),
                ok: outcome.is_ok(),
                detail: outcome.err().map(|f| f.detail),
            })
            .collect(),
    };
    let code = match health.status {
        HealthStatus::Ok => StatusCode::OK,
        HealthStatus::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(health)).into_response()
}

/// The agent's command loop and the gossip driver, in one round trip: the
/// loop hands the question to the driver, which answers with its counters
/// (none once it has stopped).
async fn agent(state: &NodeState) -> (Outcome, Outcome) {
    let unknown = || {
        Err(Failure::new(
            "agent_unresponsive",
            "not known: the agent did not answer",
        ))
    };
    let (reply, answer) = oneshot::channel();
    if state
        .commands
        .send(AgentCommand::GossipStats { reply })
        .await
        .is_err()
    {
        let stopped = Failure::new("agent_unresponsive", "the agent's command loop has stopped");
        return (Err(stopped), unknown());
    }
    match tokio::time::timeout(DEADLINE, answer).await {
        Ok(Ok(Some(_))) => (Ok(()), Ok(())),
        Ok(Ok(None)) => (
            Ok(()),
            Err(Failure::new(
                "gossip_stopped",
                "the gossip driver has stopped: this node neither probes nor answers its peers",
            )),
        ),
        Ok(Err(_)) => (
            Err(Failure::new(
                "agent_unresponsive",
                "the agent dropped the question",
            )),
            unknown(),
        ),
        Err(_) => (
            Err(Failure::new(
                "agent_unresponsive",
                format!(
                    "the agent did not answer within {}s (its command loop or the gossip driver is stuck)",
                    DEADLINE.as_secs()
                ),
            )),
            unknown(),
        ),
    }
}

/// The data dir is still the node's (its `node-id` is there: a dir
/// removed or replaced under the agent loses it) and took writes at the
/// issues task's last probe (`unwritable`: what that probe found).
async fn data_dir_usable(dir: PathBuf, unwritable: Option<String>) -> Outcome {
    let shown = dir.display().to_string();
    let check = tokio::task::spawn_blocking(move || probe(&dir, unwritable));
    match tokio::time::timeout(DEADLINE, check).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Err(Failure::new(
            "data_dir_unusable",
            format!("checking {shown} failed: {e}"),
        )),
        Err(_) => Err(Failure::new(
            "data_dir_unusable",
            format!(
                "{shown} did not answer within {}s (a hung disk or network file system?)",
                DEADLINE.as_secs()
            ),
        )),
    }
}

fn probe(dir: &Path, unwritable: Option<String>) -> Outcome {
    let unusable = |detail: String| Err(Failure::new("data_dir_unusable", detail));
    let describe = crate::storage::describe;
    let node_id = dir.join("node-id");
    match std::fs::metadata(&node_id) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let shown = dir.display();
            return unusable(format!(
                "{shown} has no node-id any more: the data dir was removed or replaced while the agent runs"
            ));
        }
        Err(e) => {
            return unusable(format!(
                "cannot read {}: {}",
                node_id.display(),
                describe(&e)
            ))
        }
    }
    match unwritable {
        Some(why) => unusable(why),
        None => Ok(()),
    }
}
