//! `GET /metrics`: the node's state as Prometheus metrics, read at scrape
//! time from what the agent already publishes (status, members, the Raft
//! view, gossip counters) plus a few counters the API keeps from the
//! changes it is told of (applies, installs, member status changes).
//!
//! Written by hand rather than with a metrics crate: every value already
//! lives in the agent's own state, so a registry would only copy it; what
//! is left is the text format, a page of code. A scraper that asks for
//! OpenMetrics (`Accept: application/openmetrics-text`, as Prometheus does)
//! gets OpenMetrics 1.0; anyone else gets the Prometheus text format 0.0.4,
//! which is what `promtool check metrics` reads. The two differ only in how
//! a counter's family is named (`x` with samples `x_total`, or `x_total`),
//! in `# UNIT` lines and in the closing `# EOF`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{ApiEvent, ApplyState, Members, Status, TopologyFileState};
use crate::membership::{RttHistogram, Stats, RTT_BUCKETS_US};

/// Which text format a scraper gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it, else the Prometheus
    /// text format (curl, promtool, old scrapers).
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Counters the API keeps from what the agent tells it: each apply this
/// node decided or rejected, each version installed, each member status
/// change this node saw. They start at 0 with the agent, like every
/// counter here.
#[derive(Clone, Debug, PartialEq)]
pub struct Counters {
    /// By result: `committed`, `aborted`, `rejected` (invalid text, stale
    /// edit, not started).
    pub applies: BTreeMap<&'static str, u64>,
    /// By result: `ok`, `failed` (the topology file or a role's apply).
    pub installs: BTreeMap<&'static str, u64>,
    /// Member status changes this node saw, by the new status.
    pub status_changes: BTreeMap<&'static str, u64>,
    /// How long the applies this node started took to be decided.
    pub apply_seconds: Histogram,
}

/// Upper bounds of the apply duration buckets, in seconds.
const APPLY_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Observations in fixed buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `counts[i]`: observations in (`bounds[i-1]`, `bounds[i]`]; the
    /// last: above every bound.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
    }
}

const STATUSES: [&str; 4] = ["alive", "suspect", "dead", "left"];

impl Default for Counters {
    fn default() -> Self {
        // Every label value exists from the start, so that a first
        // increment is a change `rate()` sees.
        Counters {
            applies: ["committed", "aborted", "rejected"]
                .into_iter()
                .map(|r| (r, 0))
                .collect(),
            installs: ["ok", "failed"].into_iter().map(|r| (r, 0)).collect(),
            status_changes: STATUSES.into_iter().map(|s| (s, 0)).collect(),
            apply_seconds: Histogram::new(&APPLY_BUCKETS),
        }
    }
}

impl Counters {
    /// Counts what changed in the apply state: a new last apply, a new
    /// install.
    pub fn observe_apply(&mut self, before: Option<&ApplyState>, after: Option<&ApplyState>) {
        let Some(after) = after else { return };
        if let Some(last) = &after.last {
            if before.and_then(|b| b.last.as_ref()) != Some(last) {
                let result = match (&last.txn, last.committed) {
                    (_, Some(_)) => "committed",
                    (Some(_), None) => "aborted",
                    (None, None) => "rejected",
                };
                *self.applies.entry(result).or_default() += 1;
                if let Some(ms) = last.took_ms {
                    self.apply_seconds.observe(ms / 1000.0);
                }
            }
        }
        if let Some(install) = &after.install {
            if before.and_then(|b| b.install.as_ref()) != Some(install) {
                let result = if install.error.is_none() {
                    "ok"
                } else {
                    "failed"
                };
                *self.installs.entry(result).or_default() += 1;
            }
        }
    }

    /// Counts a member status change (`member-status`, detail `FROM -> TO`).
    pub fn observe_event(&mut self, event: &ApiEvent) {
        if event.kind != "member-status" {
            return;
        }
        let to = event.detail.rsplit_once(" -> ").map(|(_, to)| to.trim());
        if let Some(to) = STATUSES.into_iter().find(|s| Some(*s) == to) {
            *self.status_changes.entry(to).or_default() += 1;
        }
    }
}

/// Everything one scrape shows.
pub struct Scrape<'a> {
    pub status: &'a Status,
    pub members: &'a Members,
    pub counters: &'a Counters,
    /// The gossip layer's own counters; None when it did not answer in time
    /// (its families are then left out of this scrape).
    pub gossip: Option<&'a Stats>,
}

/// The scrape as text in `format`.
pub fn render(scrape: &Scrape<'_>, format: Format) -> String {
    let mut w = Writer {
        out: String::with_capacity(8 * 1024),
        format,
    };
    node(&mut w, scrape.status);
    members(&mut w, scrape.members, scrape.counters);
    if let Some(stats) = scrape.gossip {
        gossip(&mut w, stats, scrape.members.gossip.encrypted);
    }
    raft(&mut w, scrape.status);
    applies(&mut w, scrape.status, scrape.counters);
    if format == Format::OpenMetrics {
        w.out.push_str("# EOF\n");
    }
    w.out
}

fn node(w: &mut Writer, s: &Status) {
    w.gauge(
        "cohort_node_info",
        "This node: its name, UUID, cluster and cohort version (always 1).",
        None,
        [(
            labels(&[
                ("node", &s.node),
                ("uuid", &s.uuid.to_string()),
                ("cluster", &s.cluster),
                ("version", &s.version),
            ]),
            1.0,
        )],
    );
    w.gauge(
        "cohort_start_time_seconds",
        "When this run of the agent started, Unix time.",
        Some("seconds"),
        [(String::new(), s.started_at_ms as f64 / 1000.0)],
    );
    w.gauge(
        "cohort_node_generation",
        "This run's generation (start time in microseconds, grows at every restart).",
        None,
        [(String::new(), s.generation as f64)],
    );
}

fn members(w: &mut Writer, members: &Members, counters: &Counters) {
    let mut by_status: BTreeMap<&str, u64> = STATUSES.into_iter().map(|s| (s, 0)).collect();
    for m in &members.members {
        if let Some(count) = by_status.get_mut(m.status.as_str()) {
            *count += 1;
        }
    }
    w.gauge(
        "cohort_members",
        "Members this node knows (itself included), by status.",
        None,
        by_status
            .iter()
            .map(|(status, n)| (labels(&[("status", status)]), *n as f64)),
    );
    w.counter(
        "cohort_member_status_changes",
        "Member status changes this node saw, by the new status.",
        None,
        counters
            .status_changes
            .iter()
            .map(|(to, n)| (labels(&[("to", to)]), *n as f64)),
    );
    w.counter(
        "cohort_gossip_suspicions",
        "Members this node saw become suspect.",
        None,
        [(
            String::new(),
            counters.status_changes.get("suspect").copied().unwrap_or(0) as f64,
        )],
    );
}

fn gossip(w: &mut Writer, s: &Stats, encrypted: bool) {
    let by_transport = |udp: u64, tcp: u64| {
        [
            (labels(&[("transport", "udp")]), udp as f64),
            (labels(&[("transport", "tcp")]), tcp as f64),
        ]
    };
    w.gauge(
        "cohort_gossip_encrypted",
        "1 when gossip is encrypted with the keyring, 0 when plaintext.",
        None,
        [(String::new(), f64::from(u8::from(encrypted)))],
    );
    w.gauge(
        "cohort_gossip_pending_updates",
        "Member updates waiting to be piggybacked on gossip; 0 once news has been spread.",
        None,
        [(String::new(), s.pending_updates as f64)],
    );
    w.counter(
        "cohort_gossip_packets_sent",
        "Gossip packets sent: UDP datagrams, TCP streams (push-pull, fallback probes).",
        None,
        by_transport(s.datagrams_sent, s.streams_sent),
    );
    w.counter(
        "cohort_gossip_packets_received",
        "Gossip packets received, before decryption and checks.",
        None,
        by_transport(s.datagrams_received, s.streams_received),
    );
    w.counter(
        "cohort_gossip_packets_accepted",
        "Gossip packets received and accepted (decrypted, of this cluster, current life).",
        None,
        by_transport(s.datagrams_accepted, s.streams_accepted),
    );
    w.counter(
        "cohort_gossip_sent_bytes",
        "Gossip bytes sent.",
        Some("bytes"),
        by_transport(s.datagram_bytes_sent, s.stream_bytes_sent),
    );
    w.counter(
        "cohort_gossip_received_bytes",
        "Gossip bytes received, before decryption and checks.",
        Some("bytes"),
        by_transport(s.datagram_bytes_received, s.stream_bytes_received),
    );
    w.histogram(
        "cohort_gossip_probe_rtt_seconds",
        "Round trips of direct probes (UDP ping to ack, before any indirect probe).",
        &rtt_histogram(&s.probe_rtt),
    );
    w.counter(
        "cohort_gossip_packets_dropped",
        "Gossip packets dropped, by reason.",
        None,
        s.dropped
            .by_reason()
            .into_iter()
            .map(|(reason, n)| (labels(&[("reason", reason)]), n as f64)),
    );
    w.counter(
        "cohort_gossip_stream_failures",
        "Gossip streams (TCP) that could not be delivered.",
        None,
        [(String::new(), s.stream_failures as f64)],
    );
    w.counter(
        "cohort_gossip_probes_answered_only_by_tcp",
        "Probes that failed over UDP and were answered over TCP.",
        None,
        [(String::new(), s.probes_answered_only_by_stream as f64)],
    );
    w.counter(
        "cohort_gossip_refutations",
        "Suspicions of this node that it refuted.",
        None,
        [(String::new(), s.refutations as f64)],
    );
    w.counter(
        "cohort_gossip_user_events_sent",
        "User events this node sent.",
        None,
        [(String::new(), s.user_events_sent as f64)],
    );
    w.counter(
        "cohort_gossip_user_events_delivered",
        "User events this node delivered (each once).",
        None,
        [(String::new(), s.user_events_delivered as f64)],
    );
}

const RAFT_ROLES: [&str; 5] = ["leader", "follower", "candidate", "learner", "off"];

fn raft(w: &mut Writer, s: &Status) {
    let Some(raft) = &s.raft else { return };
    w.gauge(
        "cohort_raft_term",
        "The Raft term this node is in.",
        None,
        [(String::new(), raft.term as f64)],
    );
    w.gauge(
        "cohort_raft_role",
        "This node's role in the Raft group (1 for the current one).",
        None,
        RAFT_ROLES.into_iter().map(|role| {
            (
                labels(&[("role", role)]),
                f64::from(u8::from(raft.role == role)),
            )
        }),
    );
    w.gauge(
        "cohort_raft_has_leader",
        "1 when this node knows a Raft leader.",
        None,
        [(String::new(), f64::from(u8::from(raft.leader.is_some())))],
    );
    w.gauge(
        "cohort_raft_leader",
        "The Raft leader this node knows (always 1; absent without a leader).",
        None,
        raft.leader.iter().map(|leader| {
            (
                labels(&[("name", &leader.name), ("id", &leader.id.to_string())]),
                1.0,
            )
        }),
    );
    w.gauge(
        "cohort_raft_voters",
        "Voters in the Raft group as this node sees it.",
        None,
        [(String::new(), raft.voters.len() as f64)],
    );
    w.gauge(
        "cohort_raft_commit_index",
        "The last Raft log index this node knows committed.",
        None,
        raft.commit_index.map(|i| (String::new(), i as f64)),
    );
    w.gauge(
        "cohort_raft_applied_index",
        "The last committed Raft log index this node applied.",
        None,
        raft.applied_index.map(|i| (String::new(), i as f64)),
    );
    w.gauge(
        "cohort_raft_last_log_index",
        "The last index in this node's Raft log (committed or not).",
        None,
        raft.last_log_index.map(|i| (String::new(), i as f64)),
    );
    w.gauge(
        "cohort_replicaset_master",
        "Each replica set's master as this node runs it (always 1).",
        None,
        raft.masters
            .iter()
            .map(|(set, m)| (labels(&[("replicaset", set), ("node", &m.node)]), 1.0)),
    );
    w.gauge(
        "cohort_replicaset_master_generation",
        "Each replica set's fencing generation (grows at every appointment).",
        None,
        raft.masters
            .iter()
            .map(|(set, m)| (labels(&[("replicaset", set)]), m.generation as f64)),
    );
}

fn applies(w: &mut Writer, s: &Status, counters: &Counters) {
    w.gauge(
        "cohort_config_version",
        "The committed topology version (0 before the first apply).",
        None,
        [(String::new(), s.config_version.unwrap_or(0) as f64)],
    );
    w.gauge(
        "cohort_topology_file_state",
        "The state of this node's topology file (1 for the current one).",
        None,
        ["valid", "invalid", "missing", "unreadable"]
            .into_iter()
            .map(|state| {
                let current = match s.topology.state {
                    TopologyFileState::Valid => "valid",
                    TopologyFileState::Invalid => "invalid",
                    TopologyFileState::Missing => "missing",
                    TopologyFileState::Unreadable => "unreadable",
                };
                (
                    labels(&[("state", state)]),
                    f64::from(u8::from(state == current)),
                )
            }),
    );
    w.counter(
        "cohort_applies",
        "Topology applies this node coordinated, by result (rejected: invalid, stale or not started).",
        None,
        counters
            .applies
            .iter()
            .map(|(result, n)| (labels(&[("result", result)]), *n as f64)),
    );
    w.histogram(
        "cohort_apply_duration_seconds",
        "How long the applies this node started took, from the request to the decision.",
        &counters.apply_seconds,
    );
    w.counter(
        "cohort_installs",
        "Topology versions installed on this node, by result (failed: the file or a role's apply).",
        None,
        counters
            .installs
            .iter()
            .map(|(result, n)| (labels(&[("result", result)]), *n as f64)),
    );
    if let Some(apply) = &s.apply {
        w.gauge(
            "cohort_apply_lock_waiting_seconds",
            "How long the 2PC lock has waited for a decision (0 when it is not waiting).",
            Some("seconds"),
            [(String::new(), apply.waiting_seconds.unwrap_or(0) as f64)],
        );
        w.gauge(
            "cohort_apply_coordinating",
            "Topology changes this node coordinates that are not finished.",
            None,
            [(String::new(), apply.coordinating.len() as f64)],
        );
    }
}

/// The gossip layer's histogram (µs) in seconds.
fn rtt_histogram(rtt: &RttHistogram) -> Histogram {
    static BOUNDS: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let bounds = BOUNDS.get_or_init(|| RTT_BUCKETS_US.iter().map(|us| *us as f64 / 1e6).collect());
    Histogram {
        bounds,
        counts: rtt.counts.to_vec(),
        sum: rtt.sum_us as f64 / 1e6,
    }
}

/// `{name="value",...}` with the values escaped, or nothing.
fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let mut out = String::from("{");
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

struct Writer {
    out: String,
    format: Format,
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

impl Writer {
    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&str>,
        samples: impl IntoIterator<Item = (String, f64)>,
    ) {
        self.family(name, Kind::Gauge, help, unit, samples);
    }

    /// `name` without `_total`: the samples get it.
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&str>,
        samples: impl IntoIterator<Item = (String, f64)>,
    ) {
        self.family(name, Kind::Counter, help, unit, samples);
    }

    /// A histogram family; its name ends with its unit, `_seconds`.
    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} histogram");
        if self.format == Format::OpenMetrics {
            let _ = writeln!(self.out, "# UNIT {name} seconds");
        }
        let mut cumulative = 0;
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count;
            let le = h.bounds.get(i).map_or("+Inf".to_string(), |b| number(*b));
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(self.out, "{name}_sum {}", number(h.sum));
        let _ = writeln!(self.out, "{name}_count {cumulative}");
    }

    fn family(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        unit: Option<&str>,
        samples: impl IntoIterator<Item = (String, f64)>,
    ) {
        debug_assert!(
            unit.is_none_or(|u| name.ends_with(&format!("_{u}"))),
            "{name}"
        );
        let (sample_name, family) = match (kind, self.format) {
            (Kind::Counter, Format::OpenMetrics) => (format!("{name}_total"), name.to_string()),
            (Kind::Counter, Format::Prometheus) => {
                (format!("{name}_total"), format!("{name}_total"))
            }
            (Kind::Gauge, _) => (name.to_string(), name.to_string()),
        };
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {family} {help}");
        let _ = writeln!(self.out, "# TYPE {family} {kind}");
        if let (Some(unit), Format::OpenMetrics) = (unit, self.format) {
            let _ = writeln!(self.out, "# UNIT {family} {unit}");
        }
        for (labels, value) in samples {
            let _ = writeln!(self.out, "{sample_name}{labels} {}", number(value));
        }
    }
}

/// Integers without a fraction; the rest as Rust prints them (shortest
/// round-trip form, which both formats accept).
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        ApplyState, GossipHealth, InstallInfo, LastApplyInfo, Leaders, MasterInfo, MemberInfo,
        RaftPeer, TopologyFile,
    };

    fn status() -> Status {
        Status {
            node: "n1".into(),
            uuid: uuid::Uuid::from_u128(1),
            generation: 1_795_420_666_175_000,
            cluster: "orders".into(),
            bind: "127.0.0.1:3311".into(),
            advertise: "127.0.0.1:3311".into(),
            data_dir: "/tmp/d".into(),
            pid: 42,
            config_version: Some(7),
            topology: TopologyFile {
                path: "/tmp/t.yaml".into(),
                state: TopologyFileState::Valid,
                problems: Vec::new(),
                matches_committed: Some(true),
                pending: None,
            },
            apply: Some(ApplyState {
                version: 7,
                lock: "no apply in progress".into(),
                ..ApplyState::default()
            }),
            raft: Some(Leaders {
                node: "n1".into(),
                role: "follower".into(),
                term: 4,
                leader: Some(RaftPeer {
                    name: "n\"2".into(),
                    id: uuid::Uuid::from_u128(2),
                    addr: "127.0.0.1:3312".into(),
                }),
                commit_index: Some(18),
                applied_index: Some(17),
                last_log_index: Some(18),
                masters: [(
                    "s1".to_string(),
                    MasterInfo {
                        node: "n3".into(),
                        generation: 2,
                        reason: String::new(),
                    },
                )]
                .into(),
                ..Leaders::default()
            }),
            cluster_state: None,
            started_at: String::new(),
            started_at_ms: 1_795_420_666_175,
            uptime_seconds: 3,
            version: "0.1.0".into(),
            warnings: Vec::new(),
        }
    }

    fn member(name: &str, status: &str) -> MemberInfo {
        MemberInfo {
            name: name.into(),
            uuid: uuid::Uuid::nil(),
            address: "127.0.0.1:1".into(),
            status: status.into(),
            generation: 1,
            version: 0,
            replicaset: None,
            roles: Vec::new(),
            since_ms: 0,
        }
    }

    fn scrape_text(format: Format) -> String {
        let status = status();
        let members = Members {
            members: vec![
                member("n1", "alive"),
                member("n2", "alive"),
                member("n3", "dead"),
            ],
            gossip: GossipHealth {
                encrypted: true,
                ..GossipHealth::default()
            },
            multicast: None,
        };
        let mut counters = Counters::default();
        counters.observe_event(&ApiEvent::now(
            "member-status",
            "n3".into(),
            None,
            "alive -> suspect".into(),
        ));
        let mut stats = Stats {
            datagrams_sent: 10,
            datagram_bytes_sent: 1234,
            datagram_bytes_received: 999,
            refutations: 2,
            pending_updates: 5,
            ..Stats::default()
        };
        stats
            .probe_rtt
            .observe(std::time::Duration::from_micros(700));
        stats.probe_rtt.observe(std::time::Duration::from_secs(3));
        render(
            &Scrape {
                status: &status,
                members: &members,
                counters: &counters,
                gossip: Some(&stats),
            },
            format,
        )
    }

    #[test]
    fn prometheus_text_names_counter_families_with_total() {
        let text = scrape_text(Format::Prometheus);
        for line in [
            "# TYPE cohort_gossip_packets_sent_total counter",
            "cohort_gossip_packets_sent_total{transport=\"udp\"} 10",
            "cohort_gossip_sent_bytes_total{transport=\"udp\"} 1234",
            "cohort_gossip_refutations_total 2",
            "cohort_gossip_pending_updates 5",
            "cohort_gossip_suspicions_total 1",
            "cohort_member_status_changes_total{to=\"suspect\"} 1",
            "cohort_members{status=\"alive\"} 2",
            "cohort_members{status=\"dead\"} 1",
            "cohort_members{status=\"left\"} 0",
            "cohort_raft_term 4",
            "cohort_raft_role{role=\"follower\"} 1",
            "cohort_raft_role{role=\"leader\"} 0",
            "cohort_raft_leader{name=\"n\\\"2\",id=\"00000000-0000-0000-0000-000000000002\"} 1",
            "cohort_raft_commit_index 18",
            "cohort_raft_applied_index 17",
            "cohort_replicaset_master{replicaset=\"s1\",node=\"n3\"} 1",
            "cohort_replicaset_master_generation{replicaset=\"s1\"} 2",
            "cohort_config_version 7",
            "cohort_applies_total{result=\"committed\"} 0",
            "cohort_start_time_seconds 1795420666.175",
            "cohort_gossip_received_bytes_total{transport=\"udp\"} 999",
            "# TYPE cohort_gossip_probe_rtt_seconds histogram",
            "cohort_gossip_probe_rtt_seconds_bucket{le=\"0.0005\"} 0",
            "cohort_gossip_probe_rtt_seconds_bucket{le=\"0.001\"} 1",
            "cohort_gossip_probe_rtt_seconds_bucket{le=\"1\"} 1",
            "cohort_gossip_probe_rtt_seconds_bucket{le=\"+Inf\"} 2",
            "cohort_gossip_probe_rtt_seconds_sum 3.0007",
            "cohort_gossip_probe_rtt_seconds_count 2",
            "cohort_apply_duration_seconds_bucket{le=\"+Inf\"} 0",
            "cohort_node_generation 1795420666175000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        assert!(
            !text.contains("# UNIT") && !text.contains("# EOF"),
            "{text}"
        );
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let text = scrape_text(Format::OpenMetrics);
        for line in [
            "# TYPE cohort_gossip_packets_sent counter",
            "cohort_gossip_packets_sent_total{transport=\"udp\"} 10",
            "# TYPE cohort_gossip_sent_bytes counter",
            "# UNIT cohort_gossip_sent_bytes bytes",
            "# UNIT cohort_start_time_seconds seconds",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        assert!(text.ends_with("\n# EOF\n"), "{text}");
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
    }

    #[test]
    fn applies_and_installs_are_counted_once_each() {
        let mut counters = Counters::default();
        let last = |at_ms, txn: Option<&str>, committed| LastApplyInfo {
            at_ms,
            txn: txn.map(str::to_string),
            committed,
            took_ms: committed.map(|_| 1500.0),
            summary: String::new(),
        };
        let mut before = ApplyState::default();
        let mut after = before.clone();
        after.last = Some(last(1, Some("t1"), Some(2)));
        counters.observe_apply(Some(&before), Some(&after));
        // The same state again (another field changed) counts nothing.
        counters.observe_apply(Some(&after), Some(&after));
        before = after.clone();
        after.last = Some(last(2, Some("t2"), None));
        after.install = Some(InstallInfo {
            version: 2,
            at_ms: 2,
            error: Some("role http: port taken".into()),
        });
        counters.observe_apply(Some(&before), Some(&after));
        before = after.clone();
        after.last = Some(last(3, None, None));
        counters.observe_apply(Some(&before), Some(&after));
        counters.observe_apply(None, None);
        assert_eq!(
            counters.applies,
            [("aborted", 1), ("committed", 1), ("rejected", 1)].into()
        );
        assert_eq!(counters.installs, [("failed", 1), ("ok", 0)].into());
        // The committed apply took 1.5 s: bucket (1, 2.5].
        assert_eq!(counters.apply_seconds.counts[7], 1);
        assert_eq!(counters.apply_seconds.counts.iter().sum::<u64>(), 1);
    }

    #[test]
    fn only_member_status_events_count_as_status_changes() {
        let mut counters = Counters::default();
        for (kind, detail) in [
            ("member-status", "alive -> suspect"),
            ("member-status", "suspect -> dead"),
            ("member-status", "suspect -> alive"),
            ("member-address", "a -> b"),
            ("user", "x -> dead"),
        ] {
            counters.observe_event(&ApiEvent::now(kind, "n".into(), None, detail.into()));
        }
        assert_eq!(
            counters.status_changes,
            [("alive", 1), ("dead", 1), ("left", 0), ("suspect", 1)].into()
        );
    }

    #[test]
    fn label_values_and_numbers_are_escaped_and_formatted() {
        assert_eq!(labels(&[]), "");
        assert_eq!(
            labels(&[("a", "x\\y\"z\nw"), ("b", "")]),
            "{a=\"x\\\\y\\\"z\\nw\",b=\"\"}"
        );
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
    }
}
