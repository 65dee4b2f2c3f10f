//! The `http` role: an HTTP server answering `GET /` with the node's name
//! and UUID, on the port `roles.http.listen` gives this node (`null`: no
//! server; no entry: leave it as it is). Validation refuses a port another
//! node of the host keeps or an outside process holds; a port held by a
//! node of the host that gives it up in the same change counts as free.
//! An apply binds the new port, then stops the old server; a port still
//! busy is waited for (bounded), and a node whose own port another node
//! of the host takes gives it up first, so swaps cannot deadlock.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::{Json, Router};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Mutex};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::config::{HumanDuration, Topology};
use crate::storage::describe;

use super::order::runs_role;
use super::{BoxFuture, Role, RoleContext, RoleResult};

/// How long an apply waits for a port that another node of this host
/// gives up in the same change.
pub const DEFAULT_PORT_WAIT: Duration = Duration::from_secs(10);

/// Between two attempts to bind a port another node is giving up.
const RETRY: Duration = Duration::from_millis(50);

/// How long a stopping server waits for its listener to close, then for
/// requests in flight.
const DRAIN: Duration = Duration::from_secs(2);

/// The built-in `http` role.
#[derive(Debug)]
pub struct HttpRole {
    bind_ip: Option<IpAddr>,
    port_wait: Duration,
    server: Mutex<Option<Server>>,
}

impl Default for HttpRole {
    fn default() -> Self {
        HttpRole::new()
    }
}

/// What the topology asks of this node's server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wanted {
    /// The node or its entry is not in the config: leave things as they are.
    Nothing,
    /// `null`: no server.
    Off,
    Serve(SocketAddr),
}

/// A node's entry under `listen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Absent,
    Off,
    Port(u16),
}

impl HttpRole {
    /// Serves on the IP of the node's `address` in the topology.
    pub fn new() -> HttpRole {
        HttpRole {
            bind_ip: None,
            port_wait: DEFAULT_PORT_WAIT,
            server: Mutex::new(None),
        }
    }

    /// Serves on `ip` instead (e.g. the node config's bind address). Which
    /// nodes share a host is still told by their topology addresses.
    pub fn with_bind_ip(mut self, ip: IpAddr) -> HttpRole {
        self.bind_ip = Some(ip);
        self
    }

    /// How long an apply waits for a port another node gives up.
    pub fn with_port_wait(mut self, wait: Duration) -> HttpRole {
        self.port_wait = wait;
        self
    }

    /// Where the server listens now, if it runs.
    pub async fn local_addr(&self) -> Option<SocketAddr> {
        self.server.lock().await.as_ref().map(|s| s.addr)
    }

    fn wanted(&self, ctx: &RoleContext, topology: &Topology) -> Wanted {
        let Some(me) = topology.node(&ctx.node) else {
            return Wanted::Nothing;
        };
        let ip = self.bind_ip.unwrap_or(me.spec.address.value.0.ip());
        match entry(topology, &ctx.role, &ctx.node) {
            Entry::Absent => Wanted::Nothing,
            Entry::Off => Wanted::Off,
            Entry::Port(port) => Wanted::Serve(SocketAddr::new(ip, port)),
        }
    }

    async fn check(&self, ctx: &RoleContext, new: &Topology, old: Option<&Topology>) -> RoleResult {
        let Wanted::Serve(addr) = self.wanted(ctx, new) else {
            return Ok(());
        };
        let current = self.local_addr().await;
        if current == Some(addr) {
            return Ok(());
        }
        let problem = match shared_with(ctx, new, old, addr.port()) {
            Some(problem) => Err(problem),
            None => match TcpListener::bind(addr).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    match freed_by(ctx, new, old, addr.port()) {
                        Some(peer) => {
                            debug!(%addr, %peer, "the port is in use by a node that gives it up in this change");
                            Ok(())
                        }
                        None => Err(format!("{addr} is in use by another process")),
                    }
                }
                Err(e) => Err(format!("cannot listen on {addr}: {}", describe(&e))),
            },
        };
        problem.map_err(|why| {
            let message = failed(current.map(|a| a.port()), Some(addr.port()));
            warn!("{message}");
            format!("{message}: {why}")
        })
    }

    async fn change(
        &self,
        ctx: &RoleContext,
        new: &Topology,
        old: Option<&Topology>,
    ) -> RoleResult {
        let wanted = self.wanted(ctx, new);
        let mut server = self.server.lock().await;
        let current = server.as_ref().map(|s| s.addr);
        let addr = match wanted {
            Wanted::Nothing => return Ok(()),
            Wanted::Serve(addr) if current == Some(addr) => return Ok(()),
            Wanted::Serve(addr) => addr,
            Wanted::Off => {
                if let Some(running) = server.take() {
                    let addr = running.addr;
                    running.stop().await;
                    info!(%addr, "http role: server switched off");
                }
                return Ok(());
            }
        };
        let fail = |why: String| {
            let message = failed(current.map(|a| a.port()), Some(addr.port()));
            error!("{message}");
            Err(format!("{message}: {why}"))
        };
        let listener = match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if let Some(problem) = shared_with(ctx, new, old, addr.port()) {
                    return fail(problem);
                }
                // No node of this host is to keep the port: its holder is
                // one that gives it up in this change (validation refused
                // anything else), so wait for it. If a node of this host is
                // to take our port, it may be waiting for us in turn (a
                // swap): give ours up first, or both would wait.
                let release = current.is_some_and(|c| wanted_by_peer(ctx, new, c.port()));
                info!(%addr, release, "http role: waiting for the port to be free");
                if release {
                    if let Some(running) = server.take() {
                        running.stop().await;
                    }
                }
                match wait_bind(addr, self.port_wait).await {
                    Ok(listener) => listener,
                    Err(why) => {
                        if let (Some(previous), None) = (current, server.as_ref()) {
                            if let Ok(listener) = TcpListener::bind(previous).await {
                                *server = Some(Server::start(listener, previous, ctx));
                            }
                        }
                        return fail(why);
                    }
                }
            }
            Err(e) => return fail(format!("cannot listen on {addr}: {}", describe(&e))),
        };
        // The new server serves before the old one stops.
        if let Some(previous) = server.replace(Server::start(listener, addr, ctx)) {
            previous.stop().await;
        }
        info!(%addr, "http role: serving");
        Ok(())
    }
}

impl Role for HttpRole {
    fn validate_config<'a>(
        &'a self,
        ctx: &'a RoleContext,
        new: &'a Topology,
        old: Option<&'a Topology>,
    ) -> BoxFuture<'a, RoleResult> {
        Box::pin(self.check(ctx, new, old))
    }

    fn apply_config<'a>(
        &'a self,
        ctx: &'a RoleContext,
        new: &'a Topology,
        old: Option<&'a Topology>,
    ) -> BoxFuture<'a, RoleResult> {
        Box::pin(self.change(ctx, new, old))
    }

    fn stop<'a>(&'a self, _ctx: &'a RoleContext) -> BoxFuture<'a, RoleResult> {
        Box::pin(async move {
            if let Some(running) = self.server.lock().await.take() {
                let addr = running.addr;
                running.stop().await;
                info!(%addr, "http role: stopped");
            }
            Ok(())
        })
    }
}

/// The line logged when a port change fails; a missing port is `null`, as
/// in the topology.
fn failed(old: Option<u16>, new: Option<u16>) -> String {
    let show = |port: Option<u16>| port.map_or_else(|| "null".to_string(), |p| p.to_string());
    format!("Failed to change port from {} to {}", show(old), show(new))
}

fn entry(topology: &Topology, role: &str, node: &str) -> Entry {
    let listen = topology.roles.get(role).and_then(|s| s.listen.as_ref());
    match listen.and_then(|l| l.get(node)) {
        None => Entry::Absent,
        Some(None) => Entry::Off,
        Some(Some(port)) => Entry::Port(port.value.0),
    }
}

fn host(topology: &Topology, node: &str) -> Option<IpAddr> {
    topology.node(node).map(|n| n.spec.address.value.0.ip())
}

/// Where `node` serves under `new`: its entry, or with none the one it had
/// under `old` (an absent entry changes nothing).
fn serves(new: &Topology, old: Option<&Topology>, role: &str, node: &str) -> Option<(IpAddr, u16)> {
    if !runs_role(new, node, role) {
        return None;
    }
    let port = match entry(new, role, node) {
        Entry::Port(port) => port,
        Entry::Off => return None,
        Entry::Absent => match old {
            Some(old) if runs_role(old, node, role) => match entry(old, role, node) {
                Entry::Port(port) => port,
                _ => return None,
            },
            _ => return None,
        },
    };
    Some((host(new, node)?, port))
}

/// Another node of this host that serves `port` under `new` too.
fn shared_with(
    ctx: &RoleContext,
    new: &Topology,
    old: Option<&Topology>,
    port: u16,
) -> Option<String> {
    let me = host(new, &ctx.node)?;
    new.nodes()
        .filter(|n| n.name != ctx.node)
        .find(|n| serves(new, old, &ctx.role, n.name) == Some((me, port)))
        .map(|n| {
            format!(
                "port {port} on host {me} is also taken by node `{}`",
                n.name
            )
        })
}

/// Whether `new` gives `port` on this host to another node.
fn wanted_by_peer(ctx: &RoleContext, new: &Topology, port: u16) -> bool {
    let Some(me) = host(new, &ctx.node) else {
        return false;
    };
    new.nodes().any(|n| {
        n.name != ctx.node
            && host(new, n.name) == Some(me)
            && runs_role(new, n.name, &ctx.role)
            && entry(new, &ctx.role, n.name) == Entry::Port(port)
    })
}

/// A node of this host that served `port` under `old` and gives it up
/// under `new`: the port is free for this change, after a wait.
fn freed_by(
    ctx: &RoleContext,
    new: &Topology,
    old: Option<&Topology>,
    port: u16,
) -> Option<String> {
    let old = old?;
    let me = host(new, &ctx.node)?;
    old.nodes()
        .filter(|n| n.name != ctx.node && host(old, n.name) == Some(me))
        .filter(|n| runs_role(old, n.name, &ctx.role))
        .filter(|n| entry(old, &ctx.role, n.name) == Entry::Port(port))
        .find(|n| serves(new, Some(old), &ctx.role, n.name) != Some((me, port)))
        .map(|n| n.name.to_string())
}

/// Binds `addr` as soon as it is free, for at most `limit`.
async fn wait_bind(addr: SocketAddr, limit: Duration) -> Result<TcpListener, String> {
    let deadline = Instant::now() + limit;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(RETRY).await;
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(format!(
                    "{addr} was still in use after {}",
                    HumanDuration(limit)
                ))
            }
            Err(e) => return Err(format!("cannot listen on {addr}: {}", describe(&e))),
        }
    }
}

/// One running server.
#[derive(Debug)]
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    /// Resolves when the listening socket is closed.
    closed: oneshot::Receiver<()>,
    task: JoinHandle<()>,
}

impl Server {
    fn start(listener: TcpListener, addr: SocketAddr, ctx: &RoleContext) -> Server {
        let hello = Arc::new(serde_json::json!({
            "name": ctx.node,
            "uuid": ctx.uuid.to_string(),
        }));
        let app = Router::new().route(
            "/",
            get(move || {
                let hello = hello.clone();
                async move { Json(hello.as_ref().clone()) }
            }),
        );
        let (closed_tx, closed) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let listener = Tracked {
            inner: listener,
            _closed: closed_tx,
        };
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                error!(%addr, "http role: the server failed: {e}");
            }
        });
        Server {
            addr,
            stop: Some(stop),
            closed,
            task,
        }
    }

    /// Returns once the port is free and requests in flight are answered
    /// (or `DRAIN` passed).
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(DRAIN, &mut self.closed).await;
        if tokio::time::timeout(DRAIN, &mut self.task).await.is_err() {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener that tells when it is closed (axum closes it as soon as a
/// graceful shutdown starts, then waits for open connections).
struct Tracked {
    inner: TcpListener,
    _closed: oneshot::Sender<()>,
}

impl axum::serve::Listener for Tracked {
    type Io = TcpStream;
    type Addr = SocketAddr;

    fn accept(&mut self) -> impl Future<Output = (TcpStream, SocketAddr)> + Send {
        axum::serve::Listener::accept(&mut self.inner)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_line_names_both_ports() {
        assert_eq!(
            failed(Some(8080), Some(8081)),
            "Failed to change port from 8080 to 8081"
        );
        assert_eq!(
            failed(None, Some(8081)),
            "Failed to change port from null to 8081"
        );
    }
}
