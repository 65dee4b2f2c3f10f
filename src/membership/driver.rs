//! The tokio side of SWIM: owns the node's UDP socket and the gossip
//! streams on its TCP port, sleeps until the state machine's next deadline,
//! feeds it datagrams, streams and commands, and carries out what it asks.
//! The state machine never sees a socket or a clock.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::user_event::EventId;
use super::{
    MemberEvent, Payload, PayloadTooLarge, Swim, Transmit, TransmitKind, UserEvent, UserEventError,
};

/// The first bytes of a gossip stream on the shared TCP port: the rpc layer
/// uses the same port with its own preamble.
pub const GOSSIP_STREAM_MAGIC: [u8; 4] = *b"CHG1";
/// A full-state exchange bigger than this is refused (a 10,000-member
/// cluster's state is far below it).
const MAX_STREAM_BYTES: usize = 16 * 1024 * 1024;
/// A peer gets this long to connect and send one stream.
pub const STREAM_DEADLINE: Duration = Duration::from_secs(5);
/// Largest datagram read; bigger ones are truncated and then dropped by
/// the decoder.
const RECV_BUFFER: usize = 65_536;
/// At most this many queued datagrams are read before a due timer is
/// handled, so that a flood cannot hold the timers back.
const DRAIN_BEFORE_TIMEOUT: usize = 256;

/// What the agent asks of membership.
pub enum Command {
    Join(SocketAddr),
    /// Join, unless this node has left (discovery must not undo a leave).
    JoinUnlessLeft(SocketAddr),
    /// Announce `left`, send it, then answer.
    Leave(oneshot::Sender<()>),
    SetPayload(Payload, oneshot::Sender<Result<(), PayloadTooLarge>>),
    SendUserEvent {
        name: String,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<EventId, UserEventError>>,
    },
    /// Runs `f` on the state machine (reads for the API).
    Inspect(Box<dyn FnOnce(&Swim) + Send>),
}

/// Sends commands to a running driver.
#[derive(Clone, Debug)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
}

impl Handle {
    pub async fn join(&self, addr: SocketAddr) {
        let _ = self.commands.send(Command::Join(addr)).await;
    }

    /// Like `join`, but ignored once this node has left the cluster.
    pub async fn join_unless_left(&self, addr: SocketAddr) {
        let _ = self.commands.send(Command::JoinUnlessLeft(addr)).await;
    }

    /// Leaves the cluster; returns once the announcement is on the wire
    /// (or after `deadline`).
    pub async fn leave(&self, deadline: Duration) {
        let (done, sent) = oneshot::channel();
        if self.commands.send(Command::Leave(done)).await.is_ok() {
            let _ = tokio::time::timeout(deadline, sent).await;
        }
    }

    pub async fn set_payload(&self, payload: Payload) -> Result<(), PayloadTooLarge> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::SetPayload(payload, reply))
            .await
            .is_err()
        {
            return Ok(());
        }
        answer.await.unwrap_or(Ok(()))
    }

    /// Sends a user event to the cluster; `None` when the driver has
    /// stopped.
    pub async fn send_user_event(
        &self,
        name: String,
        payload: Vec<u8>,
    ) -> Option<Result<EventId, UserEventError>> {
        let (reply, answer) = oneshot::channel();
        let command = Command::SendUserEvent {
            name,
            payload,
            reply,
        };
        self.commands.send(command).await.ok()?;
        answer.await.ok()
    }

    /// Reads the state machine; `None` when the driver has stopped.
    pub async fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Swim) -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Inspect(Box::new(move |swim| {
            let _ = reply.send(f(swim));
        }));
        self.commands.send(command).await.ok()?;
        answer.await.ok()
    }
}

/// Told of every batch of member events, with the state that produced
/// them, and at least every `REPORT_INTERVAL` (with no events) so that
/// counters such as dropped packets stay current.
pub trait Observer: Send + 'static {
    fn on_events(&mut self, swim: &Swim, events: &[MemberEvent]);

    /// User events to deliver, each once, in arrival order.
    fn on_user_events(&mut self, _swim: &Swim, _events: Vec<UserEvent>) {}
}

const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the driver on the node's bound sockets; it runs until every
/// `Handle` is dropped.
pub fn spawn(swim: Swim, udp: UdpSocket, tcp: TcpListener, observer: impl Observer) -> Handle {
    let (stream_tx, streams) = mpsc::channel(64);
    tokio::spawn(accept_streams(tcp, stream_tx));
    spawn_with_streams(swim, udp, streams, observer)
}

/// Starts the driver when something else owns the node's TCP port (the
/// rpc layer's demultiplexer): gossip streams arrive as (peer, body), the
/// body being what follows the `CHG1` preamble and the length (see
/// `read_stream`). It runs until every `Handle` is dropped, then drops
/// `streams`.
pub fn spawn_with_streams(
    swim: Swim,
    udp: UdpSocket,
    streams: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    mut observer: impl Observer,
) -> Handle {
    observer.on_events(&swim, &[]);
    let (commands, receiver) = mpsc::channel(64);
    tokio::spawn(run(swim, Arc::new(udp), streams, receiver, observer));
    Handle { commands }
}

async fn run(
    mut swim: Swim,
    udp: Arc<UdpSocket>,
    mut streams: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    mut commands: mpsc::Receiver<Command>,
    mut observer: impl Observer,
) {
    let (failed_tx, mut failed_streams) = mpsc::unbounded_channel::<SocketAddr>();
    let mut buffer = vec![0u8; RECV_BUFFER];
    let mut events = Vec::new();
    let mut reported = Instant::now();
    loop {
        let deadline = swim.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            received = udp.recv_from(&mut buffer) => match received {
                Ok((len, from)) => {
                    // Read as the input arrives: acks carry it, probes
                    // compare it with theirs (clock skew).
                    swim.set_wall_clock(wall_clock_ms());
                    swim.handle_datagram(Instant::now(), from, &buffer[..len]);
                }
                // ICMP port unreachable and the like surface here; SWIM
                // already treats silence as the signal.
                Err(e) => debug!(error = %e, "gossip socket receive error"),
            },
            Some((from, bytes)) = streams.recv() => {
                swim.set_wall_clock(wall_clock_ms());
                swim.handle_stream(Instant::now(), from, &bytes);
            }
            Some(dst) = failed_streams.recv() => swim.stream_failed(dst),
            _ = sleep_until(deadline) => {
                // Woken late (a process starved of CPU among many), the
                // acks of our probes may be waiting already: read them
                // first. `select!` picks among ready branches at random, so
                // an ack that came in time could count as a failed probe,
                // and each false failure starts a suspicion every node
                // gossips (issue 10: 500 agents on 2 cores).
                swim.set_wall_clock(wall_clock_ms());
                for _ in 0..DRAIN_BEFORE_TIMEOUT {
                    let Ok((len, from)) = udp.try_recv_from(&mut buffer) else { break };
                    swim.handle_datagram(Instant::now(), from, &buffer[..len]);
                }
                while let Ok((from, bytes)) = streams.try_recv() {
                    swim.handle_stream(Instant::now(), from, &bytes);
                }
                swim.handle_timeout(Instant::now());
            }
            _ = tokio::time::sleep(REPORT_INTERVAL) => {}
            command = commands.recv() => match command {
                None => break,
                Some(Command::Join(addr)) => swim.join(Instant::now(), addr),
                Some(Command::JoinUnlessLeft(addr)) => {
                    if swim.local().status != super::MemberStatus::Left {
                        swim.join(Instant::now(), addr);
                    }
                }
                Some(Command::Leave(done)) => {
                    swim.leave(Instant::now());
                    // The announcement leaves before the answer, so the
                    // agent may exit right after.
                    flush(&mut swim, &udp, &failed_tx).await;
                    let _ = done.send(());
                }
                Some(Command::SetPayload(payload, reply)) => {
                    let _ = reply.send(swim.set_payload(Instant::now(), payload));
                }
                Some(Command::SendUserEvent { name, payload, reply }) => {
                    let _ = reply.send(swim.send_user_event(Instant::now(), &name, payload));
                }
                Some(Command::Inspect(f)) => f(&swim),
            },
        }
        flush(&mut swim, &udp, &failed_tx).await;
        while let Some(event) = swim.poll_event() {
            events.push(event);
        }
        let mut user_events = Vec::new();
        while let Some(event) = swim.poll_user_event() {
            user_events.push(event);
        }
        if !user_events.is_empty() {
            observer.on_user_events(&swim, user_events);
        }
        if !events.is_empty() || reported.elapsed() >= REPORT_INTERVAL {
            observer.on_events(&swim, &events);
            events.clear();
            reported = Instant::now();
        }
    }
}

/// The wall clock in Unix ms (0 for a clock set before 1970).
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends every queued transmit: datagrams at once, streams on their own
/// task (which reports a failure back through `failed`).
async fn flush(swim: &mut Swim, udp: &UdpSocket, failed: &mpsc::UnboundedSender<SocketAddr>) {
    while let Some(Transmit { dst, bytes, kind }) = swim.poll_transmit() {
        match kind {
            TransmitKind::Datagram => {
                if let Err(e) = udp.send_to(&bytes, dst).await {
                    debug!(%dst, error = %e, "gossip datagram not sent");
                }
            }
            TransmitKind::Stream => {
                let failed = failed.clone();
                tokio::spawn(async move {
                    if let Err(e) = tokio::time::timeout(STREAM_DEADLINE, send_stream(dst, &bytes))
                        .await
                        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
                    {
                        debug!(%dst, error = %e, "gossip stream not sent");
                        let _ = failed.send(dst);
                    }
                });
            }
        }
    }
}

async fn send_stream(dst: SocketAddr, bytes: &[u8]) -> io::Result<()> {
    let len =
        u32::try_from(bytes.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut stream = TcpStream::connect(dst).await?;
    stream.set_nodelay(true)?;
    let mut frame = Vec::with_capacity(8 + bytes.len());
    frame.extend_from_slice(&GOSSIP_STREAM_MAGIC);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(bytes);
    stream.write_all(&frame).await?;
    stream.shutdown().await
}

/// Accepts connections on the node's TCP port and hands each gossip
/// stream's body to the driver. Anything else is closed without a word.
/// Stops (closing the port) once the driver has stopped.
async fn accept_streams(listener: TcpListener, streams: mpsc::Sender<(SocketAddr, Vec<u8>)>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = streams.closed() => return,
        };
        let (mut stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!(error = %e, "cannot accept on the node's TCP port");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let streams = streams.clone();
        tokio::spawn(async move {
            let read = async {
                let mut magic = [0u8; 4];
                stream.read_exact(&mut magic).await?;
                if magic != GOSSIP_STREAM_MAGIC {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "not a gossip stream",
                    ));
                }
                read_stream(&mut stream).await
            };
            match tokio::time::timeout(STREAM_DEADLINE, read).await {
                Ok(Ok(body)) => {
                    let _ = streams.send((peer, body)).await;
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "gossip stream refused"),
                Err(_) => debug!(%peer, "gossip stream too slow; closed"),
            }
        });
    }
}

/// Reads one gossip stream's body from a connection whose `CHG1` preamble
/// has been consumed: a big-endian `u32` length, then that many bytes
/// (at most 16 MiB). The caller bounds it with `STREAM_DEADLINE`.
pub async fn read_stream(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_STREAM_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("stream of {len} bytes is too large"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(body)
}
