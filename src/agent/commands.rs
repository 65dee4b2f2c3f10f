//! Carries out the writes the API asks of the agent (join a seed, leave
//! the cluster, send a user event), so API handlers never touch the
//! protocols themselves.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::api::AgentCommand;
use crate::config::JoinTarget;
use crate::membership::driver::Handle;

use crate::raft::driver::{RaftCommand, RaftHandle};

use super::apply::ApplyHandle;

/// Answers commands until the API side goes away.
pub async fn answer(
    mut commands: mpsc::Receiver<AgentCommand>,
    gossip: Handle,
    own: SocketAddr,
    applies: ApplyHandle,
    raft: RaftHandle,
    name: String,
) {
    while let Some(command) = commands.recv().await {
        match command {
            AgentCommand::Join { address, reply } => {
                let _ = reply.send(join(&gossip, &address, own).await);
            }
            AgentCommand::Leave { reply } => {
                gossip.leave(Duration::from_secs(1)).await;
                let _ = reply.send(Ok("left the cluster; peers see this node as `left`".into()));
            }
            AgentCommand::SendUserEvent {
                name,
                payload,
                reply,
            } => {
                let size = payload.len();
                let answer = match gossip.send_user_event(name.clone(), payload).await {
                    Some(Ok((origin, generation, seq))) => Ok(format!(
                        "event `{name}` ({size} bytes) sent as {origin}/{generation}/{seq}"
                    )),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("the agent is shutting down".into()),
                };
                let _ = reply.send(answer);
            }
            AgentCommand::ApplyTopology {
                text,
                wait,
                timeout,
                reply,
            } => {
                // Applies take seconds: never hold up the other commands.
                let applies = applies.clone();
                tokio::spawn(async move {
                    let result =
                        super::topology_apply::apply_for_api(&applies, text, wait, timeout).await;
                    let _ = reply.send(result);
                });
            }
            AgentCommand::CommittedTopology { reply } => {
                let _ = reply.send(super::topology_apply::committed_topology(&applies));
            }
            // Raft answers wait for a quorum: never hold up the others.
            AgentCommand::ConsistentLeaders { reply } => {
                let (raft, name) = (raft.clone(), name.clone());
                tokio::spawn(async move {
                    let view = raft
                        .ask(|reply| RaftCommand::ConsistentRead { reply })
                        .await;
                    let _ = reply.send(view.map(|v| super::raft::leaders(&name, &v, true)));
                });
            }
            AgentCommand::Promote { request, reply } => {
                let raft = raft.clone();
                tokio::spawn(async move {
                    let answer = raft
                        .ask(|reply| RaftCommand::Promote {
                            set: request.replicaset.clone(),
                            node: request.node.clone(),
                            reply,
                        })
                        .await
                        .map(|m| {
                            format!(
                                "{} is the master of {} (generation {})",
                                m.node, request.replicaset, m.generation
                            )
                        });
                    let _ = reply.send(answer);
                });
            }
            // Answered from the driver's own task: a scrape never waits
            // for the other commands' work.
            AgentCommand::GossipStats { reply } => {
                let gossip = gossip.clone();
                tokio::spawn(async move {
                    let _ = reply.send(gossip.inspect(|swim| swim.stats()).await);
                });
            }
            AgentCommand::TransferLeader { request, reply } => {
                let raft = raft.clone();
                tokio::spawn(async move {
                    let answer = raft
                        .ask(|reply| RaftCommand::TransferLeader {
                            node: request.node.clone(),
                            reply,
                        })
                        .await
                        .map(|()| format!("{} was asked to take the lead", request.node));
                    let _ = reply.send(answer);
                });
            }
        }
    }
}

async fn join(gossip: &Handle, address: &str, own: SocketAddr) -> Result<String, String> {
    let target = JoinTarget::parse(address)?;
    let found = crate::discovery::resolve_seeds(&[target], own).await;
    if found.addrs.is_empty() {
        return Err(found.failed.first().map_or_else(
            || format!("`{address}` is this node itself"),
            |(seed, why)| format!("`{seed}`: {why}"),
        ));
    }
    for addr in &found.addrs {
        gossip.join(*addr).await;
    }
    let addrs: Vec<String> = found.addrs.iter().map(ToString::to_string).collect();
    Ok(format!("probing {}", addrs.join(", ")))
}
