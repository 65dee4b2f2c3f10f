//! The answering side: authenticates each connection (the handshake, with
//! a deadline and a bound on how many run at once), then reads requests
//! and runs the handler on each, concurrently up to a bound per
//! connection, each one cut off at its caller's deadline.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::handshake::{Handshake, Refusal};
use super::io::{self, FrameReader, WRITE_BATCH};
use super::message::{codes, decode_request, encode_response, RpcError};
use super::seal::{Opener, Sealer};
use super::{ClusterAuth, MAX_FRAME, MAX_HANDSHAKE_FRAME};

/// What a handler returns: boxed, so the trait stays object-safe without
/// `async-trait`.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, RpcError>> + Send + 'a>>;

/// Answers requests. Runs only for peers that passed the handshake.
pub trait RpcHandler: Send + Sync + 'static {
    /// `from` is the peer's TCP address (an ephemeral port, not its node
    /// address: identify peers by what the body says). The future is
    /// dropped when the caller's deadline passes.
    fn handle<'a>(&'a self, from: SocketAddr, method: &'a str, body: Vec<u8>) -> HandlerFuture<'a>;
}

/// A handler made of a closure.
pub struct FnHandler<F>(F);

pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(SocketAddr, String, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<u8>, RpcError>> + Send + 'static,
{
    FnHandler(f)
}

impl<F, Fut> RpcHandler for FnHandler<F>
where
    F: Fn(SocketAddr, String, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<u8>, RpcError>> + Send + 'static,
{
    fn handle<'a>(&'a self, from: SocketAddr, method: &'a str, body: Vec<u8>) -> HandlerFuture<'a> {
        Box::pin((self.0)(from, method.to_string(), body))
    }
}

/// Dispatches on the method name; an unknown one is `unknown_method`.
#[derive(Default)]
pub struct Router {
    methods: HashMap<String, Arc<dyn RpcHandler>>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    pub fn route(mut self, method: impl Into<String>, handler: impl RpcHandler) -> Router {
        self.methods.insert(method.into(), Arc::new(handler));
        self
    }
}

impl RpcHandler for Router {
    fn handle<'a>(&'a self, from: SocketAddr, method: &'a str, body: Vec<u8>) -> HandlerFuture<'a> {
        match self.methods.get(method) {
            Some(handler) => handler.handle(from, method, body),
            None => Box::pin(async move { Err(RpcError::unknown_method(method)) }),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// A peer that has not completed the handshake by then is closed.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at most; more connections are closed at once.
    pub max_handshakes: usize,
    /// Requests of one connection running at once; the next one is not
    /// read until one finishes (backpressure on that peer only).
    pub max_requests_per_connection: usize,
    /// A request's own deadline is capped at this.
    pub max_deadline: Duration,
    /// A connection with no request for this long is closed (longer than
    /// the client's idle time, so that normally the client closes first).
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 256,
            max_requests_per_connection: 64,
            max_deadline: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// What the server has seen, for status and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Rpc connections handed to the server.
    pub connections: u64,
    /// Of those, the ones that completed the handshake.
    pub established: u64,
    /// Handshakes refused, by reason (indexed like `Refusal::ALL`; read
    /// with `refused`).
    pub refusals: [u64; Refusal::ALL.len()],
    /// Requests read (all from established connections).
    pub requests: u64,
    /// Established connections closed for a frame that did not open or
    /// decode.
    pub protocol_errors: u64,
}

impl ServerStats {
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refusals[reason.index()]
    }

    pub fn refused_total(&self) -> u64 {
        self.refusals.iter().sum()
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    established: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    requests: AtomicU64,
    protocol_errors: AtomicU64,
}

/// Serves rpc connections handed over by the port's demultiplexer.
pub struct RpcServer {
    auth: ClusterAuth,
    handler: Arc<dyn RpcHandler>,
    config: ServerConfig,
    counters: Counters,
    handshakes: Arc<Semaphore>,
}

type Answer = (u64, Result<Vec<u8>, RpcError>);

impl RpcServer {
    pub fn new(
        auth: ClusterAuth,
        handler: impl RpcHandler,
        config: ServerConfig,
    ) -> Arc<RpcServer> {
        Arc::new(RpcServer {
            auth,
            handler: Arc::new(handler),
            handshakes: Arc::new(Semaphore::new(config.max_handshakes.max(1))),
            config,
            counters: Counters::default(),
        })
    }

    pub fn stats(&self) -> ServerStats {
        let c = &self.counters;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        ServerStats {
            connections: load(&c.connections),
            established: load(&c.established),
            refusals: std::array::from_fn(|i| load(&c.refused[i])),
            requests: load(&c.requests),
            protocol_errors: load(&c.protocol_errors),
        }
    }

    fn refuse(&self, peer: SocketAddr, refusal: Refusal) {
        self.counters.refused[refusal.index()].fetch_add(1, Ordering::Relaxed);
        match refusal {
            // The peer holds the key (or the cluster is open): a setup
            // mistake an operator wants to see.
            Refusal::WrongCluster | Refusal::Version => {
                warn!(%peer, %refusal, "rpc connection refused")
            }
            // Anyone can cause these; a log line each would let them
            // flood the log. They are counted.
            _ => debug!(%peer, %refusal, "rpc connection refused"),
        }
    }

    /// Serves one connection whose `CRP1` preamble has been read; returns
    /// when it is closed. Dropping the future closes it and stops its
    /// handlers.
    pub async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            return self.refuse(peer, Refusal::Busy);
        };
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut reader = FrameReader::new(read, MAX_HANDSHAKE_FRAME);
        let hs = Handshake::server(&self.auth, rand::random());
        let handshake = io::handshake(hs, &mut reader, &mut write, &[]);
        let session = match tokio::time::timeout(self.config.handshake_timeout, handshake).await {
            Ok(Ok(session)) => session,
            // Dropping the socket is the whole answer.
            Ok(Err(refusal)) => return self.refuse(peer, refusal),
            Err(_) => return self.refuse(peer, Refusal::Timeout),
        };
        drop(permit);
        self.counters.established.fetch_add(1, Ordering::Relaxed);
        reader.set_max(MAX_FRAME);

        let (answers, to_write) = mpsc::channel(self.config.max_requests_per_connection.max(1));
        let writing = write_answers(write, session.sealer, to_write);
        let reading = self.read_requests(reader, session.opener, answers, peer);
        tokio::pin!(writing, reading);
        let mut read_done = false;
        loop {
            tokio::select! {
                // Done reading (the peer closed, or was idle, or broke the
                // protocol) and every handler answered.
                () = &mut reading, if !read_done => read_done = true,
                // Every answer written, or the socket broke: dropping
                // `reading` stops what still runs.
                () = &mut writing => break,
            }
        }
    }

    async fn read_requests(
        &self,
        mut reader: FrameReader<OwnedReadHalf>,
        mut opener: Opener,
        answers: mpsc::Sender<Answer>,
        peer: SocketAddr,
    ) {
        let slots = Arc::new(Semaphore::new(
            self.config.max_requests_per_connection.max(1),
        ));
        let mut handlers = JoinSet::new();
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            while handlers.try_join_next().is_some() {}
            let next = if handlers.is_empty() {
                match tokio::time::timeout(self.config.idle_timeout, reader.next_frame()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            } else {
                reader.next_frame().await
            };
            let frame = match next {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    debug!(%peer, error = %e, "rpc connection read failed");
                    break;
                }
            };
            let request = opener
                .open(&frame)
                .map_err(|e| e.to_string())
                .and_then(|plaintext| decode_request(&plaintext).map_err(|e| e.to_string()));
            let (header, body) = match request {
                Ok(request) => request,
                Err(why) => {
                    // Only a key holder gets here: worth a warning.
                    self.counters
                        .protocol_errors
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(%peer, %why, "rpc request refused; closing the connection");
                    break;
                }
            };
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let handler = self.handler.clone();
            let answers = answers.clone();
            let limit =
                Duration::from_millis(header.deadline_ms.into()).min(self.config.max_deadline);
            handlers.spawn(async move {
                let _slot = slot;
                let work =
                    AssertUnwindSafe(handler.handle(peer, &header.method, body)).catch_unwind();
                let result = match tokio::time::timeout(limit, work).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_panic)) => Err(RpcError::internal(format!(
                        "the handler of {:?} panicked",
                        header.method
                    ))),
                    Err(_) => Err(RpcError::new(
                        codes::DEADLINE_EXCEEDED,
                        format!("no answer within the caller's {limit:?}"),
                    )),
                };
                let _ = answers.send((header.request_id, result)).await;
            });
        }
        // Answer what was asked before the peer closed.
        while handlers.join_next().await.is_some() {}
    }
}

async fn write_answers(
    mut write: OwnedWriteHalf,
    mut sealer: Sealer,
    mut answers: mpsc::Receiver<Answer>,
) {
    let mut buf = Vec::new();
    while let Some(first) = answers.recv().await {
        buf.clear();
        let mut next = Some(first);
        while let Some((id, result)) = next {
            if sealer
                .seal_into(&mut buf, &encode_response(id, &result), MAX_FRAME)
                .is_err()
            {
                let error = Err(RpcError::internal("the answer exceeds the frame limit"));
                if sealer
                    .seal_into(&mut buf, &encode_response(id, &error), MAX_FRAME)
                    .is_err()
                {
                    return;
                }
            }
            next = if buf.len() < WRITE_BATCH {
                answers.try_recv().ok()
            } else {
                None
            };
        }
        if write.write_all(&buf).await.is_err() {
            return;
        }
        if buf.capacity() > WRITE_BATCH * 4 {
            buf = Vec::new();
        }
    }
    let _ = write.shutdown().await;
}
