//! The node's local HTTP API. Response types live here and are shared by
//! the server and the `cohort` command, so both always agree on the JSON.

use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
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
    /// Unix time in ms.
    pub started_at_ms: u64,
    pub uptime_seconds: u64,
    /// cohort's own version.
    pub version: String,
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

/// What the agent shares with its API handlers.
pub struct NodeState {
    pub status: RwLock<Status>,
    pub started: Instant,
}

impl NodeState {
    pub fn new(status: Status) -> Arc<NodeState> {
        Arc::new(NodeState {
            status: RwLock::new(status),
            started: Instant::now(),
        })
    }

    pub fn snapshot(&self) -> Status {
        let mut status = match self.status.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        status.uptime_seconds = self.started.elapsed().as_secs();
        status
    }

    pub fn update(&self, change: impl FnOnce(&mut Status)) {
        let mut guard = match self.status.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        change(&mut guard);
    }
}

pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/health", get(health))
        .fallback(not_found)
        .with_state(state)
}

async fn status(State(state): State<Arc<NodeState>>) -> Json<Status> {
    Json(state.snapshot())
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn not_found(uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ApiError {
            code: "not_found".into(),
            message: format!("no such endpoint: {}", uri.path()),
        }),
    )
        .into_response()
}
