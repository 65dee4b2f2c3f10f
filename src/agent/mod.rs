//! The running node: loads its config, takes its data dir and identity,
//! binds its gossip/rpc port, serves the local API, and lives until SIGTERM
//! or SIGINT; SIGHUP reloads the node config and the log level.

mod data_dir;
pub mod identity;
pub mod logging;
mod membership;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, UdpSocket};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, info, warn};

use crate::api::{self, NodeState, Status, TopologyFile, TopologyFileState};
use crate::config::{ConfigError, LogFormat, NodeConfig, Topology, DEFAULT_CONFIG_PATH};
pub use data_dir::{DataDir, DataDirError};
pub use identity::{Identity, IdentityError, NodeId};

/// How the agent was asked to start: a config file, dev defaults, and
/// command-line settings that win over both.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    pub config: Option<PathBuf>,
    pub dev: bool,
    pub node: Option<String>,
    pub bind: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub api_http: Option<SocketAddr>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(ConfigError),
    #[error("cannot read {}: no such file; pass --config FILE, or --dev to run a local node without one", .0.display())]
    NoConfigFile(PathBuf),
    #[error("{0}")]
    Logging(String),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot bind {addr} ({what}): {}", crate::storage::describe(source))]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: io::Error,
    },
    #[error(transparent)]
    Membership(#[from] membership::MembershipError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
}

impl AgentError {
    /// Config diagnostics are printed as they are (`FILE:LINE:COL: ...`,
    /// one a line) so editors and Ansible can point at them.
    pub fn is_diagnostics(&self) -> bool {
        matches!(self, AgentError::Config(ConfigError::Invalid(_)))
    }
}

impl AgentOptions {
    /// The node config these options describe, read afresh (also on SIGHUP).
    pub fn load_config(&self) -> Result<NodeConfig, AgentError> {
        let base = if self.dev {
            NodeConfig::dev_defaults()
        } else {
            NodeConfig::defaults()
        };
        let mut config = match (&self.config, self.dev) {
            (Some(path), _) => load_node_config(path, base)?,
            (None, true) => base,
            (None, false) => load_node_config(Path::new(DEFAULT_CONFIG_PATH), base)?,
        };
        if let Some(node) = &self.node {
            config.node = node.clone();
        }
        if let Some(bind) = self.bind {
            config.bind = bind;
        }
        if let Some(dir) = &self.data_dir {
            if self.dev && self.config.is_none() {
                config.topology = dir.join("topology.yaml");
            }
            config.data_dir = dir.clone();
        }
        if let Some(api) = self.api_http {
            config.api.http = Some(api);
        }
        if let Some(level) = &self.log_level {
            config.log.level = level.clone();
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        Ok(config)
    }
}

/// A missing file gets advice; other problems are reported as they are.
fn load_node_config(path: &Path, base: NodeConfig) -> Result<NodeConfig, AgentError> {
    NodeConfig::load(path, base).map_err(|e| match e {
        ConfigError::Read { ref source, .. } if source.kind() == io::ErrorKind::NotFound => {
            AgentError::NoConfigFile(path.to_path_buf())
        }
        e => AgentError::Config(e),
    })
}

/// Runs the agent until it is told to stop. Returns when it stopped cleanly.
pub fn run(options: AgentOptions) -> Result<(), AgentError> {
    let config = options.load_config()?;
    let log = logging::init(&config.log.level, config.log.format).map_err(AgentError::Logging)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    runtime.block_on(serve(options, config, log))
}

/// The node's sockets. Gossip (UDP) and its streams plus rpc (TCP) share
/// one port.
struct NodeSockets {
    gossip: UdpSocket,
    tcp: TcpListener,
}

async fn bind_node(addr: SocketAddr) -> Result<NodeSockets, AgentError> {
    let rpc = TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Bind {
            addr,
            what: "tcp",
            source,
        })?;
    let gossip = UdpSocket::bind(addr)
        .await
        .map_err(|source| AgentError::Bind {
            addr,
            what: "udp",
            source,
        })?;
    Ok(NodeSockets { gossip, tcp: rpc })
}

async fn serve(
    options: AgentOptions,
    mut config: NodeConfig,
    log: logging::LogControl,
) -> Result<(), AgentError> {
    let data_dir = DataDir::open(&config.data_dir)?;
    let identity = Identity::load_or_create(&data_dir.path, identity::wall_clock_us())?;
    // The keyring is checked before anything is bound: a node that cannot
    // talk to its cluster should not look alive on its port.
    let security = membership::packet_security(&config)?;
    let sockets = bind_node(config.bind).await?;
    let advertise = advertise_addr(&config);

    let api_listener = match config.api.http {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Bind {
                    addr,
                    what: "http api",
                    source,
                })?,
        ),
        None => None,
    };

    let started_at = SystemTime::now();
    let (state, commands) = NodeState::new(Status {
        node: config.node.clone(),
        uuid: identity.id.0,
        generation: identity.generation,
        cluster: config.cluster.clone(),
        bind: config.bind.to_string(),
        advertise: advertise.to_string(),
        data_dir: config.data_dir.display().to_string(),
        pid: std::process::id(),
        config_version: None,
        topology: topology_file(&config.topology),
        started_at_ms: api::unix_ms(started_at),
        uptime_seconds: 0,
        version: env!("CARGO_PKG_VERSION").to_string(),
    });

    let topology = membership::read_topology(&config.topology);
    let gossip = membership::start(
        &config,
        identity,
        advertise,
        security,
        topology.as_ref(),
        sockets.gossip,
        sockets.tcp,
        Arc::clone(&state),
    )?;
    tokio::spawn(answer_commands(commands, gossip.clone(), advertise));

    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api_task = api_listener.map(|listener| {
        let app = api::router(Arc::clone(&state));
        tokio::spawn(async move {
            let shutdown = async {
                let _ = api_stopped.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                warn!(error = %e, "the HTTP API stopped");
            }
        })
    });

    let topology_state = state.snapshot().topology;
    info!(
        node = %config.node,
        cluster = %config.cluster,
        uuid = %identity.id,
        generation = identity.generation,
        bind = %config.bind,
        advertise = %advertise,
        api = %config.api.http.map_or("off".to_string(), |a| a.to_string()),
        data_dir = %config.data_dir.display(),
        "agent started"
    );
    report_topology_file(&topology_state);
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("{}: node {} up", config.cluster, config.node)),
    ]);

    let mut terminate = signal(SignalKind::terminate()).map_err(AgentError::Runtime)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(AgentError::Runtime)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(AgentError::Runtime)?;
    let reason = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = hangup.recv() => {
                notify(&[sd_notify::NotifyState::Reloading]);
                config = reload(&options, config, &log, &state);
                notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    };

    info!(signal = reason, "stopping");
    notify(&[sd_notify::NotifyState::Stopping]);
    // Peers mark us `left` at once instead of suspecting us for seconds.
    gossip.leave(Duration::from_secs(1)).await;
    let _ = stop_api.send(());
    if let Some(task) = api_task {
        // Open connections get a moment to finish; the stop is never held up.
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    info!("stopped");
    Ok(())
}

/// Carries out the writes the API asks for.
async fn answer_commands(
    mut commands: tokio::sync::mpsc::Receiver<api::AgentCommand>,
    gossip: crate::membership::driver::Handle,
    own: SocketAddr,
) {
    while let Some(command) = commands.recv().await {
        match command {
            api::AgentCommand::Join { address, reply } => {
                let answer = match crate::config::JoinTarget::parse(&address) {
                    Err(e) => Err(e),
                    Ok(target) => {
                        let found = crate::discovery::resolve_seeds(&[target], own).await;
                        if found.addrs.is_empty() {
                            Err(found.failed.first().map_or_else(
                                || format!("`{address}` is this node itself"),
                                |(s, why)| format!("`{s}`: {why}"),
                            ))
                        } else {
                            for addr in &found.addrs {
                                gossip.join(*addr).await;
                            }
                            let addrs: Vec<String> =
                                found.addrs.iter().map(ToString::to_string).collect();
                            Ok(format!("probing {}", addrs.join(", ")))
                        }
                    }
                };
                let _ = reply.send(answer);
            }
            api::AgentCommand::Leave { reply } => {
                gossip.leave(Duration::from_secs(1)).await;
                let _ = reply.send(Ok("left the cluster; peers see this node as `left`".into()));
            }
        }
    }
}

/// Reads the node config again. Settings that can change at run time take
/// effect; the others are named so the operator knows to restart.
fn reload(
    options: &AgentOptions,
    running: NodeConfig,
    log: &logging::LogControl,
    state: &NodeState,
) -> NodeConfig {
    let fresh = match options.load_config() {
        Ok(fresh) => fresh,
        Err(e) => {
            warn!(error = %e, "reload failed; keeping the running config");
            return running;
        }
    };
    if fresh.log.level != running.log.level {
        match log.set_level(&fresh.log.level) {
            Ok(()) => info!(level = %fresh.log.level, "log level changed"),
            Err(e) => warn!(error = %e, "cannot change the log level"),
        }
    }
    let needs_restart: Vec<&str> = [
        ("node", fresh.node != running.node),
        ("cluster", fresh.cluster != running.cluster),
        ("bind", fresh.bind != running.bind),
        ("advertise", fresh.advertise != running.advertise),
        ("data_dir", fresh.data_dir != running.data_dir),
        ("api", fresh.api != running.api),
        ("log.format", fresh.log.format != running.log.format),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect();
    if !needs_restart.is_empty() {
        warn!(settings = %needs_restart.join(", "), "these changed settings take effect at the next restart");
    }
    debug!(config = ?options.config, "node config read again");
    let topology = topology_file(&fresh.topology);
    report_topology_file(&topology);
    state.update(|s| s.topology = topology);
    info!("reloaded");
    // Keep what needs a restart as it runs, so status tells the truth.
    NodeConfig {
        log: crate::config::LogConfig {
            level: fresh.log.level.clone(),
            format: running.log.format,
        },
        gossip: fresh.gossip.clone(),
        join: fresh.join.clone(),
        topology: fresh.topology.clone(),
        ..running
    }
}

fn topology_file(path: &Path) -> TopologyFile {
    let (state, problems) = match Topology::load(path) {
        Ok(_) => (TopologyFileState::Valid, Vec::new()),
        Err(ConfigError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            (TopologyFileState::Missing, Vec::new())
        }
        Err(ConfigError::Read { path, source }) => (
            TopologyFileState::Unreadable,
            vec![format!("cannot read {}: {source}", path.display())],
        ),
        Err(ConfigError::Invalid(d)) => (
            TopologyFileState::Invalid,
            d.iter().map(|d| d.to_string()).collect(),
        ),
    };
    TopologyFile {
        path: path.display().to_string(),
        state,
        problems,
    }
}

fn report_topology_file(file: &TopologyFile) {
    match file.state {
        TopologyFileState::Valid => info!(path = %file.path, "topology file is valid"),
        TopologyFileState::Missing => info!(path = %file.path, "no topology file yet"),
        TopologyFileState::Invalid | TopologyFileState::Unreadable => {
            for problem in &file.problems {
                warn!(path = %file.path, "topology file rejected: {problem}");
            }
        }
    }
}

/// The address peers dial: `advertise`, or `bind` when it is a real
/// address, or else the first non-loopback IPv4 address of this host.
fn advertise_addr(config: &NodeConfig) -> SocketAddr {
    if let Some(addr) = config.advertise {
        return addr;
    }
    if !config.bind.ip().is_unspecified() {
        return config.bind;
    }
    let ip = nix::ifaddrs::getifaddrs()
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|s| s.ip())))
        .find(|ip| !ip.is_loopback() && !ip.is_unspecified());
    match ip {
        Some(ip) => SocketAddr::new(IpAddr::V4(ip), config.bind.port()),
        None => {
            warn!("no non-loopback address found; advertising 127.0.0.1 (set `advertise` in the node config)");
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), config.bind.port())
        }
    }
}

/// Tells systemd about the agent's state; does nothing outside systemd.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(states);
}
