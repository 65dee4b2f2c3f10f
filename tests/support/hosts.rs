//! Machines of the test's own on one LAN: a "hub" network namespace holding
//! a bridge, and one namespace per host with a veth to the bridge and the
//! address 10.77.0.<i>/24. One `cohort agent` per host, bound to
//! 10.77.0.<i>:3301 (gossip and rpc) with its API on 10.77.0.<i>:8300
//! (beyond loopback, so behind the tests' API token), reached by running
//! the CLI inside the host's namespace. A host can be cut off from the LAN
//! (nftables inside it drops everything but loopback) and healed, or left
//! answering calls from some hosts only; its agent SIGKILLed and started
//! again. Every agent and namespace goes away on drop, also when the test
//! panics (then the end of every agent's log is printed). Needs root, iproute2 and nftables (CI
//! has them).
//!
//! Test files include it with `#[path = "support/hosts.rs"] mod hosts;`
//! next to `mod support;`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use crate::support::agents::{quoted, spawn_agent, KEY};
use crate::support::netns::Netns;
use crate::support::{masters_of, read, token_file, wait_until_or, Proc, SIGKILL};

/// Gossip and rpc port of every agent.
pub const GOSSIP_PORT: u16 = 3301;
/// API port of every agent.
pub const API_PORT: u16 = 8300;

/// The table `isolate` adds inside a host: everything but loopback is
/// dropped, both ways, in one transaction.
const ISOLATE: &str = "table inet cohort_isolate {
  chain input { type filter hook input priority 0; policy drop; iifname \"lo\" accept; }
  chain output { type filter hook output priority 0; policy drop; oifname \"lo\" accept; }
}
";

/// One host: its namespace, its agent's files.
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    /// The topology file the node config names.
    pub topology: PathBuf,
    ns: Netns,
}

impl Host {
    /// Gossip and rpc address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, GOSSIP_PORT))
    }

    pub fn api(&self) -> SocketAddr {
        SocketAddr::from((self.ip, API_PORT))
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }
}

/// What one node says of the Raft group (`cohort leaders --format json`),
/// in short.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The node that answered and its role.
    pub node: String,
    pub role: String,
    pub term: u64,
    pub leader: String,
    pub voters: usize,
    /// Each replica set's master and fencing generation.
    pub masters: BTreeMap<String, (String, u64)>,
}

impl Seen {
    pub fn of(leaders: &Value) -> Option<Seen> {
        let masters = masters_of(leaders)?;
        Some(Seen {
            node: leaders["node"].as_str()?.to_string(),
            role: leaders["role"].as_str()?.to_string(),
            term: leaders["term"].as_u64()?,
            leader: leaders["leader"]["name"].as_str()?.to_string(),
            voters: leaders["voters"].as_array()?.len(),
            masters,
        })
    }

    /// The same leader, term, voters and masters (the answering node and
    /// its role aside).
    pub fn same_group(&self, other: &Seen) -> bool {
        (self.term, &self.leader, self.voters, &self.masters)
            == (other.term, &other.leader, other.voters, &other.masters)
    }
}

/// What one run of the CLI ended with.
#[derive(Clone, Debug)]
pub struct Cli {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// The hosts and their agents. Every method takes `&self`, so client and
/// chaos threads can share it (`std::thread::scope`).
pub struct Hosts {
    // Fields drop in order: the agents die before their namespaces go.
    agents: Vec<Mutex<Option<Proc>>>,
    isolated: Mutex<BTreeSet<usize>>,
    pub hosts: Vec<Host>,
    hub: Netns,
    root: Option<tempfile::TempDir>,
}

impl Hosts {
    /// The hub and one host per name (host `i` of `names` gets 10.77.0.<i+1>),
    /// each with a node config joining all of them and an empty topology
    /// file path; no agent started. `tag` makes the namespace names unique
    /// among the tests of one process (the pid makes them unique across
    /// processes).
    pub fn new(tag: &str, names: &[&str]) -> Hosts {
        assert!(names.len() < 250, "one /24 for the hosts");
        let root = tempfile::tempdir().expect("a temp dir");
        let hub = Netns::create(&format!("{tag}-hub"));
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["link", "set", "br0", "up"]);
        let mut hosts = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ns = Netns::create(&format!("{tag}-{name}"));
            let veth = format!("v{i}");
            hub.ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
            hub.ip(&["link", "set", &veth, "master", "br0"]);
            hub.ip(&["link", "set", &veth, "up"]);
            let ip = Ipv4Addr::new(10, 77, 0, i as u8 + 1);
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            let dir = root.path().join(name);
            fs::create_dir_all(&dir).expect("the host's dir");
            hosts.push(Host {
                name: name.to_string(),
                ip,
                topology: dir.join("topology.yaml"),
                dir,
                ns,
            });
        }
        let join: Vec<String> = hosts.iter().map(|h| h.addr().to_string()).collect();
        for host in &hosts {
            let key = host.dir.join("gossip.key");
            fs::write(&key, format!("{KEY}\n")).expect("write the key");
            fs::write(
                host.dir.join("cohort.yaml"),
                format!(
                    "node: {name}\ncluster: test\nbind: {bind}\ndata_dir: {data}\ntopology: {topology}\njoin: [{join}]\n\
                     gossip: {{ key_file: {key}, protocol_period: 300ms, ack_timeout: 150ms }}\n\
                     api: {{ http: {api}, socket: {socket}, token_file: {token} }}\nlog: {{ level: info, format: text }}\n",
                    name = host.name,
                    bind = host.addr(),
                    data = quoted(&host.dir.join("data")),
                    topology = quoted(&host.topology),
                    join = join.join(", "),
                    key = quoted(&key),
                    api = host.api(),
                    socket = quoted(&host.dir.join("api.sock")),
                    token = quoted(token_file()),
                ),
            )
            .expect("write the node config");
        }
        Hosts {
            agents: hosts.iter().map(|_| Mutex::new(None)).collect(),
            isolated: Mutex::new(BTreeSet::new()),
            hosts,
            hub,
            root: Some(root),
        }
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// The index of the host named `name`.
    pub fn index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    pub fn name(&self, i: usize) -> &str {
        &self.hosts[i].name
    }

    /// Writes `text` as every host's topology file.
    pub fn write_topology(&self, text: &str) {
        for host in &self.hosts {
            fs::write(&host.topology, text).expect("write the topology");
        }
    }

    /// A file in the test's temp dir, readable from every host.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.root.as_ref().expect("the temp dir").path().join(name);
        fs::write(&path, text).expect("write the file");
        path
    }

    fn agent(&self, i: usize) -> MutexGuard<'_, Option<Proc>> {
        self.agents[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn running(&self, i: usize) -> bool {
        self.agent(i).is_some()
    }

    /// Starts host `i`'s agent inside its namespace and waits until its
    /// API answers; panics with the end of its log if it exits or stays
    /// silent for `timeout`.
    pub fn start(&self, i: usize, timeout: Duration) {
        let host = &self.hosts[i];
        assert!(!self.running(i), "{} runs already", host.name);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(host.log())
            .expect("open the agent's log");
        // Killed on drop if the wait below panics.
        let mut proc = spawn_agent(
            host.ns.exec(env!("CARGO_BIN_EXE_cohort")),
            &host.dir.join("cohort.yaml"),
            log,
        );
        let mut exited = None;
        let answered = wait_until_or(timeout, || {
            exited = proc.child.try_wait().expect("try_wait");
            if exited.is_some() {
                return Some(false);
            }
            self.cli(i, &["status", "--format", "json"])
                .ok
                .then_some(true)
        });
        if answered != Some(true) {
            panic!(
                "{} did not answer on its API within {timeout:?} (exit: {exited:?}); the end of its log:\n{}",
                host.name,
                self.log_tail(i, 80)
            );
        }
        *self.agent(i) = Some(proc);
    }

    pub fn start_all(&self, timeout: Duration) {
        for i in 0..self.len() {
            self.start(i, timeout);
        }
    }

    /// SIGKILL to host `i`'s agent, and its exit.
    pub fn kill(&self, i: usize) {
        let mut proc = self
            .agent(i)
            .take()
            .unwrap_or_else(|| panic!("{} runs", self.hosts[i].name));
        proc.signal(SIGKILL);
        proc.wait_exit(Duration::from_secs(30));
    }

    /// Cuts host `i` off the LAN: inside its namespace nftables drops
    /// every packet in and out but loopback's, so its agent hears nobody
    /// and nobody hears it (its own API still answers the CLI run there).
    pub fn isolate(&self, i: usize) {
        let mut isolated = self.isolated.lock().unwrap_or_else(|p| p.into_inner());
        assert!(isolated.insert(i), "{} is isolated already", self.name(i));
        self.hosts[i].ns.nft_script(ISOLATE);
    }

    /// Puts host `i` back on the LAN.
    pub fn heal(&self, i: usize) {
        let mut isolated = self.isolated.lock().unwrap_or_else(|p| p.into_inner());
        assert!(isolated.remove(&i), "{} is not isolated", self.name(i));
        self.hosts[i].ns.nft("delete table inet cohort_isolate");
    }

    /// Cuts host `i` off from everything but the TCP connections the
    /// hosts `peers` open to it: they can call it (rpc), it can open
    /// nothing, not even a gossip stream to them. Lasts until the host goes
    /// away.
    pub fn only_called_by(&self, i: usize, peers: &[usize]) {
        let ips: Vec<String> = peers
            .iter()
            .map(|&p| self.hosts[p].ip.to_string())
            .collect();
        let ips = ips.join(", ");
        self.hosts[i].ns.nft_script(&format!(
            "table inet cohort_only_called {{
  chain input {{ type filter hook input priority 0; policy drop; iifname \"lo\" accept; ip saddr {{ {ips} }} meta l4proto tcp accept; }}
  chain output {{ type filter hook output priority 0; policy drop; oifname \"lo\" accept; ip daddr {{ {ips} }} meta l4proto tcp ct state established accept; }}
}}
"
        ));
    }

    pub fn is_isolated(&self, i: usize) -> bool {
        self.isolated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&i)
    }

    /// `cohort --api API(i) ARGS...` inside host `i`'s namespace.
    pub fn cli(&self, i: usize, args: &[&str]) -> Cli {
        let host = &self.hosts[i];
        let out = host
            .ns
            .exec(env!("CARGO_BIN_EXE_cohort"))
            .arg("--api")
            .arg(host.api().to_string())
            .args(args)
            .env("COHORT_TOKEN_FILE", token_file())
            .stdin(Stdio::null())
            .output()
            .expect("run the cohort CLI");
        Cli {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `cohort ARGS --format json` on host `i`, parsed, when it succeeds.
    pub fn json(&self, i: usize, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let out = self.cli(i, &all);
        if !out.ok {
            return None;
        }
        serde_json::from_str(&out.stdout).ok()
    }

    /// `cohort leaders [--consistent] --format json` on host `i`.
    pub fn leaders(&self, i: usize, consistent: bool) -> Option<Value> {
        if consistent {
            self.json(i, &["leaders", "--consistent"])
        } else {
            self.json(i, &["leaders"])
        }
    }

    /// Waits until every host of `among` answers `GET /v1/leaders` with
    /// the same group, a leader and `voters` voters, and `check` holds for
    /// it; panics after `timeout` with what each said last.
    pub fn agreed(
        &self,
        what: &str,
        among: &[usize],
        voters: usize,
        timeout: Duration,
        check: impl Fn(&Seen) -> bool,
    ) -> Seen {
        let mut last = String::new();
        let found = wait_until_or(timeout, || {
            last.clear();
            let mut agreed: Option<Seen> = None;
            for &i in among {
                let Some(view) = self.leaders(i, false) else {
                    last = format!("{} does not answer `cohort leaders`", self.name(i));
                    return None;
                };
                last.push_str(&format!("{}: {view}\n", self.name(i)));
                let seen = Seen::of(&view)?;
                if seen.voters != voters || !check(&seen) {
                    return None;
                }
                if agreed.as_ref().is_some_and(|a| !a.same_group(&seen)) {
                    return None;
                }
                agreed = Some(seen);
            }
            agreed
        });
        found.unwrap_or_else(|| panic!("{what}: not agreed within {timeout:?}:\n{last}"))
    }

    /// `cohort status --format json` on host `i`.
    pub fn status(&self, i: usize) -> Option<Value> {
        self.json(i, &["status"])
    }

    /// The last `count` lines of host `i`'s agent log.
    pub fn log_tail(&self, i: usize, count: usize) -> String {
        let log = read(&self.hosts[i].log());
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(count)..].join("\n")
    }

    /// Lines of host `i`'s agent log that contain `needle`.
    pub fn log_lines(&self, i: usize, needle: &str) -> Vec<String> {
        read(&self.hosts[i].log())
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }

    /// The namespace holding the bridge `br0` (the hosts' links are its
    /// ports `v<i>`).
    pub fn hub(&self) -> &Netns {
        &self.hub
    }

    /// The pid of host `i`'s agent, while the test runs it.
    pub fn pid(&self, i: usize) -> Option<i32> {
        self.agent(i).as_ref().map(|p| p.pid())
    }

    /// How host `i`'s agent ended, if it ended while the test ran it
    /// (a crash; `kill` forgets the agent it killed).
    pub fn exit_status(&self, i: usize) -> Option<std::process::ExitStatus> {
        let mut agent = self.agent(i);
        agent.as_mut()?.child.try_wait().ok().flatten()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let keep = std::env::var_os("COHORT_TEST_KEEP").is_some();
        if std::thread::panicking() {
            for i in 0..self.hosts.len() {
                eprintln!(
                    "---- the end of {}'s log ----\n{}",
                    self.hosts[i].name,
                    self.log_tail(i, 40)
                );
            }
        }
        if keep {
            if let Some(root) = self.root.take() {
                eprintln!(
                    "COHORT_TEST_KEEP: the agents' files stay in {}",
                    root.keep().display()
                );
            }
        }
    }
}
