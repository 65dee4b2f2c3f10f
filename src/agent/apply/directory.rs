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
        takes_part(self.status)
    }
}

fn takes_part(status: MemberStatus) -> bool {
    matches!(status, MemberStatus::Alive | MemberStatus::Suspect)
}

/// Which members [`PeerDirectory::peers_where`] copies, from their id,
/// name and status.
pub type PeerFilter = Box<dyn Fn(NodeId, &str, MemberStatus) -> bool + Send>;

/// Every member known (this node included), read fresh on each call.
pub trait PeerDirectory: Send + Sync + 'static {
    fn peers(&self) -> BoxFuture<'_, Vec<Peer>>;

    /// The members `keep` takes. The others are only looked at: a node
    /// polling a few of 500 members every second copies those few.
    fn peers_where(&self, keep: PeerFilter) -> BoxFuture<'_, Vec<Peer>> {
        Box::pin(async move {
            let mut peers = self.peers().await;
            peers.retain(|p| keep(p.id, &p.name, p.status));
            peers
        })
    }

    /// One member, by id: what each 2PC message send needs (a whole
    /// table per message would cost N² per apply).
    fn peer(&self, id: NodeId) -> BoxFuture<'_, Option<Peer>> {
        Box::pin(async move { self.peers().await.into_iter().find(|p| p.id == id) })
    }

    /// The member other than `me` that takes part and gossips the newest
    /// committed version above `version` (any one of those that do): where
    /// a lagging node catches up. Asked every second on every node, so
    /// without a copy of the table.
    fn newest_above(&self, me: NodeId, version: Version) -> BoxFuture<'_, Option<Peer>> {
        Box::pin(async move {
            let peers = self.peers().await;
            newest_above(&peers, me, version, |p| (p.id, p.status, p.config)).cloned()
        })
    }
}

/// [`PeerDirectory::newest_above`] over any rows, `row` reading a row's
/// id, status and gossiped config.
fn newest_above<'a, T>(
    rows: impl IntoIterator<Item = &'a T>,
    me: NodeId,
    version: Version,
    row: impl Fn(&T) -> (NodeId, MemberStatus, Option<(Version, ConfigHash)>),
) -> Option<&'a T> {
    rows.into_iter()
        .filter_map(|r| {
            let (id, status, config) = row(r);
            let ahead = config.map(|(v, _)| v).filter(|v| *v > version);
            ahead
                .filter(|_| id != me && takes_part(status))
                .map(|v| (v, r))
        })
        .max_by_key(|(v, _)| *v)
        .map(|(_, r)| r)
}

impl PeerDirectory for Handle {
    fn peers(&self) -> BoxFuture<'_, Vec<Peer>> {
        self.peers_where(Box::new(|_, _, _| true))
    }

    fn peers_where(&self, keep: PeerFilter) -> BoxFuture<'_, Vec<Peer>> {
        Box::pin(async move {
            self.inspect(move |swim| {
                std::iter::once(swim.local())
                    .chain(swim.members())
                    .filter(|m| keep(m.id, &m.payload.name, m.status))
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

    fn newest_above(&self, me: NodeId, version: Version) -> BoxFuture<'_, Option<Peer>> {
        Box::pin(async move {
            self.inspect(move |swim| {
                newest_above(swim.members(), me, version, |m| {
                    (m.id, m.status, config_of(m))
                })
                .map(peer_of)
            })
            .await
            .flatten()
        })
    }
}

fn config_of(member: &Member) -> Option<(Version, ConfigHash)> {
    member
        .payload
        .config
        .map(|c| (Version(c.version), ConfigHash(c.hash)))
}

fn peer_of(member: &Member) -> Peer {
    Peer {
        id: member.id,
        name: member.payload.name.clone(),
        addr: member.payload.rpc_addr.unwrap_or(member.addr),
        status: member.status,
        config: config_of(member),
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

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn peer(n: u128, status: MemberStatus, version: Option<u64>) -> Peer {
        Peer {
            id: NodeId(Uuid::from_u128(n)),
            name: format!("n{n}"),
            addr: SocketAddr::from(([127, 0, 0, 1], 7000 + n as u16)),
            status,
            config: version.map(|v| (Version(v), ConfigHash([v as u8; 32]))),
        }
    }

    #[tokio::test]
    async fn catch_up_is_offered_the_newest_version_a_live_peer_runs() {
        let directory = StaticDirectory::new();
        let me = NodeId(Uuid::from_u128(1));
        for p in [
            // This node's own row never counts, whatever it gossips.
            peer(1, MemberStatus::Alive, Some(9)),
            peer(2, MemberStatus::Alive, Some(3)),
            peer(3, MemberStatus::Suspect, Some(5)),
            peer(4, MemberStatus::Dead, Some(8)),
            peer(5, MemberStatus::Left, Some(8)),
            peer(6, MemberStatus::Alive, None),
        ] {
            directory.insert(p);
        }
        let newest = directory.newest_above(me, Version(2)).await;
        assert_eq!(newest.map(|p| p.name), Some("n3".to_string()));
        assert_eq!(directory.newest_above(me, Version(5)).await, None);
    }
}
