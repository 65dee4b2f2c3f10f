//! What the agent tells systemd (`Type=notify`): ready once it listens,
//! a status line kept current, watchdog pings from the main loop,
//! reloading and ready again around SIGHUP, stopping at the end.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) nothing of this runs: every call
//! returns at once and the heartbeat never ticks.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::api::{Members, NodeState, Status, TopologyFileState};

use super::logging::LogControl;

/// How often the status line is looked at (it is sent only when it
/// changed). The watchdog may ask for a shorter period.
const STATUS_PERIOD: Duration = Duration::from_secs(2);
/// The shortest period between two ticks, whatever `WatchdogSec=` says.
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// The node listens, serves, and its local state is loaded (a quorum is
/// never waited for: a whole cluster must be able to boot at once).
/// Journal entries carry the node's identity from here on. Returns the
/// heartbeat the main loop drives.
pub fn ready(state: &Arc<NodeState>, log: &LogControl) -> Heartbeat {
    let status = state.snapshot();
    log.identify(
        &status.node,
        &status.cluster,
        Some(&status.uuid.to_string()),
    );
    let mut heartbeat = Heartbeat::new(Arc::clone(state));
    let line = heartbeat.status_now();
    notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
    heartbeat.last_status = line;
    heartbeat
}

/// A reload began. systemd 253+ fails a `notify-reload` service whose
/// RELOADING=1 comes without the monotonic time, so it is always sent.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// The reload is over (whether or not the new file was taken).
pub fn reloaded() {
    notify(&[NotifyState::Ready]);
}

pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: leaving the cluster"),
    ]);
}

/// The main loop's pulse: each tick pings systemd's watchdog (when
/// `WatchdogSec=` is set) and refreshes the status line. It lives in the
/// main loop on purpose: a loop that stops turning stops the pings, and
/// systemd kills and restarts the process.
pub struct Heartbeat {
    state: Arc<NodeState>,
    /// None outside systemd: `tick` then never returns.
    ticks: Option<Interval>,
    watchdog: bool,
    last_status: String,
    last_status_at: Option<Instant>,
}

impl Heartbeat {
    fn new(state: Arc<NodeState>) -> Heartbeat {
        let under_systemd = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog = if under_systemd {
            sd_notify::watchdog_enabled()
        } else {
            None
        };
        let ticks = under_systemd.then(|| {
            let period = tick_period(watchdog);
            let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
            // After a stall, one tick (and one ping) at once, then the
            // period again: no burst of pings that would hide the stall.
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticks
        });
        Heartbeat {
            state,
            ticks,
            watchdog: watchdog.is_some(),
            last_status: String::new(),
            last_status_at: None,
        }
    }

    /// Waits for the next tick; never returns outside systemd.
    pub async fn tick(&mut self) {
        match self.ticks.as_mut() {
            Some(ticks) => {
                ticks.tick().await;
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// One beat: the watchdog ping, and the status line if it changed.
    pub fn beat(&mut self) {
        let now = Instant::now();
        let due = self
            .last_status_at
            .is_none_or(|at| now.duration_since(at) >= STATUS_PERIOD);
        let status = if due {
            let line = self.status_now();
            (line != self.last_status).then_some(line)
        } else {
            None
        };
        let mut states = Vec::with_capacity(2);
        if self.watchdog {
            states.push(NotifyState::Watchdog);
        }
        if let Some(line) = status.as_deref() {
            states.push(NotifyState::Status(line));
        }
        if !states.is_empty() {
            notify(&states);
        }
        if let Some(line) = status {
            self.last_status = line;
        }
    }

    fn status_now(&mut self) -> String {
        self.last_status_at = Some(Instant::now());
        let status = self.state.snapshot();
        let members = self.state.members.read().unwrap_or_else(|p| p.into_inner());
        status_line(&status, &members)
    }
}

/// Half the watchdog interval (systemd's advice), at most the status
/// period.
fn tick_period(watchdog: Option<Duration>) -> Duration {
    watchdog
        .map_or(STATUS_PERIOD, |w| (w / 2).min(STATUS_PERIOD))
        .max(MIN_PERIOD)
}

/// What `systemctl status` shows under the unit's name, e.g.
/// `orders: 12 alive, 1 suspect, leader r1, config v7`.
pub fn status_line(status: &Status, members: &Members) -> String {
    let mut parts = Vec::new();
    let count = |what: &str| members.members.iter().filter(|m| m.status == what).count();
    if members.members.is_empty() {
        parts.push("joining".to_string());
    } else {
        parts.push(format!("{} alive", count("alive")));
        for other in ["suspect", "dead"] {
            let n = count(other);
            if n > 0 {
                parts.push(format!("{n} {other}"));
            }
        }
    }
    if let Some(raft) = &status.raft {
        match (&raft.leader, raft.role.as_str()) {
            (Some(leader), _) => parts.push(format!("leader {}", leader.name)),
            (None, "off") if raft.voters.is_empty() => {}
            (None, _) => parts.push("no leader".to_string()),
        }
    }
    match status.config_version {
        Some(v) => parts.push(format!("config v{v}")),
        None => parts.push("no config committed".to_string()),
    }
    match status.topology.state {
        TopologyFileState::Valid | TopologyFileState::Missing => {}
        TopologyFileState::Invalid => parts.push("topology file invalid".to_string()),
        TopologyFileState::Unreadable => parts.push("topology file unreadable".to_string()),
    }
    if let Some(stopped) = status.apply.as_ref().and_then(|a| a.stopped.as_ref()) {
        parts.push(format!("apply stopped: {stopped}"));
    }
    if let Some(failing) = status.apply.as_ref().and_then(|a| a.disk_error.as_ref()) {
        parts.push(format!("2PC writes failing {failing}"));
    }
    match status.warnings.len() {
        0 => {}
        1 => parts.push("1 warning".to_string()),
        n => parts.push(format!("{n} warnings")),
    }
    format!("{}: {}", status.cluster, parts.join(", "))
}

fn notify(states: &[NotifyState<'_>]) {
    // Nothing useful can be done when systemd cannot be told; the agent
    // runs on either way.
    let _ = sd_notify::notify(states);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Leaders, MemberInfo, RaftPeer, TopologyFile};

    fn status() -> Status {
        Status {
            node: "r1".into(),
            uuid: uuid::Uuid::nil(),
            generation: 1,
            cluster: "orders".into(),
            bind: "0.0.0.0:3301".into(),
            advertise: "10.0.0.21:3301".into(),
            data_dir: "/var/lib/cohort".into(),
            pid: 1,
            config_version: None,
            topology: TopologyFile {
                path: "/etc/cohort/topology.yaml".into(),
                state: TopologyFileState::Valid,
                problems: Vec::new(),
                matches_committed: None,
                pending: None,
            },
            apply: None,
            raft: None,
            cluster_state: None,
            started_at: String::new(),
            started_at_ms: 0,
            uptime_seconds: 0,
            version: "0".into(),
            warnings: Vec::new(),
        }
    }

    fn member(name: &str, status: &str) -> MemberInfo {
        MemberInfo {
            name: name.into(),
            uuid: uuid::Uuid::new_v4(),
            address: "10.0.0.1:3301".into(),
            status: status.into(),
            generation: 1,
            version: 0,
            replicaset: None,
            roles: Vec::new(),
            since_ms: 0,
        }
    }

    #[test]
    fn a_fresh_node_is_joining_with_no_config() {
        let line = status_line(&status(), &Members::default());
        assert_eq!(line, "orders: joining, no config committed");
    }

    #[test]
    fn the_line_counts_members_and_names_the_leader_and_version() {
        let mut s = status();
        s.config_version = Some(7);
        s.raft = Some(Leaders {
            role: "follower".into(),
            leader: Some(RaftPeer {
                name: "s1-a".into(),
                ..RaftPeer::default()
            }),
            ..Leaders::default()
        });
        s.warnings = vec!["w".into()];
        let members = Members {
            members: (0..12)
                .map(|i| member(&format!("n{i}"), "alive"))
                .chain([member("x", "suspect"), member("y", "left")])
                .collect(),
            ..Members::default()
        };
        assert_eq!(
            status_line(&s, &members),
            "orders: 12 alive, 1 suspect, leader s1-a, config v7, 1 warning"
        );
    }

    #[test]
    fn no_leader_is_said_only_where_a_group_is_expected() {
        let mut s = status();
        s.config_version = Some(1);
        s.raft = Some(Leaders {
            role: "off".into(),
            ..Leaders::default()
        });
        let members = Members {
            members: vec![member("a", "alive")],
            ..Members::default()
        };
        assert_eq!(status_line(&s, &members), "orders: 1 alive, config v1");
        s.raft = Some(Leaders {
            role: "follower".into(),
            ..Leaders::default()
        });
        s.topology.state = TopologyFileState::Invalid;
        assert_eq!(
            status_line(&s, &members),
            "orders: 1 alive, no leader, config v1, topology file invalid"
        );
    }

    #[test]
    fn pings_come_at_half_the_watchdog_interval() {
        assert_eq!(tick_period(None), STATUS_PERIOD);
        assert_eq!(
            tick_period(Some(Duration::from_secs(2))),
            Duration::from_secs(1)
        );
        assert_eq!(tick_period(Some(Duration::from_secs(30))), STATUS_PERIOD);
        assert_eq!(tick_period(Some(Duration::from_millis(10))), MIN_PERIOD);
    }

    #[tokio::test]
    async fn outside_systemd_the_heartbeat_never_ticks() {
        // The test runner is not a systemd service (CI included).
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            return;
        }
        let (state, _commands) = NodeState::new(status());
        let mut heartbeat = Heartbeat::new(state);
        assert!(heartbeat.ticks.is_none());
        let ticked = tokio::time::timeout(Duration::from_millis(50), heartbeat.tick()).await;
        assert!(ticked.is_err());
    }
}
