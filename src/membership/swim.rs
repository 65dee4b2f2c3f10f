//! The SWIM state machine with Lifeguard: fed datagrams, streams, timer
//! ticks and commands with the current time, drained of transmits, the
//! next deadline and member events (quinn-proto style, no I/O, no clock).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngExt, SeedableRng};

use super::config::{ConfigError, SwimConfig};
use super::dissemination::{Dissemination, Limits, Reach};
use super::health::LocalHealth;
use super::keyring::{PacketSecurity, NONCE_LEN};
use super::member::{Incarnation, Member, MemberEvent, MemberRecord, MemberStatus, NodeId};
use super::payload::{Payload, PayloadTooLarge};
use super::stats::Stats;
use super::suspicion::Suspicion;
use super::table::{Entry, MemberTable};
use super::user_event::{Admission, EventId, EventLog, UserEvent, UserEventError};
use super::wire::{self, FrameError, Gossip, Message, PacketHead, FRAME_OVERHEAD};

/// Who this node is in this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalNode {
    pub id: NodeId,
    /// Start time in µs, above every earlier generation of this id.
    pub generation: u64,
    /// The address peers reach us at (advertised, not necessarily bound).
    pub addr: SocketAddr,
}

/// How the driver must carry a transmit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TransmitKind {
    /// One UDP datagram, at most `max_packet_size` bytes.
    Datagram,
    /// One framed message over TCP (push-pull); may be large.
    Stream,
}

/// Bytes to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub bytes: Vec<u8>,
    pub kind: TransmitKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Probe,
    ProbeAck {
        seq: u32,
    },
    /// A ping we sent for someone else's ping-req: nack if still silent.
    Relay {
        seq: u32,
    },
    Suspicion {
        id: NodeId,
    },
    Reclaim {
        id: NodeId,
        incarnation: Incarnation,
    },
    /// The forgotten id's tombstone memory expires.
    Unforget {
        id: NodeId,
        incarnation: Incarnation,
    },
    PushPull,
    Reconnect,
    /// Pending updates go to a few random members.
    Gossip,
}

#[derive(Clone, Copy, Debug)]
struct Probe {
    target: NodeId,
    incarnation: Incarnation,
    seq: u32,
    acked: bool,
    /// Answered only over TCP (the fallback ping): alive, but UDP between
    /// us is failing.
    acked_by_stream: bool,
    /// Ping-reqs sent, and nacks received for them.
    indirect: usize,
    nacks: usize,
    /// When the ping went out: a direct ack's round trip is measured.
    sent: Instant,
    /// Our wall clock then (Unix ms), for the clock-offset estimate.
    sent_wall: Option<u64>,
}

/// How far a member's wall clock is from ours, estimated from the probes
/// it answered directly (NTP's offset: its time in the ack minus the
/// middle of our round trip), smoothed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockOffset {
    /// Its clock minus ours, in ms: positive when it is ahead.
    pub offset_ms: i64,
    /// Samples taken in the member's current life.
    pub samples: u32,
    /// The generation they were taken in: a restart starts over.
    generation: u64,
}

impl ClockOffset {
    /// Weight of the newest sample (1/4): one late ack moves the estimate
    /// by a quarter of its error, a real change shows within a few probes.
    const SMOOTHING: i64 = 4;

    fn observe(previous: Option<ClockOffset>, generation: u64, sample: i64) -> ClockOffset {
        match previous.filter(|p| p.generation == generation) {
            None => ClockOffset {
                offset_ms: sample,
                samples: 1,
                generation,
            },
            Some(p) => ClockOffset {
                offset_ms: p.offset_ms + (sample - p.offset_ms) / Self::SMOOTHING,
                samples: p.samples.saturating_add(1),
                generation,
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Relay {
    requester: SocketAddr,
    requester_seq: u32,
}

/// The largest read buffer a node keeps between packets: any datagram.
const KEPT_BODY_CAPACITY: usize = wire::MAX_DATAGRAM;

/// One node's SWIM protocol. See the module doc.
pub struct Swim {
    config: SwimConfig,
    security: PacketSecurity,
    rng: StdRng,
    me: Member,
    members: MemberTable,
    /// Reclaimed ids and the incarnation they died with: a record not newer
    /// is a ghost from a lagging peer and must not revive them.
    forgotten: BTreeMap<NodeId, Incarnation>,
    broadcasts: Dissemination,
    /// User events being spread, and what this node has delivered.
    event_broadcasts: Dissemination<EventId>,
    event_log: EventLog,
    user_events: VecDeque<UserEvent>,
    next_event_seq: u64,
    /// Heard from a peer at least once. Until then a push-pull's members
    /// and events are the cluster's past: learnt, not re-broadcast or
    /// delivered.
    joined: bool,
    gossip_armed: bool,
    /// When this node last started a full-state exchange (a join or its
    /// timer).
    last_sync: Option<Instant>,
    /// This round's probe order; reshuffled when exhausted.
    order: Vec<NodeId>,
    order_pos: usize,
    probe: Option<Probe>,
    relays: BTreeMap<u32, Relay>,
    next_seq: u32,
    timers: BTreeSet<(Instant, Timer)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MemberEvent>,
    health: LocalHealth,
    stats: Stats,
    /// Largest encoded record that fits next to any protocol message.
    record_limit: usize,
    /// The wall clock (Unix ms) the driver read before the current input,
    /// plus `wall_offset_ms`; None until a driver gives one.
    wall_ms: Option<u64>,
    /// Added to every wall-clock reading (a test hook that makes this node
    /// look skewed; see `set_wall_clock_offset`).
    wall_offset_ms: i64,
    /// Estimated wall-clock offsets of the members that answered probes.
    clock_offsets: BTreeMap<NodeId, ClockOffset>,
    /// The body of the packet being read, decrypted here: its capacity is
    /// kept (up to `KEPT_BODY_CAPACITY`), so a datagram costs no
    /// allocation of its size.
    body: Vec<u8>,
}

impl std::fmt::Debug for Swim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swim")
            .field("id", &self.me.id)
            .field("incarnation", &self.me.incarnation)
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

impl Swim {
    /// A node that knows nobody yet; `join` introduces it. `seed` makes
    /// every random choice (and the nonces) reproducible: the driver seeds
    /// it from the OS, the simulator from its own seed.
    pub fn new(
        now: Instant,
        local: LocalNode,
        config: SwimConfig,
        security: PacketSecurity,
        seed: u64,
    ) -> Result<Swim, ConfigError> {
        config.validate()?;
        let mut swim = Swim {
            security,
            rng: StdRng::seed_from_u64(seed),
            me: Member {
                id: local.id,
                addr: local.addr,
                incarnation: Incarnation {
                    generation: local.generation,
                    version: 0,
                },
                status: MemberStatus::Alive,
                payload: Payload::default(),
                status_since: now,
            },
            members: MemberTable::default(),
            forgotten: BTreeMap::new(),
            broadcasts: Dissemination::default(),
            event_broadcasts: Dissemination::default(),
            event_log: EventLog::new(config.user_event_ttl, 256),
            user_events: VecDeque::new(),
            next_event_seq: 0,
            joined: false,
            gossip_armed: false,
            order: Vec::new(),
            order_pos: 0,
            probe: None,
            relays: BTreeMap::new(),
            last_sync: None,
            next_seq: 0,
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            health: LocalHealth::new(config.max_local_health),
            stats: Stats::default(),
            record_limit: 0,
            wall_ms: None,
            wall_offset_ms: 0,
            clock_offsets: BTreeMap::new(),
            body: Vec::new(),
            config,
        };
        swim.record_limit = swim.compute_record_limit();
        if swim.worst_case_size(&swim.me.payload) > swim.record_limit {
            return Err(ConfigError::PacketTooSmall {
                size: swim.config.max_packet_size,
                min: SwimConfig::MIN_PACKET_SIZE,
            });
        }
        // A random start, so that a late ack to an earlier life's probe is
        // unlikely to match; a small one, because seq is a varint in every
        // ping and ack (2 bytes for hours, 3 for weeks, not 5 from the start).
        swim.next_seq = swim.rng.random_range(0..1 << 13);
        // Random phases so that nodes started together do not probe in step.
        let period = swim.config.protocol_period;
        let first_probe = now + period.mul_f64(swim.rng.random_range(0.0..1.0));
        swim.timers.insert((first_probe, Timer::Probe));
        let push_pull = swim.jittered(swim.config.push_pull_interval);
        swim.timers.insert((now + push_pull, Timer::PushPull));
        let reconnect = swim.jittered(swim.config.reconnect_interval);
        swim.timers.insert((now + reconnect, Timer::Reconnect));
        Ok(swim)
    }

    // ---- commands -------------------------------------------------------

    /// Exchanges full state with a seed (or any address) over a stream.
    /// Call again to retry; after `leave`, rejoins with a newer version.
    pub fn join(&mut self, now: Instant, addr: SocketAddr) {
        if self.me.status == MemberStatus::Left {
            self.me.status = MemberStatus::Alive;
            self.me.status_since = now;
            self.bump_my_version(Reach::Status);
            if self.timers.iter().all(|(_, t)| *t != Timer::Probe) {
                self.timers
                    .insert((now + self.config.protocol_period, Timer::Probe));
            }
        }
        self.send_push_pull(now, addr, true);
        self.last_sync = Some(now);
        self.arm_gossip(now);
    }

    /// Announces a graceful leave: peers mark us left at once. Keep calling
    /// `handle_*` for a moment (a few periods) so that it spreads.
    pub fn leave(&mut self, now: Instant) {
        if self.me.status == MemberStatus::Left {
            return;
        }
        self.me.status = MemberStatus::Left;
        self.me.status_since = now;
        self.probe = None;
        self.bump_my_version(Reach::Status);
        for addr in self.random_active(self.config.leave_fanout, None) {
            self.send_datagram(now, addr, Message::Gossip);
        }
        self.arm_gossip(now);
    }

    /// Publishes a new payload (a new version of our incarnation).
    /// Refused when our record could outgrow one packet: it is sized as
    /// peers may relay it (suspected, with the largest version).
    pub fn set_payload(&mut self, now: Instant, payload: Payload) -> Result<(), PayloadTooLarge> {
        let size = self.worst_case_size(&payload);
        if size > self.record_limit {
            return Err(PayloadTooLarge {
                size,
                limit: self.record_limit,
                max_packet_size: self.config.max_packet_size,
            });
        }
        self.me.payload = payload;
        self.bump_my_version(Reach::Payload);
        self.arm_gossip(now);
        Ok(())
    }

    /// Sends a user event to every member (this node included: it is
    /// delivered here at once). Each node delivers it once.
    pub fn send_user_event(
        &mut self,
        now: Instant,
        name: &str,
        payload: Vec<u8>,
    ) -> Result<EventId, UserEventError> {
        if !crate::config::is_valid_name(name) {
            return Err(UserEventError::InvalidName(name.to_string()));
        }
        if self.me.status == MemberStatus::Left {
            return Err(UserEventError::Left);
        }
        let pending = self.event_broadcasts.len();
        if pending >= self.config.max_pending_user_events {
            return Err(UserEventError::Busy { pending });
        }
        let mut event = UserEvent {
            origin: self.me.id,
            generation: self.me.incarnation.generation,
            seq: self.next_event_seq + 1,
            name: name.to_string(),
            payload,
            age_ms: u64::MAX,
        };
        let size = wire::encode(&Gossip::Event(event.clone())).map_or(usize::MAX, |b| b.len());
        if size > self.record_limit {
            return Err(UserEventError::TooLarge {
                size,
                limit: self.record_limit,
                max_packet_size: self.config.max_packet_size,
            });
        }
        event.age_ms = 0;
        self.next_event_seq += 1;
        self.stats.user_events_sent += 1;
        let id = event.id();
        self.receive_event(now, event, true);
        self.arm_gossip(now);
        Ok(id)
    }

    // ---- inputs ---------------------------------------------------------

    /// The wall clock now, in Unix ms, as the driver reads it: call before
    /// each input (the state machine keeps no clock of its own). Acks carry
    /// it, and probes compare it with their answers' (clock skew).
    pub fn set_wall_clock(&mut self, unix_ms: u64) {
        let shifted = i128::from(unix_ms) + i128::from(self.wall_offset_ms);
        self.wall_ms = Some(u64::try_from(shifted.max(0)).unwrap_or(u64::MAX));
    }

    /// Shifts every later wall-clock reading by `offset_ms`, as if this
    /// node's clock were that far off. For tests of skew detection only
    /// (the agent takes it from `COHORT_TEST_CLOCK_OFFSET_MS`).
    pub fn set_wall_clock_offset(&mut self, offset_ms: i64) {
        self.wall_offset_ms = offset_ms;
    }

    /// A UDP datagram arrived from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.stats.datagrams_received += 1;
        self.stats.datagram_bytes_received += bytes.len() as u64;
        if bytes.len() > wire::MAX_DATAGRAM {
            self.stats.dropped.too_large += 1;
            return;
        }
        self.handle_frame(now, from, bytes, false);
        self.arm_gossip(now);
    }

    /// One framed stream message (push-pull) arrived from `from`.
    pub fn handle_stream(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.stats.streams_received += 1;
        self.stats.stream_bytes_received += bytes.len() as u64;
        if bytes.len() > wire::MAX_STREAM {
            self.stats.dropped.too_large += 1;
            return;
        }
        self.handle_frame(now, from, bytes, true);
        self.arm_gossip(now);
    }

    /// The driver could not deliver a stream to `dst` (counted: status
    /// tells "TCP fails" from "UDP fails" with it).
    pub fn stream_failed(&mut self, _dst: SocketAddr) {
        self.stats.stream_failures += 1;
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.fire(now, timer);
        }
        self.arm_gossip(now);
    }

    // ---- outputs --------------------------------------------------------

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    /// The next user event to deliver (each at most once per node).
    pub fn poll_user_event(&mut self) -> Option<UserEvent> {
        self.user_events.pop_front()
    }

    // ---- queries --------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.me.id
    }

    /// This node as it presents itself.
    pub fn local(&self) -> &Member {
        &self.me
    }

    /// Every other member known, tombstones included (table order).
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().map(|e| &e.member)
    }

    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.get(id).map(|e| &e.member)
    }

    /// Other members with this status.
    pub fn count(&self, status: MemberStatus) -> usize {
        self.members.count(status)
    }

    /// Records held, tombstones included (not counting self).
    pub fn table_len(&self) -> usize {
        self.members.len()
    }

    /// Reclaimed ids still remembered so they are not revived.
    pub fn forgotten_len(&self) -> usize {
        self.forgotten.len()
    }

    /// How far member `id`'s wall clock is from ours, once one of its
    /// direct acks carried it (in its current life).
    pub fn clock_offset(&self, id: NodeId) -> Option<ClockOffset> {
        let generation = self.members.get(id)?.member.incarnation.generation;
        self.clock_offsets
            .get(&id)
            .copied()
            .filter(|o| o.generation == generation)
    }

    /// Lifeguard's local health score (0 = healthy).
    pub fn health_score(&self) -> u32 {
        self.health.score()
    }

    /// The counters, with the updates now waiting to be piggybacked.
    pub fn stats(&self) -> Stats {
        Stats {
            pending_updates: self.broadcasts.len() as u64,
            ..self.stats
        }
    }

    pub fn config(&self) -> &SwimConfig {
        &self.config
    }

    /// Largest encoded member record a payload may produce.
    pub fn record_limit(&self) -> usize {
        self.record_limit
    }

    /// Updates waiting to be piggybacked.
    pub fn pending_broadcasts(&self) -> usize {
        self.broadcasts.len()
    }

    /// User events still being spread from here.
    pub fn pending_user_events(&self) -> usize {
        self.event_broadcasts.len()
    }

    /// User events held to pass on, and origins whose deliveries are
    /// remembered (both bounded by the event TTL).
    pub fn user_event_memory(&self) -> (usize, usize) {
        (self.event_log.held_len(), self.event_log.windows_len())
    }

    // ---- packet handling ------------------------------------------------

    fn handle_frame(&mut self, now: Instant, from: SocketAddr, bytes: &[u8], via_stream: bool) {
        let mut body = std::mem::take(&mut self.body);
        let opened = wire::open_gossip_into(&self.security, &self.config.cluster, bytes, &mut body);
        let decoded = opened.map(|()| wire::decode_packet(&body));
        // A push-pull state (or a forged stream) may be megabytes: not kept.
        if body.capacity() <= KEPT_BODY_CAPACITY {
            self.body = body;
        }
        let packet = match decoded {
            Ok(Ok(packet)) => packet,
            Ok(Err(_)) | Err(FrameError::Decode(_)) => return self.stats.dropped.decode += 1,
            Err(FrameError::Decrypt) => {
                self.stats.last_undecryptable_from = Some(from);
                return self.stats.dropped.decrypt += 1;
            }
            Err(FrameError::PlaintextRefused) => {
                return self.stats.dropped.plaintext_refused += 1;
            }
        };
        if packet.cluster != wire::cluster_in_body(&self.security, &self.config.cluster) {
            return self.stats.dropped.foreign_cluster += 1;
        }
        let sender = packet.from;
        if sender == self.me.id {
            // An earlier life of ours, still in flight.
            if packet.generation < self.me.incarnation.generation {
                self.stats.dropped.old_generation += 1;
            }
            return;
        }
        let known_generation = self
            .members
            .get(sender)
            .map(|e| e.member.incarnation.generation)
            .or_else(|| self.forgotten.get(&sender).map(|i| i.generation));
        if known_generation.is_some_and(|g| g > packet.generation) {
            return self.stats.dropped.old_generation += 1;
        }
        if via_stream {
            self.stats.streams_accepted += 1;
        } else {
            self.stats.datagrams_accepted += 1;
        }
        // A push-pull before we ever heard from anyone is our join: its
        // events are the cluster's past, learnt but not delivered.
        let news = self.joined
            || !matches!(
                packet.message,
                Message::PushPull { .. } | Message::PushPullDigest { .. }
            );
        self.joined = true;
        // A stream's source port is ephemeral: answer the advertised one.
        let mut reply_to = from;
        for item in packet.gossip {
            match item {
                Gossip::Member(record) => {
                    if record.id == sender {
                        reply_to = record.addr;
                    }
                    self.apply_record(now, record, sender);
                }
                Gossip::Event(event) => self.receive_event(now, event, news),
            }
        }
        match packet.message {
            Message::Ping { seq, target, buddy } => {
                if target != self.me.id {
                    // Meant for an earlier owner of this address.
                    return;
                }
                if let Some((incarnation, status)) = buddy {
                    self.refute_if_needed(incarnation, status);
                }
                let ack = Message::Ack {
                    seq,
                    wall_ms: self.wall_ms,
                };
                if via_stream {
                    self.send_stream_message(reply_to, &ack);
                } else {
                    self.send_datagram(now, from, ack);
                }
            }
            Message::Ack { seq, wall_ms } => {
                if let Some(probe) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    // Only a direct UDP answer is a round trip to the
                    // target (after a ping-req it may be a helper's relay).
                    let direct = !via_stream
                        && !probe.acked
                        && !probe.acked_by_stream
                        && probe.indirect == 0
                        && sender == probe.target;
                    if direct {
                        self.stats
                            .probe_rtt
                            .observe(now.saturating_duration_since(probe.sent));
                    }
                    if via_stream {
                        probe.acked_by_stream = true;
                    } else {
                        probe.acked = true;
                    }
                    let (target, sent_wall) = (probe.target, probe.sent_wall);
                    if direct {
                        self.observe_clock(target, sent_wall, wall_ms);
                    }
                } else if let Some(relay) = self.relays.remove(&seq) {
                    // The target's clock, passed on as it is.
                    let ack = Message::Ack {
                        seq: relay.requester_seq,
                        wall_ms,
                    };
                    self.send_datagram(now, relay.requester, ack);
                }
            }
            Message::PingReq {
                seq,
                target,
                target_addr,
            } => {
                let relay_seq = self.take_seq();
                self.relays.insert(
                    relay_seq,
                    Relay {
                        requester: from,
                        requester_seq: seq,
                    },
                );
                let buddy = self.buddy_view(target);
                let ping = Message::Ping {
                    seq: relay_seq,
                    target,
                    buddy,
                };
                self.send_datagram(now, target_addr, ping);
                // Nack well before the requester's period ends.
                let nack_at = now + self.config.ack_timeout.mul_f64(0.8);
                self.timers
                    .insert((nack_at, Timer::Relay { seq: relay_seq }));
            }
            Message::Nack { seq } => {
                if let Some(probe) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    probe.nacks += 1;
                }
            }
            Message::Gossip => {}
            Message::PushPull { reply } => {
                if reply {
                    self.send_push_pull(now, reply_to, false);
                }
            }
            Message::PushPullDigest { digest } => {
                if digest == self.view_digest() {
                    self.stats.push_pull_digests_equal += 1;
                } else if self.me.status != MemberStatus::Left {
                    self.send_push_pull(now, reply_to, true);
                }
            }
        }
    }

    /// One direct ack's clock sample: the member's wall clock when it
    /// answered, against the middle of our round trip (off by at most half
    /// the round trip, smoothed over probes).
    fn observe_clock(&mut self, target: NodeId, sent_wall: Option<u64>, remote: Option<u64>) {
        let (Some(sent), Some(received), Some(remote)) = (sent_wall, self.wall_ms, remote) else {
            return;
        };
        let Some(generation) = self
            .members
            .get(target)
            .map(|e| e.member.incarnation.generation)
        else {
            return;
        };
        let middle = (i128::from(sent) + i128::from(received)) / 2;
        let sample = i128::from(remote) - middle;
        let Ok(sample) = i64::try_from(sample) else {
            return;
        };
        let previous = self.clock_offsets.get(&target).copied();
        self.clock_offsets
            .insert(target, ClockOffset::observe(previous, generation, sample));
    }

    /// A copy of a user event: delivered if new here (and `deliver`), and
    /// passed on either way.
    fn receive_event(&mut self, now: Instant, event: UserEvent, deliver: bool) {
        // Names reach handler command lines: only names a sender could
        // have sent (checked there too) are accepted.
        if !crate::config::is_valid_name(&event.name) {
            self.stats.user_events_invalid += 1;
            return;
        }
        match self.event_log.admit(now, &event) {
            Admission::Fresh => {
                self.event_broadcasts.enqueue(event.id(), Reach::Status);
                if deliver {
                    self.stats.user_events_delivered += 1;
                    self.user_events.push_back(UserEvent { age_ms: 0, ..event });
                }
            }
            Admission::Duplicate => self.stats.user_events_duplicate += 1,
            Admission::Stale => self.stats.user_events_stale += 1,
        }
    }

    /// Merges one gossiped record into the table (SWIM's rules plus
    /// tombstones). `via` is the packet's sender. A member new to us is
    /// re-broadcast even when learnt in our join's push-pull: the
    /// λ·log N retransmit limit assumes every node that learns an update
    /// passes it on, and a cluster of joiners that do not leaves early
    /// updates to die out (measured: some joins then waited for the next
    /// push-pull, 30 s).
    fn apply_record(&mut self, now: Instant, record: MemberRecord, via: NodeId) {
        if record.id == self.me.id {
            return self.refute_if_needed(record.incarnation, record.status);
        }
        let Some(entry) = self.members.get(record.id) else {
            return self.insert_new(now, record, via);
        };
        let current = entry.member.incarnation;
        let status = entry.member.status;
        if record.incarnation > current {
            self.overwrite(now, record, via);
        } else if record.incarnation == current {
            let accuser = record.suspecter.unwrap_or(via);
            if record.status > status {
                // Equal incarnation, disagreeing status: the worse one wins.
                self.change_status(now, record.id, record.status, accuser);
                self.broadcasts.enqueue(record.id, Reach::Status);
            } else if record.status == MemberStatus::Suspect && status == MemberStatus::Suspect {
                self.confirm_suspicion(now, record.id, accuser);
            }
        }
    }

    fn insert_new(&mut self, now: Instant, record: MemberRecord, via: NodeId) {
        if let Some(gone) = self.forgotten.get(&record.id) {
            if record.incarnation <= *gone {
                return;
            }
            self.forgotten.remove(&record.id);
        }
        let id = record.id;
        let status = record.status;
        self.events.push_back(MemberEvent::Joined {
            id,
            addr: record.addr,
            status,
            incarnation: record.incarnation,
        });
        self.members.insert(Entry {
            member: Member {
                id,
                addr: record.addr,
                incarnation: record.incarnation,
                status,
                payload: record.payload,
                status_since: now,
            },
            suspicion: None,
            suspecter: None,
            encoded: None,
        });
        match status {
            MemberStatus::Alive => self.add_to_order(id),
            MemberStatus::Suspect => {
                self.add_to_order(id);
                self.start_suspicion(now, id, record.suspecter.unwrap_or(via));
            }
            MemberStatus::Dead | MemberStatus::Left => {
                self.schedule_reclaim(now, id, record.incarnation);
            }
        }
        self.broadcasts.enqueue(id, Reach::Status);
    }

    /// A strictly newer incarnation replaces everything we knew.
    fn overwrite(&mut self, now: Instant, record: MemberRecord, via: NodeId) {
        let id = record.id;
        let Some(entry) = self.members.get_mut(id) else {
            return;
        };
        let old = entry.member.clone();
        let payload_changed = old.payload != record.payload;
        entry.member.incarnation = record.incarnation;
        entry.member.addr = record.addr;
        entry.member.payload = record.payload;
        entry.encoded = None;
        self.events.push_back(MemberEvent::IncarnationChanged {
            id,
            from: old.incarnation,
            to: record.incarnation,
        });
        if old.addr != record.addr {
            self.events.push_back(MemberEvent::AddressChanged {
                id,
                from: old.addr,
                to: record.addr,
            });
        }
        if payload_changed {
            self.events.push_back(MemberEvent::PayloadChanged { id });
        }
        // An alive member that only published a new payload in the same
        // life; a new version with the same payload is a refutation,
        // spread as widely as the suspicion it answers, and a new life (a
        // restart) is news about the member itself.
        let payload_only = record.status == MemberStatus::Alive
            && old.status == MemberStatus::Alive
            && old.incarnation.generation == record.incarnation.generation
            && old.addr == record.addr
            && payload_changed;
        let accuser = record.suspecter.unwrap_or(via);
        if record.status != old.status {
            self.change_status(now, id, record.status, accuser);
        } else {
            match record.status {
                MemberStatus::Suspect => self.start_suspicion(now, id, accuser),
                MemberStatus::Dead | MemberStatus::Left => {
                    self.schedule_reclaim(now, id, record.incarnation);
                }
                MemberStatus::Alive => {}
            }
        }
        let reach = if payload_only {
            Reach::Payload
        } else {
            Reach::Status
        };
        self.broadcasts.enqueue(id, reach);
    }

    fn change_status(&mut self, now: Instant, id: NodeId, to: MemberStatus, accuser: NodeId) {
        let Some(from) = self.members.set_status(id, to) else {
            return;
        };
        let incarnation = match self.members.get_mut(id) {
            Some(entry) => {
                entry.member.status_since = now;
                if to != MemberStatus::Suspect {
                    entry.suspicion = None;
                    entry.suspecter = None;
                }
                entry.member.incarnation
            }
            None => return,
        };
        self.events
            .push_back(MemberEvent::StatusChanged { id, from, to });
        match to {
            MemberStatus::Alive => {
                if !from.is_active() {
                    self.add_to_order(id);
                }
            }
            MemberStatus::Suspect => {
                if !from.is_active() {
                    self.add_to_order(id);
                }
                self.start_suspicion(now, id, accuser);
            }
            // Left the probe order lazily: `next_probe_target` skips them.
            MemberStatus::Dead | MemberStatus::Left => {
                self.schedule_reclaim(now, id, incarnation);
            }
        }
    }

    fn start_suspicion(&mut self, now: Instant, id: NodeId, accuser: NodeId) {
        let n = self.members.active() + 1;
        let min = Suspicion::min_timeout(
            self.config.suspicion_multiplier,
            n,
            self.config.protocol_period,
        );
        let max = min * self.config.suspicion_max_multiplier;
        // memberlist's choice, (multiplier − 2) confirmations, but never
        // more than there are members who could confirm (all but the
        // suspect and the first accuser): a 3-node cluster expects one.
        let could_confirm = u32::try_from(n.saturating_sub(2)).unwrap_or(u32::MAX);
        let expected = self
            .config
            .suspicion_multiplier
            .saturating_sub(2)
            .min(could_confirm);
        let suspicion = Suspicion::new(now, min, max, expected, accuser);
        let deadline = suspicion.deadline();
        if let Some(entry) = self.members.get_mut(id) {
            entry.suspicion = Some(suspicion);
            entry.suspecter = Some(accuser);
            entry.encoded = None;
            self.timers.insert((deadline, Timer::Suspicion { id }));
        }
    }

    fn confirm_suspicion(&mut self, now: Instant, id: NodeId, by: NodeId) {
        let Some(entry) = self.members.get_mut(id) else {
            return;
        };
        let Some(suspicion) = entry.suspicion.as_mut() else {
            return;
        };
        if suspicion.confirm(by) {
            let deadline = suspicion.deadline().max(now);
            // Pass on this accuser so that others count it too.
            entry.suspecter = Some(by);
            entry.encoded = None;
            self.timers.insert((deadline, Timer::Suspicion { id }));
            self.broadcasts.enqueue(id, Reach::Status);
        }
    }

    /// Someone told us how they see us; raise our version if that is a
    /// suspicion (or death) of this very incarnation.
    fn refute_if_needed(&mut self, seen: Incarnation, status: MemberStatus) {
        let mine = self.me.incarnation;
        if self.me.status == MemberStatus::Left || seen.generation < mine.generation {
            // They hold an older state of us: make sure ours spreads.
            if (seen < mine || status != self.me.status) && !self.broadcasts.contains(self.me.id) {
                self.broadcasts.enqueue(self.me.id, Reach::Status);
            }
            return;
        }
        if seen.generation > mine.generation || status == MemberStatus::Alive {
            return;
        }
        if seen.version > mine.version {
            // Only this process issues versions of its generation: a higher
            // one is forged or corrupt. Adopting it (as SWIM papers have it)
            // would let one packet claiming u64::MAX end our refutations
            // (found by fuzzing).
            self.stats.impossible_claims += 1;
            return;
        }
        if seen.version == mine.version {
            self.stats.refutations += 1;
            // Being suspected hints that we are the slow one (Lifeguard).
            self.health.worsen(1);
            self.bump_my_version(Reach::Status);
        }
    }

    fn bump_my_version(&mut self, reach: Reach) {
        // Only we bump it, once per refutation or payload change: u64 does
        // not run out, but never wrap to 0 either.
        self.me.incarnation.version = self.me.incarnation.version.saturating_add(1);
        self.broadcasts.enqueue(self.me.id, reach);
    }

    fn schedule_reclaim(&mut self, now: Instant, id: NodeId, incarnation: Incarnation) {
        if let Some(after) = self.config.reclaim_after {
            self.timers
                .insert((now + after, Timer::Reclaim { id, incarnation }));
        }
    }

    // ---- timers ---------------------------------------------------------

    fn fire(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::Probe => self.on_probe_tick(now),
            Timer::ProbeAck { seq } => self.on_ack_timeout(now, seq),
            Timer::Relay { seq } => {
                if let Some(relay) = self.relays.remove(&seq) {
                    let nack = Message::Nack {
                        seq: relay.requester_seq,
                    };
                    self.send_datagram(now, relay.requester, nack);
                }
            }
            Timer::Suspicion { id } => {
                let expired = self.members.get(id).is_some_and(|e| {
                    e.member.status == MemberStatus::Suspect
                        && e.suspicion.as_ref().is_some_and(|s| s.deadline() <= now)
                });
                if expired {
                    self.change_status(now, id, MemberStatus::Dead, self.me.id);
                    self.broadcasts.enqueue(id, Reach::Status);
                }
            }
            Timer::Reclaim { id, incarnation } => {
                let reclaimable = self.members.get(id).is_some_and(|e| {
                    !e.member.status.is_active() && e.member.incarnation == incarnation
                });
                if reclaimable {
                    self.members.remove(id);
                    self.clock_offsets.remove(&id);
                    self.broadcasts.remove(id);
                    self.forgotten.insert(id, incarnation);
                    if let Some(after) = self.config.reclaim_after {
                        self.timers
                            .insert((now + after, Timer::Unforget { id, incarnation }));
                    }
                    self.events.push_back(MemberEvent::Forgotten { id });
                }
            }
            Timer::Unforget { id, incarnation } => {
                if self.forgotten.get(&id) == Some(&incarnation) {
                    self.forgotten.remove(&id);
                }
            }
            Timer::PushPull => {
                self.event_log.expire(now);
                // Armed when this node knew only itself, the timer runs on
                // the interval of one member; the cluster it joined since
                // may call for a longer one, counted from the join. (500
                // nodes started together otherwise all exchange full state
                // in the same 15 s, 22-38 s after the start.)
                let interval = self.push_pull_interval();
                if let Some(last) = self.last_sync {
                    if now < last + interval.mul_f64(0.75) {
                        let next = last + self.jittered(interval);
                        self.timers.insert((next, Timer::PushPull));
                        return;
                    }
                }
                let next = self.jittered(interval);
                self.timers.insert((now + next, Timer::PushPull));
                if self.me.status != MemberStatus::Left {
                    self.last_sync = Some(now);
                    if let Some(addr) = self.random_active(1, None).first().copied() {
                        let digest = Message::PushPullDigest {
                            digest: self.view_digest(),
                        };
                        self.send_stream_message(addr, &digest);
                    }
                }
            }
            Timer::Reconnect => {
                let next = self.jittered(self.config.reconnect_interval);
                self.timers.insert((now + next, Timer::Reconnect));
                if self.me.status != MemberStatus::Left {
                    self.ping_a_dead_member(now);
                }
            }
            Timer::Gossip => {
                self.gossip_armed = false;
                if self.has_news() {
                    for addr in self.random_active(self.config.gossip_fanout, None) {
                        self.send_datagram(now, addr, Message::Gossip);
                    }
                }
            }
        }
    }

    fn has_news(&self) -> bool {
        !self.broadcasts.is_empty() || !self.event_broadcasts.is_empty()
    }

    /// Keeps the gossip timer running exactly while there is news.
    fn arm_gossip(&mut self, now: Instant) {
        if !self.gossip_armed && self.has_news() {
            self.gossip_armed = true;
            self.timers
                .insert((now + self.config.gossip_interval, Timer::Gossip));
        }
    }

    fn on_probe_tick(&mut self, now: Instant) {
        self.finish_probe(now);
        let multiplier = self.health.multiplier();
        self.timers
            .insert((now + self.config.protocol_period * multiplier, Timer::Probe));
        if self.me.status == MemberStatus::Left {
            return;
        }
        let Some(target) = self.next_probe_target() else {
            return;
        };
        let Some(entry) = self.members.get(target) else {
            return;
        };
        let (addr, incarnation) = (entry.member.addr, entry.member.incarnation);
        let seq = self.take_seq();
        self.probe = Some(Probe {
            target,
            incarnation,
            seq,
            acked: false,
            acked_by_stream: false,
            indirect: 0,
            nacks: 0,
            sent: now,
            sent_wall: self.wall_ms,
        });
        let buddy = self.buddy_view(target);
        self.send_datagram(now, addr, Message::Ping { seq, target, buddy });
        let ack_deadline = now + self.config.ack_timeout * multiplier;
        self.timers.insert((ack_deadline, Timer::ProbeAck { seq }));
    }

    /// The period of the last probe is over: judge it.
    fn finish_probe(&mut self, now: Instant) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        if probe.acked {
            self.health.improve();
            return;
        }
        if probe.acked_by_stream {
            // Alive over TCP while UDP failed: a network problem, not a
            // failure (memberlist's fallback). Status names it.
            self.stats.probes_answered_only_by_stream += 1;
            return;
        }
        // Helpers that could not reach the target either clear us; silent
        // helpers suggest our own network or CPU is the problem.
        let penalty = if probe.indirect == 0 {
            1
        } else {
            probe.indirect.saturating_sub(probe.nacks)
        };
        self.health
            .worsen(u32::try_from(penalty).unwrap_or(u32::MAX));
        let Some(entry) = self.members.get(probe.target) else {
            return;
        };
        if entry.member.incarnation != probe.incarnation {
            return;
        }
        match entry.member.status {
            MemberStatus::Alive => {
                self.change_status(now, probe.target, MemberStatus::Suspect, self.me.id);
                self.broadcasts.enqueue(probe.target, Reach::Status);
            }
            MemberStatus::Suspect => self.confirm_suspicion(now, probe.target, self.me.id),
            MemberStatus::Dead | MemberStatus::Left => {}
        }
    }

    fn on_ack_timeout(&mut self, now: Instant, seq: u32) {
        let Some(probe) = self.probe.filter(|p| p.seq == seq && !p.acked) else {
            return;
        };
        let Some(target_addr) = self.members.get(probe.target).map(|e| e.member.addr) else {
            return;
        };
        let helpers = self.random_active(self.config.indirect_checks, Some(probe.target));
        for helper in &helpers {
            let request = Message::PingReq {
                seq,
                target: probe.target,
                target_addr,
            };
            self.send_datagram(now, *helper, request);
        }
        if let Some(p) = self.probe.as_mut() {
            p.indirect = helpers.len();
        }
        if self.config.stream_fallback_probe {
            let buddy = self.buddy_view(probe.target);
            let ping = Message::Ping {
                seq,
                target: probe.target,
                buddy,
            };
            self.send_stream_message(target_addr, &ping);
        }
    }

    /// Gossip to the dead: if one answers our "you are dead" ping with a
    /// refutation, it is alive again (a healed partition).
    fn ping_a_dead_member(&mut self, now: Instant) {
        if self.members.count(MemberStatus::Dead) == 0 {
            return;
        }
        let len = self.members.len();
        let start = self.rng.random_range(0..len);
        let found = (0..len)
            .filter_map(|i| self.members.at((start + i) % len))
            .find(|e| e.member.status == MemberStatus::Dead)
            .map(|e| (e.member.id, e.member.addr, e.member.incarnation));
        if let Some((target, addr, incarnation)) = found {
            let seq = self.take_seq();
            let buddy = Some((incarnation, MemberStatus::Dead));
            self.send_datagram(now, addr, Message::Ping { seq, target, buddy });
        }
    }

    // ---- helpers --------------------------------------------------------

    fn next_probe_target(&mut self) -> Option<NodeId> {
        for _ in 0..2 {
            while let Some(&id) = self.order.get(self.order_pos) {
                self.order_pos += 1;
                if self
                    .members
                    .get(id)
                    .is_some_and(|e| e.member.status.is_active())
                {
                    return Some(id);
                }
            }
            // Round over: a fresh random order, every active member once.
            self.order = self
                .members
                .iter()
                .filter(|e| e.member.status.is_active())
                .map(|e| e.member.id)
                .collect();
            self.order.shuffle(&mut self.rng);
            self.order_pos = 0;
            if self.order.is_empty() {
                return None;
            }
        }
        None
    }

    /// A newcomer goes to a random place in the rest of this round, in
    /// O(1): appended, then swapped with a random not-yet-probed slot.
    fn add_to_order(&mut self, id: NodeId) {
        self.order.push(id);
        let last = self.order.len() - 1;
        let at = self.rng.random_range(self.order_pos.min(last)..=last);
        self.order.swap(at, last);
    }

    /// How we see `target`, told to it when that is bad (buddy system).
    fn buddy_view(&self, target: NodeId) -> Option<(Incarnation, MemberStatus)> {
        self.members
            .get(target)
            .filter(|e| e.member.status != MemberStatus::Alive)
            .map(|e| (e.member.incarnation, e.member.status))
    }

    /// Up to `n` distinct active members' addresses, chosen at random
    /// without scanning the table when it is large.
    fn random_active(&mut self, n: usize, except: Option<NodeId>) -> Vec<SocketAddr> {
        let len = self.members.len();
        let mut chosen: Vec<NodeId> = Vec::new();
        let mut addrs = Vec::new();
        if len == 0 || n == 0 {
            return addrs;
        }
        let usable = |e: &Entry| e.member.status.is_active() && Some(e.member.id) != except;
        for _ in 0..n * 8 {
            if chosen.len() == n {
                break;
            }
            let i = self.rng.random_range(0..len);
            if let Some(e) = self.members.at(i) {
                if usable(e) && !chosen.contains(&e.member.id) {
                    chosen.push(e.member.id);
                    addrs.push(e.member.addr);
                }
            }
        }
        if chosen.len() < n {
            // Sparse: scan once from a random start.
            let start = self.rng.random_range(0..len);
            for i in 0..len {
                if chosen.len() == n {
                    break;
                }
                if let Some(e) = self.members.at((start + i) % len) {
                    if usable(e) && !chosen.contains(&e.member.id) {
                        chosen.push(e.member.id);
                        addrs.push(e.member.addr);
                    }
                }
            }
        }
        addrs
    }

    fn take_seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    /// The configured interval, stretched in big clusters so that the
    /// full-state traffic per node stays flat as N grows (memberlist's
    /// scaling): ×1 up to 32 members, then +1 for each doubling.
    fn push_pull_interval(&self) -> Duration {
        let n = self.members.active() + 1;
        let scale = if n <= 32 {
            1
        } else {
            let doublings = (n as f64 / 32.0).log2().ceil() as u32;
            1 + doublings
        };
        self.config.push_pull_interval * scale
    }

    /// `base` ± 25 %, so that periodic exchanges do not synchronise.
    fn jittered(&mut self, base: Duration) -> Duration {
        base.mul_f64(self.rng.random_range(0.75..1.25))
    }

    fn record_of_me(&self) -> MemberRecord {
        MemberRecord {
            id: self.me.id,
            addr: self.me.addr,
            incarnation: self.me.incarnation,
            status: self.me.status,
            payload: self.me.payload.clone(),
            suspecter: None,
        }
    }

    fn record_of(entry: &Entry) -> MemberRecord {
        MemberRecord {
            id: entry.member.id,
            addr: entry.member.addr,
            incarnation: entry.member.incarnation,
            status: entry.member.status,
            payload: entry.member.payload.clone(),
            suspecter: entry
                .suspecter
                .filter(|_| entry.member.status == MemberStatus::Suspect),
        }
    }

    /// Our record as a peer may relay it at its largest (suspected by
    /// someone, with the highest version), encoded: what must fit.
    fn worst_case_size(&self, payload: &Payload) -> usize {
        let record = MemberRecord {
            incarnation: Incarnation {
                generation: self.me.incarnation.generation,
                version: u64::MAX,
            },
            status: MemberStatus::Suspect,
            payload: payload.clone(),
            suspecter: Some(self.me.id),
            ..self.record_of_me()
        };
        wire::encode(&Gossip::Member(record)).map_or(usize::MAX, |b| b.len())
    }

    /// The encoded gossip item of member `id` (self included), cached per
    /// member until its state changes.
    fn encoded_record(&mut self, id: NodeId) -> Option<Arc<[u8]>> {
        if id == self.me.id {
            return wire::encode(&Gossip::Member(self.record_of_me()))
                .ok()
                .map(Arc::from);
        }
        let entry = self.members.get_mut(id)?;
        if entry.encoded.is_none() {
            entry.encoded = wire::encode(&Gossip::Member(Self::record_of(entry)))
                .ok()
                .map(Arc::from);
        }
        entry.encoded.clone()
    }

    fn encoded_event(&self, now: Instant, id: EventId) -> Option<Arc<[u8]>> {
        let event = self.event_log.copy(now, id)?;
        wire::encode(&Gossip::Event(event)).ok().map(Arc::from)
    }

    /// Largest gossip item that fits beside the biggest protocol message.
    fn compute_record_limit(&self) -> usize {
        let widest_addr = SocketAddr::new(Ipv6Addr::from([0xff; 16]).into(), u16::MAX);
        let biggest = Incarnation {
            generation: u64::MAX,
            version: u64::MAX,
        };
        let messages = [
            Message::PingReq {
                seq: u32::MAX,
                target: self.me.id,
                target_addr: widest_addr,
            },
            Message::Ping {
                seq: u32::MAX,
                target: self.me.id,
                buddy: Some((biggest, MemberStatus::Left)),
            },
            Message::Ack {
                seq: u32::MAX,
                wall_ms: Some(u64::MAX),
            },
        ];
        let head = messages
            .iter()
            .filter_map(|message| self.encode_head(message).ok())
            .map(|h| h.len())
            .max()
            .unwrap_or(usize::MAX);
        // One item: a one-byte count.
        self.config
            .max_packet_size
            .saturating_sub(FRAME_OVERHEAD + head + 1)
    }

    fn encode_head(&self, message: &Message) -> Result<Vec<u8>, wire::EncodeError> {
        wire::encode(&PacketHead {
            cluster: wire::cluster_in_body(&self.security, &self.config.cluster),
            from: self.me.id,
            generation: self.me.incarnation.generation,
            message,
        })
    }

    /// Sends `message` with as many pending member updates, then user
    /// events, as fit, then a few random records (anti-entropy, ourselves
    /// included), never above `max_packet_size`.
    fn send_datagram(&mut self, now: Instant, dst: SocketAddr, message: Message) {
        let Ok(head) = self.encode_head(&message) else {
            return;
        };
        // Two bytes of item count cover up to 16383 items.
        let mut room = self
            .config
            .max_packet_size
            .saturating_sub(FRAME_OVERHEAD + head.len() + 2);
        let mut items: Vec<Arc<[u8]>> = Vec::new();
        let mut included: Vec<NodeId> = Vec::new();
        let limits = Limits::for_members(
            self.config.retransmit_multiplier,
            self.config.payload_retransmit_multiplier,
            self.members.active() + 1,
        );
        let mut misses = 0;
        for id in self.broadcasts.candidates(64) {
            let Some(bytes) = self.encoded_record(id) else {
                self.broadcasts.remove(id);
                continue;
            };
            if bytes.len() <= room {
                room -= bytes.len();
                items.push(bytes);
                included.push(id);
                self.broadcasts.mark_sent(id, limits);
            } else {
                misses += 1;
                if misses >= 4 {
                    break;
                }
            }
        }
        for id in self.event_broadcasts.candidates(16) {
            let Some(bytes) = self.encoded_event(now, id) else {
                // Past its TTL: spreading it further is pointless.
                self.event_broadcasts.remove(id);
                continue;
            };
            if bytes.len() <= room {
                room -= bytes.len();
                items.push(bytes);
                // User events are always queued with `Reach::Status`.
                self.event_broadcasts.mark_sent(id, limits);
            }
        }
        let len = self.members.len();
        for _ in 0..self.config.anti_entropy_records.min(len) {
            // Index `len` stands for ourselves: a peer that missed our
            // latest version hears it this way too.
            let i = self.rng.random_range(0..=len);
            let id = match self.members.at(i) {
                Some(e) => e.member.id,
                None => self.me.id,
            };
            if included.contains(&id) {
                continue;
            }
            if let Some(bytes) = self.encoded_record(id).filter(|b| b.len() <= room) {
                room -= bytes.len();
                items.push(bytes);
                included.push(id);
            }
        }
        self.push_frame(dst, &head, &items, TransmitKind::Datagram);
    }

    /// A hash of every (id, incarnation, status) this node knows, itself
    /// included: equal on two nodes whose views agree, whatever order they
    /// learnt them in (a sum of per-record hashes). A record's payload is
    /// versioned by its incarnation, so it needs no hashing of its own.
    /// User events are not in it: they expire, and the full exchange is
    /// for views that differ.
    pub fn view_digest(&self) -> [u8; 16] {
        use sha2::{Digest, Sha256};
        let one = |id: NodeId, incarnation: Incarnation, status: MemberStatus| {
            let status: u8 = match status {
                MemberStatus::Alive => 0,
                MemberStatus::Suspect => 1,
                MemberStatus::Dead => 2,
                MemberStatus::Left => 3,
            };
            let hash = Sha256::new()
                .chain_update(id.0.as_bytes())
                .chain_update(incarnation.generation.to_le_bytes())
                .chain_update(incarnation.version.to_le_bytes())
                .chain_update([status])
                .finalize();
            let mut half = [0u8; 16];
            half.copy_from_slice(&hash[..16]);
            u128::from_le_bytes(half)
        };
        let mut sum = one(self.me.id, self.me.incarnation, self.me.status);
        for entry in self.members.iter() {
            let m = &entry.member;
            sum = sum.wrapping_add(one(m.id, m.incarnation, m.status));
        }
        sum.to_le_bytes()
    }

    /// Our full state over a stream: every record (cached encodings) and
    /// every user event still live.
    fn send_push_pull(&mut self, now: Instant, dst: SocketAddr, reply: bool) {
        let Ok(head) = self.encode_head(&Message::PushPull { reply }) else {
            return;
        };
        let ids: Vec<NodeId> = std::iter::once(self.me.id)
            .chain(self.members.iter().map(|e| e.member.id))
            .collect();
        let mut items: Vec<Arc<[u8]>> = ids
            .into_iter()
            .filter_map(|id| self.encoded_record(id))
            .collect();
        items.extend(
            self.event_log
                .live_copies(now)
                .into_iter()
                .filter_map(|event| wire::encode(&Gossip::Event(event)).ok())
                .map(Arc::from),
        );
        self.push_frame(dst, &head, &items, TransmitKind::Stream);
    }

    /// One message over a stream with our own record, so the receiver
    /// knows where to answer (a stream's source port is ephemeral).
    fn send_stream_message(&mut self, dst: SocketAddr, message: &Message) {
        let Ok(head) = self.encode_head(message) else {
            return;
        };
        let items: Vec<Arc<[u8]>> = self.encoded_record(self.me.id).into_iter().collect();
        self.push_frame(dst, &head, &items, TransmitKind::Stream);
    }

    /// Frames the body `head` + `items` and queues it for `dst`.
    fn push_frame(
        &mut self,
        dst: SocketAddr,
        head: &[u8],
        items: &[Arc<[u8]>],
        kind: TransmitKind,
    ) {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut nonce);
        let cluster = &self.config.cluster;
        let Some(bytes) = wire::seal_gossip(&self.security, cluster, nonce, head, items) else {
            return;
        };
        match kind {
            TransmitKind::Datagram => {
                self.stats.datagrams_sent += 1;
                self.stats.datagram_bytes_sent += bytes.len() as u64;
            }
            TransmitKind::Stream => {
                self.stats.streams_sent += 1;
                self.stats.stream_bytes_sent += bytes.len() as u64;
            }
        }
        self.transmits.push_back(Transmit { dst, bytes, kind });
    }
}
