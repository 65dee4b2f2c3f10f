//! Counters a node keeps about its traffic, above all the packets it had to
//! drop and why, so that status can say "12 packets could not be decrypted"
//! instead of a node silently staying alone.

/// Packets dropped, by reason. None of these is fatal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropStats {
    /// Not a packet of ours: bad framing, unknown wire version, bad body.
    pub decode: u64,
    /// No key of the keyring opens it (or it was tampered with).
    pub decrypt: u64,
    /// A plaintext packet while encryption is required.
    pub plaintext_refused: u64,
    /// A well-formed packet of another cluster.
    pub foreign_cluster: u64,
    /// Sent by an older generation of a member that has restarted since.
    pub old_generation: u64,
    /// Bigger than any packet we would accept.
    pub too_large: u64,
}

impl DropStats {
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }

    /// Each reason's name, as the API and `/metrics` show it, and count.
    pub fn by_reason(&self) -> [(&'static str, u64); 6] {
        [
            ("decode", self.decode),
            ("decrypt", self.decrypt),
            ("plaintext_refused", self.plaintext_refused),
            ("foreign_cluster", self.foreign_cluster),
            ("old_generation", self.old_generation),
            ("too_large", self.too_large),
        ]
    }
}

/// Upper bounds of the probe round-trip buckets, in µs (250 µs to 1 s).
pub const RTT_BUCKETS_US: [u64; 12] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
];

/// Round-trip times in fixed buckets, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttHistogram {
    /// `counts[i]`: round trips in (`RTT_BUCKETS_US[i-1]`,
    /// `RTT_BUCKETS_US[i]`] (not cumulative); the last: above every bound.
    pub counts: [u64; RTT_BUCKETS_US.len() + 1],
    pub sum_us: u64,
}

impl RttHistogram {
    pub fn observe(&mut self, rtt: std::time::Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        let bucket = RTT_BUCKETS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(RTT_BUCKETS_US.len());
        self.counts[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Traffic of one node since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub datagrams_sent: u64,
    pub datagram_bytes_sent: u64,
    pub streams_sent: u64,
    pub stream_bytes_sent: u64,
    pub datagrams_received: u64,
    pub streams_received: u64,
    /// Bytes of what was received, before decryption and checks.
    pub datagram_bytes_received: u64,
    pub stream_bytes_received: u64,
    /// Direct probes (UDP ping, ack before any ping-req): round trips.
    pub probe_rtt: RttHistogram,
    /// Received and accepted (decrypted, of our cluster, current life):
    /// these tell whether UDP and TCP each work with the peers.
    pub datagrams_accepted: u64,
    pub streams_accepted: u64,
    /// Streams the driver could not deliver (connect or write failed).
    pub stream_failures: u64,
    /// Probes that failed over UDP but were answered over TCP.
    pub probes_answered_only_by_stream: u64,
    /// Periodic push-pulls a peer opened with a digest equal to our view:
    /// no full exchange was needed.
    pub push_pull_digests_equal: u64,
    pub dropped: DropStats,
    /// Where the last packet that no key decrypts came from.
    pub last_undecryptable_from: Option<std::net::SocketAddr>,
    /// Suspicions of this node that it refuted.
    pub refutations: u64,
    /// Claims about this node with a version it never issued (forged).
    pub impossible_claims: u64,
    pub user_events_sent: u64,
    pub user_events_delivered: u64,
    /// Copies of events delivered before (retransmissions, push-pull).
    pub user_events_duplicate: u64,
    /// Copies past their TTL or of an earlier life of their origin.
    pub user_events_stale: u64,
    /// Events whose name no sender could have sent (dropped).
    pub user_events_invalid: u64,
    /// Member updates waiting to be piggybacked (a gauge, filled in by
    /// `Swim::stats`): non-zero while news, such as the new payloads
    /// after an apply, is still being spread.
    pub pending_updates: u64,
}
