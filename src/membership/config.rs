//! The knobs of the SWIM state machine, with defaults close to memberlist's
//! LAN profile (period 1 s, ack timeout 500 ms, 3 indirect probes,
//! 1400-byte packets) and Lifeguard on.

use std::time::Duration;

/// Tuning of one `Swim` instance. Every node of a cluster should use the
/// same values; nothing breaks if they differ, detection times just vary.
#[derive(Clone, Debug, PartialEq)]
pub struct SwimConfig {
    /// Packets of another cluster are dropped.
    pub cluster: String,
    /// One probe per period (scaled by the local health multiplier).
    pub protocol_period: Duration,
    /// A direct ping unanswered after this goes indirect.
    pub ack_timeout: Duration,
    /// k: members asked to ping a silent target on our behalf.
    pub indirect_checks: usize,
    /// Also ping a silent target over TCP (memberlist's fallback): an
    /// answer there keeps it alive and tells that UDP is what fails.
    pub stream_fallback_probe: bool,
    /// Minimum suspicion = this × max(1, log10 N) × period.
    pub suspicion_multiplier: u32,
    /// Lifeguard: a suspicion nobody confirms lasts this × the minimum.
    pub suspicion_max_multiplier: u32,
    /// λ: each update is sent λ·⌈log₂(N+1)⌉ times. 4, memberlist's: with
    /// 2 and no anti-entropy records, a busy seed missed a leave in the
    /// churn simulation (g, seed 13) and declared the leaver dead.
    pub retransmit_multiplier: u32,
    /// λ for an alive member's new payload (status unchanged). After an
    /// apply all N members publish at once. 2: in the simulator at 500
    /// nodes it left no view stale and all current as soon as 4 did
    /// (~30 s), with half the datagrams; 1 left ~30 views to wait for a
    /// push-pull, 2 minutes (`payload_wave_figures`, docs/benchmarks.md).
    pub payload_retransmit_multiplier: u32,
    /// No datagram is ever bigger (encryption included), so never fragmented.
    pub max_packet_size: usize,
    /// Random member records added to every datagram (anti-entropy).
    /// 0 by default: they tripled a settled node's bytes, and the digest
    /// push-pull repairs a view that missed an update instead.
    pub anti_entropy_records: usize,
    /// Full-state exchange over a stream with one random member; stretched
    /// ×(1 + ⌈log₂(N/32)⌉) above 32 members so its cost per node stays flat.
    pub push_pull_interval: Duration,
    /// How often one random dead member is pinged, so that halves of a
    /// healed partition find each other again.
    pub reconnect_interval: Duration,
    /// Dead and left records are forgotten this long after the fact;
    /// `None` keeps them forever.
    pub reclaim_after: Option<Duration>,
    /// Lifeguard: the local health score caps here; timeouts and the probe
    /// interval are multiplied by score + 1.
    pub max_local_health: u32,
    /// Members told directly of a graceful leave (gossip does the rest).
    pub leave_fanout: usize,
    /// While updates are pending, every this often they are also sent to
    /// `gossip_fanout` random members (besides riding on pings and acks),
    /// so news spreads in a few hundred ms rather than a period per hop.
    pub gossip_interval: Duration,
    pub gossip_fanout: usize,
    /// User events older than this are neither forwarded nor accepted.
    pub user_event_ttl: Duration,
    /// User events of this node still being spread at most; more are
    /// refused with a clear error rather than queued without bound.
    pub max_pending_user_events: usize,
}

impl Default for SwimConfig {
    fn default() -> Self {
        SwimConfig {
            cluster: "cohort".to_string(),
            protocol_period: Duration::from_secs(1),
            ack_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            stream_fallback_probe: true,
            suspicion_multiplier: 4,
            suspicion_max_multiplier: 6,
            retransmit_multiplier: 4,
            payload_retransmit_multiplier: 2,
            max_packet_size: 1400,
            anti_entropy_records: 0,
            push_pull_interval: Duration::from_secs(30),
            reconnect_interval: Duration::from_secs(2),
            reclaim_after: Some(Duration::from_secs(3600)),
            max_local_health: 8,
            leave_fanout: 5,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            user_event_ttl: Duration::from_secs(300),
            max_pending_user_events: 64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("gossip {0} must be greater than zero")]
    ZeroDuration(&'static str),
    #[error("gossip ack timeout ({ack_ms} ms) must be shorter than the protocol period ({period_ms} ms)")]
    AckTimeoutTooLong { ack_ms: u128, period_ms: u128 },
    #[error("gossip max packet size {size} is too small: at least {min} bytes are needed")]
    PacketTooSmall { size: usize, min: usize },
    #[error("gossip max packet size {size} is above the largest UDP payload (65507)")]
    PacketTooLarge { size: usize },
    #[error("gossip {0} must be at least 1")]
    ZeroCount(&'static str),
    #[error("the cluster name must be 1 to 64 bytes long")]
    ClusterName,
    #[error("the payload given at start does not fit: {0}")]
    Payload(#[from] super::payload::PayloadTooLarge),
}

impl SwimConfig {
    /// Smallest packet that still holds a protocol message and a record.
    pub const MIN_PACKET_SIZE: usize = 512;

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, d) in [
            ("protocol period", self.protocol_period),
            ("ack timeout", self.ack_timeout),
            ("push-pull interval", self.push_pull_interval),
            ("reconnect interval", self.reconnect_interval),
            ("gossip interval", self.gossip_interval),
            ("user event ttl", self.user_event_ttl),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if self.ack_timeout >= self.protocol_period {
            return Err(ConfigError::AckTimeoutTooLong {
                ack_ms: self.ack_timeout.as_millis(),
                period_ms: self.protocol_period.as_millis(),
            });
        }
        if self.max_packet_size < Self::MIN_PACKET_SIZE {
            return Err(ConfigError::PacketTooSmall {
                size: self.max_packet_size,
                min: Self::MIN_PACKET_SIZE,
            });
        }
        if self.max_packet_size > 65_507 {
            return Err(ConfigError::PacketTooLarge {
                size: self.max_packet_size,
            });
        }
        for (name, n) in [
            ("suspicion multiplier", self.suspicion_multiplier),
            ("suspicion max multiplier", self.suspicion_max_multiplier),
            ("retransmit multiplier", self.retransmit_multiplier),
            (
                "payload retransmit multiplier",
                self.payload_retransmit_multiplier,
            ),
        ] {
            if n == 0 {
                return Err(ConfigError::ZeroCount(name));
            }
        }
        if self.cluster.is_empty() || self.cluster.len() > 64 {
            return Err(ConfigError::ClusterName);
        }
        Ok(())
    }
}
