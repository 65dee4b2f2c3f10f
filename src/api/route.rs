//! `GET /v1/route?key=K`: which replica set a key belongs to and who its
//! master is now. Read from what the agent publishes (the committed
//! topology, the Raft view's masters, the members) with no round trip to
//! the agent: a lookup costs one hash per replica set.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{error, read, Committed, NodeState, Route, RouteMaster};
use crate::routing;

#[derive(serde::Deserialize)]
pub(super) struct RouteQuery {
    key: Option<String>,
}

pub(super) async fn get_route(
    State(state): State<Arc<NodeState>>,
    query: Result<Query<RouteQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let key = match query {
        Ok(Query(RouteQuery { key: Some(key) })) => key,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "rejected",
                "give the key: /v1/route?key=K (URL-encoded)".into(),
            )
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, "rejected", e.body_text()),
    };
    let Some(committed) = read(&state.committed).clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no topology is committed yet: nothing to route to".into(),
        );
    };
    let status = read(&state.status).clone();
    let members = read(&state.members).clone();
    match route(&committed, &key, &status, &members) {
        Some(route) => Json(route).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no replica set of the committed topology has a weight above 0".into(),
        ),
    }
}

/// The answer for `key`, or None when no set takes keys.
pub(super) fn route(
    committed: &Committed,
    key: &str,
    status: &super::Status,
    members: &super::Members,
) -> Option<Route> {
    let sets = &committed.topology.replicasets.value;
    let name = routing::pick(
        key.as_bytes(),
        sets.iter()
            .map(|(name, set)| (name.value.as_str(), set.weight())),
    )?;
    let set = sets.get(name)?;
    let master_info = status.raft.as_ref().and_then(|r| r.masters.get(name));
    let mut note = None;
    let master = match master_info {
        None => {
            note = Some(match &status.raft {
                None => "the raft driver is not running yet".to_string(),
                Some(_) => format!("replica set `{name}` has no master now"),
            });
            None
        }
        Some(m) => {
            let address = set
                .nodes
                .value
                .get(&m.node)
                .map(|n| n.address.value.to_string());
            let gossip = members
                .members
                .iter()
                .find(|member| member.name == m.node)
                .map_or("unknown".to_string(), |member| member.status.clone());
            match address {
                Some(address) => Some(RouteMaster {
                    name: m.node.clone(),
                    address,
                    status: gossip,
                    generation: m.generation,
                }),
                // The Raft view may name a master of a newer or older
                // topology for a moment while a change is installed.
                None => {
                    note = Some(format!(
                        "the master `{}` of `{name}` is not in the committed topology version {}",
                        m.node, committed.version
                    ));
                    None
                }
            }
        }
    };
    Some(Route {
        key: key.to_string(),
        replicaset: name.to_string(),
        weight: set.weight(),
        master,
        config_version: committed.version,
        note,
    })
}
