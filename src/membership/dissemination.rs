//! The queue of updates waiting to be piggybacked: least-sent and newest
//! first, each dropped after its retransmit limit. It holds keys only (a
//! member id, a user event id); what is sent is always the current state.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::member::NodeId;

/// Ordering key: fewer sends first, then newer (higher sequence) first.
type Slot<K> = (u32, Reverse<u64>, K);

#[derive(Clone, Debug)]
pub struct Dissemination<K = NodeId> {
    queue: BTreeSet<Slot<K>>,
    by_id: BTreeMap<K, (u32, u64)>,
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
    /// (Re)starts spreading news about `id` with a fresh send count.
    pub fn enqueue(&mut self, id: K) {
        self.remove(id);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.insert((0, Reverse(seq), id));
        self.by_id.insert(id, (0, seq));
    }

    pub fn remove(&mut self, id: K) {
        if let Some((sent, seq)) = self.by_id.remove(&id) {
            self.queue.remove(&(sent, Reverse(seq), id));
        }
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

    /// Counts one send of `id`; drops it once sent `limit` times.
    pub fn mark_sent(&mut self, id: K, limit: u32) {
        let Some((sent, seq)) = self.by_id.get(&id).copied() else {
            return;
        };
        self.queue.remove(&(sent, Reverse(seq), id));
        let sent = sent + 1;
        if sent >= limit {
            self.by_id.remove(&id);
        } else {
            self.queue.insert((sent, Reverse(seq), id));
            self.by_id.insert(id, (sent, seq));
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
        let mut d: Dissemination = Dissemination::default();
        d.enqueue(id(1));
        d.enqueue(id(2));
        assert_eq!(d.candidates(10), vec![id(2), id(1)]);
        d.mark_sent(id(2), 2);
        assert_eq!(d.candidates(10), vec![id(1), id(2)]);
        d.mark_sent(id(1), 2);
        d.mark_sent(id(2), 2);
        assert_eq!(d.candidates(10), vec![id(1)], "id 2 reached its limit");
        d.enqueue(id(1));
        d.enqueue(id(3));
        assert_eq!(d.candidates(10), vec![id(3), id(1)], "re-enqueue resets");
        d.remove(id(3));
        assert_eq!(d.len(), 1);
    }
}
