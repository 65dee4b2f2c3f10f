//! The gossip wire format: a two-byte frame header (wire version, mode),
//! then either the plaintext body or a 96-bit random nonce and the
//! AES-256-GCM ciphertext of it; the body is postcard. Decoding never
//! panics: anything malformed is an error the caller counts and drops.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::keyring::{PacketSecurity, NONCE_LEN, TAG_LEN};
use super::member::{Incarnation, MemberRecord, MemberStatus, NodeId};
use super::user_event::UserEvent;

/// Bumped on any incompatible change of the body; older peers drop ours
/// (counted as decode errors) rather than misread them. 3: acks carry the
/// sender's wall clock (clock-skew estimates). 4: an encrypted gossip
/// packet binds its cluster name as associated data instead of carrying
/// it (`seal_gossip`).
pub const WIRE_VERSION: u8 = 4;
const MODE_PLAINTEXT: u8 = 0;
const MODE_AES_GCM: u8 = 1;
const HEADER_LEN: usize = 2;

/// Bytes the frame adds to a body at most (header, nonce, tag).
pub const FRAME_OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// The biggest UDP payload; anything larger is not one of our datagrams.
pub const MAX_DATAGRAM: usize = 65_507;
/// Push-pull states above this are refused (about 100k members).
pub const MAX_STREAM: usize = 16 << 20;

/// What a packet asks or answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Are you alive? `buddy` tells the target how the sender sees it when
    /// that is suspect or dead, so it can refute at once (Lifeguard).
    Ping {
        seq: u32,
        target: NodeId,
        buddy: Option<(Incarnation, MemberStatus)>,
    },
    Ack {
        seq: u32,
        /// The sender's wall clock (Unix ms) when it answered, so the
        /// prober can estimate how far apart their clocks are; None when
        /// the sender's driver gives it none (the simulator may not).
        wall_ms: Option<u64>,
    },
    /// Please ping `target` for me and forward its ack (indirect probe).
    PingReq {
        seq: u32,
        target: NodeId,
        target_addr: SocketAddr,
    },
    /// I pinged your target and heard nothing (Lifeguard: proves to the
    /// requester that its own link works).
    Nack { seq: u32 },
    /// Only the piggybacked records matter (leave announcements).
    Gossip,
    /// Full state, carried in the packet's gossip (every member record and
    /// the user events still live); `reply` asks for the receiver's own.
    PushPull { reply: bool },
    /// The periodic push-pull's opening: a digest of every (id,
    /// incarnation, status) the sender knows, itself included. A receiver
    /// whose view hashes the same does nothing; one that differs starts a
    /// full `PushPull`. Settled clusters then exchange 16 bytes, not every
    /// record.
    PushPullDigest { digest: [u8; 16] },
}

/// One piggybacked item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gossip {
    Member(MemberRecord),
    Event(UserEvent),
}

/// A decoded packet body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet {
    pub cluster: String,
    pub from: NodeId,
    /// The sender's generation: packets of an older life are dropped.
    pub generation: u64,
    pub message: Message,
    /// Piggybacked updates, user events and anti-entropy records. Last, so
    /// a sender can append items one by one while watching the size.
    pub gossip: Vec<Gossip>,
}

/// The fields of `Packet` before `gossip`, borrowed: it encodes to the
/// same bytes, which lets records be appended separately.
#[derive(Serialize)]
pub struct PacketHead<'a> {
    pub cluster: &'a str,
    pub from: NodeId,
    pub generation: u64,
    pub message: &'a Message,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a gossip frame: {0}")]
    Decode(&'static str),
    #[error("no key of the keyring decrypts the packet")]
    Decrypt,
    #[error("plaintext packet refused: this node requires encryption")]
    PlaintextRefused,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed packet body: {0}")]
pub struct DecodeError(String);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode a gossip message: {0}")]
pub struct EncodeError(String);

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    postcard::to_allocvec(value).map_err(|e| EncodeError(e.to_string()))
}

/// Concatenates an encoded head and encoded records into a `Packet` body.
pub fn assemble(head: &[u8], records: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(body_len(head, records));
    write_body(&mut body, head, records);
    body
}

fn body_len(head: &[u8], records: &[impl AsRef<[u8]>]) -> usize {
    head.len() + varint_len(records.len()) + records.iter().map(|r| r.as_ref().len()).sum::<usize>()
}

fn write_body(out: &mut Vec<u8>, head: &[u8], records: &[impl AsRef<[u8]>]) {
    out.extend_from_slice(head);
    push_varint(out, records.len());
    for record in records {
        out.extend_from_slice(record.as_ref());
    }
}

/// postcard's length prefix: LEB128.
fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Bytes `push_varint` writes for `n`.
pub fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

pub fn decode_packet(body: &[u8]) -> Result<Packet, DecodeError> {
    let (packet, rest) =
        postcard::take_from_bytes::<Packet>(body).map_err(|e| DecodeError(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError(format!("{} trailing bytes", rest.len())));
    }
    Ok(packet)
}

/// The cluster name as a gossip packet's body carries it: the name in the
/// clear; nothing when encrypted, where `seal_gossip` binds it as
/// associated data instead. Every ping and ack is that much smaller, and a
/// packet of another cluster under the same key fails authentication.
pub fn cluster_in_body<'a>(security: &PacketSecurity, cluster: &'a str) -> &'a str {
    match security {
        PacketSecurity::Plaintext => cluster,
        PacketSecurity::Encrypted(_) => "",
    }
}

/// A gossip packet of `cluster` (see `cluster_in_body`), its body the
/// head and records given, framed: the body is written into the frame and
/// encrypted there, one allocation per packet.
pub fn seal_gossip(
    security: &PacketSecurity,
    cluster: &str,
    nonce: [u8; NONCE_LEN],
    head: &[u8],
    records: &[impl AsRef<[u8]>],
) -> Option<Vec<u8>> {
    seal_with(
        security,
        cluster.as_bytes(),
        nonce,
        body_len(head, records),
        |frame| write_body(frame, head, records),
    )
}

/// `open` for a gossip packet of `cluster`, allocated (for tests; a node
/// opens into its kept buffer with `open_gossip_into`).
#[cfg(test)]
pub fn open_gossip(
    security: &PacketSecurity,
    cluster: &str,
    frame: &[u8],
) -> Result<Vec<u8>, FrameError> {
    let mut body = Vec::new();
    open_gossip_into(security, cluster, frame, &mut body)?;
    Ok(body)
}

/// `open` for a gossip packet of `cluster`, the body written into `body`
/// (cleared first; its capacity is reused).
pub fn open_gossip_into(
    security: &PacketSecurity,
    cluster: &str,
    frame: &[u8],
    body: &mut Vec<u8>,
) -> Result<(), FrameError> {
    open_with(security, cluster.as_bytes(), frame, body)
}

/// Wraps a body into a frame; `nonce` must be fresh from a CSPRNG.
pub fn seal(security: &PacketSecurity, nonce: [u8; NONCE_LEN], body: &[u8]) -> Option<Vec<u8>> {
    seal_with(security, &[], nonce, body.len(), |frame| {
        frame.extend_from_slice(body);
    })
}

/// The frame header, then `context`: what an encrypted frame authenticates
/// besides its body.
fn associated_data(header: &[u8; HEADER_LEN], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + context.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(context);
    aad
}

/// A frame whose body (`body_len` bytes) `write` appends; encrypted in
/// place, so the frame is the only allocation.
fn seal_with(
    security: &PacketSecurity,
    context: &[u8],
    nonce: [u8; NONCE_LEN],
    body_len: usize,
    write: impl FnOnce(&mut Vec<u8>),
) -> Option<Vec<u8>> {
    match security {
        PacketSecurity::Plaintext => {
            let mut frame = Vec::with_capacity(HEADER_LEN + body_len);
            frame.extend_from_slice(&[WIRE_VERSION, MODE_PLAINTEXT]);
            write(&mut frame);
            Some(frame)
        }
        PacketSecurity::Encrypted(keyring) => {
            let header = [WIRE_VERSION, MODE_AES_GCM];
            let mut frame = Vec::with_capacity(HEADER_LEN + NONCE_LEN + body_len + TAG_LEN);
            frame.extend_from_slice(&header);
            frame.extend_from_slice(&nonce);
            write(&mut frame);
            let body = frame.get_mut(HEADER_LEN + NONCE_LEN..)?;
            let tag = keyring.seal_in_place(&nonce, &associated_data(&header, context), body)?;
            frame.extend_from_slice(&tag);
            Some(frame)
        }
    }
}

/// The body of a frame, checked against how this node is configured.
pub fn open(security: &PacketSecurity, frame: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut body = Vec::new();
    open_with(security, &[], frame, &mut body)?;
    Ok(body)
}

fn open_with(
    security: &PacketSecurity,
    context: &[u8],
    frame: &[u8],
    body: &mut Vec<u8>,
) -> Result<(), FrameError> {
    body.clear();
    let Some((header, rest)) = frame.split_first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Decode("shorter than the frame header"));
    };
    if header[0] != WIRE_VERSION {
        return Err(FrameError::Decode("unknown wire version"));
    }
    match (header[1], security) {
        (MODE_PLAINTEXT, PacketSecurity::Plaintext) => {
            body.extend_from_slice(rest);
            Ok(())
        }
        (MODE_PLAINTEXT, PacketSecurity::Encrypted(_)) => Err(FrameError::PlaintextRefused),
        (MODE_AES_GCM, PacketSecurity::Plaintext) => Err(FrameError::Decrypt),
        (MODE_AES_GCM, PacketSecurity::Encrypted(keyring)) => {
            let Some((nonce, sealed)) = rest.split_first_chunk::<NONCE_LEN>() else {
                return Err(FrameError::Decode("shorter than the nonce"));
            };
            let Some((ciphertext, tag)) = sealed.split_last_chunk::<TAG_LEN>() else {
                return Err(FrameError::Decode("shorter than the tag"));
            };
            body.resize(ciphertext.len(), 0);
            let aad = associated_data(header, context);
            if keyring.open_into(nonce, &aad, ciphertext, tag, body) {
                Ok(())
            } else {
                body.clear();
                Err(FrameError::Decrypt)
            }
        }
        _ => Err(FrameError::Decode("unknown frame mode")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::keyring::Keyring;
    use crate::membership::payload::Payload;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn record(n: u128) -> MemberRecord {
        MemberRecord {
            id: NodeId(Uuid::from_u128(n)),
            addr: "10.0.0.1:7946".parse().unwrap(),
            incarnation: Incarnation {
                generation: 1_700_000_000_000_000,
                version: 3,
            },
            status: MemberStatus::Suspect,
            payload: Payload {
                roles: vec!["storage".into()],
                ..Payload::default()
            },
            suspecter: Some(NodeId(Uuid::from_u128(9))),
        }
    }

    fn packet() -> Packet {
        Packet {
            cluster: "orders".into(),
            from: NodeId(Uuid::from_u128(1)),
            generation: 42,
            message: Message::Ping {
                seq: 7,
                target: NodeId(Uuid::from_u128(2)),
                buddy: None,
            },
            gossip: vec![
                Gossip::Member(record(3)),
                Gossip::Event(UserEvent {
                    origin: NodeId(Uuid::from_u128(5)),
                    generation: 42,
                    seq: 1,
                    name: "deploy".into(),
                    payload: b"v2".to_vec(),
                    age_ms: 120,
                }),
                Gossip::Member(record(4)),
            ],
        }
    }

    fn head_and_records(p: &Packet) -> (Vec<u8>, Vec<Vec<u8>>) {
        let head = encode(&PacketHead {
            cluster: &p.cluster,
            from: p.from,
            generation: p.generation,
            message: &p.message,
        })
        .unwrap();
        (head, p.gossip.iter().map(|r| encode(r).unwrap()).collect())
    }

    fn body_of(p: &Packet) -> Vec<u8> {
        let (head, records) = head_and_records(p);
        assemble(&head, &records)
    }

    #[test]
    fn head_plus_records_is_the_packet_encoding() {
        let p = packet();
        assert_eq!(body_of(&p), encode(&p).unwrap());
        assert_eq!(decode_packet(&body_of(&p)).unwrap(), p);
    }

    #[test]
    fn varint_len_matches_postcard() {
        for n in [0usize, 1, 127, 128, 16_383, 16_384, 1 << 30] {
            let mut out = Vec::new();
            push_varint(&mut out, n);
            assert_eq!(out.len(), varint_len(n), "{n}");
            assert_eq!(out, encode(&vec![(); n]).unwrap(), "{n}");
        }
    }

    #[test]
    fn frames_round_trip_and_modes_are_enforced() {
        let ring = PacketSecurity::Encrypted(Keyring::new(&[[5; 32]]).unwrap());
        let other = PacketSecurity::Encrypted(Keyring::new(&[[6; 32]]).unwrap());
        let body = body_of(&packet());
        let sealed = seal(&ring, [1; 12], &body).unwrap();
        assert_eq!(sealed.len(), body.len() + FRAME_OVERHEAD);
        assert_eq!(open(&ring, &sealed).unwrap(), body);
        assert_eq!(open(&other, &sealed), Err(FrameError::Decrypt));
        assert_eq!(
            open(&PacketSecurity::Plaintext, &sealed),
            Err(FrameError::Decrypt)
        );
        let plain = seal(&PacketSecurity::Plaintext, [0; 12], &body).unwrap();
        assert_eq!(open(&ring, &plain), Err(FrameError::PlaintextRefused));
        assert_eq!(open(&PacketSecurity::Plaintext, &plain).unwrap(), body);
        let mut future = plain.clone();
        future[0] = WIRE_VERSION + 1;
        assert!(matches!(
            open(&PacketSecurity::Plaintext, &future),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn an_encrypted_gossip_frame_binds_its_cluster_instead_of_carrying_it() {
        let ring = PacketSecurity::Encrypted(Keyring::new(&[[5; 32]]).unwrap());
        let mut p = packet();
        p.cluster = cluster_in_body(&ring, "orders").into();
        assert_eq!(p.cluster, "");
        let body = body_of(&p);
        let (head, records) = head_and_records(&p);
        let sealed = seal_gossip(&ring, "orders", [1; 12], &head, &records).unwrap();
        assert_eq!(open_gossip(&ring, "orders", &sealed).unwrap(), body);
        // Same key, another cluster: not authentic there.
        assert_eq!(
            open_gossip(&ring, "billing", &sealed),
            Err(FrameError::Decrypt)
        );
        assert_eq!(open(&ring, &sealed), Err(FrameError::Decrypt));
        // In the clear the name stays in the body, checked by the receiver.
        assert_eq!(
            cluster_in_body(&PacketSecurity::Plaintext, "orders"),
            "orders"
        );
        let plain = seal_gossip(
            &PacketSecurity::Plaintext,
            "orders",
            [0; 12],
            &head,
            &records,
        )
        .unwrap();
        assert_eq!(
            plain,
            seal(&PacketSecurity::Plaintext, [0; 12], &body).unwrap()
        );
        // No records still counts them: a ping with nothing to piggyback.
        let none: [&[u8]; 0] = [];
        let bare = seal_gossip(&ring, "orders", [2; 12], &head, &none).unwrap();
        assert_eq!(
            open_gossip(&ring, "orders", &bare).unwrap(),
            assemble(&head, &none)
        );
    }

    #[test]
    fn acks_carry_the_wall_clock_and_older_wire_versions_are_dropped() {
        let mut p = packet();
        p.message = Message::Ack {
            seq: 9,
            wall_ms: Some(1_795_420_666_175),
        };
        assert_eq!(decode_packet(&body_of(&p)).unwrap(), p);
        // An older peer's frame (v2: acks without the clock) is not misread.
        let mut old = seal(&PacketSecurity::Plaintext, [0; 12], &body_of(&p)).unwrap();
        old[0] = 2;
        assert_eq!(
            open(&PacketSecurity::Plaintext, &old),
            Err(FrameError::Decode("unknown wire version"))
        );
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut body = body_of(&packet());
        body.push(0);
        assert!(decode_packet(&body).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_packet(&bytes);
            let _ = open(&PacketSecurity::Plaintext, &bytes);
            let ring = PacketSecurity::Encrypted(Keyring::new(&[[5; 32]]).unwrap());
            let _ = open(&ring, &bytes);
        }

        #[test]
        fn mutated_packets_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut body = body_of(&packet());
            for (at, byte) in flips {
                let len = body.len();
                body[at % len] = byte;
            }
            let _ = decode_packet(&body);
            body.truncate(cut % (body.len() + 1));
            let _ = decode_packet(&body);
        }
    }
}
