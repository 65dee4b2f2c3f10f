//! The queue of updates waiting to be piggybacked: least-sent and newest
//! first, each dropped after its retransmit limit. It holds keys only (a
//! member id, a user event id); what is sent is always the current state.
//!
//! An update is spread with one of two limits (its [`Reach`]): a change of
//! status (join, suspicion, death, refutation, leave) with the full
//! λ·log N, a new payload of a member whose status did not change with a
//! smaller one. After an apply every node publishes a new payload at once,
//! N updates that each node would otherwise relay λ·log N times.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::member::NodeId;

/// Ordering key: fewer sends first, then newer (higher sequence) first.
type Slot<K> = (u32, Reverse<u64>, K);

/// Which retransmit limit an update gets. Ordered: re-enqueueing an
/// update still queued keeps the wider reach of the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// Only the payload changed: the news can wait for a miss to be
    /// repaired by a push-pull; nothing is decided on it.
    Payload,
    /// Membership itself changed: failure detection rests on it.
    Status,
}

/// The retransmit limit of each reach, for the current cluster size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub status: u32,
    pub payload: u32,
}

impl Limits {
    /// Both limits for `members` (self included).
    pub fn for_members(status_multiplier: u32, payload_multiplier: u32, members: usize) -> Self {
        Limits {
            status: retransmit_limit(status_multiplier, members),
            payload: retransmit_limit(payload_multiplier, members),
        }
    }

    fn of(self, reach: Reach) -> u32 {
        match reach {
            Reach::Status => self.status,
            Reach::Payload => self.payload,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Dissemination<K = NodeId> {
    queue: BTreeSet<Slot<K>>,
    /// Sends so far, sequence, reach.
    by_id: BTreeMap<K, (u32, u64, Reach)>,
    next_seq: u64,
}

impl<K> Default for Dissemination<K> {
    fn default() -> Self {
        Dissemination {
            queue: BTreeSet::new(),
            by_id: BTreeMap::new(),
            next_seq: 0,
        }
    }
}

/// λ·⌈log₂(N+1)⌉, N = members counted (self included).
pub fn retransmit_limit(multiplier: u32, members: usize) -> u32 {
    let n = u64::try_from(members).unwrap_or(u64::MAX).saturating_add(1);
    // ⌈log₂ n⌉ for n ≥ 2
    let log = u64::BITS - (n - 1).leading_zeros();
    multiplier.saturating_mul(log.max(1))
}

impl<K: Ord + Copy> Dissemination<K> {
    /// (Re)starts spreading news about `id` with a fresh send count. An
    /// update still queued keeps the wider of its reach and `reach`: the
    /// record sent is the current one, which carries both changes.
    pub fn enqueue(&mut self, id: K, reach: Reach) {
        let reach = self.remove(id).map_or(reach, |queued| queued.max(reach));
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.insert((0, Reverse(seq), id));
        self.by_id.insert(id, (0, seq, reach));
    }

    /// Stops spreading `id`; returns the reach it was queued with.
    pub fn remove(&mut self, id: K) -> Option<Reach> {
        let (sent, seq, reach) = self.by_id.remove(&id)?;
        self.queue.remove(&(sent, Reverse(seq), id));
        Some(reach)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn contains(&self, id: K) -> bool {
        self.by_id.contains_key(&id)
    }

    /// The first `max` candidates in send order.
    pub fn candidates(&self, max: usize) -> Vec<K> {
        self.queue.iter().take(max).map(|slot| slot.2).collect()
    }

    /// Counts one send of `id`; drops it once sent its reach's limit.
    pub fn mark_sent(&mut self, id: K, limits: Limits) {
        let Some((sent, seq, reach)) = self.by_id.get(&id).copied() else {
            return;
        };
        self.queue.remove(&(sent, Reverse(seq), id));
        let sent = sent + 1;
        if sent >= limits.of(reach) {
            self.by_id.remove(&id);
        } else {
            self.queue.insert((sent, Reverse(seq), id));
            self.by_id.insert(id, (sent, seq, reach));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn id(n: u128) -> NodeId {
        NodeId(Uuid::from_u128(n))
    }

    #[test]
    fn limit_is_lambda_log2() {
        assert_eq!(retransmit_limit(2, 1), 2);
        assert_eq!(retransmit_limit(2, 3), 4);
        assert_eq!(retransmit_limit(2, 4), 6);
        assert_eq!(retransmit_limit(1, 1000), 10);
        assert_eq!(retransmit_limit(3, 1023), 30);
    }

    #[test]
    fn least_sent_then_newest_first_and_limit_enforced() {
        let two = Limits {
            status: 2,
            payload: 2,
        };
        let mut d: Dissemination = Dissemination::default();
        d.enqueue(id(1), Reach::Status);
        d.enqueue(id(2), Reach::Status);
        assert_eq!(d.candidates(10), vec![id(2), id(1)]);
        d.mark_sent(id(2), two);
        assert_eq!(d.candidates(10), vec![id(1), id(2)]);
        d.mark_sent(id(1), two);
        d.mark_sent(id(2), two);
        assert_eq!(d.candidates(10), vec![id(1)], "id 2 reached its limit");
        d.enqueue(id(1), Reach::Status);
        d.enqueue(id(3), Reach::Status);
        assert_eq!(d.candidates(10), vec![id(3), id(1)], "re-enqueue resets");
        d.remove(id(3));
        assert_eq!(d.len(), 1);
    }

    fn sends_until_dropped(d: &mut Dissemination, who: NodeId, limits: Limits) -> u32 {
        let mut sends = 0;
        while d.contains(who) {
            d.mark_sent(who, limits);
            sends += 1;
        }
        sends
    }

    #[test]
    fn each_reach_has_its_limit_and_a_queued_update_keeps_the_wider() {
        let limits = Limits {
            status: 6,
            payload: 2,
        };
        let mut d: Dissemination = Dissemination::default();
        d.enqueue(id(1), Reach::Payload);
        assert_eq!(sends_until_dropped(&mut d, id(1), limits), 2);
        d.enqueue(id(1), Reach::Status);
        assert_eq!(sends_until_dropped(&mut d, id(1), limits), 6);
        // A status change, then a payload change before it was spread.
        d.enqueue(id(1), Reach::Status);
        d.enqueue(id(1), Reach::Payload);
        assert_eq!(sends_until_dropped(&mut d, id(1), limits), 6);
        // Once spread, a payload change is payload news again.
        d.enqueue(id(1), Reach::Payload);
        assert_eq!(sends_until_dropped(&mut d, id(1), limits), 2);
    }
}
