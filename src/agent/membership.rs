//! The agent's use of SWIM: builds the state machine from the node config
//! and identity, keeps trying the join seeds until the node has company,
//! and turns member events into the API's view, its event feed and logs,
//! and user events into the feed and the configured handlers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, info, warn};

use crate::api::{self, ApiEvent, MemberInfo, Members, NodeState};
use crate::config::{NodeConfig, Topology};
use crate::discovery::{resolve_seeds, Backoff};
use crate::membership::driver::{self, Handle, Observer};
use crate::membership::{
    Incarnation, Keyring, LocalNode, Member, MemberEvent, MemberStatus, PacketSecurity, Payload,
    Swim, SwimConfig, UserEvent,
};

use crate::rpc::{ClusterAuth, Demux, DemuxConfig, Router, Routes, RpcServer, ServerConfig};

use super::event_handlers::{Delivery, Handlers};
use super::gossip_health::HealthWindow;
use super::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("cannot read the gossip key file {}: {reason}; set gossip.allow_plaintext: true to gossip unencrypted", path.display())]
    KeyFile { path: PathBuf, reason: String },
    #[error("gossip key file {}: {reason}", path.display())]
    Keyring { path: PathBuf, reason: String },
    #[error("no gossip key file is configured and gossip.allow_plaintext is false: set gossip.key_file, or allow plaintext for a trusted lab")]
    NoKey,
    #[error("gossip settings: {0}")]
    Settings(String),
}

/// How packets are protected: the keyring when there is one, plaintext
/// only when the config allows it.
pub fn packet_security(config: &NodeConfig) -> Result<PacketSecurity, MembershipError> {
    let Some(path) = &config.gossip.key_file else {
        return if config.gossip.allow_plaintext {
            Ok(PacketSecurity::Plaintext)
        } else {
            Err(MembershipError::NoKey)
        };
    };
    match std::fs::read_to_string(path) {
        Ok(text) => Keyring::parse(&text)
            .map(PacketSecurity::Encrypted)
            .map_err(|e| MembershipError::Keyring {
                path: path.clone(),
                reason: e.to_string(),
            }),
        Err(e) if config.gossip.allow_plaintext && e.kind() == std::io::ErrorKind::NotFound => {
            warn!(path = %path.display(), "no gossip key file; gossip is NOT encrypted (gossip.allow_plaintext)");
            Ok(PacketSecurity::Plaintext)
        }
        Err(e) => Err(MembershipError::KeyFile {
            path: path.clone(),
            reason: crate::storage::describe(&e),
        }),
    }
}

pub fn swim_config(config: &NodeConfig) -> SwimConfig {
    SwimConfig {
        cluster: config.cluster.clone(),
        protocol_period: config.gossip.protocol_period,
        ack_timeout: config.gossip.ack_timeout,
        suspicion_multiplier: config.gossip.suspicion_multiplier,
        push_pull_interval: config.gossip.push_pull_interval,
        max_packet_size: config.gossip.max_packet_size,
        reclaim_after: config.gossip.reclaim_after,
        ..SwimConfig::default()
    }
}

/// What this node publishes about itself: its name, rpc address, and its
/// replica set and roles when the topology file names it.
pub fn payload(config: &NodeConfig, advertise: SocketAddr, topology: Option<&Topology>) -> Payload {
    let mut payload = Payload {
        name: config.node.clone(),
        rpc_addr: Some(advertise),
        ..Payload::default()
    };
    if let Some(node) = topology.and_then(|t| t.node(&config.node)) {
        payload.replica_set = Some(node.replicaset.to_string());
        if let Some(set) = topology.and_then(|t| t.replicasets.value.get(node.replicaset)) {
            payload.roles = set.roles.iter().map(|r| r.value.clone()).collect();
        }
    }
    payload
}

/// What runs on the node's port: SWIM, and the demultiplexer that owns the
/// TCP side (gossip streams to SWIM, rpc connections to the rpc server).
/// Dropping `port` closes the TCP port.
pub struct Running {
    pub gossip: Handle,
    pub port: Demux,
}

/// Starts SWIM on the node's sockets, the port's demultiplexer with the rpc
/// server, and a task that keeps joining the seeds until another member is
/// alive.
#[allow(clippy::too_many_arguments)]
pub fn start(
    config: &NodeConfig,
    identity: Identity,
    advertise: SocketAddr,
    security: PacketSecurity,
    topology: Option<&Topology>,
    udp: UdpSocket,
    tcp: TcpListener,
    state: Arc<NodeState>,
    router: Router,
) -> Result<Running, MembershipError> {
    let encrypted = matches!(security, PacketSecurity::Encrypted(_));
    let auth = ClusterAuth {
        cluster: config.cluster.clone(),
        security: security.clone(),
    };
    let local = LocalNode {
        id: identity.id,
        generation: identity.generation,
        addr: advertise,
    };
    let now = Instant::now();
    let mut swim = Swim::new(now, local, swim_config(config), security, rand::random())
        .map_err(|e| MembershipError::Settings(e.to_string()))?;
    swim.set_payload(now, payload(config, advertise, topology))
        .map_err(|e| MembershipError::Settings(e.to_string()))?;
    if let Some(offset) = super::issues::test_clock_offset() {
        swim.set_wall_clock_offset(offset);
    }
    let handlers = Handlers::spawn(config.event_handlers.clone());
    let observer = ApiObserver::new(state, encrypted, handlers);
    let (streams_tx, streams) = tokio::sync::mpsc::channel(64);
    let handle = driver::spawn_with_streams(swim, udp, streams, observer);
    let server = RpcServer::new(auth, router, ServerConfig::default());
    let routes = Routes {
        gossip: Some(streams_tx),
        rpc: Some(server),
    };
    let port = Demux::spawn(tcp, routes, DemuxConfig::default());
    tokio::spawn(keep_joining(handle.clone(), config.join.clone(), advertise));
    Ok(Running {
        gossip: handle,
        port,
    })
}

/// Probes the seeds with growing, jittered pauses until another member is
/// alive; a node with no reachable seed keeps trying and keeps running.
async fn keep_joining(handle: Handle, seeds: Vec<crate::config::JoinTarget>, own: SocketAddr) {
    if seeds.is_empty() {
        return;
    }
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let resolved = resolve_seeds(&seeds, own).await;
        for (seed, why) in &resolved.failed {
            warn!(seed = %seed, "join seed does not resolve: {why}");
        }
        for addr in resolved.addrs {
            handle.join(addr).await;
        }
        tokio::time::sleep(backoff.next_delay(rand::random())).await;
        let company = handle
            .inspect(|swim| {
                swim.members()
                    .any(|m| m.id != swim.id() && m.status == MemberStatus::Alive)
            })
            .await;
        match company {
            Some(true) => {
                info!(attempts = backoff.attempts(), "joined the cluster");
                return;
            }
            Some(false) => {}
            None => return, // the driver stopped
        }
    }
}

/// Keeps the API's members view and event feed current, and logs changes.
struct ApiObserver {
    state: Arc<NodeState>,
    encrypted: bool,
    /// An Instant → wall clock anchor for "since" times.
    anchor: (Instant, SystemTime),
    names: BTreeMap<crate::membership::NodeId, String>,
    handlers: Option<Handlers>,
    health: HealthWindow,
    /// When the API's member table was last rebuilt.
    table_built: Option<Instant>,
    /// News since that rebuild: an event, or this node's own record changed.
    table_stale: bool,
    /// This node's status and incarnation at that rebuild: its own
    /// changes (a leave, a new payload) come without an event, and each
    /// bumps its incarnation.
    local_seen: Option<(MemberStatus, Incarnation)>,
}

/// While events flow, the API's member table (every member, sorted, and
/// the cluster state recomputed from it) is rebuilt at most this often;
/// the events themselves, each with its member's row, go out at once.
/// Rebuilt for every packet that brought news, as until 1f311d0, 500 agents
/// starting together spent more than the two cores they shared on it.
const TABLE_EVERY: Duration = Duration::from_millis(500);

impl ApiObserver {
    fn new(state: Arc<NodeState>, encrypted: bool, handlers: Option<Handlers>) -> ApiObserver {
        ApiObserver {
            state,
            encrypted,
            anchor: (Instant::now(), SystemTime::now()),
            names: BTreeMap::new(),
            handlers,
            health: HealthWindow::default(),
            table_built: None,
            table_stale: true,
            local_seen: None,
        }
    }

    fn name_of(&self, swim: &Swim, id: crate::membership::NodeId) -> String {
        if id == swim.id() {
            return display_name(swim.local());
        }
        swim.member(id)
            .map(display_name)
            .or_else(|| self.names.get(&id).cloned())
            .unwrap_or_else(|| id.to_string())
    }

    fn wall_ms(&self, at: Instant) -> u64 {
        let (base, wall) = self.anchor;
        let wall = match at.checked_duration_since(base) {
            Some(later) => wall + later,
            None => wall - base.duration_since(at),
        };
        api::unix_ms(wall)
    }

    fn info(&self, m: &Member) -> MemberInfo {
        MemberInfo {
            name: display_name(m),
            uuid: m.id.0,
            address: m.addr.to_string(),
            status: m.status.to_string(),
            generation: m.incarnation.generation,
            version: m.incarnation.version,
            replicaset: m.payload.replica_set.clone(),
            roles: m.payload.roles.clone(),
            since_ms: self.wall_ms(m.status_since),
        }
    }

    fn describe(&self, swim: &Swim, event: &MemberEvent) -> ApiEvent {
        let id = event.id();
        let name = self.name_of(swim, id);
        let (kind, detail) = match event {
            MemberEvent::Joined {
                addr,
                status,
                incarnation,
                ..
            } => (
                "member-joined",
                format!("{status} at {addr}, incarnation {incarnation}"),
            ),
            MemberEvent::StatusChanged { from, to, .. } => {
                ("member-status", format!("{from} -> {to}"))
            }
            MemberEvent::AddressChanged { from, to, .. } => {
                ("member-address", format!("{from} -> {to}"))
            }
            MemberEvent::PayloadChanged { .. } => ("member-payload", "payload updated".to_string()),
            MemberEvent::IncarnationChanged { from, to, .. } => {
                ("member-incarnation", format!("{from} -> {to}"))
            }
            MemberEvent::Forgotten { .. } => ("member-forgotten", "record reclaimed".to_string()),
        };
        ApiEvent::now(kind, name, Some(id.0), detail)
    }
}

fn display_name(m: &Member) -> String {
    if m.payload.name.is_empty() {
        m.id.to_string()
    } else {
        m.payload.name.clone()
    }
}

impl Observer for ApiObserver {
    fn on_user_events(&mut self, swim: &Swim, events: Vec<UserEvent>) {
        use base64::Engine as _;
        for event in events {
            let origin_name = self.name_of(swim, event.origin);
            let id = format!("{}/{}/{}", event.origin, event.generation, event.seq);
            info!(event = %event.name, %id, origin = %origin_name, bytes = event.payload.len(), "user event");
            let (text, base64) = match std::str::from_utf8(&event.payload) {
                Ok(text) => (Some(text.to_string()), None),
                Err(_) => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(&event.payload)),
                ),
            };
            self.state.publish(ApiEvent {
                id: Some(id.clone()),
                payload: text,
                payload_base64: base64,
                ..ApiEvent::now(
                    "user",
                    event.name.clone(),
                    Some(event.origin.0),
                    format!("from {origin_name}, {} bytes", event.payload.len()),
                )
            });
            if let Some(handlers) = &self.handlers {
                handlers.deliver(Delivery {
                    name: event.name,
                    payload: event.payload,
                    id,
                    origin: event.origin.to_string(),
                    origin_name,
                });
            }
        }
    }

    fn on_events(&mut self, swim: &Swim, events: &[MemberEvent]) {
        for event in events {
            let mut published = self.describe(swim, event);
            // The row as it is now: the web page updates it from the event alone.
            if !matches!(event, MemberEvent::Forgotten { .. }) {
                let id = event.id();
                let member = if id == swim.id() {
                    Some(swim.local())
                } else {
                    swim.member(id)
                };
                published.member = member.map(|m| self.info(m));
            }
            match event {
                MemberEvent::StatusChanged {
                    to: MemberStatus::Dead | MemberStatus::Suspect,
                    ..
                }
                | MemberEvent::AddressChanged { .. } => {
                    warn!(member = %published.subject, peer = %event.id(), "{}: {}", published.kind, published.detail)
                }
                // Every apply changes every node's payload (its committed
                // version), and with it its incarnation: N − 1 of each on
                // every node per apply. A refutation shows as the status
                // change it undoes.
                MemberEvent::PayloadChanged { .. } => {}
                MemberEvent::IncarnationChanged { .. } => {
                    debug!(member = %published.subject, peer = %event.id(), "{}: {}", published.kind, published.detail)
                }
                _ => {
                    info!(member = %published.subject, peer = %event.id(), "{}: {}", published.kind, published.detail)
                }
            }
            if let Some(m) = swim.member(event.id()) {
                self.names.insert(m.id, display_name(m));
            }
            self.state.publish(published);
        }
        let gossip = self.health.report(swim, self.encrypted);
        let local = Some((swim.local().status, swim.local().incarnation));
        if !events.is_empty() || self.local_seen != local {
            self.table_stale = true;
        }
        // Nothing new, nothing rebuilt: with a table of 500 a rebuild every
        // second on each of 500 idle agents was work for nothing. News too
        // soon after the last rebuild waits for the next call, within a
        // second (the driver reports at least that often).
        let due = self
            .table_built
            .is_none_or(|at| at.elapsed() >= TABLE_EVERY);
        if !self.table_stale || !due {
            self.state.set_gossip_health(gossip);
            return;
        }
        let mut members: Vec<MemberInfo> = std::iter::once(swim.local())
            .chain(swim.members())
            .map(|m| self.info(m))
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        self.state.set_members(Members {
            members,
            gossip,
            multicast: None,
        });
        self.local_seen = local;
        self.table_stale = false;
        self.table_built = Some(Instant::now());
    }
}
