//! The running node: loads its config, takes its data dir and identity,
//! binds its gossip/rpc port, serves the local API, and lives until SIGTERM
//! or SIGINT; SIGHUP reloads the node config and the log level.

pub mod apply;
pub mod cluster_state;
mod commands;
mod data_dir;
mod discovery;
pub mod event_handlers;
mod gossip_health;
pub mod identity;
pub mod issues;
pub mod logging;
mod membership;
mod options;
mod raft;
mod reload;
mod sockets;
mod systemd;
mod topology_apply;
mod topology_file;
pub mod topology_watch;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::api::{self, NodeState, Status};
use crate::config::{ConfigError, NodeConfig};
pub use data_dir::{DataDir, DataDirError};
pub use identity::{Identity, IdentityError, NodeId};
pub use options::AgentOptions;

/// From SIGTERM to the end of `serve`: leaving the cluster and draining
/// the API share it, so the process exits well within systemd's patience
/// and the 2 s the operator was promised.
const STOP_BUDGET: Duration = Duration::from_secs(1);
/// The topology file is read once it has been quiet this long (an editor's
/// save or Ansible's move is a burst of events).
const TOPOLOGY_DEBOUNCE: Duration = Duration::from_millis(300);
/// What blocking work (a DNS lookup) gets before the process exits anyway.
const RUNTIME_GRACE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(ConfigError),
    #[error("cannot read {}: no such file{}", path.display(),
        if *dev { "" } else { "; pass --config FILE, or --dev to run a local node without one" })]
    NoConfigFile { path: PathBuf, dev: bool },
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
    #[error("the HTTP API on {addr} is reachable from other hosts, so it needs a token: set api.token_file in the node config, or listen on 127.0.0.1")]
    ApiExposed { addr: SocketAddr },
    #[error(transparent)]
    ApiToken(crate::api::access::TokenError),
    #[error("API socket: {0}")]
    ApiSocket(sockets::SocketError),
    #[error(transparent)]
    Membership(#[from] membership::MembershipError),
    #[error(transparent)]
    Apply(#[from] apply::StoreError),
    #[error("cannot set up {what}: {}", crate::storage::describe(source))]
    Runtime {
        what: &'static str,
        source: io::Error,
    },
}

impl AgentError {
    /// Config diagnostics are printed as they are (`FILE:LINE:COL: ...`,
    /// one a line) so editors and Ansible can point at them.
    pub fn is_diagnostics(&self) -> bool {
        matches!(self, AgentError::Config(ConfigError::Invalid(_)))
    }
}

/// Runs the agent until it is told to stop. Returns when it stopped cleanly.
pub fn run(options: AgentOptions) -> Result<(), AgentError> {
    let config = options.load_config()?;
    let log = logging::init(&config.log.level, config.log.format).map_err(AgentError::Logging)?;
    // Journal entries carry the node and cluster from the first line on.
    log.identify(&config.node, &config.cluster, None);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| AgentError::Runtime {
            what: "the async runtime",
            source,
        })?;
    let result = runtime.block_on(serve(options, config, log));
    // Dropping the runtime would wait for every blocking task (a slow DNS
    // lookup of a join seed); the exit must not.
    runtime.shutdown_timeout(RUNTIME_GRACE);
    result
}

/// SIGTERM, SIGINT and SIGHUP, taken over before any start-up work, so a
/// stop asked for while starting is still a clean stop.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, AgentError> {
        let install = |kind| {
            signal(kind).map_err(|source| AgentError::Runtime {
                what: "signal handling",
                source,
            })
        };
        Ok(Signals {
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
            hangup: install(SignalKind::hangup())?,
        })
    }
}

async fn serve(
    options: AgentOptions,
    mut config: NodeConfig,
    log: logging::LogControl,
) -> Result<(), AgentError> {
    let mut signals = Signals::install()?;
    let data_dir = DataDir::open(&config.data_dir)?;
    let identity = Identity::load_or_create(&data_dir.path, identity::wall_clock_us())?;
    // The keyring is checked before anything is bound: a node that cannot
    // talk to its cluster should not look alive on its port.
    let security = membership::packet_security(&config)?;
    let node_sockets = sockets::bind_node(config.bind).await?;
    let advertise = sockets::advertise_addr(&config);
    let api_listeners = sockets::bind_api(&config.api).await?;

    let (topology_file, topology) = topology_file::check(&config.topology);
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
        topology: topology_file.clone(),
        apply: None,
        raft: None,
        cluster_state: None,
        started_at: api::rfc3339(started_at),
        started_at_ms: api::unix_ms(started_at),
        uptime_seconds: 0,
        version: env!("CARGO_PKG_VERSION").to_string(),
        warnings: Vec::new(),
    });

    // Two-phase commit of topology applies: its rpc endpoint goes into the
    // router before the port opens; the driver starts once membership runs.
    let (apply_endpoint, apply_inbox) = apply::channel();
    let raft_ports = crate::raft::driver::ports();
    let mut router = crate::rpc::Router::new()
        .route(apply::METHOD, apply_endpoint.clone())
        .route(apply::EXCHANGE_METHOD, apply_endpoint.clone())
        .route(apply::COMMITTED_METHOD, apply_endpoint)
        .route(crate::raft::network::METHOD, raft_ports.endpoint.clone())
        .route(issues::METHOD, issues::endpoint(Arc::clone(&state)));
    for method in crate::raft::driver::CONTROL_METHODS {
        router = router.route(method, raft_ports.control.clone());
    }
    let running = membership::start(
        &config,
        identity,
        advertise,
        security.clone(),
        topology.as_ref(),
        node_sockets.udp,
        node_sockets.tcp,
        Arc::clone(&state),
        router,
    )?;
    let gossip = running.gossip.clone();
    let rpc_client = crate::rpc::RpcClient::new(
        crate::rpc::ClusterAuth {
            cluster: config.cluster.clone(),
            security: security.clone(),
        },
        crate::rpc::ClientConfig::default(),
    );
    // What is wrong, as this node sees it (`/v1/issues`).
    issues::spawn(
        Arc::clone(&state),
        gossip.clone(),
        rpc_client.clone(),
        config.data_dir.clone(),
    );
    // The roles this node runs, validated and applied by each apply.
    // (Not yet started from the committed version at boot, nor told who is
    // master: that comes with the apply triggers and Raft.)
    let roles = Arc::new(crate::roles::RoleSet::new(
        crate::roles::NodeIdentity {
            name: config.node.clone(),
            uuid: identity.id.0,
        },
        crate::roles::Registry::builtin(),
        false,
    ));
    let applies = apply::spawn(
        apply::ApplyConfig::new(identity.id, &config),
        apply_inbox,
        Arc::new(gossip.clone()),
        rpc_client.clone(),
        Arc::new(apply::RoleSetHooks(Arc::clone(&roles))),
    )?;
    // The Raft group: leader, masters; follows the committed topology.
    let raft = raft::start(
        raft::settings(identity.id, &config.node, &config.data_dir, advertise),
        raft_ports,
        &applies,
        Arc::new(gossip.clone()),
        rpc_client,
        Arc::clone(&roles),
        Arc::clone(&state),
    );
    applies.use_replicated_log(Arc::new(raft.clone())).await;
    // `assembling` until `cluster_up_at` nodes are alive, then `up`.
    tokio::spawn(cluster_state::follow(
        Arc::clone(&state),
        Arc::clone(&roles),
        config.node.clone(),
    ));
    tokio::spawn(topology_apply::publish(
        applies.clone(),
        Arc::clone(&state),
        gossip.clone(),
        config.clone(),
        advertise,
    ));
    // Every change of the topology file is applied to the cluster.
    let (topology_watcher, topology_changes) =
        topology_watch::TopologyWatcher::spawn(config.topology.clone(), TOPOLOGY_DEBOUNCE);
    tokio::spawn(topology_apply::follow(
        topology_changes,
        applies.clone(),
        Arc::clone(&state),
        config.topology.clone(),
        Arc::new(gossip.clone()),
        config.node.clone(),
    ));
    tokio::spawn(commands::answer(
        commands,
        gossip.clone(),
        advertise,
        applies.clone(),
        raft.clone(),
        config.node.clone(),
    ));
    if let Some(mut multicast) = discovery::spawn(
        &config,
        identity,
        advertise,
        security.clone(),
        gossip.clone(),
    )? {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            while multicast.changed().await.is_ok() {
                state.set_multicast(*multicast.borrow_and_update());
            }
        });
    }

    let api_socket = api_listeners
        .socket()
        .map_or("off".to_string(), |p| p.display().to_string());
    let api_server = sockets::serve_api(api_listeners, Arc::clone(&state), &config.api);

    info!(
        node = %config.node,
        cluster = %config.cluster,
        uuid = %identity.id,
        generation = identity.generation,
        bind = %config.bind,
        advertise = %advertise,
        api = %config.api.http.map_or("off".to_string(), |a| a.to_string()),
        api_socket = %api_socket,
        data_dir = %config.data_dir.display(),
        "agent started"
    );
    topology_file::report(&topology_file);
    let mut heartbeat = systemd::ready(&state, &log);

    let reason = loop {
        tokio::select! {
            _ = signals.terminate.recv() => break "SIGTERM",
            _ = signals.interrupt.recv() => break "SIGINT",
            _ = signals.hangup.recv() => {
                systemd::reloading();
                config = reload::reload(&options, config, &log, &security);
                api_server.reload_token();
                systemd::reloaded();
            }
            // Watchdog ping and status line, from this loop: if it stops
            // turning, systemd restarts the process.
            _ = heartbeat.tick() => heartbeat.beat(),
        }
    };

    info!(signal = reason, "stopping");
    systemd::stopping();
    let deadline = Instant::now() + STOP_BUDGET;
    // The API stops accepting while peers hear we leave (marked `left` at
    // once instead of suspected for seconds); open API requests get what
    // is left of the budget, never more.
    state.end_streams(&format!("stopping on {reason}"));
    api_server.stop();
    let leave = gossip.leave(STOP_BUDGET);
    let drain = api_server.drained();
    if tokio::time::timeout_at(deadline, async { tokio::join!(leave, drain) })
        .await
        .is_err()
    {
        warn!("stopped before leaving and draining the API finished");
    }
    // After the leave (UDP): closes the TCP port and every rpc connection.
    running.port.stop().await;
    drop(topology_watcher);
    raft.stop().await;
    applies.stop().await;
    let stopped = roles.stop_all().await;
    if let Err(e) = stopped.result() {
        warn!("stopping the roles: {e}");
    }
    info!("stopped");
    // The data dir stays locked until the very end.
    drop(data_dir);
    Ok(())
}
