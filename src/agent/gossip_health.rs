//! What a node can tell about its own gossip: packets dropped and why, and
//! plain verdicts over a recent window (30 protocol periods, at least 10 s),
//! such as "UDP seems blocked while TCP works", which otherwise look alike
//! from outside (a node that flaps between alive and dead).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::api::GossipHealth;
use crate::membership::{MemberStatus, Stats, Swim};

/// Verdicts look back this many protocol periods, and at least `MIN_WINDOW`.
const WINDOW_PERIODS: u32 = 30;
const MIN_WINDOW: Duration = Duration::from_secs(10);
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
        let stats = swim.stats();
        let window = (swim.config().protocol_period * WINDOW_PERIODS).max(MIN_WINDOW);
        self.samples.push_back((now, stats));
        while self
            .samples
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= window)
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
    let tcp_only = new.probes_answered_only_by_stream - old.probes_answered_only_by_stream;
    let streams_sent = new.streams_sent - old.streams_sent;
    let streams_failed = new.stream_failures - old.stream_failures;
    let tcp_works = tcp_only > 0
        || streams_sent > streams_failed
        || new.streams_accepted > old.streams_accepted;
    if sent >= MIN_SENT && heard == 0 {
        return Some(if tcp_works {
            format!(
                "UDP seems blocked: {sent} gossip datagrams sent and none received in the last {secs}s, while TCP works; open UDP port {port} both ways"
            )
        } else {
            format!(
                "no gossip datagram received in the last {secs}s ({sent} sent): the peers are down or UDP port {port} is blocked"
            )
        });
    }
    if tcp_only > 0 {
        return Some(format!(
            "UDP fails with some peers: {tcp_only} probes in the last {secs}s were answered only over TCP; check UDP port {port} between the nodes"
        ));
    }
    // One failure can be a peer that just died; most of them failing while
    // datagrams flow is a firewall.
    if streams_failed >= 2 && streams_failed * 2 >= streams_sent && heard > 0 {
        return Some(format!(
            "TCP fails: {streams_failed} of {streams_sent} streams (push-pull, fallback probes) failed in the last {secs}s while UDP gossip works; check TCP port {port} between the nodes"
        ));
    }
    None
}

fn health(stats: &Stats, encrypted: bool, warnings: Vec<String>) -> GossipHealth {
    let dropped: BTreeMap<String, u64> = stats
        .dropped
        .by_reason()
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
        assert!(verdict.starts_with("UDP seems blocked: 60 gossip datagrams sent and none received in the last 60s, while TCP works"), "{verdict}");
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
    fn tcp_failing_while_udp_works_is_named() {
        let verdict = transport_verdict(&stats(0, 0, 0, 0, 0), &stats(60, 58, 4, 2, 0), MIN, 7)
            .expect("a verdict");
        assert!(
            verdict.starts_with("TCP fails: 2 of 4 streams (push-pull, fallback probes) failed"),
            "{verdict}"
        );
        // One failure is a peer going away, not a firewall.
        assert_eq!(
            transport_verdict(&stats(0, 0, 0, 0, 0), &stats(60, 58, 1, 1, 0), MIN, 7),
            None
        );
    }

    #[test]
    fn probes_answered_only_over_tcp_are_named() {
        let old = stats(0, 0, 0, 0, 0);
        let new = Stats {
            probes_answered_only_by_stream: 3,
            ..stats(60, 40, 3, 0, 3)
        };
        let verdict = transport_verdict(&old, &new, MIN, 9).expect("a verdict");
        assert!(
            verdict.starts_with("UDP fails with some peers: 3 probes"),
            "{verdict}"
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
