//! Who the peers are: topology node names → node ids, their rpc address,
//! and whether membership still counts them. The agent reads it from SWIM
//! (`membership::driver::Handle`); tests give a fixed map.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::membership::driver::Handle;
use crate::membership::{Member, MemberStatus, NamedMember};
use crate::twophase::{ConfigHash, NodeId, Version};

use super::BoxFuture;

/// One node as membership knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    /// Its name in the topology (the member payload's `name`).
    pub name: String,
    /// Where its rpc server answers.
    pub addr: SocketAddr,
    pub status: MemberStatus,
    /// The committed version and hash it gossips (none before its first).
    pub config: Option<(Version, ConfigHash)>,
}

impl Peer {
    /// Dead and left members take no part in an apply.
    pub fn takes_part(&self) -> bool {
        matches!(self.status, MemberStatus::Alive | MemberStatus::Suspect)
    }
}

/// Every member known (this node included), read fresh on each call.
pub trait PeerDirectory: Send + Sync + 'static {
    fn peers(&self) -> BoxFuture<'_, Vec<Peer>>;

    /// One member, by id: what each 2PC message send needs (a whole
    /// table per message would cost N² per apply).
    fn peer(&self, id: NodeId) -> BoxFuture<'_, Option<Peer>> {
        Box::pin(async move { self.peers().await.into_iter().find(|p| p.id == id) })
    }
}

impl PeerDirectory for Handle {
    fn peers(&self) -> BoxFuture<'_, Vec<Peer>> {
        Box::pin(async move {
            self.inspect(|swim| {
                std::iter::once(swim.local())
                    .chain(swim.members())
                    .map(peer_of)
                    .collect()
            })
            .await
            .unwrap_or_default()
        })
    }

    fn peer(&self, id: NodeId) -> BoxFuture<'_, Option<Peer>> {
        Box::pin(async move {
            self.inspect(move |swim| {
                Some(swim.local())
                    .filter(|me| me.id == id)
                    .or_else(|| swim.member(id))
                    .map(peer_of)
            })
            .await
            .flatten()
        })
    }
}

fn peer_of(member: &Member) -> Peer {
    Peer {
        id: member.id,
        name: member.payload.name.clone(),
        addr: member.payload.rpc_addr.unwrap_or(member.addr),
        status: member.status,
        config: member
            .payload
            .config
            .map(|c| (Version(c.version), ConfigHash(c.hash))),
    }
}

/// A fixed table of peers (tests, tools). Entries can be replaced, e.g.
/// when a node comes back on another port.
#[derive(Clone, Default)]
pub struct StaticDirectory {
    peers: Arc<Mutex<BTreeMap<NodeId, Peer>>>,
}

impl StaticDirectory {
    pub fn new() -> StaticDirectory {
        StaticDirectory::default()
    }

    /// Adds or replaces the peer with this id.
    pub fn insert(&self, peer: Peer) {
        self.lock().insert(peer.id, peer);
    }

    pub fn set_status(&self, id: NodeId, status: MemberStatus) {
        if let Some(peer) = self.lock().get_mut(&id) {
            peer.status = status;
        }
    }

    /// What the peer gossips as its committed version.
    pub fn set_config(&self, id: NodeId, config: Option<(Version, ConfigHash)>) {
        if let Some(peer) = self.lock().get_mut(&id) {
            peer.config = config;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Peer>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PeerDirectory for StaticDirectory {
    fn peers(&self) -> BoxFuture<'_, Vec<Peer>> {
        let peers = self.lock().values().cloned().collect();
        Box::pin(async move { peers })
    }
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
