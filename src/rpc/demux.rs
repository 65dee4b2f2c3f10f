//! The node's TCP port carries gossip streams and rpc connections. One
//! accept loop reads each connection's 4-byte preamble and hands it over:
//! `CHG1` to the membership driver, `CRP1` to the rpc server. Anything
//! else (a port scanner, a browser, a stray client) is closed without a
//! word, and counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

use super::server::RpcServer;
use super::RPC_STREAM_MAGIC;
use crate::membership::driver::{self, GOSSIP_STREAM_MAGIC};

#[derive(Clone, Debug)]
pub struct DemuxConfig {
    /// A connection must send its preamble within this.
    pub preamble_timeout: Duration,
    /// Connections not yet handed over at most (preamble not read, or a
    /// gossip stream being read); more are closed at once.
    pub max_pending: usize,
}

impl Default for DemuxConfig {
    fn default() -> Self {
        DemuxConfig {
            preamble_timeout: Duration::from_secs(5),
            max_pending: 1024,
        }
    }
}

/// What came to the port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DemuxStats {
    /// Gossip stream bodies handed to the membership driver.
    pub gossip_streams: u64,
    /// Connections handed to the rpc server.
    pub rpc_connections: u64,
    /// Closed without a word: an unknown preamble, none in time, a
    /// protocol this node does not serve, or a gossip stream that did not
    /// read whole.
    pub refused: u64,
    /// Closed at once: too many connections pending.
    pub overloaded: u64,
}

#[derive(Default)]
struct Counters {
    gossip_streams: AtomicU64,
    rpc_connections: AtomicU64,
    refused: AtomicU64,
    overloaded: AtomicU64,
}

/// Where the port's connections go; `None` closes that kind silently.
pub struct Routes {
    pub gossip: Option<mpsc::Sender<(SocketAddr, Vec<u8>)>>,
    pub rpc: Option<Arc<RpcServer>>,
}

/// The running accept loop. Dropping it closes the port and every
/// connection it handed to the rpc server.
pub struct Demux {
    task: JoinHandle<()>,
    counters: Arc<Counters>,
    local_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Demux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demux")
            .field("local_addr", &self.local_addr)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Demux {
    pub fn spawn(listener: TcpListener, routes: Routes, config: DemuxConfig) -> Demux {
        let counters = Arc::new(Counters::default());
        let local_addr = listener.local_addr().ok();
        let task = tokio::spawn(accept(listener, Arc::new(routes), config, counters.clone()));
        Demux {
            task,
            counters,
            local_addr,
        }
    }

    /// Closes the port and every connection, and returns once they are
    /// closed (so the port can be bound again at once).
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    pub fn stats(&self) -> DemuxStats {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        DemuxStats {
            gossip_streams: load(&self.counters.gossip_streams),
            rpc_connections: load(&self.counters.rpc_connections),
            refused: load(&self.counters.refused),
            overloaded: load(&self.counters.overloaded),
        }
    }
}

impl Drop for Demux {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    routes: Arc<Routes>,
    config: DemuxConfig,
    counters: Arc<Counters>,
) {
    let pending = Arc::new(Semaphore::new(config.max_pending.max(1)));
    // Owned here, so aborting this task ends every connection too.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!(error = %e, "cannot accept on the node's TCP port");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            counters.overloaded.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        connections.spawn(route(
            stream,
            peer,
            permit,
            routes.clone(),
            config.preamble_timeout,
            counters.clone(),
        ));
    }
}

async fn route(
    mut stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    routes: Arc<Routes>,
    preamble_timeout: Duration,
    counters: Arc<Counters>,
) {
    let mut magic = [0u8; 4];
    let refused = || counters.refused.fetch_add(1, Ordering::Relaxed);
    match tokio::time::timeout(preamble_timeout, stream.read_exact(&mut magic)).await {
        Ok(Ok(_)) => {}
        _ => {
            refused();
            return;
        }
    }
    match (magic, &routes.gossip, &routes.rpc) {
        (GOSSIP_STREAM_MAGIC, Some(gossip), _) => {
            let read = driver::read_stream(&mut stream);
            match tokio::time::timeout(driver::STREAM_DEADLINE, read).await {
                Ok(Ok(body)) => {
                    drop(stream);
                    drop(permit);
                    counters.gossip_streams.fetch_add(1, Ordering::Relaxed);
                    // The driver stopped: the agent is going away.
                    let _ = gossip.send((peer, body)).await;
                }
                Ok(Err(e)) => {
                    refused();
                    debug!(%peer, error = %e, "gossip stream refused");
                }
                Err(_) => {
                    refused();
                    debug!(%peer, "gossip stream too slow; closed");
                }
            }
        }
        (RPC_STREAM_MAGIC, _, Some(server)) => {
            drop(permit);
            counters.rpc_connections.fetch_add(1, Ordering::Relaxed);
            server.clone().serve(stream, peer).await;
        }
        _ => {
            refused();
        }
    }
}
