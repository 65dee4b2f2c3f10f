//! A deterministic, seeded discrete-event simulator that drives many `Swim`
//! instances in one process: virtual time, lossy and slow links, (one-way)
//! partitions, crashes and restarts, nodes whose CPU stalls, and clocks
//! that run at different rates (skew): each node sees its own time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use uuid::Uuid;

use crate::sim_queue::EventQueue;

use super::config::SwimConfig;
use super::keyring::{Keyring, PacketSecurity};
use super::member::{MemberEvent, MemberStatus, NodeId};
use super::payload::{Payload, PayloadTooLarge};
use super::swim::{LocalNode, Swim, Transmit, TransmitKind};
use super::user_event::{EventId, UserEventError};

/// The generation of a node started at virtual time zero, in µs.
const BASE_GENERATION: u64 = 1_000_000;
/// The wall clock (Unix ms) every node reads at virtual time zero: fixed,
/// so runs replay exactly.
const BASE_WALL_MS: u64 = 1_800_000_000_000;
const PORT: u16 = 7946;

/// Loss and one-way delay of a link (or of every link by default).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkSpec {
    /// Probability a datagram is lost; streams are reliable (TCP).
    pub loss: f64,
    pub delay_min: Duration,
    pub delay_max: Duration,
}

impl Default for LinkSpec {
    fn default() -> Self {
        LinkSpec {
            loss: 0.0,
            delay_min: Duration::from_millis(1),
            delay_max: Duration::from_millis(10),
        }
    }
}

/// Knobs of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub swim: SwimConfig,
    pub link: LinkSpec,
    /// AES-GCM on every packet (realistic, slower) or plaintext.
    pub encrypted: bool,
    /// Each node's clock runs at a rate drawn from 1 ± this (0.05 = ±5 %).
    pub clock_skew: f64,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            swim: SwimConfig::default(),
            link: LinkSpec::default(),
            encrypted: false,
            clock_skew: 0.0,
        }
    }
}

/// A node that ended up declared dead by an observer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadDeclaration {
    pub at: Duration,
    pub observer: usize,
    pub subject: NodeId,
}

/// Network counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub delivered: u64,
    pub lost: u64,
    /// Dropped by a partition.
    pub blocked: u64,
    /// Sent to a crashed node or an unknown address.
    pub unroutable: u64,
    pub bytes: u64,
    pub max_datagram: usize,
}

enum Input {
    Deliver {
        to: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
        kind: TransmitKind,
    },
    /// `at` is the deadline the node asked for; stale wakes are skipped.
    Wake { node: usize, at: Instant },
}

struct SimNode {
    id: NodeId,
    addr: SocketAddr,
    swim: Option<Swim>,
    /// The wake-up currently scheduled for it.
    wake: Option<Instant>,
    generation: u64,
    starts: u64,
    /// Every input reaches it this much later (a slow CPU).
    input_delay: Duration,
    /// Nothing at all is processed before this (a stall, a GC pause).
    paused_until: Option<Instant>,
    group: u32,
    /// Its clock's speed relative to virtual time (1.0 = exact).
    clock_rate: f64,
    /// How far its wall clock is set off (ms), on top of the rate.
    wall_offset_ms: i64,
    /// The last datagram it sent, when capture is on (replay attacks).
    captured: Option<(SocketAddr, Vec<u8>)>,
    capture: bool,
}

/// The simulated world. Node indexes are stable across restarts.
pub struct Sim {
    config: SimConfig,
    base: Instant,
    now: Instant,
    rng: SmallRng,
    nodes: Vec<SimNode>,
    by_addr: BTreeMap<SocketAddr, usize>,
    queue: EventQueue<Input>,
    links: BTreeMap<(usize, usize), LinkSpec>,
    /// Directed group pairs that cannot talk.
    blocked: BTreeSet<(u32, u32)>,
    dead_declarations: Vec<DeadDeclaration>,
    record_events: bool,
    events: Vec<(Duration, usize, MemberEvent)>,
    /// Every user event delivery: when, where, which.
    deliveries: Vec<(Duration, usize, EventId)>,
    stats: SimStats,
}

fn addr_of(index: usize, incarnation: u64) -> SocketAddr {
    // 10.x.y.z, one address per node; a moved node gets 11.x.y.z etc.
    let i = u32::try_from(index).unwrap_or(u32::MAX);
    let first = 10u8.wrapping_add(u8::try_from(incarnation % 200).unwrap_or(0));
    let [_, b, c, d] = i.to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(first, b, c, d)), PORT)
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: independent per-node seeds from one simulation seed.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let now = Instant::now();
        Sim {
            rng: SmallRng::seed_from_u64(mix(config.seed)),
            config,
            base: now,
            now,
            nodes: Vec::new(),
            by_addr: BTreeMap::new(),
            queue: EventQueue::default(),
            links: BTreeMap::new(),
            blocked: BTreeSet::new(),
            dead_declarations: Vec::new(),
            record_events: false,
            events: Vec::new(),
            deliveries: Vec::new(),
            stats: SimStats::default(),
        }
    }

    // ---- building the world ---------------------------------------------

    /// Starts a new node (knowing nobody) and returns its index.
    pub fn add_node(&mut self) -> usize {
        let index = self.nodes.len();
        let id = NodeId(Uuid::from_u64_pair(mix(self.config.seed), index as u64 + 1));
        let addr = addr_of(index, 0);
        let skew = self.config.clock_skew;
        // Drawn only when asked for, so that runs without skew replay
        // exactly as before.
        let clock_rate = if skew > 0.0 {
            self.rng.random_range(1.0 - skew..=1.0 + skew)
        } else {
            1.0
        };
        self.nodes.push(SimNode {
            id,
            addr,
            swim: None,
            wake: None,
            generation: 0,
            starts: 0,
            input_delay: Duration::ZERO,
            paused_until: None,
            group: 0,
            clock_rate,
            wall_offset_ms: 0,
            captured: None,
            capture: false,
        });
        self.by_addr.insert(addr, index);
        self.start(index);
        index
    }

    fn start(&mut self, index: usize) {
        let elapsed = u64::try_from(self.elapsed().as_micros()).unwrap_or(u64::MAX);
        let security = if self.config.encrypted {
            match Keyring::new(&[[0x42; 32]]) {
                Ok(ring) => PacketSecurity::Encrypted(ring),
                Err(_) => PacketSecurity::Plaintext,
            }
        } else {
            PacketSecurity::Plaintext
        };
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        node.generation = (BASE_GENERATION + elapsed).max(node.generation + 1);
        node.starts += 1;
        let local = LocalNode {
            id: node.id,
            generation: node.generation,
            addr: node.addr,
        };
        let seed = mix(self.config.seed ^ mix(index as u64) ^ mix(node.starts << 32));
        let now = Self::local_time(self.base, self.now, node.clock_rate);
        node.swim = Swim::new(now, local, self.config.swim.clone(), security, seed).ok();
        node.wake = None;
        self.after_input(index);
    }

    /// `node` contacts `seed` (a stream push-pull, like a `join:` entry).
    pub fn join(&mut self, node: usize, seed: usize) {
        let now = self.local_now(node);
        let Some(addr) = self.nodes.get(seed).map(|n| n.addr) else {
            return;
        };
        if let Some(swim) = self.swim_mut(node) {
            swim.join(now, addr);
        }
        self.after_input(node);
    }

    pub fn leave(&mut self, node: usize) {
        let now = self.local_now(node);
        if let Some(swim) = self.swim_mut(node) {
            swim.leave(now);
        }
        self.after_input(node);
    }

    /// The process dies: no more packets in or out, state lost.
    pub fn crash(&mut self, node: usize) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.swim = None;
            n.wake = None;
        }
    }

    /// Starts a crashed (or running) node again with a new generation and
    /// the same id; `moved` gives it a new address. It joins through `seed`.
    pub fn restart(&mut self, node: usize, seed: usize, moved: bool) {
        self.crash(node);
        if moved {
            if let Some(n) = self.nodes.get_mut(node) {
                self.by_addr.remove(&n.addr);
                n.addr = addr_of(node, n.starts);
                self.by_addr.insert(n.addr, node);
            }
        }
        self.start(node);
        self.join(node, seed);
    }

    /// Sends a user event from `node`; it is delivered there at once.
    pub fn send_user_event(
        &mut self,
        node: usize,
        name: &str,
        payload: &[u8],
    ) -> Result<EventId, UserEventError> {
        let now = self.local_now(node);
        let sent = match self.swim_mut(node) {
            Some(swim) => swim.send_user_event(now, name, payload.to_vec()),
            None => Err(UserEventError::Left),
        };
        self.after_input(node);
        sent
    }

    /// `node` publishes a new payload (as an agent does after an apply).
    pub fn set_payload(&mut self, node: usize, payload: Payload) -> Result<(), PayloadTooLarge> {
        let now = self.local_now(node);
        let set = match self.swim_mut(node) {
            Some(swim) => swim.set_payload(now, payload),
            None => Ok(()),
        };
        self.after_input(node);
        set
    }

    /// Sets how fast `node`'s clock runs (1.0 = exact, 1.1 = 10 % fast).
    pub fn set_clock_rate(&mut self, node: usize, rate: f64) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.clock_rate = rate.max(0.01);
        }
    }

    /// Sets `node`'s wall clock `offset_ms` off (what acks carry), as a
    /// host whose clock is wrong; its protocol timers are not affected.
    pub fn set_wall_clock_offset(&mut self, node: usize, offset_ms: i64) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.wall_offset_ms = offset_ms;
        }
    }

    /// Default loss and delay of every link.
    pub fn set_link_default(&mut self, link: LinkSpec) {
        self.config.link = link;
    }

    /// Loss and delay of one direction of one link.
    pub fn set_link(&mut self, from: usize, to: usize, link: LinkSpec) {
        self.links.insert((from, to), link);
    }

    /// Every input of `node` is processed `delay` late (its timers run on
    /// time): an overloaded CPU or a starved VM.
    pub fn set_input_delay(&mut self, node: usize, delay: Duration) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.input_delay = delay;
        }
    }

    /// `node` processes nothing, timers included, for `stall`.
    pub fn stall(&mut self, node: usize, stall: Duration) {
        let until = self.now + stall;
        if let Some(n) = self.nodes.get_mut(node) {
            n.paused_until = Some(until);
        }
    }

    /// Puts `node` in a partition group (all start in group 0).
    pub fn set_group(&mut self, node: usize, group: u32) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.group = group;
        }
    }

    /// Packets from group `from` to group `to` are dropped (one way).
    pub fn block(&mut self, from: u32, to: u32) {
        self.blocked.insert((from, to));
    }

    /// Both directions between two groups.
    pub fn partition(&mut self, a: u32, b: u32) {
        self.block(a, b);
        self.block(b, a);
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Keeps the last datagram `node` sends, for replay tests.
    pub fn capture(&mut self, node: usize, on: bool) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.capture = on;
        }
    }

    pub fn captured(&self, node: usize) -> Option<&(SocketAddr, Vec<u8>)> {
        self.nodes.get(node).and_then(|n| n.captured.as_ref())
    }

    /// Delivers raw bytes to `to` as if sent from `from`'s address now.
    pub fn inject(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        let Some(from_addr) = self.nodes.get(from).map(|n| n.addr) else {
            return;
        };
        self.schedule(
            self.now,
            Input::Deliver {
                to,
                from: from_addr,
                bytes,
                kind: TransmitKind::Datagram,
            },
        );
    }

    /// Keep every member event (memory grows as N²: small runs only).
    pub fn record_events(&mut self, on: bool) {
        self.record_events = on;
    }

    // ---- running --------------------------------------------------------

    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the simulation began.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    pub fn run_for(&mut self, span: Duration) {
        self.run_until(self.now + span);
    }

    /// Processes every input due up to `end`, then sets the clock to it.
    pub fn run_until(&mut self, end: Instant) {
        while let Some((at, input)) = self.queue.pop_due(end) {
            self.now = self.now.max(at);
            self.dispatch(input);
        }
        self.now = self.now.max(end);
    }

    /// Runs period by period until `done` holds (checked after each
    /// period) or `limit` passes; returns the time it took.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let step = self.config.swim.protocol_period;
        while self.now - start < limit {
            if done(self) {
                return Some(self.now - start);
            }
            self.run_for(step);
        }
        done(self).then(|| self.now - start)
    }

    // ---- observing ------------------------------------------------------

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn id(&self, node: usize) -> Option<NodeId> {
        self.nodes.get(node).map(|n| n.id)
    }

    pub fn generation(&self, node: usize) -> Option<u64> {
        self.nodes.get(node).map(|n| n.generation)
    }

    pub fn swim(&self, node: usize) -> Option<&Swim> {
        self.nodes.get(node).and_then(|n| n.swim.as_ref())
    }

    pub fn is_running(&self, node: usize) -> bool {
        self.swim(node).is_some()
    }

    /// Running nodes' indexes.
    pub fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.is_running(i))
    }

    /// How `observer` sees `subject` right now.
    pub fn status(&self, observer: usize, subject: usize) -> Option<MemberStatus> {
        let id = self.id(subject)?;
        self.swim(observer)?.member(id).map(|m| m.status)
    }

    /// True when every running node sees every other running node alive
    /// (and nothing else alive or suspect). O(N).
    pub fn all_running_see_each_other_alive(&self) -> bool {
        let running = self.running().count();
        self.running().all(|i| {
            self.swim(i).is_some_and(|s| {
                s.count(MemberStatus::Alive) == running - 1 && s.count(MemberStatus::Suspect) == 0
            })
        })
    }

    /// Every user event delivered so far: (when, node, event).
    pub fn deliveries(&self) -> &[(Duration, usize, EventId)] {
        &self.deliveries
    }

    pub fn dead_declarations(&self) -> &[DeadDeclaration] {
        &self.dead_declarations
    }

    pub fn events(&self) -> &[(Duration, usize, MemberEvent)] {
        &self.events
    }

    pub fn stats(&self) -> SimStats {
        self.stats
    }

    // ---- internals ------------------------------------------------------

    /// Virtual time `now` read on a clock running at `rate` from `base`.
    fn local_time(base: Instant, now: Instant, rate: f64) -> Instant {
        if rate == 1.0 {
            return now;
        }
        base + now.saturating_duration_since(base).mul_f64(rate)
    }

    fn local_now(&self, node: usize) -> Instant {
        let rate = self.nodes.get(node).map_or(1.0, |n| n.clock_rate);
        Self::local_time(self.base, self.now, rate)
    }

    /// The virtual time at which `node`'s clock shows `local`, rounded up
    /// so that the node, woken then, sees its deadline passed.
    fn virtual_time(&self, node: usize, local: Instant) -> Instant {
        let rate = self.nodes.get(node).map_or(1.0, |n| n.clock_rate);
        if rate == 1.0 {
            return local;
        }
        let shown = local.saturating_duration_since(self.base).as_nanos() as f64;
        let nanos = (shown / rate).ceil() as u64 + 1;
        self.base + Duration::from_nanos(nanos)
    }

    /// `node`'s wall clock now: its own clock's reading since virtual time
    /// zero, from a fixed epoch, set off by its offset.
    fn wall_ms(&self, node: usize) -> u64 {
        let Some(n) = self.nodes.get(node) else {
            return BASE_WALL_MS;
        };
        let local = Self::local_time(self.base, self.now, n.clock_rate);
        let since = u64::try_from(local.saturating_duration_since(self.base).as_millis())
            .unwrap_or(u64::MAX);
        BASE_WALL_MS
            .saturating_add(since)
            .saturating_add_signed(n.wall_offset_ms)
    }

    fn swim_mut(&mut self, node: usize) -> Option<&mut Swim> {
        self.nodes.get_mut(node).and_then(|n| n.swim.as_mut())
    }

    fn schedule(&mut self, at: Instant, input: Input) {
        self.queue.push(at, input);
    }

    fn dispatch(&mut self, input: Input) {
        let node = match &input {
            Input::Deliver { to, .. } => *to,
            Input::Wake { node, .. } => *node,
        };
        let Some(paused_until) = self.nodes.get(node).map(|n| n.paused_until) else {
            return;
        };
        if let Some(until) = paused_until {
            if self.now < until {
                self.schedule(until, input);
                return;
            }
            if let Some(n) = self.nodes.get_mut(node) {
                n.paused_until = None;
            }
        }
        let now = self.local_now(node);
        let wall = self.wall_ms(node);
        if let Some(swim) = self.swim_mut(node) {
            swim.set_wall_clock(wall);
        }
        match input {
            Input::Deliver {
                to,
                from,
                bytes,
                kind,
            } => {
                let Some(swim) = self.swim_mut(to) else {
                    self.stats.unroutable += 1;
                    return;
                };
                match kind {
                    TransmitKind::Datagram => swim.handle_datagram(now, from, &bytes),
                    TransmitKind::Stream => swim.handle_stream(now, from, &bytes),
                }
                self.stats.delivered += 1;
            }
            Input::Wake { node, at } => {
                let Some(n) = self.nodes.get_mut(node) else {
                    return;
                };
                if n.wake != Some(at) {
                    return;
                }
                n.wake = None;
                if let Some(swim) = n.swim.as_mut() {
                    swim.handle_timeout(now);
                }
            }
        }
        self.after_input(node);
    }

    /// Drains a node's outputs into the network and its next wake-up.
    fn after_input(&mut self, index: usize) {
        let now = self.now;
        let elapsed = self.elapsed();
        let mut transmits = Vec::new();
        let mut events = Vec::new();
        let mut delivered = Vec::new();
        let (from_addr, timeout) = {
            let Some(node) = self.nodes.get_mut(index) else {
                return;
            };
            let Some(swim) = node.swim.as_mut() else {
                return;
            };
            while let Some(t) = swim.poll_transmit() {
                transmits.push(t);
            }
            while let Some(e) = swim.poll_event() {
                events.push(e);
            }
            while let Some(e) = swim.poll_user_event() {
                delivered.push(e.id());
            }
            (node.addr, swim.poll_timeout())
        };
        self.deliveries
            .extend(delivered.into_iter().map(|id| (elapsed, index, id)));
        let timeout = timeout.map(|local| self.virtual_time(index, local));
        for event in events {
            if let MemberEvent::StatusChanged {
                id,
                to: MemberStatus::Dead,
                ..
            } = event
            {
                self.dead_declarations.push(DeadDeclaration {
                    at: elapsed,
                    observer: index,
                    subject: id,
                });
            }
            if self.record_events {
                self.events.push((elapsed, index, event));
            }
        }
        for transmit in transmits {
            self.route(index, from_addr, transmit);
        }
        if let Some(at) = timeout {
            let node = &mut self.nodes[index];
            if node.wake != Some(at) {
                node.wake = Some(at);
                self.schedule(at.max(now), Input::Wake { node: index, at });
            }
        }
    }

    fn route(&mut self, from: usize, from_addr: SocketAddr, transmit: Transmit) {
        let Transmit { dst, bytes, kind } = transmit;
        if kind == TransmitKind::Datagram {
            self.stats.max_datagram = self.stats.max_datagram.max(bytes.len());
        }
        self.stats.bytes += bytes.len() as u64;
        if let Some(node) = self.nodes.get_mut(from).filter(|n| n.capture) {
            if kind == TransmitKind::Datagram {
                node.captured = Some((dst, bytes.clone()));
            }
        }
        let Some(&to) = self.by_addr.get(&dst) else {
            self.stats.unroutable += 1;
            return;
        };
        let groups = (self.nodes[from].group, self.nodes[to].group);
        if self.blocked.contains(&groups) {
            self.stats.blocked += 1;
            return;
        }
        let link = self
            .links
            .get(&(from, to))
            .copied()
            .unwrap_or(self.config.link);
        if kind == TransmitKind::Datagram
            && link.loss > 0.0
            && self.rng.random_bool(link.loss.min(1.0))
        {
            self.stats.lost += 1;
            return;
        }
        let delay = if link.delay_max > link.delay_min {
            self.rng.random_range(link.delay_min..=link.delay_max)
        } else {
            link.delay_min
        };
        let at = self.now + delay + self.nodes[to].input_delay;
        self.schedule(
            at,
            Input::Deliver {
                to,
                from: from_addr,
                bytes,
                kind,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(sim: &Sim, observer: usize, subject: usize) -> Option<i64> {
        let id = sim.id(subject)?;
        sim.swim(observer)?.clock_offset(id).map(|o| o.offset_ms)
    }

    /// Acks carry the wall clock; each node estimates the others' offsets
    /// within the link's delay, and a restart starts the estimate over.
    #[test]
    fn clock_offsets_are_estimated_from_acks() {
        let mut sim = Sim::new(SimConfig::new(7));
        for _ in 0..3 {
            sim.add_node();
        }
        sim.set_wall_clock_offset(2, 5_000);
        sim.join(1, 0);
        sim.join(2, 0);
        let settled = sim.run_until_true(Duration::from_secs(30), |sim| {
            [(0, 2), (1, 2), (2, 0), (0, 1)].iter().all(|&(a, b)| {
                sim.swim(a)
                    .and_then(|s| s.clock_offset(sim.id(b)?))
                    .is_some_and(|o| o.samples >= 3)
            })
        });
        assert!(settled.is_some(), "every node measured the others");
        // Links delay 1–10 ms each way: the estimate is off by at most half
        // the round trip.
        for observer in [0, 1] {
            let o = offset(&sim, observer, 2).unwrap();
            assert!(
                (4_990..=5_010).contains(&o),
                "{observer} sees node 2 at {o}"
            );
        }
        let o = offset(&sim, 2, 0).unwrap();
        assert!((-5_010..=-4_990).contains(&o), "node 2 sees node 0 at {o}");
        let o = offset(&sim, 0, 1).unwrap();
        assert!(o.abs() <= 10, "node 0 sees node 1 at {o}");

        // Fixed, then restarted: the old life's estimate is not kept.
        sim.set_wall_clock_offset(2, 0);
        sim.restart(2, 0, false);
        sim.run_for(Duration::from_millis(1));
        let fresh = sim.run_until_true(Duration::from_secs(30), |sim| {
            offset(sim, 0, 2).is_some_and(|o| o.abs() <= 10)
        });
        assert!(
            fresh.is_some(),
            "node 0 sees node 2 at {:?}",
            offset(&sim, 0, 2)
        );
    }

    /// Without a wall clock (a driver that gives none) nothing is
    /// estimated, and acks still work.
    #[test]
    fn no_wall_clock_no_estimate() {
        let mut swim = Swim::new(
            Instant::now(),
            LocalNode {
                id: NodeId(Uuid::from_u128(1)),
                generation: 1,
                addr: addr_of(0, 0),
            },
            SwimConfig::default(),
            PacketSecurity::Plaintext,
            1,
        )
        .unwrap();
        swim.set_wall_clock_offset(1_000);
        assert!(swim.clock_offset(NodeId(Uuid::from_u128(2))).is_none());
    }
}
