//! What a node can tell about its own gossip: packets dropped and why, and
//! plain verdicts over the last minute, such as "UDP seems blocked while
//! TCP works", which otherwise look alike from outside (a node that
//! flaps between alive and dead).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::api::GossipHealth;
use crate::membership::{MemberStatus, Stats, Swim};

/// Verdicts look this far back.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Fewer datagrams sent than this in the window say nothing yet.
const MIN_SENT: u64 = 5;

/// Counter snapshots over the last `WINDOW`.
#[derive(Debug, Default)]
pub struct HealthWindow {
    samples: VecDeque<(Instant, Stats)>,
}

impl HealthWindow {
    pub fn report(&mut self, swim: &Swim, encrypted: bool) -> GossipHealth {
        let now = Instant::now();
        let stats = *swim.stats();
        self.samples.push_back((now, stats));
        while self
            .samples
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW)
        {
            self.samples.pop_front();
        }
        let (since, old) = self.samples.front().copied().unwrap_or((now, stats));
        let peers = swim.count(MemberStatus::Alive)
            + swim.count(MemberStatus::Suspect)
            + swim.count(MemberStatus::Dead);
        let mut warnings = drop_warnings(&stats);
        if peers > 0 {
            let port = swim.local().addr.port();
            warnings.extend(transport_verdict(
                &old,
                &stats,
                now.duration_since(since),
                port,
            ));
        }
        health(&stats, encrypted, warnings)
    }
}

fn drop_warnings(stats: &Stats) -> Vec<String> {
    let d = stats.dropped;
    let mut warnings = Vec::new();
    if d.decrypt > 0 {
        warnings.push(format!(
            "{} packets could not be decrypted: a peer uses a key this node lacks",
            d.decrypt
        ));
    }
    if d.plaintext_refused > 0 {
        warnings.push(format!(
            "{} plaintext packets refused: a peer gossips without encryption",
            d.plaintext_refused
        ));
    }
    if d.foreign_cluster > 0 {
        warnings.push(format!(
            "{} packets from another cluster dropped: check `cluster` in the node configs",
            d.foreign_cluster
        ));
    }
    warnings
}

/// Compares two snapshots `span` apart: is UDP, or TCP, failing alone?
pub fn transport_verdict(old: &Stats, new: &Stats, span: Duration, port: u16) -> Option<String> {
    let secs = span.as_secs();
    let sent = new.datagrams_sent - old.datagrams_sent;
    let heard = new.datagrams_accepted - old.datagrams_accepted;
    let streams_sent = new.streams_sent - old.streams_sent;
    let streams_failed = new.stream_failures - old.stream_failures;
    let streams_ok =
        streams_sent.saturating_sub(streams_failed) + (new.streams_accepted - old.streams_accepted);
    if sent >= MIN_SENT && heard == 0 {
        return Some(if streams_ok > 0 {
            format!(
                "UDP seems blocked: {sent} gossip datagrams sent and none received in the last {secs}s, while TCP streams work; open UDP port {port} both ways"
            )
        } else {
            format!(
                "no gossip datagram received in the last {secs}s ({sent} sent): the peers are down or UDP port {port} is blocked"
            )
        });
    }
    if streams_failed > 0 && streams_sent == streams_failed && heard > 0 {
        return Some(format!(
            "TCP seems blocked: {streams_failed} push-pull streams failed in the last {secs}s while UDP gossip works; open TCP port {port} between the nodes"
        ));
    }
    None
}

fn health(stats: &Stats, encrypted: bool, warnings: Vec<String>) -> GossipHealth {
    let d = stats.dropped;
    let dropped: BTreeMap<String, u64> = [
        ("decode", d.decode),
        ("decrypt", d.decrypt),
        ("plaintext_refused", d.plaintext_refused),
        ("foreign_cluster", d.foreign_cluster),
        ("old_generation", d.old_generation),
        ("too_large", d.too_large),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    GossipHealth {
        encrypted,
        datagrams_received: stats.datagrams_received,
        datagrams_sent: stats.datagrams_sent,
        datagram_bytes_sent: stats.datagram_bytes_sent,
        stream_bytes_sent: stats.stream_bytes_sent,
        streams_sent: stats.streams_sent,
        stream_failures: stats.stream_failures,
        user_events_sent: stats.user_events_sent,
        user_events_delivered: stats.user_events_delivered,
        dropped,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(sent: u64, heard: u64, streams: u64, failed: u64, accepted: u64) -> Stats {
        Stats {
            datagrams_sent: sent,
            datagrams_accepted: heard,
            streams_sent: streams,
            stream_failures: failed,
            streams_accepted: accepted,
            ..Stats::default()
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn both_transports_working_says_nothing() {
        let verdict = transport_verdict(&stats(0, 0, 0, 0, 0), &stats(120, 118, 2, 0, 2), MIN, 1);
        assert_eq!(verdict, None);
    }

    #[test]
    fn udp_silent_with_tcp_working_is_named() {
        let verdict =
            transport_verdict(&stats(10, 10, 1, 0, 0), &stats(70, 10, 3, 0, 1), MIN, 3301);
        let verdict = verdict.expect("a verdict");
        assert!(verdict.starts_with("UDP seems blocked: 60 gossip datagrams sent and none received in the last 60s, while TCP streams work"), "{verdict}");
        assert!(verdict.contains("UDP port 3301"), "{verdict}");
    }

    #[test]
    fn udp_silent_without_tcp_evidence_blames_nobody() {
        let verdict = transport_verdict(&stats(0, 0, 0, 0, 0), &stats(60, 0, 2, 2, 0), MIN, 1)
            .expect("a verdict");
        assert!(
            verdict.starts_with("no gossip datagram received"),
            "{verdict}"
        );
    }

    #[test]
    fn tcp_failing_alone_is_named() {
        let verdict = transport_verdict(&stats(0, 0, 0, 0, 0), &stats(60, 58, 2, 2, 0), MIN, 7)
            .expect("a verdict");
        assert!(
            verdict.starts_with("TCP seems blocked: 2 push-pull streams failed"),
            "{verdict}"
        );
        // One stream got through: not blocked, just a peer going away.
        assert_eq!(
            transport_verdict(&stats(0, 0, 0, 0, 0), &stats(60, 58, 3, 2, 0), MIN, 7),
            None
        );
    }

    #[test]
    fn too_few_datagrams_say_nothing_yet() {
        assert_eq!(
            transport_verdict(&stats(0, 0, 0, 0, 0), &stats(4, 0, 0, 0, 0), MIN, 1),
            None
        );
    }
}
