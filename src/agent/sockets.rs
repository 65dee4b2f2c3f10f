//! The agent's listening sockets: the node's one port (UDP for gossip, TCP
//! for gossip streams and rpc) and the local API, on TCP behind the access
//! rules and on a unix socket open to whoever may open the file. A taken
//! port is an error naming the address and the protocol.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::access::{Access, Token, TokenError};
use crate::api::NodeState;
use crate::config::{ApiConfig, NodeConfig};
use crate::storage::describe;

use super::AgentError;

/// Members of the group may connect; others may not even look.
const SOCKET_MODE: u32 = 0o660;
const SOCKET_DIR_MODE: u32 = 0o750;

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

/// Why the API's unix socket could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot create the directory {}: {}", dir.display(), describe(source))]
    Dir { dir: PathBuf, source: io::Error },
    #[error("{} is served by a running agent", path.display())]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket; it is left as it is", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot remove the stale socket {}: {}", path.display(), describe(source))]
    Stale { path: PathBuf, source: io::Error },
    #[error("cannot bind {}: {}", path.display(), describe(source))]
    Bind { path: PathBuf, source: io::Error },
}

/// The API's listeners, bound, and the rules of the TCP one.
pub struct ApiListeners {
    tcp: Option<TcpListener>,
    unix: Option<(UnixListener, SocketFile)>,
    access: Access,
}

impl ApiListeners {
    /// The unix socket served, if any.
    pub fn socket(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, file)| file.path.as_path())
    }
}

/// Reads the token and binds the API's listeners, before anything is
/// announced. A default socket that cannot be had is skipped with a
/// warning (an agent that is not root has no /run/cohort); one that was
/// asked for is an error.
pub async fn bind_api(config: &ApiConfig) -> Result<ApiListeners, AgentError> {
    if let (true, None, Some(addr)) = (config.exposed(), &config.token_file, config.http) {
        return Err(AgentError::ApiExposed { addr });
    }
    let token = match &config.token_file {
        Some(path) => Some(Token::read(path)?),
        None => None,
    };
    let tcp = match config.http {
        Some(addr) => Some(bind_tcp(addr, "http api").await?),
        None => None,
    };
    let unix = match &config.socket {
        None => None,
        Some(socket) => match bind_unix(&socket.path) {
            Ok(bound) => Some(bound),
            Err(e) if socket.explicit => return Err(AgentError::ApiSocket(e)),
            Err(e) => {
                warn!("the API's default unix socket is not served: {e}; set api.socket (or null) in the node config");
                None
            }
        },
    };
    let access = Access::new(
        config.exposed(),
        token,
        unix.as_ref().map(|(_, file)| file.path.clone()),
    );
    Ok(ApiListeners { tcp, unix, access })
}

/// The socket file this agent made; removed when the agent stops unless
/// another agent has put its own there since.
struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if file_id(&self.path).ok() == Some(self.id) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    let meta = fs::symlink_metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

fn bind_unix(path: &Path) -> Result<(UnixListener, SocketFile), SocketError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(SOCKET_DIR_MODE)
            .create(dir)
            .map_err(|source| SocketError::Dir {
                dir: dir.to_path_buf(),
                // "File exists" would hide what is wrong with it.
                source: if dir.exists() && !dir.is_dir() {
                    io::Error::from_raw_os_error(nix::libc::ENOTDIR)
                } else {
                    source
                },
            })?;
    }
    remove_stale(path)?;
    let bind = |source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind)?;
    // Made now, the file is no more open than the umask allows (less than
    // the mode below): setting the mode only widens it to the group.
    let file = SocketFile {
        path: path.to_path_buf(),
        id: file_id(path).map_err(bind)?,
    };
    fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE)).map_err(bind)?;
    Ok((listener, file))
}

/// A socket file left by an agent that died is removed; one a live agent
/// answers on, or anything that is not a socket, is not touched.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path).map_err(|source| SocketError::Stale {
                path: path.to_path_buf(),
                source,
            })?;
            info!(socket = %path.display(), "removed the stale API socket of an agent that is gone");
            Ok(())
        }
        Err(source) => Err(SocketError::Bind {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The API being served; stopped at shutdown.
pub struct ApiServer {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    access: Access,
    token_file: Option<PathBuf>,
    /// Dropped (the file removed) once both servers are done.
    socket: Option<SocketFile>,
}

/// Serves the API on every listener: the TCP one behind the access rules,
/// the unix socket as it is.
pub fn serve_api(listeners: ApiListeners, state: Arc<NodeState>, config: &ApiConfig) -> ApiServer {
    let (stop, stopped) = watch::channel(false);
    let router = crate::api::router(state);
    let mut tasks = Vec::new();
    if let Some(listener) = listeners.tcp {
        let app = listeners.access.guard(router.clone());
        tasks.push(tokio::spawn(serve_on(listener, app, stopped.clone())));
    }
    let mut socket = None;
    if let Some((listener, file)) = listeners.unix {
        tasks.push(tokio::spawn(serve_on(listener, router, stopped)));
        socket = Some(file);
    }
    ApiServer {
        stop,
        tasks,
        access: listeners.access,
        token_file: config.token_file.clone(),
        socket,
    }
}

async fn serve_on<L>(listener: L, app: axum::Router, mut stopped: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let shutdown = async move {
        let _ = stopped.wait_for(|stopped| *stopped).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        warn!(error = %e, "the API stopped");
    }
}

impl ApiServer {
    /// Stops accepting; open requests go on until `drained`.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits for open requests to end, then removes the socket file.
    pub async fn drained(mut self) {
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.socket.take();
    }

    /// SIGHUP: the token file is read again (a rotation is an edit of the
    /// file and a reload). A file that does not read keeps the running
    /// token.
    pub fn reload_token(&self) {
        let Some(path) = &self.token_file else {
            return;
        };
        match Token::read(path) {
            Ok(token) => {
                if self.access.replace_token(token) {
                    info!(file = %path.display(), "API token reloaded");
                }
            }
            Err(e) => warn!("reload: the running API token stays: {e}"),
        }
    }
}

impl From<TokenError> for AgentError {
    fn from(e: TokenError) -> AgentError {
        AgentError::ApiToken(e)
    }
}
