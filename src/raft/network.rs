//! Raft messages over the cluster's authenticated rpc: one method
//! ([`METHOD`]) whose body is a postcard [`Envelope`] (sender, intended
//! receiver, and the openraft request) and whose answer is the postcard of
//! openraft's `Result<response, RaftError>`. [`Network`] is the calling
//! side (openraft's network factory), [`RaftEndpoint`] the answering side.
//!
//! Failures are told apart the way openraft acts on them: nobody there to
//! talk Raft with (connection refused or never established, no Raft
//! running, another node at the address) is `Unreachable`, and the leader
//! backs off before trying that follower again; a call that was under way
//! on a live connection and ran out of time is `Timeout`; a garbled
//! exchange is `Network`; an error of the remote Raft is `RemoteError`.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::elector::Inbound;
use super::{NodeId, Peer, TypeConfig};
use crate::rpc::message::{codes, decode, encode};
use crate::rpc::{CallError, HandlerFuture, RpcClient, RpcError, RpcHandler};

/// The rpc method that carries every Raft message.
pub const METHOD: &str = "raft";

/// Error codes of [`RaftEndpoint`] (besides rpc's own `bad_request`).
pub mod error_codes {
    /// No Raft runs on the node (not started yet, or stopped).
    pub const UNAVAILABLE: &str = "unavailable";
    /// The message was meant for another node id than the one at this
    /// address (the address was reused by a new node).
    pub const WRONG_NODE: &str = "wrong_node";
}

/// How long the leader waits, at most, before trying an unreachable
/// follower again (openraft's default is this, constant).
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_millis(500);

/// One Raft message as sent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending node.
    pub from: NodeId,
    /// The node the sender means to reach: refused by any other.
    pub to: NodeId,
    pub request: RaftRequest,
}

/// openraft's requests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

impl RaftRequest {
    fn kind(&self) -> RPCTypes {
        match self {
            RaftRequest::AppendEntries(_) => RPCTypes::AppendEntries,
            RaftRequest::Vote(_) => RPCTypes::Vote,
            RaftRequest::InstallSnapshot(_) => RPCTypes::InstallSnapshot,
        }
    }
}

/// The answer to an AppendEntries request.
pub type AppendEntriesAnswer = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;
/// The answer to a Vote request.
pub type VoteAnswer = Result<VoteResponse<NodeId>, RaftError<NodeId>>;
/// The answer to an InstallSnapshot request (one chunk).
pub type InstallSnapshotAnswer =
    Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

/// The calling side: openraft asks it for a connection to each peer.
#[derive(Clone, Debug)]
pub struct Network {
    me: NodeId,
    rpc: RpcClient,
    max_backoff: Duration,
}

impl Network {
    pub fn new(me: NodeId, rpc: RpcClient) -> Network {
        Network {
            me,
            rpc,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }

    /// The longest pause before retrying an unreachable follower. Keep it
    /// below the election timeout: a follower that comes back must hear
    /// from the leader before it starts an election of its own.
    pub fn with_max_backoff(mut self, max: Duration) -> Network {
        self.max_backoff = max.max(Duration::from_millis(1));
        self
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Peer) -> Connection {
        Connection {
            me: self.me,
            target,
            peer: node.clone(),
            rpc: self.rpc.clone(),
            max_backoff: self.max_backoff,
        }
    }
}

/// The way to one peer (its connection is pooled by the rpc client).
#[derive(Clone, Debug)]
pub struct Connection {
    me: NodeId,
    target: NodeId,
    peer: Peer,
    rpc: RpcClient,
    max_backoff: Duration,
}

impl Connection {
    async fn send<T, E>(
        &self,
        request: RaftRequest,
        option: &RPCOption,
    ) -> Result<T, RPCError<NodeId, Peer, RaftError<NodeId, E>>>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let kind = request.kind();
        let body = encode(&Envelope {
            from: self.me,
            to: self.target,
            request,
        });
        // openraft cuts the call off at `hard_ttl` itself; ending ours a
        // little earlier lets our own error (say, unreachable) reach it.
        let deadline = option.soft_ttl().max(Duration::from_millis(1));
        let addr = self.peer.addr;
        let answer = self.rpc.call(addr, METHOD, &body, deadline).await;
        let connected = self.rpc.is_connected(addr);
        let answer = answer.map_err(|e| self.call_error(e, kind, deadline, connected))?;
        let answer: Result<T, RaftError<NodeId, E>> =
            decode(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.peer.clone(),
                e,
            ))
        })
    }

    fn call_error<E: std::error::Error>(
        &self,
        error: CallError,
        action: RPCTypes,
        deadline: Duration,
        connected: bool,
    ) -> RPCError<NodeId, Peer, E> {
        match classify(&error, connected) {
            Failure::Unreachable => RPCError::Unreachable(Unreachable::new(&error)),
            Failure::Timeout => RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout: deadline,
            }),
            Failure::Network => RPCError::Network(NetworkError::new(&error)),
        }
    }
}

/// How openraft should take a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Nobody at the address talks Raft to us: back off.
    Unreachable,
    /// A live peer did not answer in time.
    Timeout,
    /// Something broke in the exchange: try again on the next round.
    Network,
}

/// Sorts an rpc failure; `connected` is whether a connection to the peer
/// is still pooled after the call (a timeout without one never got a
/// connection up: the peer is gone, or its host is).
pub fn classify(error: &CallError, connected: bool) -> Failure {
    match error {
        CallError::Unreachable(_) | CallError::Refused(_) => Failure::Unreachable,
        CallError::Timeout(_) if connected => Failure::Timeout,
        CallError::Timeout(_) => Failure::Unreachable,
        CallError::Remote(e) => match e.code.as_str() {
            error_codes::UNAVAILABLE | error_codes::WRONG_NODE | codes::UNKNOWN_METHOD => {
                Failure::Unreachable
            }
            codes::DEADLINE_EXCEEDED => Failure::Timeout,
            _ => Failure::Network,
        },
        CallError::Protocol(_) => Failure::Network,
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        self.send(RaftRequest::AppendEntries(rpc), &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Peer, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(RaftRequest::InstallSnapshot(rpc), &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        self.send(RaftRequest::Vote(rpc), &option).await
    }

    fn backoff(&self) -> Backoff {
        backoff(self.max_backoff)
    }
}

/// Pauses before retrying an unreachable peer: an eighth of `max`,
/// doubling up to `max` (a node that restarts is soon heard from; one that
/// stays down costs little).
pub fn backoff(max: Duration) -> Backoff {
    let first = (max / 8).max(Duration::from_millis(1));
    Backoff::new((0u32..).map(move |i| first.saturating_mul(1 << i.min(16)).min(max)))
}

/// The answering side, routed under [`METHOD`]. Made before the node's
/// Raft exists (the router is built first); until [`RaftEndpoint::set`]
/// and after [`RaftEndpoint::clear`] it answers `unavailable`.
#[derive(Clone, Default)]
pub struct RaftEndpoint {
    raft: Arc<RwLock<Option<(NodeId, Inbound)>>>,
}

impl RaftEndpoint {
    pub fn new() -> RaftEndpoint {
        RaftEndpoint::default()
    }

    /// Answers with `inbound`'s Raft from now on (replacing any earlier one).
    pub fn set(&self, inbound: Inbound) {
        let id = inbound.raft().metrics().borrow().id;
        *self.raft.write().unwrap_or_else(PoisonError::into_inner) = Some((id, inbound));
    }

    /// Answers `unavailable` from now on.
    pub fn clear(&self) {
        *self.raft.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn raft(&self) -> Option<(NodeId, Inbound)> {
        self.raft
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Decodes, checks and runs one message; the answer is encoded.
    pub async fn answer(&self, body: &[u8]) -> Result<Vec<u8>, RpcError> {
        let envelope: Envelope = decode(body).map_err(RpcError::bad_request)?;
        let Some((me, inbound)) = self.raft() else {
            return Err(RpcError::new(
                error_codes::UNAVAILABLE,
                "no raft runs on this node",
            ));
        };
        if envelope.to != me {
            return Err(RpcError::new(
                error_codes::WRONG_NODE,
                format!(
                    "this is node {me}, not {} (from {})",
                    envelope.to, envelope.from
                ),
            ));
        }
        Ok(match envelope.request {
            RaftRequest::AppendEntries(rpc) => encode(&inbound.append_entries(rpc).await),
            RaftRequest::Vote(rpc) => encode(&inbound.vote(rpc).await),
            RaftRequest::InstallSnapshot(rpc) => encode(&inbound.install_snapshot(rpc).await),
        })
    }
}

impl RpcHandler for RaftEndpoint {
    fn handle<'a>(
        &'a self,
        _from: SocketAddr,
        _method: &'a str,
        body: Vec<u8>,
    ) -> HandlerFuture<'a> {
        Box::pin(async move { self.answer(&body).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::PacketSecurity;
    use crate::rpc::{ClientConfig, ClusterAuth, Refusal};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use uuid::Uuid;

    fn id(n: u128) -> NodeId {
        NodeId(Uuid::from_u128(n))
    }

    fn append() -> AppendEntriesRequest<TypeConfig> {
        let log_id = LogId::new(CommittedLeaderId::new(3, id(1)), 7);
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(3, id(1)),
            prev_log_id: None,
            leader_commit: Some(log_id),
            entries: vec![Entry {
                log_id,
                payload: EntryPayload::Normal(crate::raft::Command::AppointMaster {
                    set: "s1".into(),
                    node: "a".into(),
                    expect: 0,
                    reason: "test".into(),
                }),
            }],
        }
    }

    #[test]
    fn requests_and_answers_survive_postcard() {
        let envelope = Envelope {
            from: id(1),
            to: id(2),
            request: RaftRequest::AppendEntries(append()),
        };
        let back: Envelope = decode(&encode(&envelope)).expect("decodes");
        assert_eq!(back.to, id(2));
        let RaftRequest::AppendEntries(rpc) = back.request else {
            panic!("an append");
        };
        assert_eq!(format!("{rpc:?}"), format!("{:?}", append()));

        for answer in [
            Ok(AppendEntriesResponse::Success),
            Ok(AppendEntriesResponse::HigherVote(openraft::Vote::new(
                4,
                id(2),
            ))),
            Err(RaftError::Fatal(openraft::error::Fatal::Stopped)),
        ] {
            let back: AppendEntriesAnswer = decode(&encode(&answer)).expect("decodes");
            assert_eq!(back, answer);
        }
    }

    #[test]
    fn failures_are_sorted_the_way_openraft_acts_on_them() {
        let remote = |code: &str| CallError::Remote(RpcError::new(code, "x"));
        let timeout = CallError::Timeout(Duration::from_millis(75));
        assert_eq!(
            classify(&CallError::Unreachable("refused".into()), false),
            Failure::Unreachable
        );
        assert_eq!(
            classify(&CallError::Refused(Refusal::WrongCluster), false),
            Failure::Unreachable
        );
        // No connection came up in time: the peer's host is gone.
        assert_eq!(classify(&timeout, false), Failure::Unreachable);
        // A live peer that did not answer in time.
        assert_eq!(classify(&timeout, true), Failure::Timeout);
        for code in [
            error_codes::UNAVAILABLE,
            error_codes::WRONG_NODE,
            codes::UNKNOWN_METHOD,
        ] {
            assert_eq!(
                classify(&remote(code), true),
                Failure::Unreachable,
                "{code}"
            );
        }
        assert_eq!(
            classify(&remote(codes::DEADLINE_EXCEEDED), true),
            Failure::Timeout
        );
        assert_eq!(
            classify(&remote(codes::BAD_REQUEST), true),
            Failure::Network
        );
        assert_eq!(
            classify(&CallError::Protocol("junk".into()), true),
            Failure::Network
        );
    }

    #[test]
    fn the_backoff_doubles_up_to_its_bound() {
        let pauses: Vec<_> = backoff(Duration::from_millis(400)).take(6).collect();
        let ms: Vec<_> = pauses.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 400, 400, 400]);
    }

    #[tokio::test]
    async fn an_endpoint_without_raft_answers_unavailable() {
        let endpoint = RaftEndpoint::new();
        let body = encode(&Envelope {
            from: id(1),
            to: id(2),
            request: RaftRequest::Vote(VoteRequest::new(openraft::Vote::new(1, id(1)), None)),
        });
        let err = endpoint.answer(&body).await.expect_err("no raft");
        assert_eq!(err.code, error_codes::UNAVAILABLE);
        let err = endpoint.answer(b"\xff\xff").await.expect_err("garbage");
        assert_eq!(err.code, codes::BAD_REQUEST);
    }

    /// Three Rafts over loopback rpc: a leader is elected, a write is
    /// applied everywhere, and a message addressed to another node id is
    /// refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_rafts_form_a_group_over_rpc() {
        use crate::raft::elector::Elector;
        use crate::raft::{store, Command, Raft, Response};
        use crate::rpc::{Demux, DemuxConfig, Router, Routes, RpcServer, ServerConfig};
        use std::collections::BTreeMap;
        use std::sync::Arc;

        let wait = Some(Duration::from_secs(20));
        let dir = tempfile::tempdir().expect("a temp dir");
        let auth = ClusterAuth {
            cluster: "test".into(),
            security: PacketSecurity::Plaintext,
        };
        let mut listeners = Vec::new();
        let mut peers = BTreeMap::new();
        for i in 0..3u128 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("bound");
            peers.insert(
                id(i + 1),
                Peer {
                    name: format!("n{i}"),
                    addr,
                },
            );
            listeners.push(listener);
        }
        let config = openraft::Config {
            election_timeout_min: 200,
            election_timeout_max: 400,
            heartbeat_interval: 20,
            // Our election timer stands, as in the agent.
            enable_elect: false,
            ..Default::default()
        };
        let config = Arc::new(config.validate().expect("valid"));
        let mut nodes = Vec::new();
        for (listener, (&me, peer)) in listeners.into_iter().zip(&peers) {
            let endpoint = RaftEndpoint::new();
            let router = Router::new().route(METHOD, endpoint.clone());
            let server = RpcServer::new(auth.clone(), router, ServerConfig::default());
            let routes = Routes {
                gossip: None,
                rpc: Some(server),
            };
            let demux = Demux::spawn(listener, routes, DemuxConfig::default());
            let (log, sm) = store::open(&dir.path().join(&peer.name), false).expect("a store");
            let rpc = RpcClient::new(auth.clone(), ClientConfig::default());
            let network = Network::new(me, rpc).with_max_backoff(Duration::from_millis(100));
            let raft = Raft::new(me, config.clone(), network, log, sm)
                .await
                .expect("raft starts");
            let (elector, inbound) = Elector::spawn(&raft, &config, true);
            endpoint.set(inbound);
            nodes.push((raft, demux, elector));
        }
        nodes[0].0.initialize(peers.clone()).await.expect("formed");
        let m = nodes[0]
            .0
            .wait(wait)
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .expect("a leader is elected");
        let leader = m.current_leader.expect("a leader");
        let raft = &nodes
            .iter()
            .find(|(r, ..)| r.metrics().borrow().id == leader)
            .expect("one of ours")
            .0;
        let written = raft
            .client_write(Command::AppointMaster {
                set: "s1".into(),
                node: "a".into(),
                expect: 0,
                reason: "test".into(),
            })
            .await
            .expect("committed");
        assert!(
            matches!(written.data, Response::Appointed(_)),
            "{:?}",
            written.data
        );
        for (raft, ..) in &nodes {
            raft.wait(wait)
                .applied_index_at_least(Some(written.log_id.index), "the write")
                .await
                .expect("applied everywhere");
        }

        // The first node's address, a message for a node it is not.
        let rpc = RpcClient::new(auth, ClientConfig::default());
        let body = encode(&Envelope {
            from: id(2),
            to: id(9),
            request: RaftRequest::Vote(VoteRequest::new(openraft::Vote::new(99, id(2)), None)),
        });
        let addr = peers[&id(1)].addr;
        let err = rpc
            .call(addr, METHOD, &body, Duration::from_secs(5))
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, CallError::Remote(e) if e.code == error_codes::WRONG_NODE),
            "{err:?}"
        );
        assert_eq!(classify(&err, true), Failure::Unreachable);
        // ... which did not disturb the group.
        assert_eq!(nodes[0].0.metrics().borrow().current_term, m.current_term);

        for (raft, demux, _elector) in nodes {
            raft.shutdown().await.expect("shuts down");
            demux.stop().await;
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        // A port that was just free: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let auth = ClusterAuth {
            cluster: "test".into(),
            security: PacketSecurity::Plaintext,
        };
        let rpc = RpcClient::new(auth, ClientConfig::default());
        let mut network = Network::new(id(1), rpc);
        let peer = Peer {
            name: "b".into(),
            addr,
        };
        let mut conn = network.new_client(id(2), &peer).await;
        let err = conn
            .vote(
                VoteRequest::new(openraft::Vote::new(1, id(1)), None),
                RPCOption::new(Duration::from_secs(2)),
            )
            .await
            .expect_err("nobody listens");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
    }
}
