//! User events (Serf's): a name and a small payload sent once, spread by
//! gossip like member updates, and delivered once on every node.
//!
//! An event is identified by (origin, origin's generation, sequence). Each
//! node remembers, per origin life, the sequences it has delivered in a
//! sliding window, so a retransmitted or pushed-again copy is a duplicate.
//! Copies also carry their age (each node adds the time it held the copy),
//! and nothing older than the time-to-live is ever forwarded or accepted:
//! that bounds how long a copy can circulate, so the windows can be
//! forgotten safely after a few TTLs instead of growing forever.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::member::NodeId;

/// Sequences per origin life remembered behind the highest one seen.
const WINDOW: u64 = 4096;

/// A user event as gossiped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    pub origin: NodeId,
    /// The origin's generation when it sent the event.
    pub generation: u64,
    /// 1, 2, 3… per origin life.
    pub seq: u64,
    pub name: String,
    pub payload: Vec<u8>,
    /// How long this copy has existed, summed over the nodes that held it
    /// (transit not counted), in milliseconds.
    pub age_ms: u64,
}

/// (origin, generation, seq): unique per event.
pub type EventId = (NodeId, u64, u64);

impl UserEvent {
    pub fn id(&self) -> EventId {
        (self.origin, self.generation, self.seq)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserEventError {
    #[error("event name `{0}` is invalid: 1 to 63 characters, letters, digits, '-', '_' and '.', starting with a letter or digit")]
    InvalidName(String),
    #[error("event is {size} bytes encoded but at most {limit} fit in one gossip packet (max_packet_size {max_packet_size}); send a reference to the data instead")]
    TooLarge {
        size: usize,
        limit: usize,
        max_packet_size: usize,
    },
    #[error("{pending} events are still being spread; try again in a few seconds")]
    Busy { pending: usize },
    #[error("this node has left the cluster")]
    Left,
}

/// What `EventLog::admit` decided about a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// First time seen here: deliver it and pass it on.
    Fresh,
    /// Delivered before.
    Duplicate,
    /// Older than the TTL, or from an earlier life of its origin, or behind
    /// the window: dropped.
    Stale,
}

#[derive(Clone, Debug)]
struct OriginWindow {
    generation: u64,
    high: u64,
    seen: BTreeSet<u64>,
    touched: Instant,
}

#[derive(Clone, Debug)]
struct Held {
    event: UserEvent,
    /// When this node got it (age grows from here).
    since: Instant,
}

/// Deduplication windows and the copies this node still passes on.
#[derive(Clone, Debug)]
pub struct EventLog {
    ttl: Duration,
    max_held: usize,
    windows: BTreeMap<NodeId, OriginWindow>,
    held: BTreeMap<EventId, Held>,
    /// Held ids, oldest first, to drop the oldest beyond `max_held`.
    order: VecDeque<EventId>,
}

impl EventLog {
    pub fn new(ttl: Duration, max_held: usize) -> Self {
        EventLog {
            ttl,
            max_held: max_held.max(1),
            windows: BTreeMap::new(),
            held: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Decides about one copy and, if fresh, keeps it to pass on.
    pub fn admit(&mut self, now: Instant, event: &UserEvent) -> Admission {
        if u128::from(event.age_ms) >= self.ttl.as_millis() {
            return Admission::Stale;
        }
        let window = self
            .windows
            .entry(event.origin)
            .or_insert_with(|| OriginWindow {
                generation: event.generation,
                high: 0,
                seen: BTreeSet::new(),
                touched: now,
            });
        if event.generation < window.generation {
            return Admission::Stale;
        }
        if event.generation > window.generation {
            *window = OriginWindow {
                generation: event.generation,
                high: 0,
                seen: BTreeSet::new(),
                touched: now,
            };
        }
        window.touched = now;
        if window.seen.contains(&event.seq) {
            return Admission::Duplicate;
        }
        if event.seq.saturating_add(WINDOW) <= window.high {
            return Admission::Stale;
        }
        window.seen.insert(event.seq);
        if event.seq > window.high {
            window.high = event.seq;
            let floor = window.high.saturating_sub(WINDOW);
            window.seen = window.seen.split_off(&floor);
        }
        self.hold(now, event.clone());
        Admission::Fresh
    }

    fn hold(&mut self, now: Instant, event: UserEvent) {
        let id = event.id();
        self.held.insert(id, Held { event, since: now });
        self.order.push_back(id);
        while self.order.len() > self.max_held {
            if let Some(old) = self.order.pop_front() {
                self.held.remove(&old);
            }
        }
    }

    /// A held copy with its age brought up to `now`; `None` once it is
    /// past the TTL (or no longer held).
    pub fn copy(&self, now: Instant, id: EventId) -> Option<UserEvent> {
        let held = self.held.get(&id)?;
        let held_for = now.saturating_duration_since(held.since).as_millis();
        let age = u128::from(held.event.age_ms).saturating_add(held_for);
        if age >= self.ttl.as_millis() {
            return None;
        }
        let mut event = held.event.clone();
        event.age_ms = u64::try_from(age).unwrap_or(u64::MAX);
        Some(event)
    }

    /// Every copy still worth passing on (for push-pull).
    pub fn live_copies(&self, now: Instant) -> Vec<UserEvent> {
        self.order
            .iter()
            .filter_map(|id| self.copy(now, *id))
            .collect()
    }

    /// Forgets expired copies and windows untouched for three TTLs: by then
    /// no copy of their events can still be accepted anywhere.
    pub fn expire(&mut self, now: Instant) {
        let expired: Vec<EventId> = self
            .order
            .iter()
            .filter(|id| self.copy(now, **id).is_none())
            .copied()
            .collect();
        for id in expired {
            self.held.remove(&id);
        }
        self.order.retain(|id| self.held.contains_key(id));
        let keep_for = self.ttl * 3;
        self.windows
            .retain(|_, w| now.saturating_duration_since(w.touched) < keep_for);
    }

    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    pub fn windows_len(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn event(origin: u128, generation: u64, seq: u64, age_ms: u64) -> UserEvent {
        UserEvent {
            origin: NodeId(Uuid::from_u128(origin)),
            generation,
            seq,
            name: "deploy".into(),
            payload: b"v2".to_vec(),
            age_ms,
        }
    }

    #[test]
    fn each_event_is_fresh_once() {
        let now = Instant::now();
        let mut log = EventLog::new(Duration::from_secs(60), 16);
        assert_eq!(log.admit(now, &event(1, 5, 1, 0)), Admission::Fresh);
        assert_eq!(log.admit(now, &event(1, 5, 1, 30)), Admission::Duplicate);
        assert_eq!(log.admit(now, &event(1, 5, 2, 0)), Admission::Fresh);
        assert_eq!(log.admit(now, &event(2, 5, 1, 0)), Admission::Fresh);
        // A restarted origin starts its sequences again.
        assert_eq!(log.admit(now, &event(1, 6, 1, 0)), Admission::Fresh);
        assert_eq!(log.admit(now, &event(1, 5, 3, 0)), Admission::Stale);
    }

    #[test]
    fn out_of_order_within_the_window_is_fresh_behind_it_stale() {
        let now = Instant::now();
        let mut log = EventLog::new(Duration::from_secs(60), 16);
        assert_eq!(log.admit(now, &event(1, 1, 10, 0)), Admission::Fresh);
        assert_eq!(log.admit(now, &event(1, 1, 3, 0)), Admission::Fresh);
        assert_eq!(log.admit(now, &event(1, 1, 3, 0)), Admission::Duplicate);
        assert_eq!(
            log.admit(now, &event(1, 1, 10 + WINDOW, 0)),
            Admission::Fresh
        );
        assert_eq!(log.admit(now, &event(1, 1, 9, 0)), Admission::Stale);
    }

    #[test]
    fn ttl_bounds_forwarding_and_memory() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut log = EventLog::new(ttl, 16);
        assert_eq!(log.admit(t0, &event(1, 1, 1, 59_000)), Admission::Fresh);
        assert_eq!(log.admit(t0, &event(1, 1, 2, 60_000)), Admission::Stale);
        let copy = log.copy(
            t0 + Duration::from_millis(500),
            (NodeId(Uuid::from_u128(1)), 1, 1),
        );
        assert_eq!(copy.map(|e| e.age_ms), Some(59_500));
        assert!(log.live_copies(t0 + Duration::from_secs(1)).is_empty());
        log.expire(t0 + Duration::from_secs(1));
        assert_eq!(log.held_len(), 0);
        assert_eq!(log.windows_len(), 1, "windows outlive copies");
        log.expire(t0 + ttl * 3);
        assert_eq!(log.windows_len(), 0);
    }

    #[test]
    fn held_copies_are_capped_oldest_first() {
        let now = Instant::now();
        let mut log = EventLog::new(Duration::from_secs(60), 2);
        for seq in 1..=3 {
            log.admit(now, &event(1, 1, seq, 0));
        }
        let seqs: Vec<u64> = log.live_copies(now).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2, 3]);
    }
}
