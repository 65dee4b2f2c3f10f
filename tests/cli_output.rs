//! What the `cohort` command prints, against real agents: aligned tables,
//! colour only on a terminal (and never with NO_COLOR unless forced),
//! `--format json` that parses for every read command, `cohort monitor`
//! streaming JSON lines and following an agent through a restart until
//! Ctrl-C, and the documented exit statuses.

mod cluster;
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cluster::{node, Cluster, WAIT};
use serde_json::Value;
use support::agents::{Agent, Config};
use support::*;

const SIGINT: i32 = 2;
const ESC: char = '\x1b';

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `cohort ARGS` on node `i`; asserts it succeeded.
fn ok(cluster: &Cluster, i: usize, args: &[&str]) -> String {
    let out = cluster.cli(i, args);
    assert!(out.status.success(), "cohort {args:?}: {out:?}");
    stdout(&out)
}

/// Every line's columns start where the first line's do (a table under
/// its header): each column begins after two blanks, at the same offset.
fn assert_columns_line_up(text: &str, header: &str) {
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with(header), "{text}");
    let starts = |line: &str| -> Vec<usize> {
        let b = line.as_bytes();
        (0..b.len())
            .filter(|&i| b[i] != b' ' && (i == 0 || (i >= 2 && &b[i - 2..i] == b"  ")))
            .collect()
    };
    let head = starts(lines[0]);
    assert!(head.len() >= 3, "{text}");
    for line in &lines[1..] {
        for at in &head {
            assert!(line.len() > *at, "{line:?} is short in\n{text}");
            assert_ne!(&line[*at..*at + 1], " ", "{line:?} in\n{text}");
            if *at > 0 {
                assert_eq!(&line[at - 2..*at], "  ", "{line:?} in\n{text}");
            }
        }
    }
}

/// `key  value` rows (up to the first blank line): every value starts in
/// one column.
fn assert_values_line_up(text: &str) {
    let rows: Vec<&str> = text
        .lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| !l.starts_with("  "))
        .collect();
    let column = |line: &str| {
        line.find("  ")
            .map(|i| i + line[i..].len() - line[i..].trim_start().len())
    };
    let first = column(rows[0]).expect("a value");
    for row in &rows {
        assert_eq!(column(row), Some(first), "{row:?} in\n{text}");
    }
}

fn json(text: &str, what: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"))
}

/// `cohort ARGS` under a pseudo-terminal (`script`), with `env` added:
/// what the terminal shows.
fn on_a_terminal(api: std::net::SocketAddr, args: &str, env: &[(&str, &str)]) -> String {
    let command = format!("{} --api {api} {args}", env!("CARGO_BIN_EXE_cohort"));
    let mut script = Command::new("script");
    script
        .args(["-qec", &command, "/dev/null"])
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    for (k, v) in env {
        script.env(k, v);
    }
    let out = script.output().expect("run `script` (util-linux)");
    assert!(out.status.success(), "{command}: {out:?}");
    stdout(&out)
}

/// A monitor: its stdout and stderr lines as they come.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
    notices: mpsc::Receiver<String>,
}

impl Monitor {
    fn start(command: &mut Command) -> Monitor {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pipe = |read: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(read).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let lines = pipe(Box::new(child.stdout.take().unwrap()));
        let notices = pipe(Box::new(child.stderr.take().unwrap()));
        Monitor {
            child,
            lines,
            notices,
        }
    }

    /// The next line that `pick` accepts, sending `nudge` (a user event)
    /// while none comes.
    fn wait_for<T>(
        &self,
        what: &str,
        mut nudge: impl FnMut(),
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> T {
        wait_until(WAIT, what, || {
            nudge();
            while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(300)) {
                if let Some(found) = pick(&line) {
                    return Some(found);
                }
            }
            None
        })
    }

    /// SIGINT, as Ctrl-C sends it; the exit status.
    fn interrupt(mut self) -> std::process::ExitStatus {
        signal_pid(self.child.id() as i32, SIGINT);
        wait_until(WAIT, "the monitor to exit", || {
            self.child.try_wait().unwrap()
        })
    }
}

/// `cohort event NAME` on `api`, which must succeed.
fn send_event(api: std::net::SocketAddr, name: &str) {
    let out = cohort()
        .args(["--api", &api.to_string(), "event", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn read_commands_align_colour_only_when_asked_and_print_json_that_parses() {
    let c = Cluster::start(
        &[
            node("n1", "s1", "candidate"),
            node("n2", "s1", "candidate"),
            node("n3", "s2", "voter"),
        ],
        &[],
    );
    c.wait_masters(&["s1", "s2"]);
    ok(&c, 0, &["members", "--wait-alive", "3", "--timeout", "60s"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topology.yaml");
    std::fs::write(&file, &c.text).unwrap();
    let file = file.to_str().unwrap();

    // Text: aligned, and no colour with stdout captured (not a terminal).
    let members = ok(&c, 0, &["members"]);
    assert_columns_line_up(&members, "NAME ");
    assert_eq!(members.lines().count(), 4, "{members}");
    let peers = ok(&c, 0, &["raft", "peers"]);
    assert_columns_line_up(&peers, "NODE ");
    let leaders = ok(&c, 0, &["leaders"]);
    assert_values_line_up(&leaders);
    let masters = leaders.split("\n\n").last().unwrap();
    assert_columns_line_up(masters, "REPLICASET ");
    wait_until(WAIT, "n1 to count 3 alive", || {
        (c.nodes[0].status()?["cluster_state"]["alive"] == 3).then_some(())
    });
    let status = ok(&c, 0, &["status"]);
    assert_values_line_up(&status);
    let cluster_state = status
        .lines()
        .find(|l| l.starts_with("cluster state "))
        .unwrap_or_else(|| panic!("no cluster state in\n{status}"));
    assert!(
        cluster_state.ends_with(
            "  up (3 of 3 nodes alive, no cluster_up_at: up once a topology is committed)"
        ),
        "{status}"
    );
    let route = ok(&c, 0, &["route", "user:42"]);
    assert_values_line_up(&route);
    let shown = [
        members,
        peers,
        leaders,
        status,
        route,
        ok(&c, 0, &["topology"]),
        ok(&c, 0, &["topology", "diff", file]),
        ok(&c, 0, &["validate", "topology", file]),
    ];
    for text in &shown {
        assert!(!text.contains(ESC), "colour off a terminal: {text:?}");
    }
    let out = cohort()
        .env("NO_COLOR", "1")
        .args(["--api", &c.nodes[0].api().to_string(), "members"])
        .output()
        .unwrap();
    assert!(!stdout(&out).contains(ESC), "{out:?}");

    // --color always colours even a pipe, and columns still line up once
    // the codes are taken out.
    let coloured = ok(&c, 0, &["--color", "always", "members"]);
    assert!(coloured.contains("\x1b[32malive\x1b[0m"), "{coloured:?}");
    let plain = coloured.replace("\x1b[32m", "").replace("\x1b[0m", "");
    assert_columns_line_up(&plain, "NAME ");
    assert!(!ok(&c, 0, &["--color", "never", "members"]).contains(ESC));

    // On a terminal: colour, unless NO_COLOR is set or --color never.
    let api = c.nodes[0].api();
    assert!(on_a_terminal(api, "members", &[]).contains("\x1b[32malive\x1b[0m"));
    assert!(!on_a_terminal(api, "members", &[("NO_COLOR", "1")]).contains(ESC));
    assert!(!on_a_terminal(api, "--color never members", &[]).contains(ESC));

    // --format json: one document on stdout, nothing on stderr.
    let reads: [(&[&str], &str); 11] = [
        (&["status"], "cluster_state"),
        (&["members"], "0"),
        (&["leaders"], "leader"),
        (&["raft", "peers"], "0"),
        (&["topology"], "text"),
        (&["topology", "diff", file], "nodes_added"),
        (&["route", "user:42"], "replicaset"),
        (&["validate", "topology", file], "ok"),
        (&["apply", file, "--wait"], "outcome"),
        (&["event", "json-check"], "message"),
        (&["leaders", "--consistent"], "consistent"),
    ];
    for (args, key) in reads {
        let out = c.cli(0, &[&["--format", "json"], args].concat());
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert_eq!(stderr(&out), "", "{args:?}");
        let value = json(&stdout(&out), &format!("{args:?}"));
        let field = match key.parse::<usize>() {
            Ok(i) => &value[i],
            Err(_) => &value[key],
        };
        assert!(!field.is_null(), "{args:?} lacks {key}: {value}");
    }
    let status = json(&ok(&c, 0, &["--format", "json", "status"]), "status");
    assert_eq!(status["cluster_state"]["state"], "up");
    assert_eq!(status["cluster_state"]["alive"], 3);
    let validated = json(
        &ok(&c, 0, &["--format", "json", "validate", "topology", file]),
        "validate",
    );
    assert_eq!(validated["ok"], true);
    assert_eq!(validated["problems"], serde_json::json!([]));
    let apply = json(
        &ok(&c, 0, &["--format", "json", "apply", file, "--wait"]),
        "apply",
    );
    assert_eq!(apply["outcome"], "unchanged");

    // monitor --format json: one event a line; a member's death shows.
    let mut command = cohort();
    command.args([
        "--api",
        &api.to_string(),
        "--format",
        "json",
        "monitor",
        "--kind",
        "member-status,user",
    ]);
    let monitor = Monitor::start(&mut command);
    monitor.wait_for(
        "the monitor to show a probe",
        || send_event(api, "probe"),
        |line| (json(line, "a monitor line")["kind"] == "user").then_some(()),
    );
    let n3 = c.nodes[2].proc.as_ref().unwrap().pid();
    signal_pid(n3, SIGKILL);
    let event = monitor.wait_for(
        "n3's death on the monitor",
        || {},
        |line| {
            let event = json(line, "a monitor line");
            (event["kind"] == "member-status" && event["subject"] == "n3").then_some(event)
        },
    );
    let detail = event["detail"].as_str().unwrap();
    assert!(detail.starts_with("alive -> "), "{event}");
    assert!(event["at_ms"].as_u64().unwrap() > 0, "{event}");
    assert_eq!(monitor.interrupt().code(), Some(0), "Ctrl-C ends it well");
}

#[test]
fn exit_statuses_are_the_documented_ones() {
    let help = stdout(&cohort().arg("--help").output().unwrap());
    for line in [
        "Exit status:",
        "  0  success",
        "  1  the answer is no",
        "  2  usage error",
        "  3  the agent API cannot be reached",
        "  4  the agent refused access",
    ] {
        assert!(help.contains(line), "{line:?} in\n{help}");
    }

    // 3: nobody to ask, whatever the command.
    let nobody = addr(free_port()).to_string();
    for args in [
        &["status"][..],
        &["members"],
        &["leaders"],
        &["raft", "peers"],
        &["topology"],
        &["route", "k"],
        &["monitor"],
        &["--format", "json", "status"],
    ] {
        let out = cohort()
            .args(["--api", &nobody])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{args:?}: {out:?}");
        assert_eq!(stdout(&out), "", "{args:?}");
        assert!(
            stderr(&out).starts_with(&format!("cohort: cannot reach the agent API at {nobody}: ")),
            "{args:?}: {}",
            stderr(&out)
        );
    }

    // 2: the command line is wrong.
    for args in [
        &["members", "--status", "sleepy"][..],
        &["monitor", "--bogus"],
        &["route"],
        &["--color", "sometimes", "status"],
        &["--format", "yaml", "status"],
    ] {
        let out = cohort().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }

    // 1: the answer is no (a file with problems), in text and in JSON.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("t.yaml");
    std::fs::write(&bad, "cluster: c\ncluster_up_at: 2\nreplicasets:\n  s1:\n    nodes:\n      a: { address: 127.0.0.1:1 }\n").unwrap();
    let out = cohort()
        .args(["validate", "topology"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let problem = format!(
        "{}:2:16: cluster_up_at 2 is more than the 1 node of this topology: the cluster could never be up",
        bad.display()
    );
    assert_eq!(stderr(&out), format!("{problem}\n"));
    let out = cohort()
        .args(["--format", "json", "validate", "topology"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let answer = json(&stdout(&out), "validate");
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["problems"], serde_json::json!([problem]));
}

#[test]
fn monitor_follows_the_agent_through_a_restart_until_ctrl_c() {
    let root = tempfile::tempdir().unwrap();
    let mut agent = Agent::new(root.path(), "m1");
    // Ports outside the ephemeral range: the monitor's own connections
    // while the agent is down must not take them.
    agent.port = free_port_not_ephemeral();
    agent.api = free_port_not_ephemeral();
    agent.write_config(&Config::default());
    agent.start(WAIT);
    let api = agent.api();

    let mut command = cohort();
    command.args(["--api", &api.to_string(), "monitor"]);
    let monitor = Monitor::start(&mut command);
    let line = monitor.wait_for(
        "the monitor to show a probe",
        || send_event(api, "probe"),
        |line| line.contains(" user ").then(|| line.to_string()),
    );
    // TIME  KIND  SUBJECT  DETAIL: PAYLOAD, the time in RFC 3339 UTC.
    let (time, rest) = line.split_at(24);
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{line}");
    assert!(
        rest.starts_with("  user                probe         from m1, 0 bytes"),
        "{line:?}"
    );

    agent.stop(WAIT);
    monitor.wait_for(
        "the agent-stopping line",
        || {},
        |line| line.contains(" agent-stopping ").then_some(()),
    );
    agent.start(WAIT);
    let notice = wait_until(WAIT, "a notice of the restart", || {
        monitor
            .notices
            .recv_timeout(Duration::from_millis(300))
            .ok()
            .filter(|n| n.contains("restarted (generation"))
    });
    assert!(
        notice.starts_with(&format!("cohort: m1 at {api} restarted")),
        "{notice}"
    );
    monitor.wait_for(
        "events after the restart",
        || send_event(api, "after"),
        |line| line.contains(" after ").then_some(()),
    );
    assert_eq!(monitor.interrupt().code(), Some(0));
    agent.stop(WAIT);
}
