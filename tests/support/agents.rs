//! A real `cohort agent` on loopback: its own dir (node config, gossip
//! key, data dir, topology file, API socket, log), started with its stderr
//! appended to `agent.log`, and waited for until its API answers. It takes
//! the tests' API token (`support::TOKEN`), which `http` and the CLI of
//! `cohort()` send. The tests add the questions they ask it in `impl
//! Agent` blocks of their own.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{addr, cohort, free_port, http_get, read, status, token_file, wait_until_or, Proc};
use super::{SIGKILL, SIGTERM};

/// The gossip key of the tests' clusters.
pub const KEY: &str = "q1Yd5rO3o0bI7wJ7dHqv1Uq9QbS7+7Kz3KQbq3oE8Xk=";

pub struct Agent {
    pub name: String,
    /// Gossip and rpc.
    pub port: u16,
    pub api: u16,
    pub dir: PathBuf,
    /// The topology file the node config names.
    pub topology: PathBuf,
    /// Set while the agent runs (SIGKILLed if the test ends early).
    pub proc: Option<Proc>,
}

/// What the tests' node configs differ in; the rest is the same for all:
/// the dir's files, a 300 ms protocol period, info logs, the API on
/// `Agent::api` and `Agent::socket` with the tests' token.
pub struct Config<'a> {
    pub cluster: &'a str,
    /// Gossip ports on loopback to join through.
    pub join: &'a [u16],
    /// Written to `DIR/gossip.key`.
    pub key: &'a str,
    /// More `gossip` settings, as `, name: value` items.
    pub gossip: &'a str,
    /// `text` or `json`.
    pub log_format: &'a str,
    /// YAML lines appended as they are.
    pub extra: &'a str,
}

impl Default for Config<'_> {
    fn default() -> Self {
        Config {
            cluster: "test",
            join: &[],
            key: KEY,
            gossip: "",
            log_format: "text",
            extra: "",
        }
    }
}

impl Agent {
    /// `name` in `root/name` (created), on free ports, its topology file
    /// `topology.yaml` in its dir; not configured, not started.
    pub fn new(root: &Path, name: &str) -> Agent {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        Agent {
            name: name.into(),
            port: free_port(),
            api: free_port(),
            topology: dir.join("topology.yaml"),
            dir,
            proc: None,
        }
    }

    pub fn api(&self) -> SocketAddr {
        addr(self.api)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// The API's unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// Writes the node config (`DIR/cohort.yaml`) and the gossip key file.
    pub fn write_config(&self, config: &Config) {
        let key = self.dir.join("gossip.key");
        fs::write(&key, format!("{}\n", config.key)).unwrap();
        let join: Vec<String> = config.join.iter().map(|p| addr(*p).to_string()).collect();
        fs::write(
            self.dir.join("cohort.yaml"),
            format!(
                "node: {name}\ncluster: {cluster}\nbind: {bind}\ndata_dir: {data}\ntopology: {topology}\njoin: [{join}]\n\
                 gossip: {{ key_file: {key}, protocol_period: 300ms, ack_timeout: 150ms{gossip} }}\n\
                 api: {{ http: {api}, socket: {socket}, token_file: {token} }}\nlog: {{ level: info, format: {format} }}\n{extra}",
                name = self.name,
                cluster = config.cluster,
                bind = addr(self.port),
                data = quoted(&self.dir.join("data")),
                topology = quoted(&self.topology),
                join = join.join(", "),
                key = quoted(&key),
                gossip = config.gossip,
                api = self.api(),
                socket = quoted(&self.socket()),
                token = quoted(token_file()),
                format = config.log_format,
                extra = config.extra,
            ),
        )
        .unwrap();
    }

    /// Starts the agent and waits until its API answers; panics with its
    /// exit status and the end of its log if it exits or stays silent
    /// for `timeout`.
    pub fn start(&mut self, timeout: Duration) {
        self.start_as(cohort(), timeout);
    }

    /// `start`, with `command` running the binary (a wrapper that execs
    /// it, `agent --config FILE` appended).
    pub fn start_as(&mut self, command: Command, timeout: Duration) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let (config, api) = (self.dir.join("cohort.yaml"), self.api());
        let proc = self.proc.insert(spawn_agent(command, &config, log));
        let mut exited = None;
        let answered = wait_until_or(timeout, || {
            exited = proc.child.try_wait().unwrap();
            if exited.is_some() {
                return Some(false);
            }
            status(api).map(|_| true)
        });
        if answered != Some(true) {
            panic!(
                "{} did not answer on its API within {timeout:?} (exit: {exited:?}); the end of its log:\n{}",
                self.name,
                self.log_tail(80)
            );
        }
    }

    /// `start` in a mount namespace of its own, after `setup` (a shell
    /// command) ran in it: what a test mounts there only the agent sees,
    /// and it goes away with the process.
    pub fn start_in_own_mounts(&mut self, setup: &str, timeout: Duration) {
        let mut command = Command::new("unshare");
        command
            .args(["-m", "--propagation", "private", "--", "sh", "-c"])
            .arg(format!("{setup} && exec \"$@\""))
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_cohort"));
        self.start_as(command, timeout);
    }

    /// Runs `script` in the agent's mount namespace; panics with its
    /// stderr if it fails.
    pub fn in_own_mounts(&self, script: &str) {
        let pid = self.proc.as_ref().expect("the agent runs").pid();
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "--", "sh", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGTERM, and the clean exit that follows.
    pub fn stop(&mut self, timeout: Duration) {
        let mut proc = self.proc.take().expect("the agent runs");
        proc.signal(SIGTERM);
        assert_eq!(
            proc.wait_exit(timeout).code(),
            Some(0),
            "{} stopped",
            self.name
        );
    }

    /// SIGKILL, and the exit.
    pub fn kill(&mut self, timeout: Duration) {
        let mut proc = self.proc.take().expect("the agent runs");
        proc.signal(SIGKILL);
        proc.wait_exit(timeout);
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        status(self.api())
    }

    /// `GET /v1/members` as JSON.
    pub fn members(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&http_get(self.api(), "/v1/members")?).ok()
    }

    /// How this agent sees `name` in its membership (`alive`, `dead`, ...),
    /// None when it does not know it (or does not answer).
    pub fn sees(&self, name: &str) -> Option<String> {
        self.members()?["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["status"].as_str().unwrap_or("").to_string())
    }

    /// Writes the topology file the way an editor saves: a temp file in
    /// the same dir, renamed over it.
    pub fn edit(&self, text: &str) {
        let temp = self.topology.with_file_name(".topology.yaml.swp");
        fs::write(&temp, text).unwrap();
        fs::rename(&temp, &self.topology).unwrap();
    }

    /// The last `count` lines of the agent's log.
    pub fn log_tail(&self, count: usize) -> String {
        let log = read(&self.log());
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(count)..].join("\n")
    }
}

/// `command` (the cohort binary, or a wrapper that runs it) as `agent
/// --config CONFIG`, its stderr to `log`.
pub fn spawn_agent(mut command: Command, config: &Path, log: fs::File) -> Proc {
    Proc::spawn(
        command
            .arg("agent")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log),
    )
}

/// A path as a double-quoted YAML scalar.
pub fn quoted(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap()
}
