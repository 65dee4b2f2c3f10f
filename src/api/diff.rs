//! `GET /v1/topology/diff`: what applying the node's topology file as it
//! is now would change against the committed topology, the same diff as
//! `cohort topology diff` (`config::diff`), for an operator or a tool that
//! cannot read the node's file itself.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{error, read, NodeState, TopologyFileDiff};
use crate::agent::topology_watch::config_hash;
use crate::config::diff::TopologyDiff;
use crate::config::{ConfigError, Topology};

/// Why the file cannot be compared: (HTTP status, code, message).
type Refusal = (StatusCode, &'static str, String);

/// Reads the file at every call (it is the operator's, and may have
/// changed since the watcher last saw it); before the first commit the
/// whole file is the change.
pub(super) async fn get_diff(State(state): State<Arc<NodeState>>) -> Response {
    let path = PathBuf::from(&read(&state.status).topology.path);
    let committed = read(&state.committed).clone();
    // Reading and parsing are blocking work of a size the operator chose.
    let answer = tokio::task::spawn_blocking(move || {
        let (text, new) = load(&path)?;
        let diff = TopologyDiff::between(committed.as_ref().map(|c| &*c.topology), &new);
        let unchanged = diff.is_empty();
        Ok::<_, Refusal>(TopologyFileDiff {
            file: path.display().to_string(),
            hash: config_hash(text.as_bytes()).to_hex(),
            committed_version: committed.map_or(0, |c| c.version),
            unchanged,
            changes: if unchanged {
                Vec::new()
            } else {
                diff.to_string().lines().map(str::to_string).collect()
            },
            diff,
        })
    })
    .await;
    match answer {
        Ok(Ok(diff)) => Json(diff).into_response(),
        Ok(Err((status, code, message))) => error(status, code, message),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("comparing the topology file failed: {e}"),
        ),
    }
}

/// The file's text and model, or why it has none: 422 with a code per
/// case, the problems as `FILE:LINE:COLUMN: message` lines.
fn load(path: &std::path::Path) -> Result<(String, Topology), Refusal> {
    let text = crate::config::read_file(path).map_err(|e| match &e {
        ConfigError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "file_missing",
            format!(
                "the topology file {} does not exist: nothing to compare",
                path.display()
            ),
        ),
        _ => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "file_unreadable",
            e.to_string(),
        ),
    })?;
    let topology = Topology::parse(&text, path).map_err(|diagnostics| {
        let problems: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_topology",
            problems.join("\n"),
        )
    })?;
    Ok((text, topology))
}
