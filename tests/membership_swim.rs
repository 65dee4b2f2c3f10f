//! The fine points of the SWIM state machine, one rule a test, driven by
//! hand through its public API with crafted packets: refutation, worse
//! status wins, old generations dropped, the retransmit limit, the packet
//! size bound, tombstones, payload limits, drop counters, leave, moves.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cohort::membership::swim::LocalNode;
use cohort::membership::wire::{self, Gossip, Message, Packet, PacketHead};
use cohort::membership::{
    Incarnation, Keyring, MemberEvent, MemberRecord, MemberStatus, NodeId, PacketSecurity, Payload,
    Swim, SwimConfig, Transmit, TransmitKind,
};
use uuid::Uuid;

const GEN: u64 = 1_000;

fn id(n: u128) -> NodeId {
    NodeId(Uuid::from_u128(n))
}

fn addr(n: u128) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n as u8], 7946))
}

fn config() -> SwimConfig {
    SwimConfig {
        cluster: "test".into(),
        reclaim_after: Some(Duration::from_secs(10)),
        ..SwimConfig::default()
    }
}

fn node_with(n: u128, now: Instant, config: SwimConfig, security: PacketSecurity) -> Swim {
    let local = LocalNode {
        id: id(n),
        generation: GEN,
        addr: addr(n),
    };
    Swim::new(now, local, config, security, n as u64).expect("valid config")
}

fn node(n: u128, now: Instant) -> Swim {
    node_with(n, now, config(), PacketSecurity::Plaintext)
}

fn record(n: u128, incarnation: Incarnation, status: MemberStatus) -> MemberRecord {
    MemberRecord {
        id: id(n),
        addr: addr(n),
        incarnation,
        status,
        payload: Payload::default(),
        suspecter: (status == MemberStatus::Suspect).then(|| id(99)),
    }
}

fn inc(generation: u64, version: u64) -> Incarnation {
    Incarnation {
        generation,
        version,
    }
}

/// A plaintext packet from member `from` (of `generation`) to anyone.
fn packet(from: u128, generation: u64, message: Message, records: &[MemberRecord]) -> Vec<u8> {
    packet_in("test", from, generation, message, records)
}

fn packet_in(
    cluster: &str,
    from: u128,
    generation: u64,
    message: Message,
    records: &[MemberRecord],
) -> Vec<u8> {
    let head = wire::encode(&PacketHead {
        cluster,
        from: id(from),
        generation,
        message: &message,
    })
    .expect("encodes");
    let records: Vec<Vec<u8>> = records
        .iter()
        .map(|r| wire::encode(&Gossip::Member(r.clone())).expect("encodes"))
        .collect();
    wire::seal(
        &PacketSecurity::Plaintext,
        [0; 12],
        &wire::assemble(&head, &records),
    )
    .expect("seals")
}

/// The member records a packet carries.
fn records_in(packet: &Packet) -> impl Iterator<Item = &MemberRecord> {
    packet.gossip.iter().filter_map(|item| match item {
        Gossip::Member(record) => Some(record),
        Gossip::Event(_) => None,
    })
}

fn gossip(swim: &mut Swim, now: Instant, from: u128, records: &[MemberRecord]) {
    let bytes = packet(from, GEN, Message::Gossip, records);
    swim.handle_datagram(now, addr(from), &bytes);
}

fn drain(swim: &mut Swim) -> Vec<Transmit> {
    std::iter::from_fn(|| swim.poll_transmit()).collect()
}

fn events(swim: &mut Swim) -> Vec<MemberEvent> {
    std::iter::from_fn(|| swim.poll_event()).collect()
}

fn status_of(swim: &Swim, n: u128) -> Option<MemberStatus> {
    swim.member(id(n)).map(|m| m.status)
}

#[test]
fn a_suspicion_of_the_current_incarnation_is_refuted() {
    let now = Instant::now();
    let mut b = node(2, now);
    gossip(
        &mut b,
        now,
        1,
        &[record(2, inc(GEN, 0), MemberStatus::Suspect)],
    );
    assert_eq!(b.local().incarnation, inc(GEN, 1));
    assert_eq!(b.stats().refutations, 1);
    // An older suspicion is already answered.
    gossip(
        &mut b,
        now,
        1,
        &[record(2, inc(GEN, 0), MemberStatus::Dead)],
    );
    assert_eq!(b.local().incarnation, inc(GEN, 1));
    // The buddy system: a ping telling b it is suspect.
    let ping = Message::Ping {
        seq: 5,
        target: id(2),
        buddy: Some((inc(GEN, 1), MemberStatus::Suspect)),
    };
    b.handle_datagram(now, addr(1), &packet(1, GEN, ping, &[]));
    assert_eq!(b.local().incarnation, inc(GEN, 2));
    assert_eq!(b.local().status, MemberStatus::Alive);
    // The ack carries the refutation.
    let ack = drain(&mut b).pop().expect("an ack");
    let body = wire::open(&PacketSecurity::Plaintext, &ack.bytes).expect("opens");
    let decoded = wire::decode_packet(&body).expect("decodes");
    assert_eq!(
        decoded.message,
        Message::Ack {
            seq: 5,
            wall_ms: None
        }
    );
    assert!(records_in(&decoded)
        .any(|r| r.id == id(2) && r.incarnation == inc(GEN, 2) && r.status == MemberStatus::Alive));
}

#[test]
fn equal_incarnation_worse_status_wins_and_newer_incarnation_resets() {
    let now = Instant::now();
    let mut c = node(3, now);
    let i = inc(GEN, 4);
    gossip(&mut c, now, 1, &[record(2, i, MemberStatus::Alive)]);
    gossip(&mut c, now, 1, &[record(2, i, MemberStatus::Suspect)]);
    assert_eq!(status_of(&c, 2), Some(MemberStatus::Suspect));
    gossip(&mut c, now, 1, &[record(2, i, MemberStatus::Alive)]);
    assert_eq!(
        status_of(&c, 2),
        Some(MemberStatus::Suspect),
        "better status ignored"
    );
    gossip(&mut c, now, 1, &[record(2, i, MemberStatus::Dead)]);
    gossip(&mut c, now, 1, &[record(2, i, MemberStatus::Suspect)]);
    assert_eq!(status_of(&c, 2), Some(MemberStatus::Dead));
    gossip(
        &mut c,
        now,
        1,
        &[record(2, inc(GEN, 3), MemberStatus::Alive)],
    );
    assert_eq!(
        status_of(&c, 2),
        Some(MemberStatus::Dead),
        "older incarnation ignored"
    );
    gossip(
        &mut c,
        now,
        1,
        &[record(2, inc(GEN, 5), MemberStatus::Alive)],
    );
    assert_eq!(status_of(&c, 2), Some(MemberStatus::Alive));
}

#[test]
fn packets_of_an_older_generation_are_dropped_and_counted() {
    let now = Instant::now();
    let mut c = node(3, now);
    gossip(
        &mut c,
        now,
        1,
        &[record(2, inc(GEN + 10, 0), MemberStatus::Alive)],
    );
    let stale = packet(
        2,
        GEN,
        Message::Gossip,
        &[record(4, inc(GEN, 0), MemberStatus::Alive)],
    );
    c.handle_datagram(now, addr(2), &stale);
    assert_eq!(c.stats().dropped.old_generation, 1);
    assert!(
        c.member(id(4)).is_none(),
        "records of a dropped packet are not applied"
    );
    // A record about that older life is stale too.
    gossip(
        &mut c,
        now,
        1,
        &[record(2, inc(GEN, 9), MemberStatus::Dead)],
    );
    assert_eq!(status_of(&c, 2), Some(MemberStatus::Alive));
}

/// Five live nodes that answer each other, every queue drained.
fn quiet_five(now: &mut Instant, config: &SwimConfig) -> Vec<Swim> {
    let mut nodes: Vec<Swim> = (1..=5)
        .map(|n| node_with(n, *now, config.clone(), PacketSecurity::Plaintext))
        .collect();
    for n in nodes.iter_mut().skip(1) {
        n.join(*now, addr(1));
    }
    exchange(&mut nodes, *now);
    // Let every queue drain, so that only the new update is counted.
    for _ in 0..600 {
        *now += Duration::from_millis(100);
        tick(&mut nodes, *now, |_| {});
        if nodes.iter().all(|n| n.pending_broadcasts() == 0) {
            break;
        }
    }
    assert!(nodes.iter().all(|n| n.count(MemberStatus::Alive) == 4));
    assert!(nodes.iter().all(|n| n.pending_broadcasts() == 0));
    nodes
}

/// How many times node 0 sends node 2's record at its current version
/// over 30 s: node 0 relays, node 2 is the origin.
fn relayed_by_first(nodes: &mut [Swim], now: &mut Instant) -> usize {
    let version = nodes[1].local().incarnation;
    let mut sends = 0;
    for _ in 0..300 {
        *now += Duration::from_millis(100);
        tick(nodes, *now, |t| {
            if t.kind == TransmitKind::Datagram {
                let body = wire::open(&PacketSecurity::Plaintext, &t.bytes).expect("opens");
                let p = wire::decode_packet(&body).expect("decodes");
                sends += records_in(&p)
                    .filter(|r| r.id == id(2) && r.incarnation == version)
                    .count();
            }
        });
    }
    assert!(nodes.iter().all(|n| n.pending_broadcasts() == 0));
    sends
}

#[test]
fn an_update_is_relayed_exactly_lambda_log2_n_times_with_the_lambda_of_its_kind() {
    let mut now = Instant::now();
    // N = 5, so λ·⌈log₂ 6⌉ = 3λ. No anti-entropy records, which would
    // carry the update too; two different λ, so that a mix-up shows.
    let quiet = SwimConfig {
        anti_entropy_records: 0,
        retransmit_multiplier: 4,
        payload_retransmit_multiplier: 2,
        ..config()
    };
    let mut nodes = quiet_five(&mut now, &quiet);
    // A new payload of an alive member: the payload's λ.
    nodes[1]
        .set_payload(
            now,
            Payload {
                roles: vec!["x".into()],
                ..Payload::default()
            },
        )
        .expect("fits");
    assert_eq!(relayed_by_first(&mut nodes, &mut now), 3 * 2);
    // A refutation (same payload, new version): the full λ, since the
    // suspicion it answers may have reached anyone.
    let current = nodes[1].local().incarnation;
    gossip(
        &mut nodes[1],
        now,
        3,
        &[record(2, current, MemberStatus::Suspect)],
    );
    assert!(nodes[1].local().incarnation > current, "refuted");
    assert_eq!(relayed_by_first(&mut nodes, &mut now), 3 * 4);
}

/// Runs every node's timers at `now`, then delivers everything; `sent_by_first`
/// sees each transmit of node 0.
fn tick(nodes: &mut [Swim], now: Instant, sent_by_first: impl FnMut(&Transmit)) {
    for n in nodes.iter_mut() {
        n.handle_timeout(now);
    }
    deliver_all(nodes, now, sent_by_first);
}

/// Moves every transmit between the given nodes until all is quiet;
/// `sent_by_first` sees each transmit of node 0.
fn deliver_all(nodes: &mut [Swim], now: Instant, mut sent_by_first: impl FnMut(&Transmit)) {
    loop {
        let mut moved = false;
        for i in 0..nodes.len() {
            let from = nodes[i].local().addr;
            for t in drain(&mut nodes[i]) {
                moved = true;
                if i == 0 {
                    sent_by_first(&t);
                }
                if let Some(to) = nodes.iter_mut().find(|n| n.local().addr == t.dst) {
                    match t.kind {
                        TransmitKind::Datagram => to.handle_datagram(now, from, &t.bytes),
                        TransmitKind::Stream => to.handle_stream(now, from, &t.bytes),
                    }
                }
            }
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn datagrams_never_exceed_the_packet_size_even_with_big_payloads() {
    let now = Instant::now();
    for security in [
        PacketSecurity::Plaintext,
        PacketSecurity::Encrypted(Keyring::new(&[[1; 32]]).expect("key")),
    ] {
        let mut a = node_with(1, now, config(), security.clone());
        let limit = a.record_limit();
        let records: Vec<_> = (2..400u128)
            .map(|n| MemberRecord {
                payload: Payload {
                    tags: [("k".to_string(), "v".repeat(limit / 2))].into(),
                    ..Payload::default()
                },
                ..record(n, inc(GEN, 0), MemberStatus::Alive)
            })
            .collect();
        let head_of = |message: &Message| {
            wire::encode(&PacketHead {
                cluster: wire::cluster_in_body(&security, "test"),
                from: id(500),
                generation: GEN,
                message,
            })
            .expect("encodes")
        };
        // Heard from the peer first, so the state below is news to spread.
        let none: [&[u8]; 0] = [];
        let hello = head_of(&Message::Gossip);
        a.handle_datagram(
            now,
            addr(200),
            &wire::seal_gossip(&security, "test", [2; 12], &hello, &none).expect("seals"),
        );
        // Sent as a push-pull stream: big state arrives in one piece.
        let head = head_of(&Message::PushPull { reply: true });
        let items: Vec<Vec<u8>> = records
            .into_iter()
            .map(|r| wire::encode(&Gossip::Member(r)).expect("encodes"))
            .collect();
        let bytes = wire::seal_gossip(&security, "test", [3; 12], &head, &items).expect("seals");
        a.handle_stream(now, addr(200), &bytes);
        assert_eq!(a.count(MemberStatus::Alive), 398);
        let reply = drain(&mut a);
        assert!(reply
            .iter()
            .any(|t| t.kind == TransmitKind::Stream && t.bytes.len() > 1400));
        let mut later = now;
        let mut datagrams = 0;
        for _ in 0..100 {
            later += Duration::from_millis(250);
            a.handle_timeout(later);
            for t in drain(&mut a)
                .into_iter()
                .filter(|t| t.kind == TransmitKind::Datagram)
            {
                assert!(t.bytes.len() <= 1400, "{} bytes", t.bytes.len());
                datagrams += 1;
            }
        }
        // Silent members: Lifeguard slows probing down, but some go out.
        assert!(datagrams >= 5, "{datagrams}");
    }
}

#[test]
fn tombstones_keep_ghosts_out_until_reclaimed_then_a_new_life_rejoins() {
    let start = Instant::now();
    let mut c = node(3, start);
    gossip(
        &mut c,
        start,
        1,
        &[record(2, inc(GEN, 1), MemberStatus::Dead)],
    );
    assert_eq!(
        status_of(&c, 2),
        Some(MemberStatus::Dead),
        "an unknown dead member is a tombstone"
    );
    // A lagging peer's older alive record does not revive it.
    gossip(
        &mut c,
        start,
        1,
        &[record(2, inc(GEN, 0), MemberStatus::Alive)],
    );
    gossip(
        &mut c,
        start,
        1,
        &[record(2, inc(GEN, 1), MemberStatus::Alive)],
    );
    assert_eq!(status_of(&c, 2), Some(MemberStatus::Dead));
    events(&mut c);
    let later = start + Duration::from_secs(11);
    c.handle_timeout(later);
    assert!(c.member(id(2)).is_none(), "reclaimed");
    assert!(events(&mut c).contains(&MemberEvent::Forgotten { id: id(2) }));
    // Still no revival from the ghost after it was forgotten.
    gossip(
        &mut c,
        later,
        1,
        &[record(2, inc(GEN, 1), MemberStatus::Alive)],
    );
    assert!(c.member(id(2)).is_none());
    // Its next life rejoins.
    gossip(
        &mut c,
        later,
        1,
        &[record(2, inc(GEN + 1, 0), MemberStatus::Alive)],
    );
    assert_eq!(status_of(&c, 2), Some(MemberStatus::Alive));
    // The remembered id expires too.
    let much_later = later + Duration::from_secs(30);
    c.handle_timeout(much_later);
    assert_eq!(c.forgotten_len(), 0);
}

#[test]
fn reclaim_none_keeps_records_forever() {
    let start = Instant::now();
    let mut c = node_with(
        3,
        start,
        SwimConfig {
            reclaim_after: None,
            ..config()
        },
        PacketSecurity::Plaintext,
    );
    gossip(
        &mut c,
        start,
        1,
        &[record(2, inc(GEN, 1), MemberStatus::Left)],
    );
    c.handle_timeout(start + Duration::from_secs(100_000));
    assert_eq!(status_of(&c, 2), Some(MemberStatus::Left));
}

#[test]
fn a_payload_too_big_for_one_packet_is_refused_at_set_payload() {
    let now = Instant::now();
    let mut a = node(1, now);
    let big = Payload {
        tags: [("blob".to_string(), "x".repeat(1400))].into(),
        ..Payload::default()
    };
    let err = a.set_payload(now, big).expect_err("too large");
    assert!(err.to_string().contains("1400-byte"), "{err}");
    assert_eq!(a.local().incarnation, inc(GEN, 0), "nothing changed");
    let fits = Payload {
        rpc_addr: Some(addr(1)),
        roles: vec!["storage".into(), "http".into()],
        replica_set: Some("storage-1".into()),
        ..Payload::default()
    };
    a.set_payload(now, fits.clone()).expect("fits");
    assert_eq!(a.local().payload, fits);
    assert_eq!(a.local().incarnation, inc(GEN, 1));
}

#[test]
fn undecodable_foreign_and_undecryptable_packets_are_counted_by_reason() {
    let now = Instant::now();
    let ring = Keyring::new(&[[1; 32]]).expect("key");
    let mut a = node_with(1, now, config(), PacketSecurity::Encrypted(ring));
    a.handle_datagram(now, addr(2), b"");
    a.handle_datagram(now, addr(2), &[wire::WIRE_VERSION, 1, 0, 0]);
    assert_eq!(a.stats().dropped.decode, 2);
    a.handle_datagram(now, addr(2), &packet(2, GEN, Message::Gossip, &[]));
    assert_eq!(a.stats().dropped.plaintext_refused, 1);
    let other = PacketSecurity::Encrypted(Keyring::new(&[[2; 32]]).expect("key"));
    let mut b = node_with(2, now, config(), other);
    b.join(now, addr(1));
    let join = drain(&mut b).pop().expect("join");
    a.handle_stream(now, addr(2), &join.bytes);
    assert_eq!(a.stats().dropped.decrypt, 1);
    assert!(
        a.member(id(2)).is_none(),
        "a node with the wrong key is never admitted"
    );
    // Same key, another cluster: the cluster name is associated data of
    // an encrypted frame, so it does not authenticate here.
    let other_cluster = SwimConfig {
        cluster: "other".into(),
        ..config()
    };
    let same_key = PacketSecurity::Encrypted(Keyring::new(&[[1; 32]]).expect("key"));
    let mut foreign = node_with(4, now, other_cluster.clone(), same_key);
    foreign.join(now, addr(1));
    let join = drain(&mut foreign).pop().expect("join");
    a.handle_stream(now, addr(4), &join.bytes);
    assert_eq!(a.stats().dropped.decrypt, 2);
    assert_eq!(a.stats().dropped.total(), 5);
    assert_eq!(a.table_len(), 0);
    // In the clear, the name in the body tells another cluster apart.
    let mut plain = node_with(5, now, config(), PacketSecurity::Plaintext);
    let mut foreign = node_with(6, now, other_cluster, PacketSecurity::Plaintext);
    foreign.join(now, addr(5));
    let join = drain(&mut foreign).pop().expect("join");
    plain.handle_stream(now, addr(6), &join.bytes);
    assert_eq!(plain.stats().dropped.foreign_cluster, 1);
    assert_eq!(plain.table_len(), 0);
}

/// Moves every transmit between the given nodes until all is quiet.
fn exchange(nodes: &mut [Swim], now: Instant) {
    deliver_all(nodes, now, |_| {});
}

#[test]
fn a_graceful_leave_is_seen_as_left_without_suspicion() {
    let now = Instant::now();
    let mut nodes = vec![node(1, now), node(2, now), node(3, now)];
    nodes[1].join(now, addr(1));
    nodes[2].join(now, addr(1));
    exchange(&mut nodes, now);
    nodes[0].join(now, addr(2));
    exchange(&mut nodes, now);
    assert!(nodes.iter().all(|n| n.count(MemberStatus::Alive) == 2));
    for n in nodes.iter_mut() {
        events(n);
    }
    nodes[2].leave(now);
    exchange(&mut nodes, now);
    for n in &mut nodes[..2] {
        assert_eq!(status_of(n, 3), Some(MemberStatus::Left));
        let seen = events(n);
        assert!(seen.contains(&MemberEvent::StatusChanged {
            id: id(3),
            from: MemberStatus::Alive,
            to: MemberStatus::Left
        }));
        assert!(!seen.iter().any(|e| matches!(
            e,
            MemberEvent::StatusChanged {
                to: MemberStatus::Suspect,
                ..
            }
        )));
    }
}

#[test]
fn the_same_id_at_a_new_address_is_accepted_as_a_move() {
    let now = Instant::now();
    let mut c = node(3, now);
    gossip(
        &mut c,
        now,
        1,
        &[record(2, inc(GEN, 0), MemberStatus::Alive)],
    );
    events(&mut c);
    let moved = MemberRecord {
        addr: addr(42),
        ..record(2, inc(GEN + 5, 0), MemberStatus::Alive)
    };
    gossip(&mut c, now, 1, &[moved]);
    assert_eq!(c.member(id(2)).map(|m| m.addr), Some(addr(42)));
    let seen = events(&mut c);
    assert!(seen.contains(&MemberEvent::AddressChanged {
        id: id(2),
        from: addr(2),
        to: addr(42)
    }));
    assert!(seen.contains(&MemberEvent::IncarnationChanged {
        id: id(2),
        from: inc(GEN, 0),
        to: inc(GEN + 5, 0)
    }));
}

/// How long node 1 suspects a silent node 2 before declaring it dead, in a
/// cluster of `size` where every other member is silent too.
fn unconfirmed_suspicion(size: u128) -> Duration {
    let start = Instant::now();
    let mut a = node(1, start);
    let others: Vec<MemberRecord> = (2..=size)
        .map(|n| record(n, inc(GEN, 0), MemberStatus::Alive))
        .collect();
    gossip(&mut a, start, 2, &others);
    let mut now = start;
    let mut suspected_at = None;
    let mut dead_at = None;
    for _ in 0..1200 {
        now += Duration::from_millis(100);
        a.handle_timeout(now);
        drain(&mut a);
        for e in events(&mut a) {
            match e {
                MemberEvent::StatusChanged {
                    id: who,
                    to: MemberStatus::Suspect,
                    ..
                } if who == id(2) => suspected_at = Some(now),
                MemberEvent::StatusChanged {
                    id: who,
                    to: MemberStatus::Dead,
                    ..
                } if who == id(2) => dead_at = Some(now),
                _ => {}
            }
        }
    }
    dead_at.expect("declared dead") - suspected_at.expect("suspected")
}

#[test]
fn a_silent_member_is_suspected_then_dead_after_the_suspicion_timeout() {
    // Five members, one accuser, no confirmation: the longest suspicion
    // (Lifeguard), 6 × 4 × max(1, log10 5) × 1 s.
    let suspicion = unconfirmed_suspicion(5);
    assert!(
        suspicion >= Duration::from_secs(24) && suspicion <= Duration::from_millis(24_200),
        "{suspicion:?}"
    );
    // Two members: nobody else could ever confirm, so waiting for
    // confirmations is pointless and the minimum (4 s) applies.
    let suspicion = unconfirmed_suspicion(2);
    assert!(
        suspicion >= Duration::from_secs(4) && suspicion <= Duration::from_millis(4_200),
        "{suspicion:?}"
    );
}

mod any_input {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// No input, framed or not, panics the state machine.
        #[test]
        fn the_state_machine_survives_arbitrary_frames(
            body in proptest::collection::vec(any::<u8>(), 0..1500),
            plaintext_header in any::<bool>(),
        ) {
            let now = Instant::now();
            let mut a = node(1, now);
            gossip(&mut a, now, 2, &[record(2, inc(GEN, 0), MemberStatus::Alive)]);
            let mut frame = if plaintext_header { vec![wire::WIRE_VERSION, 0] } else { Vec::new() };
            frame.extend_from_slice(&body);
            a.handle_datagram(now, addr(2), &frame);
            a.handle_stream(now, addr(2), &frame);
            a.handle_timeout(now + Duration::from_secs(5));
            prop_assert!(a.stats().dropped.total() <= 2);
        }

        /// Valid packets with bytes flipped: decoded or dropped, never a panic.
        #[test]
        fn the_state_machine_survives_mutated_packets(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let now = Instant::now();
            let mut a = node(1, now);
            let message = Message::PingReq { seq: 3, target: id(3), target_addr: addr(3) };
            let mut frame = packet(2, GEN, message, &[
                record(2, inc(GEN, 0), MemberStatus::Alive),
                record(3, inc(GEN, 1), MemberStatus::Suspect),
                record(4, inc(GEN, 2), MemberStatus::Dead),
            ]);
            for (at, byte) in flips {
                let len = frame.len();
                frame[at % len] = byte;
            }
            a.handle_datagram(now, addr(2), &frame);
            for step in 1..30u64 {
                a.handle_timeout(now + Duration::from_millis(500 * step));
                drain(&mut a);
            }
        }
    }
}

/// Found by fuzzing: a claim about this node at a version it never issued
/// (`u64::MAX`) made it adopt the version and overflow on refuting.
#[test]
fn a_claim_at_a_version_never_issued_is_counted_not_adopted() {
    let now = Instant::now();
    let mut b = node(2, now);
    gossip(
        &mut b,
        now,
        1,
        &[record(1, inc(GEN, 0), MemberStatus::Alive)],
    );
    let forged = Message::Ping {
        seq: 9,
        target: id(2),
        buddy: Some((inc(GEN, u64::MAX), MemberStatus::Left)),
    };
    b.handle_datagram(now, addr(1), &packet(1, GEN, forged, &[]));
    gossip(
        &mut b,
        now,
        1,
        &[record(2, inc(GEN, u64::MAX), MemberStatus::Suspect)],
    );
    assert_eq!(b.local().incarnation, inc(GEN, 0));
    assert_eq!(b.local().status, MemberStatus::Alive);
    assert_eq!(b.stats().impossible_claims, 2);
    assert_eq!(b.stats().refutations, 0);
}

/// Event names reach handler command lines: a name no sender could have
/// sent is dropped and counted, a valid one delivered.
#[test]
fn user_events_with_impossible_names_are_dropped() {
    let now = Instant::now();
    let mut b = node(2, now);
    let event = |seq: u64, name: &str| {
        Gossip::Event(cohort::membership::UserEvent {
            origin: id(1),
            generation: GEN,
            seq,
            name: name.into(),
            payload: b"x".to_vec(),
            age_ms: 0,
        })
    };
    let head = wire::encode(&PacketHead {
        cluster: "test",
        from: id(1),
        generation: GEN,
        message: &Message::Gossip,
    })
    .expect("encodes");
    let items: Vec<Vec<u8>> = [event(1, "--rm"), event(2, "a\nb"), event(3, "deploy")]
        .iter()
        .map(|g| wire::encode(g).expect("encodes"))
        .collect();
    let bytes = wire::seal(
        &PacketSecurity::Plaintext,
        [0; 12],
        &wire::assemble(&head, &items),
    )
    .expect("seals");
    b.handle_datagram(now, addr(1), &bytes);
    let delivered: Vec<String> = std::iter::from_fn(|| b.poll_user_event())
        .map(|e| e.name)
        .collect();
    assert_eq!(delivered, vec!["deploy".to_string()]);
    assert_eq!(b.stats().user_events_invalid, 2);
}

#[test]
fn a_periodic_push_pull_is_a_digest_and_only_a_different_view_gets_full_state() {
    let mut now = Instant::now();
    let mut nodes: Vec<Swim> = (1..=3).map(|n| node(n, now)).collect();
    for n in nodes.iter_mut().skip(1) {
        n.join(now, addr(1));
    }
    exchange(&mut nodes, now);
    for _ in 0..100 {
        now += Duration::from_millis(100);
        tick(&mut nodes, now, |_| {});
    }
    assert!(nodes.iter().all(|n| n.count(MemberStatus::Alive) == 2));
    // The same view, learnt in different orders, sums to the same digest.
    let digest = nodes[0].view_digest();
    assert!(nodes.iter().all(|n| n.view_digest() == digest));

    // Settled: every push-pull period (30 s ± 25 %) each node opens one,
    // and each is answered by nothing at all.
    let streams = |nodes: &[Swim]| nodes.iter().map(|n| n.stats().streams_sent).sum::<u64>();
    let equal = |nodes: &[Swim]| {
        nodes
            .iter()
            .map(|n| n.stats().push_pull_digests_equal)
            .sum::<u64>()
    };
    let (streams_before, equal_before) = (streams(&nodes), equal(&nodes));
    for _ in 0..800 {
        now += Duration::from_millis(100);
        tick(&mut nodes, now, |_| {});
    }
    let opened = streams(&nodes) - streams_before;
    assert!(opened >= 3, "{opened} push-pulls in 80 s");
    assert_eq!(
        equal(&nodes) - equal_before,
        opened,
        "a stream other than an equal digest"
    );

    // A digest that differs gets the receiver's full state, asking for ours.
    let other = packet(1, GEN, Message::PushPullDigest { digest: [0; 16] }, &[]);
    nodes[1].handle_stream(now, addr(1), &other);
    let answer = drain(&mut nodes[1]);
    let [reply] = &answer[..] else {
        panic!("one answer expected: {answer:?}");
    };
    assert_eq!(reply.kind, TransmitKind::Stream);
    let body = wire::open(&PacketSecurity::Plaintext, &reply.bytes).expect("opens");
    let p = wire::decode_packet(&body).expect("decodes");
    assert_eq!(p.message, Message::PushPull { reply: true });
    assert_eq!(records_in(&p).count(), 3, "every member, itself included");
    // The same digest as its own: nothing.
    let same = packet(1, GEN, Message::PushPullDigest { digest }, &[]);
    nodes[1].handle_stream(now, addr(1), &same);
    assert!(drain(&mut nodes[1]).is_empty());
}
