//! The agent's listening sockets: the node's one port (UDP for gossip, TCP
//! for gossip streams and, later, rpc) and the local HTTP API. A taken port
//! is an error naming the address and the protocol.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::{TcpListener, UdpSocket};
use tracing::warn;

use crate::config::NodeConfig;

use super::AgentError;

/// The node's port, bound for both protocols before anything is announced.
pub struct NodeSockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

pub async fn bind_node(addr: SocketAddr) -> Result<NodeSockets, AgentError> {
    let tcp = bind_tcp(addr, "tcp").await?;
    let udp = UdpSocket::bind(addr)
        .await
        .map_err(|source| AgentError::Bind {
            addr,
            what: "udp",
            source,
        })?;
    Ok(NodeSockets { udp, tcp })
}

pub async fn bind_tcp(addr: SocketAddr, what: &'static str) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Bind { addr, what, source })
}

/// The address peers dial: `advertise`, or `bind` when it is a real
/// address, or else the first non-loopback IPv4 address of this host.
pub fn advertise_addr(config: &NodeConfig) -> SocketAddr {
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
