//! The handshake, sans-I/O: each side proves it holds the cluster key and
//! that it is live, before the server reads a single request.
//!
//! ```text
//! client                                   server
//!   CRP1, Hello{cluster, versions, Cc}  →        (seq 0, bound to nothing)
//!        ← Hello{cluster, versions, Cs, echo Cc} (seq 0, bound to Cc)
//!   Proof{echo Cs}                      →        (seq 1, bound to Cc, Cs)
//!   requests…                           →   ← responses… (bound to Cc, Cs)
//! ```
//!
//! A peer without the key gets nothing back: its hello does not open, and
//! the server closes. A recording of an old connection replays its hello
//! (which opens) but not its proof: that was sealed for another `Cs`. All
//! later frames are bound to both challenges, so none of an old
//! connection's frames fits a new one either.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::message::{decode, encode, Hello, Proof};
use super::seal::{Binding, Challenge, Direction, OpenError, Opener, Sealer};
use super::{ClusterAuth, MAX_HANDSHAKE_FRAME, MAX_VERSION, MIN_VERSION};

/// Why a handshake failed. The server keeps the reason to itself (it is
/// counted and logged); the peer only sees the connection close.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// Not a handshake frame: garbage, or some other protocol.
    Malformed,
    /// No key of the keyring opens it.
    BadKey,
    /// Plaintext sent to a node that requires encryption.
    Plaintext,
    /// Encrypted frames sent to a node that has no key.
    Sealed,
    WrongCluster,
    /// No protocol version both ends speak.
    Version,
    /// The peer did not echo our challenge: a recording played back.
    Replay,
    /// Not done within the handshake deadline.
    Timeout,
    /// The peer closed the connection first.
    Closed,
    /// Too many handshakes in progress on this node.
    Busy,
}

impl Refusal {
    pub const ALL: [Refusal; 10] = [
        Refusal::Malformed,
        Refusal::BadKey,
        Refusal::Plaintext,
        Refusal::Sealed,
        Refusal::WrongCluster,
        Refusal::Version,
        Refusal::Replay,
        Refusal::Timeout,
        Refusal::Closed,
        Refusal::Busy,
    ];

    /// A short name for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::BadKey => "bad_key",
            Refusal::Plaintext => "plaintext",
            Refusal::Sealed => "sealed",
            Refusal::WrongCluster => "wrong_cluster",
            Refusal::Version => "version",
            Refusal::Replay => "replay",
            Refusal::Timeout => "timeout",
            Refusal::Closed => "closed",
            Refusal::Busy => "busy",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Malformed => "not a cohort rpc handshake",
            Refusal::BadKey => "no key of our keyring opens the peer's handshake (different gossip keys?)",
            Refusal::Plaintext => "the peer sent plaintext and this node requires encryption",
            Refusal::Sealed => "the peer encrypts and this node has no key",
            Refusal::WrongCluster => "the peer belongs to another cluster",
            Refusal::Version => "no rpc protocol version in common with the peer",
            Refusal::Replay => "the peer did not echo our challenge (a replayed connection?)",
            Refusal::Timeout => "the handshake did not complete in time",
            Refusal::Closed => "the peer closed the connection during the handshake (wrong key or cluster, or not a cohort rpc port)",
            Refusal::Busy => "too many handshakes in progress",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitProof,
    Established,
    Failed(Refusal),
}

/// One side of a handshake: fed the frames the peer sends, drained of the
/// bytes to send.
#[derive(Debug)]
pub struct Handshake {
    role: Role,
    cluster: String,
    min_version: u16,
    max_version: u16,
    sealer: Sealer,
    opener: Opener,
    own: Challenge,
    binding: Binding,
    state: State,
    outbox: Vec<u8>,
    version: Option<u16>,
}

/// An established connection's ciphers and protocol version.
#[derive(Debug)]
pub struct Session {
    pub version: u16,
    pub sealer: Sealer,
    pub opener: Opener,
}

impl Handshake {
    /// The connecting side; its hello is queued at once. `seed` feeds the
    /// challenge and the nonces: from the OS, fixed only in tests.
    pub fn client(auth: &ClusterAuth, seed: [u8; 32]) -> Handshake {
        Handshake::client_with_versions(auth, seed, MIN_VERSION, MAX_VERSION)
    }

    /// A client that claims other versions (tests of the negotiation).
    pub(crate) fn client_with_versions(
        auth: &ClusterAuth,
        seed: [u8; 32],
        min_version: u16,
        max_version: u16,
    ) -> Handshake {
        let mut hs = Handshake::new(Role::Client, auth, seed, min_version, max_version);
        hs.binding.client = hs.own;
        let hello = Hello {
            cluster: hs.cluster.clone(),
            min_version,
            max_version,
            challenge: hs.own,
            echo: None,
        };
        hs.opener.bind(Binding {
            client: hs.own,
            server: [0; 32],
        });
        // A failure stays in `refusal()`.
        let _ = hs.send(&encode(&hello));
        hs
    }

    /// The accepting side; it speaks only after the client's hello.
    pub fn server(auth: &ClusterAuth, seed: [u8; 32]) -> Handshake {
        Handshake::new(Role::Server, auth, seed, MIN_VERSION, MAX_VERSION)
    }

    fn new(
        role: Role,
        auth: &ClusterAuth,
        seed: [u8; 32],
        min_version: u16,
        max_version: u16,
    ) -> Handshake {
        let mut rng = StdRng::from_seed(seed);
        let mut own = [0u8; 32];
        rng.fill_bytes(&mut own);
        let mut nonce_seed = [0u8; 32];
        rng.fill_bytes(&mut nonce_seed);
        let (out, into) = match role {
            Role::Client => (Direction::ClientToServer, Direction::ServerToClient),
            Role::Server => (Direction::ServerToClient, Direction::ClientToServer),
        };
        Handshake {
            role,
            cluster: auth.cluster.clone(),
            min_version,
            max_version,
            sealer: Sealer::new(&auth.security, out, nonce_seed),
            opener: Opener::new(&auth.security, into),
            own,
            binding: Binding::default(),
            state: State::AwaitHello,
            outbox: Vec::new(),
            version: None,
        }
    }

    /// Handshake messages are a few hundred bytes; the cluster name is the
    /// only variable part, and names are validated short.
    fn send(&mut self, plaintext: &[u8]) -> Result<(), Refusal> {
        match self
            .sealer
            .seal_into(&mut self.outbox, plaintext, MAX_HANDSHAKE_FRAME)
        {
            Ok(()) => Ok(()),
            Err(_) => self.fail(Refusal::Malformed),
        }
    }

    fn fail(&mut self, refusal: Refusal) -> Result<(), Refusal> {
        self.state = State::Failed(refusal);
        Err(refusal)
    }

    /// The bytes to write now (length-prefixed frames), if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.outbox.is_empty()).then(|| std::mem::take(&mut self.outbox))
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Why the handshake failed, once it has.
    pub fn refusal(&self) -> Option<Refusal> {
        match self.state {
            State::Failed(refusal) => Some(refusal),
            _ => None,
        }
    }

    /// The ciphers for the rest of the connection, once established.
    pub fn into_session(self) -> Option<Session> {
        Some(Session {
            version: self.version.filter(|_| self.is_established())?,
            sealer: self.sealer,
            opener: self.opener,
        })
    }

    /// One frame from the peer (without its length prefix).
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<(), Refusal> {
        match (self.state, self.role) {
            (State::Failed(refusal), _) => Err(refusal),
            // Nothing more belongs to the handshake; the caller should
            // have switched to the session.
            (State::Established, _) => self.fail(Refusal::Malformed),
            (State::AwaitHello, Role::Server) => self.server_hello(frame),
            (State::AwaitHello, Role::Client) => self.client_hello(frame),
            (State::AwaitProof, _) => self.proof(frame),
        }
    }

    fn open_hello(&mut self, frame: &[u8]) -> Result<Hello, Refusal> {
        let plaintext = self.opener.open(frame).map_err(|e| match e {
            OpenError::Plaintext => Refusal::Plaintext,
            OpenError::Sealed => Refusal::Sealed,
            OpenError::Unauthentic => Refusal::BadKey,
            OpenError::Truncated | OpenError::UnknownMode(_) => Refusal::Malformed,
        })?;
        let hello: Hello = decode(&plaintext).map_err(|_| Refusal::Malformed)?;
        if hello.cluster != self.cluster {
            return Err(Refusal::WrongCluster);
        }
        Ok(hello)
    }

    fn negotiate(&self, hello: &Hello) -> Option<u16> {
        let version = self.max_version.min(hello.max_version);
        (version >= self.min_version.max(hello.min_version)).then_some(version)
    }

    fn server_hello(&mut self, frame: &[u8]) -> Result<(), Refusal> {
        let hello = match self.open_hello(frame) {
            Ok(hello) if hello.echo.is_none() => hello,
            Ok(_) => return self.fail(Refusal::Malformed),
            Err(refusal) => return self.fail(refusal),
        };
        self.binding.client = hello.challenge;
        self.sealer.bind(Binding {
            client: hello.challenge,
            server: [0; 32],
        });
        let reply = Hello {
            cluster: self.cluster.clone(),
            min_version: self.min_version,
            max_version: self.max_version,
            challenge: self.own,
            echo: Some(hello.challenge),
        };
        // Sent even when no version fits: the peer holds the key, and
        // "no common version" is what an operator needs to hear during a
        // rolling upgrade.
        self.send(&encode(&reply))?;
        let Some(version) = self.negotiate(&hello) else {
            return self.fail(Refusal::Version);
        };
        self.version = Some(version);
        self.binding.server = self.own;
        self.sealer.bind(self.binding);
        self.opener.bind(self.binding);
        self.state = State::AwaitProof;
        Ok(())
    }

    fn client_hello(&mut self, frame: &[u8]) -> Result<(), Refusal> {
        let hello = match self.open_hello(frame) {
            Ok(hello) => hello,
            Err(refusal) => return self.fail(refusal),
        };
        if hello.echo != Some(self.own) {
            return self.fail(Refusal::Replay);
        }
        let Some(version) = self.negotiate(&hello) else {
            return self.fail(Refusal::Version);
        };
        self.version = Some(version);
        self.binding.server = hello.challenge;
        self.sealer.bind(self.binding);
        self.opener.bind(self.binding);
        self.send(&encode(&Proof {
            echo: hello.challenge,
        }))?;
        self.state = State::Established;
        Ok(())
    }

    fn proof(&mut self, frame: &[u8]) -> Result<(), Refusal> {
        let plaintext = match self.opener.open(frame) {
            Ok(plaintext) => plaintext,
            // The hello opened under this keyring, so a proof that does
            // not was sealed for another connection.
            Err(OpenError::Unauthentic) => return self.fail(Refusal::Replay),
            Err(_) => return self.fail(Refusal::Malformed),
        };
        match decode::<Proof>(&plaintext) {
            Ok(proof) if proof.echo == self.own => {
                self.state = State::Established;
                Ok(())
            }
            Ok(_) => self.fail(Refusal::Replay),
            Err(_) => self.fail(Refusal::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{Keyring, PacketSecurity};
    use crate::rpc::frame::FrameDecoder;
    use crate::rpc::MAX_FRAME;
    use proptest::prelude::*;

    fn auth(cluster: &str, key: Option<u8>) -> ClusterAuth {
        ClusterAuth {
            cluster: cluster.into(),
            security: match key {
                Some(k) => PacketSecurity::Encrypted(Keyring::new(&[[k; 32]]).unwrap()),
                None => PacketSecurity::Plaintext,
            },
        }
    }

    fn frames(wire: Option<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut decoder = FrameDecoder::new(MAX_FRAME);
        decoder.push(&wire.unwrap_or_default());
        std::iter::from_fn(|| decoder.next_frame().unwrap()).collect()
    }

    /// Runs a handshake to its end; returns both sides and every frame
    /// the client sent.
    fn run(mut client: Handshake, mut server: Handshake) -> (Handshake, Handshake, Vec<Vec<u8>>) {
        let mut sent = Vec::new();
        for _ in 0..4 {
            for frame in frames(client.poll_transmit()) {
                sent.push(frame.clone());
                if server.handle_frame(&frame).is_err() {
                    break;
                }
            }
            for frame in frames(server.poll_transmit()) {
                if client.handle_frame(&frame).is_err() {
                    break;
                }
            }
        }
        (client, server, sent)
    }

    #[test]
    fn both_sides_establish_and_their_sessions_interoperate() {
        for key in [Some(1), None] {
            let a = auth("orders", key);
            let (client, server, _) = run(
                Handshake::client(&a, [1; 32]),
                Handshake::server(&a, [2; 32]),
            );
            assert!(
                client.is_established() && server.is_established(),
                "key {key:?}"
            );
            let mut client = client.into_session().unwrap();
            let mut server = server.into_session().unwrap();
            assert_eq!((client.version, server.version), (MAX_VERSION, MAX_VERSION));
            let mut wire = Vec::new();
            client
                .sealer
                .seal_into(&mut wire, b"request", MAX_FRAME)
                .unwrap();
            assert_eq!(
                server.opener.open(&frames(Some(wire))[0]).unwrap(),
                b"request"
            );
            let mut wire = Vec::new();
            server
                .sealer
                .seal_into(&mut wire, b"response", MAX_FRAME)
                .unwrap();
            assert_eq!(
                client.opener.open(&frames(Some(wire))[0]).unwrap(),
                b"response"
            );
        }
    }

    /// The server's refusal, and proof that it sent nothing back.
    fn refused_by_server(client: &ClusterAuth, server: &ClusterAuth) -> Refusal {
        let (_, mut server, _) = run(
            Handshake::client(client, [1; 32]),
            Handshake::server(server, [2; 32]),
        );
        assert_eq!(server.poll_transmit(), None, "an outsider gets nothing");
        server.refusal().expect("refused")
    }

    #[test]
    fn outsiders_are_refused_with_nothing_sent_back() {
        let ours = auth("orders", Some(1));
        assert_eq!(
            refused_by_server(&auth("orders", Some(2)), &ours),
            Refusal::BadKey
        );
        assert_eq!(
            refused_by_server(&auth("orders", None), &ours),
            Refusal::Plaintext
        );
        assert_eq!(
            refused_by_server(&auth("billing", Some(1)), &ours),
            Refusal::WrongCluster
        );
        assert_eq!(
            refused_by_server(&auth("orders", Some(1)), &auth("orders", None)),
            Refusal::Sealed
        );
        assert_eq!(
            refused_by_server(&auth("billing", None), &auth("orders", None)),
            Refusal::WrongCluster
        );

        let mut server = Handshake::server(&ours, [2; 32]);
        assert_eq!(
            server.handle_frame(b"GET / HTTP/1.1"),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            server.handle_frame(b"anything after"),
            Err(Refusal::Malformed)
        );
        assert_eq!(server.poll_transmit(), None);
    }

    #[test]
    fn the_client_refuses_a_server_without_our_key() {
        let mut client = Handshake::client(&auth("orders", Some(1)), [1; 32]);
        let mut impostor = Handshake::client(&auth("orders", Some(2)), [3; 32]);
        let frame = frames(impostor.poll_transmit()).remove(0);
        assert_eq!(client.handle_frame(&frame), Err(Refusal::BadKey));
        assert!(client.into_session().is_none());
    }

    #[test]
    fn a_replayed_connection_fails_at_the_proof() {
        for key in [Some(1), None] {
            let a = auth("orders", key);
            let (_, _, recorded) = run(
                Handshake::client(&a, [1; 32]),
                Handshake::server(&a, [2; 32]),
            );
            assert_eq!(recorded.len(), 2);
            let mut server = Handshake::server(&a, [3; 32]);
            assert_eq!(
                server.handle_frame(&recorded[0]),
                Ok(()),
                "an old hello opens"
            );
            assert_eq!(
                server.handle_frame(&recorded[1]),
                Err(Refusal::Replay),
                "key {key:?}"
            );
            assert!(server.into_session().is_none());
        }
    }

    #[test]
    fn a_request_in_place_of_the_proof_is_refused() {
        let a = auth("orders", Some(1));
        let mut client = Handshake::client(&a, [1; 32]);
        let mut server = Handshake::server(&a, [2; 32]);
        for frame in frames(client.poll_transmit()) {
            server.handle_frame(&frame).unwrap();
        }
        for frame in frames(server.poll_transmit()) {
            client.handle_frame(&frame).unwrap();
        }
        let _proof = client.poll_transmit();
        let mut session = client.into_session().unwrap();
        let mut wire = Vec::new();
        let request = crate::rpc::message::encode_request(1, 1000, "m", &[0; 64]);
        session
            .sealer
            .seal_into(&mut wire, &request, MAX_FRAME)
            .unwrap();
        // The request took the proof's sequence number, so it opens; its
        // content is not a proof of the right challenge.
        assert!(server.handle_frame(&frames(Some(wire))[0]).is_err());
        assert!(!server.is_established());
    }

    #[test]
    fn no_common_version_is_told_to_a_key_holder() {
        let a = auth("orders", Some(1));
        let client = Handshake::client_with_versions(&a, [1; 32], MAX_VERSION + 1, MAX_VERSION + 2);
        let (client, server, _) = run(client, Handshake::server(&a, [2; 32]));
        assert_eq!(server.refusal(), Some(Refusal::Version));
        assert_eq!(client.refusal(), Some(Refusal::Version));

        let newer = Handshake::client_with_versions(&a, [1; 32], MIN_VERSION, MAX_VERSION + 5);
        let (client, server, _) = run(newer, Handshake::server(&a, [2; 32]));
        assert_eq!(client.into_session().unwrap().version, MAX_VERSION);
        assert_eq!(server.into_session().unwrap().version, MAX_VERSION);
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic_either_side(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..4),
        ) {
            for key in [Some(1), None] {
                let a = auth("orders", key);
                let mut server = Handshake::server(&a, [2; 32]);
                let mut client = Handshake::client(&a, [1; 32]);
                for frame in &frames {
                    let _ = server.handle_frame(frame);
                    let _ = client.handle_frame(frame);
                }
                prop_assert!(!server.is_established());
            }
        }
    }
}
