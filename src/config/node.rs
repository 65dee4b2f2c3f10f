//! The node config (`cohort.yaml`): this agent's local settings. Every field
//! has a default, so a file names only what differs; `--dev` swaps in
//! defaults for a laptop (loopback, a temp data dir, no key file).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::diagnostic::{Diagnostics, Report};
use super::duration::HumanDuration;
use super::yaml::{self, pos};
use super::{is_valid_name, ConfigError, NAME_RULE};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/cohort/cohort.yaml";
pub const DEFAULT_PORT: u16 = 3301;
pub const DEFAULT_API: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8300);
/// The API's unix socket on a packaged node (cohort.service's
/// RuntimeDirectory); the CLI looks there first.
pub const DEFAULT_API_SOCKET: &str = "/run/cohort/api.sock";
/// The longest path a unix socket address holds (sun_path, 108 bytes with
/// its terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Organisation-local scope (239.255/16), so it stays inside the site; the
/// port sits below the node ports (3301, 3302, ... on a host running
/// several nodes) so the two never collide.
pub const DEFAULT_MULTICAST_GROUP: SocketAddrV4 =
    SocketAddrV4::new(Ipv4Addr::new(239, 255, 43, 1), 3300);
/// Announcing more often than this would only load the LAN.
pub const MIN_MULTICAST_INTERVAL: Duration = Duration::from_millis(100);

/// A node's settings, resolved: defaults filled in, addresses parsed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeConfig {
    /// This node's name in the topology.
    pub node: String,
    /// Gossip from another cluster is refused.
    pub cluster: String,
    /// UDP gossip and TCP rpc share this address.
    pub bind: SocketAddr,
    /// What peers dial; `None` derives it from `bind` at start.
    pub advertise: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub topology: PathBuf,
    pub join: Vec<JoinTarget>,
    /// Finding peers without seeds.
    pub discovery: DiscoveryConfig,
    pub gossip: GossipConfig,
    pub api: ApiConfig,
    pub log: LogConfig,
    pub event_handlers: Vec<EventHandler>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GossipConfig {
    /// Keyring: base64 keys, one a line; the first encrypts, all decrypt.
    pub key_file: Option<PathBuf>,
    pub protocol_period: Duration,
    pub ack_timeout: Duration,
    /// Without a key file, gossip in the clear only when this says so.
    pub allow_plaintext: bool,
    /// Minimum suspicion = this × max(1, log10 N) × period.
    pub suspicion_multiplier: u32,
    /// Full-state exchange with one random member this often.
    pub push_pull_interval: Duration,
    /// No gossip datagram is bigger; keep it under the path MTU.
    pub max_packet_size: usize,
    /// Dead and left members are forgotten this long after; `None` (written
    /// `never`) keeps them.
    pub reclaim_after: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiscoveryConfig {
    pub multicast: MulticastConfig,
}

/// Announcing this node on an IPv4 multicast group, and joining the nodes
/// heard there. Announcements are sealed with the gossip keyring.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MulticastConfig {
    /// Off unless asked for.
    pub enabled: bool,
    /// The IPv4 multicast group and port every node of the LAN uses.
    pub group: SocketAddrV4,
    /// Announce period; each pause is jittered ±20 %.
    pub interval: Duration,
    /// The local IPv4 address of the interface to join and send on;
    /// `0.0.0.0` lets the routing table choose.
    pub interface: Ipv4Addr,
}

impl Default for MulticastConfig {
    fn default() -> MulticastConfig {
        MulticastConfig {
            enabled: false,
            group: DEFAULT_MULTICAST_GROUP,
            interval: Duration::from_secs(5),
            interface: Ipv4Addr::UNSPECIFIED,
        }
    }
}

/// What runs when a user event arrives (`cohort event NAME PAYLOAD`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventHandler {
    /// The event name it handles; `*` handles every event.
    pub event: String,
    /// Called with the event name as its argument and the payload on stdin.
    pub exec: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApiConfig {
    /// The local HTTP API; `None` switches it off.
    pub http: Option<SocketAddr>,
    /// The API on a unix socket, where file permissions are the access
    /// control; `None` switches it off.
    pub socket: Option<ApiSocket>,
    /// The bearer token TCP clients must send for writes (and for reads
    /// when `http` is not loopback): one line of this file.
    pub token_file: Option<PathBuf>,
}

impl ApiConfig {
    /// True when `http` listens beyond this host: reads need the token too.
    pub fn exposed(&self) -> bool {
        self.http.is_some_and(|addr| !addr.ip().is_loopback())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApiSocket {
    pub path: PathBuf,
    /// Asked for (the node config or `--api-socket`), not a default: one
    /// that cannot be bound stops the start instead of being skipped.
    pub explicit: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `cohort=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald when systemd gave us its stream, else text.
    #[default]
    Auto,
    Text,
    Json,
    Journald,
}

/// A seed to join through: an address, or a DNS name re-resolved to all
/// its records (`dns:name:port`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum JoinTarget {
    Addr(SocketAddr),
    Host { host: String, port: u16 },
    Dns { name: String, port: u16 },
}

impl fmt::Display for JoinTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinTarget::Addr(a) => write!(f, "{a}"),
            JoinTarget::Host { host, port } => write!(f, "{host}:{port}"),
            JoinTarget::Dns { name, port } => write!(f, "dns:{name}:{port}"),
        }
    }
}

impl From<JoinTarget> for String {
    fn from(t: JoinTarget) -> String {
        t.to_string()
    }
}

impl JoinTarget {
    pub fn parse(text: &str) -> Result<JoinTarget, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(JoinTarget::Addr(addr));
        }
        let (dns, rest) = match text.strip_prefix("dns:") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
            format!("`{text}` needs a port: write `host:port` or `dns:name:port`")
        })?;
        let port = parse_port(port).map_err(|e| format!("`{text}`: {e}"))?;
        let valid_host = !host.is_empty()
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !valid_host {
            return Err(format!("`{text}`: `{host}` is not a valid host name"));
        }
        let host = host.to_string();
        Ok(if dns {
            JoinTarget::Dns { name: host, port }
        } else {
            JoinTarget::Host { host, port }
        })
    }
}

pub(crate) fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(format!("port {p} is out of range 1-65535")),
        Err(_) => Err(format!("`{text}` is not a port number")),
    }
}

/// Parses `ip:port`, explaining what is wrong in operator's words.
pub(crate) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err(format!("`{text}`: port 0 is out of range 1-65535"))
        } else {
            Ok(addr)
        };
    }
    let Some((ip, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "`{text}` is not an address: write `ip:port`, like `10.0.0.1:{DEFAULT_PORT}`"
        ));
    };
    let port = parse_port(port).map_err(|e| format!("`{text}`: {e}"))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    match ip.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, port)),
        Err(_) => Err(format!("`{text}`: `{ip}` is not an IP address")),
    }
}

impl NodeConfig {
    /// The settings of a packaged node with an empty config file.
    pub fn defaults() -> NodeConfig {
        NodeConfig {
            node: hostname(),
            cluster: "cohort".into(),
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            advertise: None,
            data_dir: "/var/lib/cohort".into(),
            topology: "/etc/cohort/topology.yaml".into(),
            join: Vec::new(),
            discovery: DiscoveryConfig {
                multicast: MulticastConfig::default(),
            },
            gossip: GossipConfig {
                key_file: Some("/etc/cohort/keys/gossip.key".into()),
                protocol_period: Duration::from_secs(1),
                ack_timeout: Duration::from_millis(500),
                allow_plaintext: false,
                suspicion_multiplier: 4,
                push_pull_interval: Duration::from_secs(30),
                max_packet_size: 1400,
                reclaim_after: Some(Duration::from_secs(3600)),
            },
            api: ApiConfig {
                http: Some(DEFAULT_API),
                socket: Some(ApiSocket {
                    path: DEFAULT_API_SOCKET.into(),
                    explicit: false,
                }),
                token_file: None,
            },
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Auto,
            },
            event_handlers: Vec::new(),
        }
    }

    /// The settings of `cohort agent --dev`: one node on loopback, its state
    /// under the temp dir (kept across restarts), no key file needed.
    pub fn dev_defaults() -> NodeConfig {
        let data_dir = std::env::temp_dir().join("cohort-dev");
        NodeConfig {
            node: "dev".into(),
            cluster: "dev".into(),
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT),
            topology: data_dir.join("topology.yaml"),
            // A laptop has no /run/cohort for us: the socket goes with the
            // dev state (see `AgentOptions::load_config`).
            api: ApiConfig {
                socket: Some(ApiSocket {
                    path: data_dir.join("api.sock"),
                    explicit: false,
                }),
                ..NodeConfig::defaults().api
            },
            data_dir,
            gossip: GossipConfig {
                key_file: None,
                allow_plaintext: true,
                ..NodeConfig::defaults().gossip
            },
            ..NodeConfig::defaults()
        }
    }

    /// Reads and validates a node config file; absent fields take `base`.
    pub fn load(path: &Path, base: NodeConfig) -> Result<NodeConfig, ConfigError> {
        let text = super::read_file(path)?;
        Ok(NodeConfig::parse(&text, path, base)?)
    }

    /// Parses and validates node config text. `file` names it in messages.
    pub fn parse(text: &str, file: &Path, base: NodeConfig) -> Result<NodeConfig, Diagnostics> {
        // A file of comments only (like the packaged one) means "all defaults".
        let raw: NodeFile = if yaml::is_blank(text) {
            NodeFile::default()
        } else {
            yaml::parse(text, file).map_err(Diagnostics::one)?
        };
        raw.resolve(file, base)
    }

    /// The address peers should dial.
    pub fn advertise_addr(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.bind)
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.split('.').next().unwrap_or_default().to_string())
        .filter(|h| is_valid_name(h))
        .unwrap_or_else(|| "node".into())
}

/// The file as written: every field optional, every value with its place.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    node: Option<Spanned<String>>,
    cluster: Option<Spanned<String>>,
    bind: Option<Spanned<String>>,
    advertise: Option<Spanned<String>>,
    data_dir: Option<Spanned<PathBuf>>,
    topology: Option<Spanned<PathBuf>>,
    #[serde(default)]
    join: Vec<Spanned<String>>,
    discovery: Option<DiscoveryFile>,
    gossip: Option<GossipFile>,
    api: Option<ApiFile>,
    log: Option<LogFile>,
    events: Option<EventsFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GossipFile {
    key_file: Option<Spanned<PathBuf>>,
    protocol_period: Option<Spanned<HumanDuration>>,
    ack_timeout: Option<Spanned<HumanDuration>>,
    allow_plaintext: Option<bool>,
    suspicion_multiplier: Option<Spanned<u32>>,
    push_pull_interval: Option<Spanned<HumanDuration>>,
    max_packet_size: Option<Spanned<u32>>,
    reclaim_after: Option<Spanned<Reclaim>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DiscoveryFile {
    multicast: Option<MulticastFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MulticastFile {
    enabled: Option<bool>,
    group: Option<Spanned<String>>,
    interval: Option<Spanned<HumanDuration>>,
    interface: Option<Spanned<String>>,
}

/// A duration, or `never`.
#[derive(Clone, Copy)]
struct Reclaim(Option<Duration>);

impl<'de> Deserialize<'de> for Reclaim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "never" {
            return Ok(Reclaim(None));
        }
        text.parse::<HumanDuration>()
            .map(|h| Reclaim(Some(h.0)))
            .map_err(|e| serde::de::Error::custom(format!("{e}, or `never`")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsFile {
    #[serde(default)]
    handlers: Vec<EventHandlerFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventHandlerFile {
    event: Spanned<String>,
    exec: Spanned<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApiFile {
    /// `null` switches the HTTP API off.
    #[serde(default, deserialize_with = "explicit_option")]
    http: Option<Option<Spanned<String>>>,
    /// `null` switches the unix socket off.
    #[serde(default, deserialize_with = "explicit_option")]
    socket: Option<Option<Spanned<PathBuf>>>,
    token_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogFile {
    level: Option<Spanned<String>>,
    format: Option<LogFormat>,
}

/// Tells "absent" (outer None) from "null" (inner None).
fn explicit_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl NodeFile {
    fn resolve(self, file: &Path, base: NodeConfig) -> Result<NodeConfig, Diagnostics> {
        let mut report = Report::new(file);
        let mut config = base;

        if let Some(node) = self.node {
            if !is_valid_name(&node.value) {
                report.error(
                    pos(&node),
                    format!("node name `{}` is invalid: {NAME_RULE}", node.value),
                );
            }
            config.node = node.value;
        }
        if let Some(cluster) = self.cluster {
            if !is_valid_name(&cluster.value) {
                report.error(
                    pos(&cluster),
                    format!("cluster name `{}` is invalid: {NAME_RULE}", cluster.value),
                );
            }
            config.cluster = cluster.value;
        }
        if let Some(bind) = self.bind {
            match parse_socket_addr(&bind.value) {
                Ok(addr) => config.bind = addr,
                Err(e) => report.error(pos(&bind), format!("bind: {e}")),
            }
        }
        if let Some(advertise) = self.advertise {
            match parse_socket_addr(&advertise.value) {
                Ok(addr) if addr.ip().is_unspecified() => report.error(
                    pos(&advertise),
                    format!(
                        "advertise: `{}` cannot be dialled by peers; give this node's reachable IP",
                        advertise.value
                    ),
                ),
                Ok(addr) => config.advertise = Some(addr),
                Err(e) => report.error(pos(&advertise), format!("advertise: {e}")),
            }
        }
        if let Some(dir) = self.data_dir {
            check_absolute(&mut report, "data_dir", &dir);
            config.data_dir = dir.value;
        }
        if let Some(topology) = self.topology {
            check_absolute(&mut report, "topology", &topology);
            config.topology = topology.value;
        }
        if !self.join.is_empty() {
            config.join.clear();
            for seed in &self.join {
                match JoinTarget::parse(&seed.value) {
                    Ok(target) => config.join.push(target),
                    Err(e) => report.error(pos(seed), format!("join: {e}")),
                }
            }
        }
        if let Some(multicast) = self.discovery.and_then(|d| d.multicast) {
            resolve_multicast(&mut report, multicast, &mut config.discovery.multicast);
        }
        if let Some(gossip) = self.gossip {
            if let Some(key_file) = gossip.key_file {
                check_absolute(&mut report, "gossip.key_file", &key_file);
                config.gossip.key_file = Some(key_file.value);
            }
            if let Some(period) = &gossip.protocol_period {
                if period.value.0.is_zero() {
                    report.error(
                        pos(period),
                        "gossip.protocol_period must be greater than 0s",
                    );
                }
                config.gossip.protocol_period = period.value.0;
            }
            if let Some(ack) = &gossip.ack_timeout {
                if ack.value.0.is_zero() {
                    report.error(pos(ack), "gossip.ack_timeout must be greater than 0s");
                }
                config.gossip.ack_timeout = ack.value.0;
            }
            // The agent refuses an ack timeout that is not shorter than the
            // period, whether both were written or one is the default: say
            // so here, where `cohort validate node` sees it too.
            let (ack, period) = (config.gossip.ack_timeout, config.gossip.protocol_period);
            if ack >= period && !period.is_zero() {
                match (&gossip.ack_timeout, &gossip.protocol_period) {
                    (Some(written), _) => report.error(
                        pos(written),
                        format!(
                            "gossip.ack_timeout ({}) must be shorter than gossip.protocol_period ({})",
                            HumanDuration(ack),
                            HumanDuration(period)
                        ),
                    ),
                    (None, Some(written)) => report.error(
                        pos(written),
                        format!(
                            "gossip.protocol_period ({}) must be longer than gossip.ack_timeout ({}, its default): set gossip.ack_timeout shorter, e.g. {}",
                            HumanDuration(period),
                            HumanDuration(ack),
                            HumanDuration(period / 2)
                        ),
                    ),
                    (None, None) => {}
                }
            }
            if let Some(allow) = gossip.allow_plaintext {
                config.gossip.allow_plaintext = allow;
            }
            if let Some(m) = gossip.suspicion_multiplier {
                if m.value == 0 {
                    report.error(pos(&m), "gossip.suspicion_multiplier must be at least 1");
                }
                config.gossip.suspicion_multiplier = m.value;
            }
            if let Some(interval) = gossip.push_pull_interval {
                if interval.value.0.is_zero() {
                    report.error(
                        pos(&interval),
                        "gossip.push_pull_interval must be greater than 0s",
                    );
                }
                config.gossip.push_pull_interval = interval.value.0;
            }
            if let Some(size) = gossip.max_packet_size {
                if !(512..=65_507).contains(&size.value) {
                    report.error(
                        pos(&size),
                        format!(
                            "gossip.max_packet_size {} is out of range 512-65507",
                            size.value
                        ),
                    );
                }
                config.gossip.max_packet_size = size.value as usize;
            }
            if let Some(reclaim) = gossip.reclaim_after {
                config.gossip.reclaim_after = reclaim.value.0;
            }
        }
        if let Some(api) = self.api {
            resolve_api(&mut report, api, &mut config.api);
        }
        if let Some(log) = self.log {
            if let Some(level) = log.level {
                if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level.value) {
                    report.error(pos(&level), format!("log.level: `{}` is not a log filter ({e}); use error, warn, info, debug or trace", level.value));
                }
                config.log.level = level.value;
            }
            if let Some(format) = log.format {
                config.log.format = format;
            }
        }
        if let Some(events) = self.events {
            config.event_handlers.clear();
            for handler in events.handlers {
                if handler.event.value != "*" && !is_valid_name(&handler.event.value) {
                    report.error(
                        pos(&handler.event),
                        format!(
                            "events.handlers: event name `{}` is invalid: {NAME_RULE}, or `*`",
                            handler.event.value
                        ),
                    );
                }
                check_absolute(&mut report, "events.handlers.exec", &handler.exec);
                config.event_handlers.push(EventHandler {
                    event: handler.event.value,
                    exec: handler.exec.value,
                });
            }
        }
        report.finish()?;
        Ok(config)
    }
}

fn resolve_api(report: &mut Report<'_>, file: ApiFile, config: &mut ApiConfig) {
    let http_pos = match &file.http {
        Some(Some(http)) => Some(pos(http)),
        _ => None,
    };
    match file.http {
        None => {}
        Some(None) => config.http = None,
        Some(Some(http)) => match parse_socket_addr(&http.value) {
            Ok(addr) => config.http = Some(addr),
            Err(e) => report.error(pos(&http), format!("api.http: {e}")),
        },
    }
    match file.socket {
        None => {}
        Some(None) => config.socket = None,
        Some(Some(path)) => {
            check_absolute(report, "api.socket", &path);
            let length = path.value.as_os_str().len();
            if length > MAX_SOCKET_PATH {
                report.error(
                    pos(&path),
                    format!(
                        "api.socket: `{}` is {length} bytes long; a unix socket path holds at most {MAX_SOCKET_PATH}",
                        path.value.display()
                    ),
                );
            }
            config.socket = Some(ApiSocket {
                path: path.value,
                explicit: true,
            });
        }
    }
    if let Some(token_file) = file.token_file {
        check_absolute(report, "api.token_file", &token_file);
        config.token_file = Some(token_file.value);
    }
    // Beyond loopback anyone who can reach the port could write: that
    // takes a token (docs/api-access.md).
    if let (Some(pos), Some(addr)) = (http_pos, config.http) {
        if config.exposed() && config.token_file.is_none() {
            report.error(
                pos,
                format!(
                    "api.http: {addr} is reachable from other hosts, so the API needs a token: set api.token_file (a file holding one line, e.g. made with `openssl rand -hex 32`), or listen on 127.0.0.1"
                ),
            );
        }
    }
}

fn resolve_multicast(report: &mut Report<'_>, file: MulticastFile, config: &mut MulticastConfig) {
    if let Some(enabled) = file.enabled {
        config.enabled = enabled;
    }
    if let Some(group) = file.group {
        match parse_socket_addr(&group.value) {
            Ok(SocketAddr::V4(addr)) if addr.ip().is_multicast() => config.group = addr,
            Ok(_) => report.error(
                pos(&group),
                format!(
                    "discovery.multicast.group: `{}` is not an IPv4 multicast address (224.0.0.0-239.255.255.255); use one like `{DEFAULT_MULTICAST_GROUP}`",
                    group.value
                ),
            ),
            Err(e) => report.error(pos(&group), format!("discovery.multicast.group: {e}")),
        }
    }
    if let Some(interval) = file.interval {
        if interval.value.0 < MIN_MULTICAST_INTERVAL {
            report.error(
                pos(&interval),
                format!(
                    "discovery.multicast.interval {} is below the minimum of {}",
                    interval.value,
                    HumanDuration(MIN_MULTICAST_INTERVAL)
                ),
            );
        }
        config.interval = interval.value.0;
    }
    if let Some(interface) = file.interface {
        match interface.value.parse::<Ipv4Addr>() {
            Ok(ip) if ip.is_multicast() || ip.is_broadcast() => report.error(
                pos(&interface),
                format!(
                    "discovery.multicast.interface: `{ip}` is not an interface address; give a local IPv4 address of the interface, or 0.0.0.0"
                ),
            ),
            Ok(ip) => config.interface = ip,
            Err(_) => report.error(
                pos(&interface),
                format!(
                    "discovery.multicast.interface: `{}` is not an IPv4 address; give a local IPv4 address of the interface (like 10.0.0.11), or 0.0.0.0 to let the routing table choose",
                    interface.value
                ),
            ),
        }
    }
}

fn check_absolute(report: &mut Report<'_>, field: &str, path: &Spanned<PathBuf>) {
    if !path.value.is_absolute() {
        report.error(
            pos(path),
            format!(
                "{field}: `{}` must be an absolute path",
                path.value.display()
            ),
        );
    }
}
