//! Multicast discovery (`discovery.multicast`, off by default): a task that
//! joins the LAN's multicast group, announces this node there every
//! interval (jittered), and asks membership to join each node it hears
//! that the table does not already hold alive. What the datagrams mean is
//! decided in `crate::discovery::multicast`; this is the socket and clock.
//!
//! The task goes quiet while this node has left the cluster (`cohort
//! leave`, or the stop on SIGTERM): a left node neither announces nor joins
//! anyone, so it is not pulled back in. It ends when membership stops or
//! with the runtime.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::NodeConfig;
use crate::discovery::multicast::{
    self, Announcement, Heard, Joiner, Known, MulticastStats, MAX_ANNOUNCEMENT,
};
use crate::membership::driver::Handle;
use crate::membership::{MemberStatus, NodeId, PacketSecurity};

use super::identity::Identity;
use super::AgentError;

/// Multicast never leaves the local network segment.
const MULTICAST_TTL: u32 = 1;

/// Binds the group and starts the task when multicast discovery is
/// enabled; its counters can be read from the returned receiver. A group
/// that cannot be joined stops the agent: the operator asked for it.
pub fn spawn(
    config: &NodeConfig,
    identity: Identity,
    advertise: SocketAddr,
    security: PacketSecurity,
    gossip: Handle,
) -> Result<Option<watch::Receiver<MulticastStats>>, AgentError> {
    let settings = &config.discovery.multicast;
    if !settings.enabled {
        return Ok(None);
    }
    let group = settings.group;
    let socket = bind_group(group, settings.interface)
        .and_then(UdpSocket::from_std)
        .map_err(|source| AgentError::Bind {
            addr: SocketAddr::V4(group),
            what: "multicast discovery",
            source,
        })?;
    if matches!(security, PacketSecurity::Plaintext) {
        warn!(%group, "multicast discovery without a gossip key: any host on the LAN can announce join targets");
    }
    if advertise.ip().is_loopback() && !settings.interface.is_loopback() {
        warn!(%advertise, "multicast discovery announces a loopback address, which nodes on other hosts cannot dial; set `advertise`");
    }
    info!(
        %group,
        interface = %settings.interface,
        interval = %crate::config::HumanDuration(settings.interval),
        announce = %advertise,
        "multicast discovery on"
    );
    let (stats, receiver) = watch::channel(MulticastStats::default());
    let task = Task {
        socket,
        group,
        interval: settings.interval,
        cluster: config.cluster.clone(),
        own: identity.id,
        announcement: Announcement {
            cluster: config.cluster.clone(),
            id: identity.id,
            generation: identity.generation,
            gossip_addr: advertise,
        },
        security,
        gossip,
        joiner: Joiner::new(Joiner::cooldown_for(settings.interval)),
        stats,
        sending: true,
    };
    tokio::spawn(task.run());
    Ok(Some(receiver))
}

/// A UDP socket bound to the group's address and port (so it hears only
/// that group), shared with other nodes of this host (SO_REUSEADDR),
/// member of the group on `interface`, sending there with TTL 1 and
/// hearing its own datagrams (so nodes of one host find each other).
fn bind_group(group: SocketAddrV4, interface: Ipv4Addr) -> io::Result<std::net::UdpSocket> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(group))?;
    let socket = std::net::UdpSocket::from(fd);
    socket
        .join_multicast_v4(group.ip(), &interface)
        .map_err(|e| {
            let hint = if interface.is_unspecified() {
                "no interface routes the group; set discovery.multicast.interface"
            } else {
                "it must be an address of a multicast-capable interface of this host"
            };
            io::Error::new(
                e.kind(),
                format!(
                    "cannot join the group on {interface}: {} ({hint})",
                    crate::storage::describe(&e)
                ),
            )
        })?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_multicast_ttl_v4(MULTICAST_TTL)?;
    if !interface.is_unspecified() {
        set_multicast_interface(&socket, interface)?;
    }
    Ok(socket)
}

/// IP_MULTICAST_IF: send on the interface that has `interface`, not on
/// whichever the routing table picks for the group. Neither std nor nix
/// wraps it.
fn set_multicast_interface(socket: &std::net::UdpSocket, interface: Ipv4Addr) -> io::Result<()> {
    use nix::libc;
    let addr = libc::in_addr {
        s_addr: u32::from(interface).to_be(),
    };
    // SAFETY: the descriptor is open for the whole call, and the option
    // value is an `in_addr` that outlives it, passed with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::in_addr>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

struct Task {
    socket: UdpSocket,
    group: SocketAddrV4,
    interval: Duration,
    cluster: String,
    own: NodeId,
    announcement: Announcement,
    security: PacketSecurity,
    gossip: Handle,
    joiner: Joiner,
    stats: watch::Sender<MulticastStats>,
    /// Whether the last send worked: a failure is a warning once, then
    /// debug until sending works again.
    sending: bool,
}

impl Task {
    async fn run(mut self) {
        // One more byte than any announcement: a bigger datagram is cut
        // and then refused as too large.
        let mut buffer = vec![0u8; MAX_ANNOUNCEMENT + 1];
        // The first announcement goes out at once: a node that just
        // started is found within a round trip, not an interval.
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    match self.gossip.inspect(|swim| swim.local().status).await {
                        None => break, // membership stopped
                        Some(MemberStatus::Left) => {}
                        Some(_) => self.announce().await,
                    }
                    next = Instant::now() + multicast::jittered(self.interval, rand::random());
                }
                received = self.socket.recv_from(&mut buffer) => match received {
                    Ok((len, from)) => {
                        if !self.heard(from, &buffer[..len]).await {
                            break;
                        }
                    }
                    Err(e) => debug!(error = %e, "multicast discovery receive error"),
                },
            }
            self.stats.send_replace(self.joiner.stats());
        }
        debug!("multicast discovery stopped");
    }

    async fn announce(&mut self) {
        let Some(frame) = multicast::seal(&self.security, rand::random(), &self.announcement)
        else {
            // Only a keyring without a key cannot seal; it is refused at start.
            self.joiner.sent(false);
            return;
        };
        match self.socket.send_to(&frame, self.group).await {
            Ok(_) => {
                self.joiner.sent(true);
                if !self.sending {
                    info!(group = %self.group, "multicast announcements go out again");
                }
                self.sending = true;
            }
            Err(e) => {
                self.joiner.sent(false);
                if self.sending {
                    warn!(group = %self.group, error = %e, "cannot send the multicast announcement");
                } else {
                    debug!(group = %self.group, error = %e, "cannot send the multicast announcement");
                }
                self.sending = false;
            }
        }
    }

    /// Handles one datagram; false once membership has stopped.
    async fn heard(&mut self, from: SocketAddr, frame: &[u8]) -> bool {
        let announcement = match multicast::open(
            &self.security,
            &self.cluster,
            self.own,
            from,
            frame,
        ) {
            Heard::Own => return true,
            Heard::Dropped { reason, detail } => {
                self.joiner.dropped(reason);
                debug!(%from, reason = reason.as_str(), "multicast announcement dropped: {detail}");
                return true;
            }
            Heard::Peer(announcement) => announcement,
        };
        let peer = announcement.id;
        let seen = self
            .gossip
            .inspect(move |swim| {
                let known = swim.member(peer).map(|m| Known {
                    status: m.status,
                    generation: m.incarnation.generation,
                    addr: m.addr,
                });
                (swim.local().status, known)
            })
            .await;
        let Some((local, known)) = seen else {
            return false;
        };
        if local == MemberStatus::Left {
            // Joining would bring this node back: only an operator does that.
            return true;
        }
        if let Some(addr) = self
            .joiner
            .decide(std::time::Instant::now(), &announcement, known)
        {
            info!(%peer, %addr, %from, "joining a node heard on the multicast group");
            self.gossip.join_unless_left(addr).await;
        }
        true
    }
}
