//! `cohort dev`: a real local cluster of N agent processes on loopback,
//! each with its own dir, port, API and API socket, sharing a generated
//! topology, keyring and API token. Ctrl-C or SIGTERM stops them all; a
//! child never outlives it, even if `cohort dev` is SIGKILLed
//! (PR_SET_PDEATHSIG).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::{NodeConfig, Topology, MAX_SOCKET_PATH};
use crate::storage::{describe, write_atomic};

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// How many agents to run.
    #[arg(long, short, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub nodes: u16,
    /// Where the nodes' configs, data and logs go [default: a new temp dir, removed on exit].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Gossip/rpc port of the first node; node i gets base+i-1.
    #[arg(long, default_value_t = 3311, value_name = "PORT")]
    pub port_base: u16,
    /// HTTP API port of the first node; node i gets base+i-1, and the http role's ports follow the last API port.
    #[arg(long, default_value_t = 8311, value_name = "PORT")]
    pub api_port_base: u16,
    /// Keep the temp dir on exit (a --dir is always kept).
    #[arg(long)]
    pub keep: bool,
}

/// How long agents get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the agents get to answer on their API after start.
const START_DEADLINE: Duration = Duration::from_secs(30);

struct DevNode {
    name: String,
    bind: SocketAddr,
    api: SocketAddr,
    dir: PathBuf,
}

impl DevNode {
    /// Its API's unix socket: writes there need no token.
    fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }
}

/// The API token every dev agent takes over TCP (`COHORT_TOKEN_FILE`).
fn token_file(root: &Path) -> PathBuf {
    root.join("api.token")
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    check_ports(&args)?;
    let (root, remove_on_exit) = match &args.dir {
        Some(dir) => {
            fs::create_dir_all(dir).map_err(io_error("create", dir))?;
            // Node configs take absolute paths only.
            (
                std::path::absolute(dir).map_err(io_error("resolve", dir))?,
                false,
            )
        }
        None => (new_temp_dir()?, !args.keep),
    };
    let nodes = prepare(&root, &args)?;
    // One thread forks every child: PR_SET_PDEATHSIG fires when the forking
    // thread ends, so it must be the thread that lives as long as we do.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(supervise(&nodes, &root));
    if remove_on_exit {
        let _ = fs::remove_dir_all(&root);
    }
    result
}

/// Node i (from 0) uses gossip/rpc port P+i, API port Q+i and http-role
/// port Q+N+i; the three ranges must fit and not overlap.
fn check_ports(args: &DevArgs) -> anyhow::Result<()> {
    let n = u32::from(args.nodes);
    let gossip = u32::from(args.port_base)..u32::from(args.port_base) + n;
    let api_and_http = u32::from(args.api_port_base)..u32::from(args.api_port_base) + 2 * n;
    if gossip.end > 65_536 || api_and_http.end > 65_536 {
        bail!(
            "{} nodes do not fit: ports {}-{} (gossip/rpc) and {}-{} (API, then the http role) must stay below 65536; lower --port-base or --api-port-base",
            n, gossip.start, gossip.end - 1, api_and_http.start, api_and_http.end - 1
        );
    }
    if gossip.start < api_and_http.end && api_and_http.start < gossip.end {
        bail!(
            "ports {}-{} (gossip/rpc) overlap ports {}-{} (API, then the http role); move --port-base or --api-port-base",
            gossip.start, gossip.end - 1, api_and_http.start, api_and_http.end - 1
        );
    }
    Ok(())
}

/// An I/O failure on `path` as one line, without Rust's "(os error N)".
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> anyhow::Error {
    let path = path.display().to_string();
    move |e| anyhow::anyhow!("cannot {action} {path}: {}", describe(&e))
}

fn new_temp_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cohort-dev-{}", uuid::Uuid::new_v4().simple()));
    fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
    Ok(dir)
}

/// Writes the keyring, the topology and each node's config, all validated.
fn prepare(root: &Path, args: &DevArgs) -> anyhow::Result<Vec<DevNode>> {
    let nodes: Vec<DevNode> = (0..args.nodes)
        .map(|i| {
            let name = format!("n{}", i + 1);
            DevNode {
                bind: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port_base + i),
                api: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.api_port_base + i),
                dir: root.join(&name),
                name,
            }
        })
        .collect();

    let key_file = root.join("gossip.key");
    let key: [u8; 32] = rand::random();
    let keyring = format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    write_atomic(&key_file, keyring.as_bytes(), 0o600).map_err(io_error("write", &key_file))?;

    if let Some(node) = nodes.last() {
        let socket = node.socket();
        let length = socket.as_os_str().len();
        if length > MAX_SOCKET_PATH {
            bail!(
                "{} is {length} bytes long, more than a unix socket path holds ({MAX_SOCKET_PATH}): use a shorter --dir",
                socket.display()
            );
        }
    }
    let token_file = token_file(root);
    let token: [u8; 32] = rand::random();
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    write_atomic(&token_file, format!("{token}\n").as_bytes(), 0o600)
        .map_err(io_error("write", &token_file))?;

    let topology = topology_text(&nodes, args.api_port_base);
    Topology::parse(&topology, Path::new("generated topology"))
        .map_err(|d| anyhow::anyhow!("the generated topology is invalid (a bug):\n{d}"))?;

    for node in &nodes {
        fs::create_dir_all(&node.dir).map_err(io_error("create", &node.dir))?;
        let topology_path = node.dir.join("topology.yaml");
        write_atomic(&topology_path, topology.as_bytes(), 0o644)
            .map_err(io_error("write", &topology_path))?;
        let config = format!(
            "node: {name}\ncluster: dev\nbind: {bind}\ndata_dir: {data}\ntopology: {topology}\njoin: [{seed}]\ngossip:\n  key_file: {key}\napi:\n  http: {api}\n  socket: {socket}\n  token_file: {token}\nlog:\n  format: text\n",
            name = node.name,
            bind = node.bind,
            data = yaml_string(&node.dir.join("data")),
            topology = yaml_string(&topology_path),
            seed = nodes[0].bind,
            key = yaml_string(&key_file),
            api = node.api,
            socket = yaml_string(&node.socket()),
            token = yaml_string(&token_file),
        );
        let config_path = node.dir.join("cohort.yaml");
        NodeConfig::parse(&config, &config_path, NodeConfig::defaults())
            .map_err(|d| anyhow::anyhow!("the generated node config is invalid (a bug):\n{d}"))?;
        write_atomic(&config_path, config.as_bytes(), 0o644)
            .map_err(io_error("write", &config_path))?;
    }
    Ok(nodes)
}

/// A path as a double-quoted YAML scalar: a JSON string is one, and it
/// survives spaces, `#` and `: ` in the temp dir's name.
fn yaml_string(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap_or_default()
}

/// Replica sets of up to three nodes; the first of each may lead.
fn topology_text(nodes: &[DevNode], http_base: u16) -> String {
    let mut text = String::from("# Generated by `cohort dev`.\ncluster: dev\nfailover: { mode: raft, election_timeout: 1s }\nreplicasets:\n");
    for (set, members) in nodes.chunks(3).enumerate() {
        let _ = writeln!(
            text,
            "  storage-{}:\n    roles: [storage, http]\n    nodes:",
            set + 1
        );
        for (i, node) in members.iter().enumerate() {
            let election = if i == 0 { "candidate" } else { "voter" };
            let _ = writeln!(
                text,
                "      {}: {{ address: {}, election: {election} }}",
                node.name, node.bind
            );
        }
    }
    text.push_str("roles:\n  http:\n    listen:\n");
    // The http role's ports sit above the API ports so they never collide.
    let http_base = u32::from(http_base) + nodes.len() as u32;
    for (i, node) in nodes.iter().enumerate() {
        let _ = writeln!(text, "      {}: {}", node.name, http_base + i as u32);
    }
    text
}

fn spawn(node: &DevNode) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the cohort executable")?;
    let log_path = node.dir.join("agent.log");
    let log = fs::File::create(&log_path).map_err(io_error("create", &log_path))?;
    let mut command = Command::new(exe);
    command
        .arg("agent")
        .arg("--config")
        .arg(node.dir.join("cohort.yaml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io_error("use", &log_path))?)
        .stderr(log)
        // Our own group: a terminal's Ctrl-C reaches us, and we stop them in order.
        .process_group(0);
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run
    // between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The parent may have died before the line above took effect.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start agent {}: {}", node.name, describe(&e)))
}

/// The agents as the supervisor sees them: pids, and exits as they happen.
struct Agents {
    pids: Vec<Option<Pid>>,
    exits: mpsc::UnboundedReceiver<(usize, io::Result<ExitStatus>)>,
}

impl Agents {
    fn start(nodes: &[DevNode]) -> anyhow::Result<Agents> {
        let (tx, exits) = mpsc::unbounded_channel();
        let mut agents = Agents {
            pids: Vec::new(),
            exits,
        };
        for (index, node) in nodes.iter().enumerate() {
            let mut child = match spawn(node) {
                Ok(child) => child,
                Err(e) => {
                    agents.signal_all(Signal::SIGKILL);
                    return Err(e);
                }
            };
            agents
                .pids
                .push(child.id().map(|id| Pid::from_raw(id as i32)));
            // The waiter reaps the child, so no zombie is left behind.
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send((index, child.wait().await));
            });
        }
        Ok(agents)
    }

    fn running(&self) -> usize {
        self.pids.iter().flatten().count()
    }

    fn signal_all(&self, signal: Signal) {
        for pid in self.pids.iter().flatten() {
            let _ = kill(*pid, signal);
        }
    }

    /// Notes that node `index` has exited and been reaped.
    fn exited(&mut self, index: usize) {
        if let Some(slot) = self.pids.get_mut(index) {
            *slot = None;
        }
    }

    /// SIGTERM to every agent, a bounded wait, SIGKILL to stragglers, and
    /// every child reaped before this returns.
    async fn stop(&mut self) {
        self.signal_all(Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        let mut killed = false;
        while self.running() > 0 {
            match tokio::time::timeout_at(deadline, self.exits.recv()).await {
                Ok(Some((index, _))) => self.exited(index),
                Ok(None) => break,
                Err(_) if !killed => {
                    self.signal_all(Signal::SIGKILL);
                    killed = true;
                }
                Err(_) => {
                    // Killed and still not reaped: wait for the reaper.
                    match self.exits.recv().await {
                        Some((index, _)) => self.exited(index),
                        None => break,
                    }
                }
            }
        }
    }
}

async fn supervise(nodes: &[DevNode], root: &Path) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut agents = Agents::start(nodes)?;

    // A stop asked for while starting is a clean stop, like one after.
    let stop_requested = tokio::select! {
        r = wait_ready(nodes, &mut agents) => {
            if let Err(e) = r {
                agents.stop().await;
                return Err(e);
            }
            false
        }
        _ = terminate.recv() => true,
        _ = interrupt.recv() => true,
        _ = hangup.recv() => true,
    };
    if !stop_requested {
        print!("{}", banner(nodes, root));
        loop {
            tokio::select! {
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = hangup.recv() => break,
                Some((index, status)) = agents.exits.recv() => {
                    agents.exited(index);
                    let node = &nodes[index];
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    eprintln!("cohort dev: agent {} exited unexpectedly ({status}); its log: {}",
                        node.name, node.dir.join("agent.log").display());
                    if agents.running() == 0 {
                        bail!("every agent has exited");
                    }
                }
            }
        }
    }
    eprintln!("cohort dev: stopping {}", agents_word(agents.running()));
    agents.stop().await;
    Ok(())
}

/// Waits until every agent answers on its API, or one of them dies.
async fn wait_ready(nodes: &[DevNode], agents: &mut Agents) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_DEADLINE;
    for node in nodes {
        loop {
            if let Ok((index, status)) = agents.exits.try_recv() {
                agents.exited(index);
                let failed = &nodes[index];
                let log = fs::read_to_string(failed.dir.join("agent.log")).unwrap_or_default();
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                bail!(
                    "agent {} exited at start ({status}):\n{}",
                    failed.name,
                    log.trim_end()
                );
            }
            if tokio::net::TcpStream::connect(node.api).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "agent {} did not open its API at {} within {}s",
                    node.name,
                    node.api,
                    START_DEADLINE.as_secs()
                );
            }
            // Polling a local port: there is no event to wait on instead.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// A path as one shell word, quoted when it needs to be.
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn agents_word(n: usize) -> String {
    if n == 1 {
        "1 agent".into()
    } else {
        format!("{n} agents")
    }
}

fn banner(nodes: &[DevNode], root: &Path) -> String {
    let mut out = format!(
        "cohort dev: {} running; their files are under {}\n\n",
        agents_word(nodes.len()),
        root.display()
    );
    let _ = writeln!(
        out,
        "  {:<6} {:<17} {:<17} LOG",
        "NODE", "GOSSIP/RPC", "API"
    );
    for node in nodes {
        let _ = writeln!(
            out,
            "  {:<6} {:<17} {:<17} {}",
            node.name,
            node.bind,
            node.api,
            node.dir.join("agent.log").display()
        );
    }
    // The path it was started as, so the hint works without `cohort` on PATH.
    let exe =
        std::env::current_exe().map_or_else(|_| "cohort".to_string(), |p| p.display().to_string());
    let _ = writeln!(out, "\nTry:  {exe} --api {} status", nodes[0].api);
    let _ = writeln!(
        out,
        "Writes over TCP take the cluster's API token:\n      export COHORT_TOKEN_FILE={}\n      {exe} --api {} apply {}",
        shell_word(&token_file(root)),
        nodes[0].api,
        shell_word(&nodes[0].dir.join("topology.yaml")),
    );
    let _ = writeln!(
        out,
        "or go through a node's unix socket, which needs none:\n      {exe} --socket {} apply {}",
        shell_word(&nodes[0].socket()),
        shell_word(&nodes[0].dir.join("topology.yaml")),
    );
    out.push_str("Stop: Ctrl-C (or SIGTERM) stops every agent.\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Election;

    fn args(nodes: u16, port_base: u16, api_port_base: u16) -> DevArgs {
        DevArgs {
            nodes,
            dir: None,
            port_base,
            api_port_base,
            keep: false,
        }
    }

    fn nodes(n: u16) -> Vec<DevNode> {
        (0..n)
            .map(|i| DevNode {
                name: format!("n{}", i + 1),
                bind: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 3311 + i),
                api: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 8311 + i),
                dir: PathBuf::new(),
            })
            .collect()
    }

    #[test]
    fn the_generated_topology_is_valid_in_sets_of_three_with_one_candidate_each() {
        for n in [1, 2, 3, 4, 7] {
            let text = topology_text(&nodes(n), 8311);
            let topology = Topology::parse(&text, Path::new("t.yaml"))
                .unwrap_or_else(|d| panic!("{n} nodes:\n{d}\n{text}"));
            let sets: Vec<_> = topology.replicasets.value.iter().collect();
            assert_eq!(sets.len(), usize::from(n).div_ceil(3), "{text}");
            for (_, set) in sets {
                let elections: Vec<Election> = set
                    .nodes
                    .value
                    .iter()
                    .map(|(_, node)| node.election)
                    .collect();
                assert_eq!(elections[0], Election::Candidate, "{text}");
                assert!(
                    elections[1..].iter().all(|e| *e == Election::Voter),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn the_banner_says_how_to_write_with_the_token_or_the_socket() {
        let root = Path::new("/tmp/cohort-dev-x");
        let mut nodes = nodes(2);
        for node in &mut nodes {
            node.dir = root.join(&node.name);
        }
        let text = banner(&nodes, root);
        assert!(
            text.contains("export COHORT_TOKEN_FILE=/tmp/cohort-dev-x/api.token\n"),
            "{text}"
        );
        assert!(
            text.contains(" --api 127.0.0.1:8311 apply /tmp/cohort-dev-x/n1/topology.yaml\n"),
            "{text}"
        );
        assert!(
            text.contains(
                " --socket /tmp/cohort-dev-x/n1/api.sock apply /tmp/cohort-dev-x/n1/topology.yaml\n"
            ),
            "{text}"
        );
        assert_eq!(
            shell_word(Path::new("/tmp/a b/it's")),
            r"'/tmp/a b/it'\''s'"
        );
    }

    #[test]
    fn port_ranges_must_fit_and_not_overlap() {
        check_ports(&args(3, 3311, 8311)).unwrap();
        check_ports(&args(1000, 3311, 8311)).unwrap();
        let overlap = check_ports(&args(10, 8300, 8305)).unwrap_err().to_string();
        assert!(
            overlap.contains("8300-8309 (gossip/rpc) overlap ports 8305-8324"),
            "{overlap}"
        );
        let past = check_ports(&args(10, 3311, 65530)).unwrap_err().to_string();
        assert!(past.contains("must stay below 65536"), "{past}");
    }
}
