//! What a node knows about one member: identity, address, incarnation,
//! status and payload; the record that travels on the wire; and the events
//! a change of that knowledge produces for the layers above.

use std::net::SocketAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use crate::agent::identity::NodeId;

use super::payload::Payload;

/// Which life of a member a piece of news is about. Ordered: a newer
/// generation (a restart) beats any version of an older one.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Incarnation {
    /// Start time of the process in µs; grows at every start.
    pub generation: u64,
    /// Bumped by the member itself to refute a suspicion or to publish a
    /// new payload, address or status.
    pub version: u64,
}

impl std::fmt::Display for Incarnation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.generation, self.version)
    }
}

/// How alive a member looks. The order is "worse wins": when two reports
/// of one incarnation disagree, the greater status is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberStatus {
    Alive,
    Suspect,
    Dead,
    /// Left on purpose; never suspected, kept as a tombstone until reclaimed.
    Left,
}

impl MemberStatus {
    /// Alive and suspect members are probed and count in the cluster size.
    pub fn is_active(self) -> bool {
        matches!(self, MemberStatus::Alive | MemberStatus::Suspect)
    }
}

impl std::fmt::Display for MemberStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Suspect => "suspect",
            MemberStatus::Dead => "dead",
            MemberStatus::Left => "left",
        })
    }
}

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub incarnation: Incarnation,
    pub status: MemberStatus,
    pub payload: Payload,
    /// When this node last saw the status change (for `members` and reclaim).
    pub status_since: Instant,
}

/// A member's state as gossiped: compact, self-contained, mergeable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub incarnation: Incarnation,
    pub status: MemberStatus,
    pub payload: Payload,
    /// For a suspect record: who suspects it, so that confirmations from
    /// distinct members can shorten the suspicion (Lifeguard).
    pub suspecter: Option<NodeId>,
}

/// A change in this node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    Joined {
        id: NodeId,
        addr: SocketAddr,
        status: MemberStatus,
        incarnation: Incarnation,
    },
    StatusChanged {
        id: NodeId,
        from: MemberStatus,
        to: MemberStatus,
    },
    AddressChanged {
        id: NodeId,
        from: SocketAddr,
        to: SocketAddr,
    },
    PayloadChanged {
        id: NodeId,
    },
    IncarnationChanged {
        id: NodeId,
        from: Incarnation,
        to: Incarnation,
    },
    /// A dead or left member's record was reclaimed.
    Forgotten {
        id: NodeId,
    },
}

impl MemberEvent {
    pub fn id(&self) -> NodeId {
        match self {
            MemberEvent::Joined { id, .. }
            | MemberEvent::StatusChanged { id, .. }
            | MemberEvent::AddressChanged { id, .. }
            | MemberEvent::PayloadChanged { id }
            | MemberEvent::IncarnationChanged { id, .. }
            | MemberEvent::Forgotten { id } => *id,
        }
    }
}

/// A member record as a layer above membership keeps it (the name from its
/// payload, its id, its status), for [`by_name`].
pub trait NamedMember {
    /// The node's name in the topology (empty until its payload arrived).
    fn name(&self) -> &str;
    fn id(&self) -> NodeId;
    fn status(&self) -> MemberStatus;
}

/// The record each topology name stands for. Several records share a name
/// when a node restarted with a wiped data dir (a new id; the old record
/// stays dead until reclaimed): the best status wins (alive, suspect, dead,
/// left). Two records of one status happen only briefly (the old life not
/// yet declared dead) or when two agents are given one name; the smaller id
/// wins then, a fixed choice so that successive rounds (and nodes) agree.
/// Records with no name yet are left out.
pub fn by_name<T: NamedMember>(members: &[T]) -> std::collections::BTreeMap<&str, &T> {
    use std::cmp::Reverse;
    // `MemberStatus` orders worse last: reversed, alive ranks highest.
    let key = |m: &T| (Reverse(m.status()), Reverse(m.id()));
    let mut index: std::collections::BTreeMap<&str, &T> = std::collections::BTreeMap::new();
    for member in members.iter().filter(|m| !m.name().is_empty()) {
        match index.get(member.name()) {
            Some(&have) if key(have) >= key(member) => {}
            _ => {
                index.insert(member.name(), member);
            }
        }
    }
    index
}
