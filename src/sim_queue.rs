//! The event queue of the seeded simulators (`membership::sim`,
//! `twophase::sim`): inputs ordered by virtual time, ties in the order they
//! were scheduled, so that a seed replays exactly (no hash maps, no clock).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Instant;

struct Scheduled<T> {
    at: Instant,
    seq: u64,
    input: T,
}

impl<T> PartialEq for Scheduled<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Scheduled<T> {}
impl<T> PartialOrd for Scheduled<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Scheduled<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

pub struct EventQueue<T> {
    heap: BinaryHeap<Reverse<Scheduled<T>>>,
    next_seq: u64,
}

impl<T> Default for EventQueue<T> {
    fn default() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }
}

impl<T> EventQueue<T> {
    pub fn push(&mut self, at: Instant, input: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse(Scheduled { at, seq, input }));
    }

    /// The earliest input due at or before `end`, removed.
    pub fn pop_due(&mut self, end: Instant) -> Option<(Instant, T)> {
        if self.heap.peek()?.0.at > end {
            return None;
        }
        self.heap.pop().map(|Reverse(s)| (s.at, s.input))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn earliest_first_ties_in_scheduling_order_and_nothing_past_the_end() {
        let t0 = Instant::now();
        let mut q = EventQueue::default();
        q.push(t0 + Duration::from_secs(2), "late");
        q.push(t0 + Duration::from_secs(1), "first");
        q.push(t0 + Duration::from_secs(1), "second");
        assert_eq!(q.pop_due(t0), None);
        let end = t0 + Duration::from_secs(1);
        assert_eq!(q.pop_due(end).map(|x| x.1), Some("first"));
        assert_eq!(q.pop_due(end).map(|x| x.1), Some("second"));
        assert_eq!(q.pop_due(end), None);
        assert_eq!(
            q.pop_due(t0 + Duration::from_secs(2)).map(|x| x.1),
            Some("late")
        );
    }
}
