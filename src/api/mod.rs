//! The node's local HTTP API. Handlers read what the agent publishes into
//! `NodeState` (status, the members snapshot, the event feed) and hand
//! writes to the agent as `AgentCommand`s; they never touch a protocol.

pub mod access;
mod clock;
mod diff;
mod health;
mod issues;
pub mod metrics;
mod rejection;
mod route;
mod types;
mod ui;

use std::convert::Infallible;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use clock::{rfc3339, unix_ms};
pub use issues::{
    merge as merge_issues, sort as sort_issues, Issue, IssueKind, IssueLevel, Issues, PeerAnswers,
    PeerIssues, PEER_DEADLINE as ISSUES_PEER_DEADLINE,
};
pub use types::*;
pub use ui::{ApplyChanges, RaftChanges};

/// A write the API asks of the agent; the answer comes back on `reply`.
#[derive(Debug)]
pub enum AgentCommand {
    Join {
        address: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Leave {
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// A user event for every node.
    SendUserEvent {
        name: String,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// `PUT /v1/topology`: apply this text, this node coordinating.
    ApplyTopology {
        text: String,
        /// Also wait until every participant acknowledged the decision.
        wait: bool,
        timeout: Duration,
        reply: oneshot::Sender<Result<ApplyResult, ApiError>>,
    },
    /// `GET /v1/topology`.
    CommittedTopology {
        reply: oneshot::Sender<CommittedTopology>,
    },
    /// `GET /v1/leaders?consistent`: read through the leader.
    ConsistentLeaders {
        reply: oneshot::Sender<Result<Leaders, String>>,
    },
    /// `POST /v1/failover/promote`.
    Promote {
        request: PromoteRequest,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// `POST /v1/raft/transfer-leader`.
    TransferLeader {
        request: TransferRequest,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// `GET /metrics`: the gossip layer's counters now (None when it has
    /// stopped).
    GossipStats {
        reply: oneshot::Sender<Option<crate::membership::Stats>>,
    },
}

/// The committed topology, parsed, as the agent installed it.
#[derive(Clone, Debug)]
pub struct Committed {
    pub version: u64,
    pub topology: Arc<crate::config::Topology>,
}

/// What the agent shares with its API handlers.
pub struct NodeState {
    pub status: RwLock<Status>,
    pub members: RwLock<Members>,
    pub events: broadcast::Sender<ApiEvent>,
    pub commands: mpsc::Sender<AgentCommand>,
    pub started: Instant,
    /// Multicast discovery's counters (kept apart: membership replaces
    /// `members` wholesale every second).
    multicast: RwLock<Option<crate::discovery::multicast::MulticastStats>>,
    /// Set once at shutdown: open event streams end, so the API drains at
    /// once instead of holding the stop.
    stopping: watch::Sender<bool>,
    /// The committed topology (none before the first apply): `/v1/route`.
    committed: RwLock<Option<Committed>>,
    /// What `/metrics` counts from the changes published here.
    counters: Mutex<metrics::Counters>,
    /// Marked at every `set_members` and `set_committed`: what the
    /// cluster state (`agent::cluster_state`) is computed from changed.
    membership_seen: watch::Sender<()>,
    /// This node's issues list, and how `/v1/issues` asks the others.
    issues: issues::IssueBoard,
}

/// How many events a slow `/v1/events` reader may fall behind before it
/// is told it missed some.
const EVENT_BACKLOG: usize = 1024;

impl NodeState {
    /// The state, and the receiving end of the commands for the agent.
    pub fn new(status: Status) -> (Arc<NodeState>, mpsc::Receiver<AgentCommand>) {
        let (commands, receiver) = mpsc::channel(64);
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let state = Arc::new(NodeState {
            status: RwLock::new(status),
            members: RwLock::new(Members::default()),
            events,
            commands,
            started: Instant::now(),
            stopping: watch::Sender::new(false),
            multicast: RwLock::new(None),
            committed: RwLock::new(None),
            counters: Mutex::new(metrics::Counters::default()),
            membership_seen: watch::Sender::new(()),
            issues: issues::IssueBoard::default(),
        });
        (state, receiver)
    }

    pub fn snapshot(&self) -> Status {
        let mut status = read(&self.status).clone();
        status.uptime_seconds = self.started.elapsed().as_secs();
        status.warnings = read(&self.members).gossip.warnings.clone();
        status
    }

    pub fn update(&self, change: impl FnOnce(&mut Status)) {
        let mut status = write(&self.status);
        let before = status.apply.clone();
        change(&mut status);
        lock(&self.counters).observe_apply(before.as_ref(), status.apply.as_ref());
    }

    /// The committed topology changed (a commit, a catch-up, the start).
    pub fn set_committed(&self, version: u64, topology: Option<Arc<crate::config::Topology>>) {
        *write(&self.committed) = topology.map(|topology| Committed { version, topology });
        self.membership_seen.send_replace(());
    }

    pub fn set_members(&self, members: Members) {
        *write(&self.members) = members;
        self.membership_seen.send_replace(());
    }

    /// The gossip counters alone, between rebuilds of the member table:
    /// not news of membership.
    pub fn set_gossip_health(&self, gossip: crate::api::types::GossipHealth) {
        write(&self.members).gossip = gossip;
    }

    /// The committed topology now (none before the first apply).
    pub fn committed(&self) -> Option<Committed> {
        read(&self.committed).clone()
    }

    /// Changes at every new members view or committed topology.
    pub fn watch_membership(&self) -> watch::Receiver<()> {
        self.membership_seen.subscribe()
    }

    pub fn set_multicast(&self, stats: crate::discovery::multicast::MulticastStats) {
        *write(&self.multicast) = Some(stats);
    }

    /// Publishes an event to every `/v1/events` reader (none is fine).
    pub fn publish(&self, event: ApiEvent) {
        lock(&self.counters).observe_event(&event);
        let _ = self.events.send(event);
    }

    /// Turns true once, when the agent stops ([`NodeState::end_streams`]).
    pub fn watch_stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Tells every `/v1/events` reader the agent is stopping, then ends
    /// their streams.
    pub fn end_streams(&self, why: &str) {
        let (node, uuid) = {
            let status = read(&self.status);
            (status.node.clone(), status.uuid)
        };
        self.publish(ApiEvent::now(
            "agent-stopping",
            node,
            Some(uuid),
            why.to_string(),
        ));
        self.stopping.send_replace(true);
    }
}

// A panicking writer must not take the API down with it: the data behind a
// poisoned lock is a snapshot, still the best answer there is.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/health", get(health::get_health))
        .route("/v1/members", get(members))
        .route("/v1/events", get(event_stream).post(send_user_event))
        .route("/v1/join", post(join))
        .route("/v1/leave", post(leave))
        .route("/v1/topology", get(get_topology).put(put_topology))
        .route("/v1/topology/diff", get(diff::get_diff))
        .route("/v1/leaders", get(get_leaders))
        .route("/v1/failover/promote", post(promote))
        .route("/v1/raft/transfer-leader", post(transfer_leader))
        .route("/v1/route", get(route::get_route))
        .route("/v1/issues", get(issues::get_issues))
        .route("/metrics", get(get_metrics))
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(rejection::as_json))
        .with_state(state)
}

async fn status(State(state): State<Arc<NodeState>>) -> Json<Status> {
    Json(state.snapshot())
}

async fn members(State(state): State<Arc<NodeState>>) -> Json<Members> {
    let mut members = read(&state.members).clone();
    members.multicast = *read(&state.multicast);
    Json(members)
}

/// Server-sent events: one `data:` line of `ApiEvent` JSON per event. A
/// reader that falls too far behind gets a `lagged` event, not a cut.
async fn event_stream(
    State(state): State<Arc<NodeState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.events.subscribe();
    let stopping = state.watch_stopping();
    let stream = futures_util::stream::unfold(
        (receiver, stopping),
        |(mut receiver, mut stopping)| async move {
            let next = tokio::select! {
                // Events already published (the last one says why) go out first.
                biased;
                next = receiver.recv() => next,
                _ = stopping.wait_for(|stopping| *stopping) => return None,
            };
            let event = match next {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => ApiEvent::now(
                    "lagged",
                    String::new(),
                    None,
                    format!("{missed} events were missed by this reader"),
                ),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            let data = serde_json::to_string(&event).unwrap_or_default();
            Some((
                Ok(Event::default().event(event.kind.clone()).data(data)),
                (receiver, stopping),
            ))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn join(State(state): State<Arc<NodeState>>, Json(request): Json<JoinRequest>) -> Response {
    ask(&state, |reply| AgentCommand::Join {
        address: request.address,
        reply,
    })
    .await
}

async fn send_user_event(
    State(state): State<Arc<NodeState>>,
    Json(request): Json<UserEventRequest>,
) -> Response {
    use base64::Engine as _;
    let payload = match (request.payload, request.payload_base64) {
        (Some(_), Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "rejected",
                "give `payload` or `payload_base64`, not both".into(),
            )
        }
        (Some(text), None) => text.into_bytes(),
        (None, Some(encoded)) => {
            match base64::engine::general_purpose::STANDARD.decode(encoded.trim()) {
                Ok(bytes) => bytes,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "rejected",
                        format!("`payload_base64` is not base64: {e}"),
                    )
                }
            }
        }
        (None, None) => Vec::new(),
    };
    ask(&state, |reply| AgentCommand::SendUserEvent {
        name: request.name,
        payload,
        reply,
    })
    .await
}

async fn leave(State(state): State<Arc<NodeState>>) -> Response {
    ask(&state, |reply| AgentCommand::Leave { reply }).await
}

async fn get_topology(State(state): State<Arc<NodeState>>) -> Response {
    let (reply, answer) = oneshot::channel();
    if state
        .commands
        .send(AgentCommand::CommittedTopology { reply })
        .await
        .is_err()
    {
        return shutting_down();
    }
    match answer.await {
        Ok(topology) => Json(topology).into_response(),
        Err(_) => shutting_down(),
    }
}

/// `PUT /v1/topology?wait=BOOL&timeout=DURATION`.
#[derive(Debug, serde::Deserialize)]
struct ApplyParams {
    #[serde(default)]
    wait: bool,
    #[serde(default = "default_apply_timeout")]
    timeout: crate::config::HumanDuration,
}

fn default_apply_timeout() -> crate::config::HumanDuration {
    crate::config::HumanDuration(Duration::from_secs(60))
}

async fn put_topology(
    State(state): State<Arc<NodeState>>,
    params: Result<axum::extract::Query<ApplyParams>, axum::extract::rejection::QueryRejection>,
    text: Result<String, axum::extract::rejection::StringRejection>,
) -> Response {
    let params = match params {
        Ok(axum::extract::Query(params)) => params,
        Err(e) => return error(StatusCode::BAD_REQUEST, "rejected", e.body_text()),
    };
    let text = match text {
        Ok(text) => text,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "rejected",
                format!(
                    "the body must be the topology text (UTF-8): {}",
                    e.body_text()
                ),
            )
        }
    };
    let timeout = params.timeout.0;
    let (reply, answer) = oneshot::channel();
    let command = AgentCommand::ApplyTopology {
        text,
        wait: params.wait,
        timeout,
        reply,
    };
    if state.commands.send(command).await.is_err() {
        return shutting_down();
    }
    match answer.await {
        Ok(Ok(result)) => {
            let status = match result.outcome {
                ApplyOutcome::Committed | ApplyOutcome::Unchanged => StatusCode::OK,
                ApplyOutcome::Aborted => StatusCode::CONFLICT,
                ApplyOutcome::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (status, Json(result)).into_response()
        }
        Ok(Err(e)) => {
            let status = match e.code.as_str() {
                "timeout" => StatusCode::GATEWAY_TIMEOUT,
                "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, Json(e)).into_response()
        }
        Err(_) => shutting_down(),
    }
}

#[derive(serde::Deserialize)]
struct LeadersQuery {
    /// Present (any value, or none): read through the leader.
    consistent: Option<String>,
}

/// The group as this node sees it, or (`?consistent`) as the leader
/// confirms it after a quorum check: a linearizable read.
async fn get_leaders(
    State(state): State<Arc<NodeState>>,
    axum::extract::Query(query): axum::extract::Query<LeadersQuery>,
) -> Response {
    if query.consistent.is_none() {
        return match read(&state.status).raft.clone() {
            Some(leaders) => Json(leaders).into_response(),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the raft driver is not running yet".into(),
            ),
        };
    }
    let (reply, answer) = oneshot::channel();
    if state
        .commands
        .send(AgentCommand::ConsistentLeaders { reply })
        .await
        .is_err()
    {
        return shutting_down();
    }
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(Ok(leaders))) => Json(leaders).into_response(),
        Ok(Ok(Err(message))) => error(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", message),
        Ok(Err(_)) => shutting_down(),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "no consistent answer within 10s".into(),
        ),
    }
}

async fn promote(
    State(state): State<Arc<NodeState>>,
    Json(request): Json<PromoteRequest>,
) -> Response {
    ask(&state, |reply| AgentCommand::Promote { request, reply }).await
}

async fn transfer_leader(
    State(state): State<Arc<NodeState>>,
    Json(request): Json<TransferRequest>,
) -> Response {
    ask(&state, |reply| AgentCommand::TransferLeader {
        request,
        reply,
    })
    .await
}

/// How long a scrape waits for the gossip layer's counters before it
/// answers without them.
const GOSSIP_STATS_WAIT: Duration = Duration::from_secs(2);

/// `GET /metrics`: OpenMetrics when asked for, else the Prometheus text
/// format (see `metrics`).
async fn get_metrics(
    State(state): State<Arc<NodeState>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = metrics::Format::negotiate(accept);
    let (reply, answer) = oneshot::channel();
    let gossip = match state
        .commands
        .send(AgentCommand::GossipStats { reply })
        .await
    {
        Ok(()) => tokio::time::timeout(GOSSIP_STATS_WAIT, answer)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten(),
        Err(_) => None,
    };
    let status = state.snapshot();
    let members = read(&state.members).clone();
    let counters = lock(&state.counters).clone();
    let text = metrics::render(
        &metrics::Scrape {
            status: &status,
            members: &members,
            counters: &counters,
            gossip: gossip.as_ref(),
        },
        format,
    );
    (
        [(axum::http::header::CONTENT_TYPE, format.content_type())],
        text,
    )
        .into_response()
}

fn shutting_down() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the agent is shutting down".into(),
    )
}

/// Hands a command to the agent and turns its answer into a response.
async fn ask(
    state: &NodeState,
    command: impl FnOnce(oneshot::Sender<Result<String, String>>) -> AgentCommand,
) -> Response {
    let (reply, answer) = oneshot::channel();
    if state.commands.send(command(reply)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the agent is shutting down".into(),
        );
    }
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(Ok(message))) => Json(Done { message }).into_response(),
        Ok(Ok(Err(message))) => error(StatusCode::BAD_REQUEST, "rejected", message),
        Ok(Err(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the agent dropped the request".into(),
        ),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the agent did not answer within 10s".into(),
        ),
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(ApiError {
            code: code.into(),
            message,
        }),
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
}
