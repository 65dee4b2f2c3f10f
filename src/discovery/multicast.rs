//! Multicast discovery without I/O: what a node announces on the LAN's
//! multicast group, what it makes of an announcement it hears, and when a
//! heard node is worth joining. The agent's task (`agent::discovery`) owns
//! the socket and the clock and calls in here.
//!
//! An announcement is framed and sealed exactly like a gossip packet (the
//! cluster's keyring, a fresh nonce), so a host without the key can neither
//! read one nor inject a join target. The body is postcard:
//! `MAGIC, VERSION, Announcement`; the magic keeps a replayed gossip packet
//! (which the same key opens) from passing for an announcement.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::membership::keyring::NONCE_LEN;
use crate::membership::wire::{self, FrameError};
use crate::membership::{MemberStatus, NodeId, PacketSecurity};

/// The first bytes of every announcement body.
pub const MAGIC: [u8; 4] = *b"CHMA";
/// Bumped on any incompatible change of `Announcement`; other versions
/// are dropped as malformed.
pub const VERSION: u8 = 1;
/// A real announcement is about 100 bytes; anything larger is refused
/// before any decryption is tried.
pub const MAX_ANNOUNCEMENT: usize = 512;
/// How many senders' last join times are remembered at most.
const MAX_REMEMBERED: usize = 4096;

/// "I am here": who the sender is and where it gossips.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub cluster: String,
    pub id: NodeId,
    /// The sender's generation: an announcement of an older life than the
    /// one already known is stale (a replay) and ignored.
    pub generation: u64,
    /// The address its peers dial for gossip (its `advertise`).
    pub gossip_addr: SocketAddr,
}

/// Seals an announcement into a datagram; `nonce` must be fresh from a
/// CSPRNG. `None` when the keyring cannot seal (it has no key).
pub fn seal(
    security: &PacketSecurity,
    nonce: [u8; NONCE_LEN],
    announcement: &Announcement,
) -> Option<Vec<u8>> {
    let body = postcard::to_allocvec(&(MAGIC, VERSION, announcement)).ok()?;
    wire::seal(security, nonce, &body)
}

/// Why a datagram on the group was not taken as an announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// No key of the keyring opens it: another cluster's key, or noise.
    Decrypt,
    /// In the clear while this node requires encryption.
    Plaintext,
    /// Not an announcement of this version (or not one at all).
    Malformed,
    /// An announcement of another cluster sharing the group.
    ForeignCluster,
    /// Announces an address peers cannot dial (loopback heard from
    /// another host, unspecified, port 0).
    UnusableAddress,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Decrypt => "undecryptable",
            DropReason::Plaintext => "plaintext refused",
            DropReason::Malformed => "malformed",
            DropReason::ForeignCluster => "another cluster",
            DropReason::UnusableAddress => "unusable address",
        }
    }
}

/// What one datagram turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// This node's own announcement, looped back.
    Own,
    Dropped {
        reason: DropReason,
        detail: String,
    },
    Peer(Announcement),
}

/// Opens and checks one datagram heard on the group.
pub fn open(
    security: &PacketSecurity,
    cluster: &str,
    own: NodeId,
    from: SocketAddr,
    frame: &[u8],
) -> Heard {
    let dropped = |reason, detail: String| Heard::Dropped { reason, detail };
    if frame.len() > MAX_ANNOUNCEMENT {
        return dropped(
            DropReason::Malformed,
            format!("{} bytes, larger than any announcement", frame.len()),
        );
    }
    let body = match wire::open(security, frame) {
        Ok(body) => body,
        Err(FrameError::Decrypt) => return dropped(DropReason::Decrypt, "no key opens it".into()),
        Err(FrameError::PlaintextRefused) => {
            return dropped(
                DropReason::Plaintext,
                "this node requires encryption".into(),
            )
        }
        Err(FrameError::Decode(why)) => return dropped(DropReason::Malformed, why.into()),
    };
    let announcement = match decode(&body) {
        Ok(a) => a,
        Err(why) => return dropped(DropReason::Malformed, why),
    };
    if announcement.cluster != cluster {
        return dropped(
            DropReason::ForeignCluster,
            format!("cluster `{}`", announcement.cluster),
        );
    }
    if announcement.id == own {
        return Heard::Own;
    }
    let addr = announcement.gossip_addr;
    // A datagram from this host comes from a loopback address, or from
    // 0.0.0.0 when it went out on loopback without a source address.
    let from_this_host = from.ip().is_loopback() || from.ip().is_unspecified();
    if addr.ip().is_unspecified()
        || addr.port() == 0
        || (addr.ip().is_loopback() && !from_this_host)
    {
        return dropped(
            DropReason::UnusableAddress,
            format!("node {} announces {addr}", announcement.id),
        );
    }
    Heard::Peer(announcement)
}

fn decode(body: &[u8]) -> Result<Announcement, String> {
    let ((magic, version), rest) = postcard::take_from_bytes::<([u8; 4], u8)>(body)
        .map_err(|e| format!("no announcement header: {e}"))?;
    if magic != MAGIC {
        return Err("not an announcement".into());
    }
    if version != VERSION {
        return Err(format!(
            "announcement version {version}, this node speaks {VERSION}"
        ));
    }
    let (announcement, rest) =
        postcard::take_from_bytes::<Announcement>(rest).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    Ok(announcement)
}

/// What the membership table says about an announced node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    pub status: MemberStatus,
    pub generation: u64,
    pub addr: SocketAddr,
}

/// Counters of the multicast task, for logs and the node's status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MulticastStats {
    /// Announcements sent, and sends that failed.
    pub sent: u64,
    pub send_errors: u64,
    /// Valid announcements from other nodes of this cluster.
    pub heard: u64,
    /// Joins started because of an announcement.
    pub joins: u64,
    /// Announcements of members already alive (or suspect) at that address
    /// in this life, or of an older life: nothing to do.
    pub skipped_member: u64,
    /// Announcements of a node joined less than a cooldown ago.
    pub skipped_cooldown: u64,
    pub dropped: DroppedAnnouncements,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedAnnouncements {
    pub decrypt: u64,
    pub plaintext: u64,
    pub malformed: u64,
    pub foreign_cluster: u64,
    pub unusable_address: u64,
}

impl DroppedAnnouncements {
    pub fn total(&self) -> u64 {
        self.decrypt
            + self.plaintext
            + self.malformed
            + self.foreign_cluster
            + self.unusable_address
    }

    fn count(&mut self, reason: DropReason) {
        let counter = match reason {
            DropReason::Decrypt => &mut self.decrypt,
            DropReason::Plaintext => &mut self.plaintext,
            DropReason::Malformed => &mut self.malformed,
            DropReason::ForeignCluster => &mut self.foreign_cluster,
            DropReason::UnusableAddress => &mut self.unusable_address,
        };
        *counter += 1;
    }
}

/// Decides which announced nodes to join, at most once per cooldown each,
/// and counts what it sees.
#[derive(Debug)]
pub struct Joiner {
    cooldown: Duration,
    last_join: HashMap<NodeId, Instant>,
    stats: MulticastStats,
}

impl Joiner {
    pub fn new(cooldown: Duration) -> Joiner {
        Joiner {
            cooldown,
            last_join: HashMap::new(),
            stats: MulticastStats::default(),
        }
    }

    /// Four announce periods, and never under 2 s: a join that got lost
    /// is retried soon, a node that cannot be reached is not hammered.
    pub fn cooldown_for(interval: Duration) -> Duration {
        interval.saturating_mul(4).max(Duration::from_secs(2))
    }

    pub fn stats(&self) -> MulticastStats {
        self.stats
    }

    pub fn sent(&mut self, ok: bool) {
        if ok {
            self.stats.sent += 1;
        } else {
            self.stats.send_errors += 1;
        }
    }

    /// Counts a datagram that was not a usable announcement.
    pub fn dropped(&mut self, reason: DropReason) {
        self.stats.dropped.count(reason);
    }

    /// The address to join for a heard announcement, if any: a node the
    /// table does not hold alive in this life at this address, and not
    /// joined within the cooldown.
    pub fn decide(
        &mut self,
        now: Instant,
        announcement: &Announcement,
        known: Option<Known>,
    ) -> Option<SocketAddr> {
        self.stats.heard += 1;
        if let Some(known) = known {
            let older_life = known.generation > announcement.generation;
            let up_to_date = known.generation == announcement.generation
                && known.addr == announcement.gossip_addr
                && matches!(known.status, MemberStatus::Alive | MemberStatus::Suspect);
            if older_life || up_to_date {
                self.stats.skipped_member += 1;
                return None;
            }
        }
        if let Some(last) = self.last_join.get(&announcement.id) {
            if now.saturating_duration_since(*last) < self.cooldown {
                self.stats.skipped_cooldown += 1;
                return None;
            }
        }
        if self.last_join.len() >= MAX_REMEMBERED {
            let cooldown = self.cooldown;
            self.last_join
                .retain(|_, at| now.saturating_duration_since(*at) < cooldown);
        }
        if self.last_join.len() < MAX_REMEMBERED {
            self.last_join.insert(announcement.id, now);
        }
        self.stats.joins += 1;
        Some(announcement.gossip_addr)
    }
}

/// The pause before the next announcement: `interval` ±20 %, `unit` a
/// random draw in [0, 1), so a LAN of nodes started together spreads out.
pub fn jittered(interval: Duration, unit: f64) -> Duration {
    interval.mul_f64(0.8 + 0.4 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::wire::{encode, Message, Packet};
    use crate::membership::Keyring;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn id(n: u128) -> NodeId {
        NodeId(Uuid::from_u128(n))
    }

    fn ring(byte: u8) -> PacketSecurity {
        PacketSecurity::Encrypted(Keyring::new(&[[byte; 32]]).unwrap())
    }

    fn announcement(n: u128) -> Announcement {
        Announcement {
            cluster: "orders".into(),
            id: id(n),
            generation: 7,
            gossip_addr: "10.0.0.2:3301".parse().unwrap(),
        }
    }

    fn lan() -> SocketAddr {
        "10.0.0.2:40000".parse().unwrap()
    }

    fn reason(heard: Heard) -> Option<DropReason> {
        match heard {
            Heard::Dropped { reason, .. } => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn a_sealed_announcement_opens_with_the_same_keyring_only() {
        let frame = seal(&ring(5), [1; 12], &announcement(2)).unwrap();
        assert!(frame.len() < 200, "{} bytes", frame.len());
        assert_eq!(
            open(&ring(5), "orders", id(1), lan(), &frame),
            Heard::Peer(announcement(2))
        );
        assert_eq!(
            reason(open(&ring(6), "orders", id(1), lan(), &frame)),
            Some(DropReason::Decrypt)
        );
        assert_eq!(
            reason(open(
                &PacketSecurity::Plaintext,
                "orders",
                id(1),
                lan(),
                &frame
            )),
            Some(DropReason::Decrypt)
        );
        let plain = seal(&PacketSecurity::Plaintext, [0; 12], &announcement(2)).unwrap();
        assert_eq!(
            reason(open(&ring(5), "orders", id(1), lan(), &plain)),
            Some(DropReason::Plaintext)
        );
        assert_eq!(
            open(&PacketSecurity::Plaintext, "orders", id(1), lan(), &plain),
            Heard::Peer(announcement(2))
        );
    }

    #[test]
    fn own_foreign_and_unusable_announcements_are_told_apart() {
        let key = ring(5);
        let frame = seal(&key, [1; 12], &announcement(2)).unwrap();
        assert_eq!(open(&key, "orders", id(2), lan(), &frame), Heard::Own);
        assert_eq!(
            reason(open(&key, "billing", id(1), lan(), &frame)),
            Some(DropReason::ForeignCluster)
        );
        let mut local = announcement(3);
        local.gossip_addr = "127.0.0.1:3301".parse().unwrap();
        let frame = seal(&key, [2; 12], &local).unwrap();
        assert_eq!(
            reason(open(&key, "orders", id(1), lan(), &frame)),
            Some(DropReason::UnusableAddress),
            "loopback heard from another host"
        );
        let from_loopback = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(
            open(&key, "orders", id(1), from_loopback, &frame),
            Heard::Peer(local.clone()),
            "loopback heard on loopback (nodes of one host)"
        );
        let unnamed_source = "0.0.0.0:3300".parse().unwrap();
        assert_eq!(
            open(&key, "orders", id(1), unnamed_source, &frame),
            Heard::Peer(local),
            "sent on loopback with no source address: from this host too"
        );
    }

    #[test]
    fn a_gossip_packet_under_the_same_key_is_not_an_announcement() {
        let key = ring(5);
        let packet = Packet {
            cluster: "orders".into(),
            from: id(2),
            generation: 7,
            message: Message::Gossip,
            gossip: Vec::new(),
        };
        let frame = wire::seal(&key, [3; 12], &encode(&packet).unwrap()).unwrap();
        assert_eq!(
            reason(open(&key, "orders", id(1), lan(), &frame)),
            Some(DropReason::Malformed)
        );
        let mut body = postcard::to_allocvec(&(MAGIC, VERSION + 1, announcement(2))).unwrap();
        let newer = wire::seal(&key, [4; 12], &body).unwrap();
        assert!(matches!(
            open(&key, "orders", id(1), lan(), &newer),
            Heard::Dropped { reason: DropReason::Malformed, detail } if detail.contains("version 2")
        ));
        body = postcard::to_allocvec(&(MAGIC, VERSION, announcement(2))).unwrap();
        body.push(0);
        let trailing = wire::seal(&key, [5; 12], &body).unwrap();
        assert_eq!(
            reason(open(&key, "orders", id(1), lan(), &trailing)),
            Some(DropReason::Malformed)
        );
        let huge = vec![0u8; MAX_ANNOUNCEMENT + 1];
        assert_eq!(
            reason(open(&key, "orders", id(1), lan(), &huge)),
            Some(DropReason::Malformed)
        );
    }

    #[test]
    fn a_node_is_joined_once_per_cooldown_and_never_while_it_is_a_member() {
        let cooldown = Joiner::cooldown_for(Duration::from_millis(100));
        assert_eq!(cooldown, Duration::from_secs(2), "never under 2 s");
        assert_eq!(
            Joiner::cooldown_for(Duration::from_secs(5)),
            Duration::from_secs(20)
        );
        let mut joiner = Joiner::new(cooldown);
        let t0 = Instant::now();
        let a = announcement(2);
        assert_eq!(joiner.decide(t0, &a, None), Some(a.gossip_addr));
        assert_eq!(joiner.decide(t0 + Duration::from_secs(1), &a, None), None);
        let alive = Known {
            status: MemberStatus::Alive,
            generation: a.generation,
            addr: a.gossip_addr,
        };
        let late = t0 + Duration::from_secs(60);
        assert_eq!(joiner.decide(late, &a, Some(alive)), None, "a member");
        let suspect = Known {
            status: MemberStatus::Suspect,
            ..alive
        };
        assert_eq!(joiner.decide(late, &a, Some(suspect)), None);
        let older = Known {
            generation: a.generation + 1,
            ..alive
        };
        assert_eq!(joiner.decide(late, &a, Some(older)), None, "stale");
        let dead = Known {
            status: MemberStatus::Dead,
            ..alive
        };
        assert_eq!(
            joiner.decide(late, &a, Some(dead)),
            Some(a.gossip_addr),
            "announcing while dead here: heal the partition"
        );
        let restarted = Known {
            generation: a.generation - 1,
            ..alive
        };
        let later = late + cooldown;
        assert_eq!(
            joiner.decide(later, &a, Some(restarted)),
            Some(a.gossip_addr)
        );
        let moved = Known {
            addr: "10.0.0.9:3301".parse().unwrap(),
            ..alive
        };
        assert_eq!(
            joiner.decide(later + cooldown, &a, Some(moved)),
            Some(a.gossip_addr)
        );
        let stats = joiner.stats();
        assert_eq!(
            (
                stats.heard,
                stats.joins,
                stats.skipped_member,
                stats.skipped_cooldown
            ),
            (8, 4, 3, 1)
        );
    }

    #[test]
    fn the_remembered_senders_stay_bounded() {
        let mut joiner = Joiner::new(Duration::from_secs(2));
        let t0 = Instant::now();
        for n in 0..(MAX_REMEMBERED as u128 + 10) {
            assert!(joiner.decide(t0, &announcement(n), None).is_some());
        }
        assert!(joiner.last_join.len() <= MAX_REMEMBERED);
        let later = t0 + Duration::from_secs(3);
        assert!(joiner
            .decide(later, &announcement(1_000_000), None)
            .is_some());
        assert_eq!(joiner.last_join.len(), 1, "expired entries were pruned");
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let mut joiner = Joiner::new(Duration::from_secs(2));
        joiner.dropped(DropReason::Decrypt);
        joiner.dropped(DropReason::Decrypt);
        joiner.dropped(DropReason::ForeignCluster);
        joiner.sent(true);
        joiner.sent(false);
        let stats = joiner.stats();
        assert_eq!(stats.dropped.decrypt, 2);
        assert_eq!(stats.dropped.foreign_cluster, 1);
        assert_eq!(stats.dropped.total(), 3);
        assert_eq!((stats.sent, stats.send_errors), (1, 1));
    }

    #[test]
    fn jitter_stays_within_a_fifth_of_the_interval() {
        let interval = Duration::from_secs(5);
        assert_eq!(jittered(interval, 0.0), Duration::from_secs(4));
        assert_eq!(jittered(interval, 0.5), interval);
        assert_eq!(jittered(interval, 1.0), Duration::from_secs(6));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = open(&PacketSecurity::Plaintext, "orders", id(1), lan(), &bytes);
            let _ = open(&ring(5), "orders", id(1), lan(), &bytes);
            let _ = decode(&bytes);
        }
    }
}
