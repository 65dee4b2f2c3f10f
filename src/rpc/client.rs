//! The calling side: one pooled connection per peer, opened on the first
//! call and reused by every later one (requests are multiplexed by id),
//! dropped when it fails and reopened by the next call. Every call has a
//! deadline that covers connecting, the handshake and the answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout_at, Instant};
use tracing::debug;

use super::handshake::{Handshake, Refusal};
use super::io::{self, FrameReader, WRITE_BATCH};
use super::message::{codes, decode_response, encode_request, RpcError};
use super::seal::{Opener, Sealer, SEAL_OVERHEAD};
use super::{ClusterAuth, MAX_FRAME, MAX_HANDSHAKE_FRAME, RPC_STREAM_MAGIC};

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No answer within the call's deadline (connecting included). The
    /// request may or may not have run on the peer.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer cannot be connected to, or the connection broke with the
    /// request in flight (it may or may not have run).
    #[error("cannot reach the peer: {0}")]
    Unreachable(String),
    /// The handshake failed: the peer does not hold our key, is in another
    /// cluster, or speaks no common version. Nothing was sent.
    #[error("the peer refused the connection: {0}")]
    Refused(Refusal),
    /// The peer's handler answered with an error.
    #[error("the peer answered: {0}")]
    Remote(RpcError),
    /// Something neither end should send.
    #[error("rpc protocol error: {0}")]
    Protocol(String),
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// A connection with nothing in flight for this long is closed (the
    /// server's idle limit is longer, so the client normally closes first).
    pub idle_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Calls other agents. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("cluster", &self.inner.auth.cluster)
            .finish_non_exhaustive()
    }
}

/// A peer's place in the pool; the async lock makes concurrent first
/// calls share one connection attempt rather than race to open several.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>;

struct Inner {
    auth: ClusterAuth,
    config: ClientConfig,
    pool: Mutex<HashMap<SocketAddr, Slot>>,
    opened: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here leaves a map half-updated on panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A request that provably never reached the socket: safe to send again
/// on a new connection.
struct NotSent;

impl RpcClient {
    pub fn new(auth: ClusterAuth, config: ClientConfig) -> RpcClient {
        RpcClient {
            inner: Arc::new(Inner {
                auth,
                config,
                pool: Mutex::new(HashMap::new()),
                opened: AtomicU64::new(0),
            }),
        }
    }

    /// Calls `method` on `peer` and waits at most `deadline` for the answer.
    pub async fn call(
        &self,
        peer: SocketAddr,
        method: &str,
        body: &[u8],
        deadline: Duration,
    ) -> Result<Vec<u8>, CallError> {
        self.call_until(peer, method, body, Instant::now() + deadline, deadline)
            .await
    }

    async fn call_until(
        &self,
        peer: SocketAddr,
        method: &str,
        body: &[u8],
        until: Instant,
        deadline: Duration,
    ) -> Result<Vec<u8>, CallError> {
        // A few attempts at most: a connection that closed under us (the
        // server restarted, or it was idle) before our request was written.
        for _ in 0..3 {
            let conn = timeout_at(until, self.connection(peer, until))
                .await
                .map_err(|_| CallError::Timeout(deadline))??;
            match conn.request(method, body, until, deadline).await {
                Ok(result) => return result,
                Err(NotSent) => continue,
            }
        }
        Err(CallError::Unreachable(format!(
            "{peer}: every connection closed before the request could be sent"
        )))
    }

    /// Calls every peer with at most `max_in_flight` calls at a time, all
    /// within `deadline` from now (a call that starts late gets what is
    /// left). Never fails as a whole: one result per peer, in input order.
    pub async fn fan_out<I>(
        &self,
        peers: I,
        method: &str,
        body: &[u8],
        deadline: Duration,
        max_in_flight: usize,
    ) -> Vec<(SocketAddr, Result<Vec<u8>, CallError>)>
    where
        I: IntoIterator<Item = SocketAddr>,
    {
        let until = Instant::now() + deadline;
        let calls = futures_util::stream::iter(peers.into_iter().enumerate())
            .map(|(i, peer)| async move {
                let result = self.call_until(peer, method, body, until, deadline).await;
                (i, peer, result)
            })
            .buffer_unordered(max_in_flight.max(1));
        let mut results: Vec<_> = calls.collect().await;
        results.sort_by_key(|(i, ..)| *i);
        results.into_iter().map(|(_, peer, r)| (peer, r)).collect()
    }

    /// Whether a usable connection to `peer` is pooled now.
    pub fn is_connected(&self, peer: SocketAddr) -> bool {
        let slot = lock(&self.inner.pool).get(&peer).cloned();
        slot.and_then(|slot| {
            slot.try_lock()
                .ok()
                .map(|conn| conn.as_ref().is_some_and(|c| c.is_usable()))
        })
        .unwrap_or(false)
    }

    /// Connections opened (handshake completed) since the client was made.
    pub fn connections_opened(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }

    /// The pooled connection to `peer`, opened if there is none usable.
    ///
    /// The opening runs on a task of its own, which a caller that gives
    /// up does not cancel: the next call finds the connection up rather
    /// than starting over. Raft's heartbeats carry a deadline of a few
    /// tens of ms, and on a machine running 500 agents a connect and
    /// handshake took longer, so every attempt was cut off and the peer
    /// looked unreachable for good.
    async fn connection(&self, peer: SocketAddr, until: Instant) -> Result<Arc<Conn>, CallError> {
        let slot = lock(&self.inner.pool).entry(peer).or_default().clone();
        if let Some(conn) = slot.lock().await.as_ref().filter(|c| c.is_usable()) {
            return Ok(conn.clone());
        }
        let inner = self.inner.clone();
        let limit = until.max(Instant::now() + OPEN_AT_LEAST);
        tokio::spawn(async move { open_pooled(&inner, peer, slot, limit).await })
            .await
            .unwrap_or_else(|e| Err(CallError::Unreachable(format!("{peer}: {e}"))))
    }
}

/// How long an attempt to open a connection may run at least, when the
/// call that started it has a shorter deadline. Otherwise it runs until
/// that call's deadline, as long as the call could have used it: a peer
/// that drops our SYNs holds its slot (and every call to it) no longer.
const OPEN_AT_LEAST: Duration = Duration::from_secs(4);

/// Opens a connection to `peer` into `slot`, giving up at `limit`, unless
/// one usable is there by the time the slot is ours (another call opened
/// it meanwhile).
async fn open_pooled(
    inner: &Inner,
    peer: SocketAddr,
    slot: Slot,
    limit: Instant,
) -> Result<Arc<Conn>, CallError> {
    let mut pooled = slot.lock().await;
    if let Some(conn) = pooled.as_ref().filter(|c| c.is_usable()) {
        return Ok(conn.clone());
    }
    *pooled = None;
    let opened = timeout_at(limit, Conn::open(peer, inner))
        .await
        .unwrap_or_else(|_| {
            Err(CallError::Unreachable(format!(
                "{peer}: the connection was not up in time"
            )))
        });
    match opened {
        Ok(conn) => {
            inner.opened.fetch_add(1, Ordering::Relaxed);
            *pooled = Some(conn.clone());
            Ok(conn)
        }
        Err(e) => {
            drop(pooled);
            // Forget peers that are gone, unless a call is waiting on the
            // slot (the map and this task hold the only other references).
            let mut pool = lock(&inner.pool);
            if pool.get(&peer).is_some_and(|s| Arc::ptr_eq(s, &slot))
                && Arc::strong_count(&slot) <= 2
            {
                pool.remove(&peer);
            }
            Err(e)
        }
    }
}

enum Reply {
    Done(Result<Vec<u8>, CallError>),
    NotSent,
}

struct Outgoing {
    id: u64,
    plaintext: Vec<u8>,
}

#[derive(Default)]
struct Pending {
    /// Set once the connection is done: nothing new may wait on it.
    closed: bool,
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
}

/// What a connection's tasks and its callers share.
struct Shared {
    peer: SocketAddr,
    pending: Mutex<Pending>,
    /// Tells both tasks to stop.
    closed: watch::Sender<bool>,
    /// Not handed out any more (it looked dead); its calls in flight
    /// still complete.
    retired: AtomicBool,
    started: Instant,
    /// When the last frame arrived, in ms since `started`.
    last_received_ms: AtomicU64,
}

impl Shared {
    fn since_start(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    fn touch(&self) {
        self.last_received_ms
            .store(self.since_start(Instant::now()), Ordering::Relaxed);
    }

    fn silent_since(&self, at: Instant) -> bool {
        self.last_received_ms.load(Ordering::Relaxed) < self.since_start(at)
    }

    fn close(&self) {
        self.closed.send_replace(true);
    }
}

struct Conn {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Outgoing>,
    next_id: AtomicU64,
}

impl Conn {
    async fn open(peer: SocketAddr, inner: &Inner) -> Result<Arc<Conn>, CallError> {
        let stream = TcpStream::connect(peer).await.map_err(|e| {
            CallError::Unreachable(format!("{peer}: {}", crate::storage::describe(&e)))
        })?;
        // Small requests and answers: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut reader = FrameReader::new(read, MAX_HANDSHAKE_FRAME);
        let hs = Handshake::client(&inner.auth, rand::random());
        let session = io::handshake(hs, &mut reader, &mut write, &RPC_STREAM_MAGIC)
            .await
            .map_err(|refusal| {
                debug!(%peer, %refusal, "rpc handshake failed");
                CallError::Refused(refusal)
            })?;
        reader.set_max(MAX_FRAME);
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            peer,
            pending: Mutex::new(Pending::default()),
            closed,
            retired: AtomicBool::new(false),
            started: Instant::now(),
            last_received_ms: AtomicU64::new(0),
        });
        let (requests, outgoing) = mpsc::channel(256);
        tokio::spawn(write_loop(
            write,
            session.sealer,
            outgoing,
            shared.clone(),
            inner.config.idle_timeout,
        ));
        tokio::spawn(read_loop(reader, session.opener, shared.clone()));
        Ok(Arc::new(Conn {
            shared,
            requests,
            next_id: AtomicU64::new(1),
        }))
    }

    fn is_usable(&self) -> bool {
        !*self.shared.closed.borrow() && !self.shared.retired.load(Ordering::Relaxed)
    }

    async fn request(
        &self,
        method: &str,
        body: &[u8],
        until: Instant,
        deadline: Duration,
    ) -> Result<Result<Vec<u8>, CallError>, NotSent> {
        let peer = self.shared.peer;
        let now = Instant::now();
        let left = until.saturating_duration_since(now);
        // Rounded up, so the server's timer (started later) never fires
        // before ours.
        let deadline_ms = u32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u32::MAX);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let plaintext = encode_request(id, deadline_ms, method, body);
        if plaintext.len() + SEAL_OVERHEAD > MAX_FRAME {
            return Ok(Err(CallError::Protocol(format!(
                "a request of {} bytes exceeds the {MAX_FRAME}-byte frame limit",
                body.len()
            ))));
        }
        let (reply, answer) = oneshot::channel();
        {
            let mut pending = lock(&self.shared.pending);
            if pending.closed {
                return Err(NotSent);
            }
            pending.waiting.insert(id, reply);
        }
        // Whatever happens below, the id stops waiting.
        let _forget = Forget {
            shared: &self.shared,
            id,
        };
        let timeout = || CallError::Timeout(deadline);
        match timeout_at(until, self.requests.send(Outgoing { id, plaintext })).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(NotSent),
            Err(_) => return Ok(Err(timeout())),
        }
        match timeout_at(until, answer).await {
            // The server gave up at (its view of) our deadline: the same
            // thing as our own timer firing, whichever came first.
            Ok(Ok(Reply::Done(Err(CallError::Remote(e)))))
                if e.code == codes::DEADLINE_EXCEEDED =>
            {
                Ok(Err(timeout()))
            }
            Ok(Ok(Reply::Done(result))) => Ok(result),
            Ok(Ok(Reply::NotSent)) => Err(NotSent),
            Ok(Err(_)) => Ok(Err(CallError::Unreachable(format!(
                "{peer}: the connection closed with the request in flight"
            )))),
            Err(_) => {
                // Nothing at all came back since we sent: the peer (or the
                // path) may be dead. Later calls get a new connection; the
                // calls in flight on this one still finish.
                if self.shared.silent_since(now) {
                    self.shared.retired.store(true, Ordering::Relaxed);
                }
                Ok(Err(timeout()))
            }
        }
    }
}

/// Resolves once the connection is told to close.
async fn until_closed(closed: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here.
    let _ = closed.wait_for(|closed| *closed).await.map(|_| ());
}

struct Forget<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).waiting.remove(&self.id);
    }
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut sealer: Sealer,
    mut outgoing: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
    idle: Duration,
) {
    let mut closed = shared.closed.subscribe();
    let mut buf = Vec::new();
    let mut active = Instant::now();
    loop {
        tokio::select! {
            next = outgoing.recv() => {
                // None: every handle dropped (the pool forgot it, no call
                // in flight).
                let Some(first) = next else { break };
                buf.clear();
                let mut next = Some(first);
                while let Some(Outgoing { id, plaintext }) = next {
                    if let Err(e) = sealer.seal_into(&mut buf, &plaintext, MAX_FRAME) {
                        let waiting = lock(&shared.pending).waiting.remove(&id);
                        if let Some(reply) = waiting {
                            let _ = reply.send(Reply::Done(Err(CallError::Protocol(e.to_string()))));
                        }
                    }
                    next = if buf.len() < WRITE_BATCH { outgoing.try_recv().ok() } else { None };
                }
                if let Err(e) = write.write_all(&buf).await {
                    debug!(peer = %shared.peer, error = %e, "rpc connection write failed");
                    break;
                }
                if buf.capacity() > WRITE_BATCH * 4 {
                    buf = Vec::new();
                }
                active = Instant::now();
            }
            () = until_closed(&mut closed) => break,
            () = tokio::time::sleep_until(active + idle) => {
                // Nothing written for `idle`, and no answer awaited.
                if lock(&shared.pending).waiting.is_empty() {
                    break;
                }
                active = Instant::now();
            }
        }
    }
    shared.close();
    // No new request may wait on this connection; the ones still queued
    // were never written, so their callers may send them elsewhere.
    let unsent: Vec<oneshot::Sender<Reply>> = {
        let mut pending = lock(&shared.pending);
        pending.closed = true;
        outgoing.close();
        let mut unsent = Vec::new();
        while let Ok(Outgoing { id, .. }) = outgoing.try_recv() {
            unsent.extend(pending.waiting.remove(&id));
        }
        // Dropping the others tells their callers the connection is gone.
        pending.waiting.clear();
        unsent
    };
    for reply in unsent {
        let _ = reply.send(Reply::NotSent);
    }
    let _ = write.shutdown().await;
}

async fn read_loop(
    mut reader: FrameReader<OwnedReadHalf>,
    mut opener: Opener,
    shared: Arc<Shared>,
) {
    let mut closed = shared.closed.subscribe();
    loop {
        let frame = tokio::select! {
            frame = reader.next_frame() => frame,
            () = until_closed(&mut closed) => break,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                debug!(peer = %shared.peer, error = %e, "rpc connection read failed");
                break;
            }
        };
        shared.touch();
        let response = opener
            .open(&frame)
            .map_err(|e| e.to_string())
            .and_then(|plaintext| decode_response(&plaintext).map_err(|e| e.to_string()));
        match response {
            Ok((id, result)) => {
                let waiting = lock(&shared.pending).waiting.remove(&id);
                // A response nobody waits for: its caller gave up.
                if let Some(reply) = waiting {
                    let _ = reply.send(Reply::Done(result.map_err(CallError::Remote)));
                }
            }
            Err(why) => {
                debug!(peer = %shared.peer, %why, "rpc response refused; closing");
                let waiting: Vec<_> = lock(&shared.pending).waiting.drain().collect();
                for (_, reply) in waiting {
                    let _ = reply.send(Reply::Done(Err(CallError::Protocol(why.clone()))));
                }
                break;
            }
        }
    }
    shared.close();
}
