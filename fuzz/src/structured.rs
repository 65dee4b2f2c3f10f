//! Structure-aware inputs for `swim_structured`: the fuzzer's bytes are
//! read with `arbitrary` as well-formed steps (packets built field by
//! field, then encoded by the crate's own encoder), so that mutations act
//! on meanings — ids, generations, versions, sequence numbers, statuses —
//! instead of on postcard bytes. Integers are raw fixed-width values here,
//! so boundary values (0, `u64::MAX`) and the values libFuzzer sees in
//! comparisons are one mutation away; ids are small (`id(n)` for a byte
//! `n`), so "this packet is about the node itself" (`ME`) is one byte.

use std::net::SocketAddr;
use std::time::Duration;

use arbitrary::Arbitrary;
use cohort::membership::wire::{self, Gossip, Message, Packet};
use cohort::membership::{
    Incarnation, MemberRecord, MemberStatus, NodeId, Payload, RaftRole, UserEvent,
};

use crate::{addr, id, Harness, CLUSTER, GEN};

/// One fuzz input: steps run in order by a plaintext `Harness`.
#[derive(Arbitrary, Debug)]
pub struct Input {
    pub steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
pub enum Step {
    Datagram {
        peer: u8,
        packet: PacketSpec,
    },
    Stream {
        peer: u8,
        packet: PacketSpec,
    },
    /// The clock moves on by `units` × 10 ms; due timers run.
    Advance {
        units: u16,
    },
    /// See `Harness::command`.
    Command {
        which: u8,
        text: String,
    },
}

/// A generation: the harness's own (`GEN`, most packets), near it, or any.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum GenSpec {
    Current,
    Near(i8),
    Any(u64),
}

impl GenSpec {
    pub fn value(self) -> u64 {
        match self {
            GenSpec::Current => GEN,
            GenSpec::Near(d) => GEN.saturating_add_signed(i64::from(d)),
            GenSpec::Any(g) => g,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct IncSpec {
    pub generation: GenSpec,
    pub version: u64,
}

impl IncSpec {
    fn value(self) -> Incarnation {
        Incarnation {
            generation: self.generation.value(),
            version: self.version,
        }
    }
}

fn status(n: u8) -> MemberStatus {
    match n % 4 {
        0 => MemberStatus::Alive,
        1 => MemberStatus::Suspect,
        2 => MemberStatus::Dead,
        _ => MemberStatus::Left,
    }
}

fn node(n: u8) -> NodeId {
    id(u128::from(n))
}

#[derive(Arbitrary, Debug)]
pub struct PacketSpec {
    /// Another cluster's name instead of ours.
    pub foreign: Option<String>,
    pub from: u8,
    pub generation: GenSpec,
    pub message: MessageSpec,
    pub gossip: Vec<ItemSpec>,
}

#[derive(Arbitrary, Debug)]
pub enum MessageSpec {
    Ping {
        seq: u32,
        target: u8,
        buddy: Option<(IncSpec, u8)>,
    },
    Ack {
        seq: u32,
        wall_ms: Option<u64>,
    },
    PingReq {
        seq: u32,
        target: u8,
        /// An address among the peers', or any IPv4/IPv6 address.
        target_addr: AddrSpec,
    },
    Nack {
        seq: u32,
    },
    Gossip,
    PushPull {
        reply: bool,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum AddrSpec {
    Peer(u8),
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

impl AddrSpec {
    fn value(self) -> SocketAddr {
        match self {
            AddrSpec::Peer(n) => addr(n),
            AddrSpec::V4(ip, port) => SocketAddr::from((ip, port)),
            AddrSpec::V6(ip, port) => SocketAddr::from((ip, port)),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub enum ItemSpec {
    Member {
        id: u8,
        addr: AddrSpec,
        incarnation: IncSpec,
        status: u8,
        payload: PayloadSpec,
        suspecter: Option<u8>,
    },
    Event {
        origin: u8,
        generation: GenSpec,
        seq: u64,
        name: String,
        payload: Vec<u8>,
        age_ms: u64,
    },
}

#[derive(Arbitrary, Debug)]
pub struct PayloadSpec {
    pub name: String,
    pub roles: Vec<String>,
    pub tags: Vec<(String, String)>,
    pub raft_role: u8,
}

impl PayloadSpec {
    fn value(&self) -> Payload {
        Payload {
            name: self.name.clone(),
            roles: self.roles.clone(),
            tags: self.tags.iter().cloned().collect(),
            raft_role: match self.raft_role % 5 {
                0 => RaftRole::Off,
                1 => RaftRole::Follower,
                2 => RaftRole::Candidate,
                3 => RaftRole::Leader,
                _ => RaftRole::Learner,
            },
            ..Payload::default()
        }
    }
}

impl PacketSpec {
    pub fn build(&self) -> Packet {
        let message = match &self.message {
            MessageSpec::Ping { seq, target, buddy } => Message::Ping {
                seq: *seq,
                target: node(*target),
                buddy: buddy.map(|(inc, s)| (inc.value(), status(s))),
            },
            MessageSpec::Ack { seq, wall_ms } => Message::Ack {
                seq: *seq,
                wall_ms: *wall_ms,
            },
            MessageSpec::PingReq {
                seq,
                target,
                target_addr,
            } => Message::PingReq {
                seq: *seq,
                target: node(*target),
                target_addr: target_addr.value(),
            },
            MessageSpec::Nack { seq } => Message::Nack { seq: *seq },
            MessageSpec::Gossip => Message::Gossip,
            MessageSpec::PushPull { reply } => Message::PushPull { reply: *reply },
        };
        let gossip = self
            .gossip
            .iter()
            .map(|item| match item {
                ItemSpec::Member {
                    id,
                    addr,
                    incarnation,
                    status: s,
                    payload,
                    suspecter,
                } => Gossip::Member(MemberRecord {
                    id: node(*id),
                    addr: addr.value(),
                    incarnation: incarnation.value(),
                    status: status(*s),
                    payload: payload.value(),
                    suspecter: suspecter.map(node),
                }),
                ItemSpec::Event {
                    origin,
                    generation,
                    seq,
                    name,
                    payload,
                    age_ms,
                } => Gossip::Event(UserEvent {
                    origin: node(*origin),
                    generation: generation.value(),
                    seq: *seq,
                    name: name.clone(),
                    payload: payload.clone(),
                    age_ms: *age_ms,
                }),
            })
            .collect();
        Packet {
            cluster: self.foreign.clone().unwrap_or_else(|| CLUSTER.into()),
            from: node(self.from),
            generation: self.generation.value(),
            message,
            gossip,
        }
    }
}

/// Runs `input` on a fresh plaintext harness; every step is checked.
pub fn run(input: &Input) {
    let mut harness = Harness::new(crate::Mode::Plaintext);
    for step in &input.steps {
        match step {
            Step::Datagram { peer, packet } | Step::Stream { peer, packet } => {
                let stream = matches!(step, Step::Stream { .. });
                let Ok(body) = wire::encode(&packet.build()) else {
                    continue;
                };
                harness.receive_body(stream, *peer, &body);
            }
            Step::Advance { units } => {
                harness.advance(Duration::from_millis(10 * u64::from(*units)));
            }
            Step::Command { which, text } => harness.command(*which, text.as_bytes()),
        }
    }
    harness.finish();
}
