//! The rpc layer over real TCP on 127.0.0.1: calls and answers, many calls
//! on one connection, outsiders refused before a request is read (and told
//! nothing), deadlines, connection reuse and reconnection, fan-out with a
//! bound, and gossip streams sharing the port through the demultiplexer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cohort::membership::driver::{self, Observer};
use cohort::membership::swim::LocalNode;
use cohort::membership::{
    Keyring, MemberEvent, MemberStatus, NodeId, PacketSecurity, Swim, SwimConfig,
};
use cohort::rpc::{
    codes, handler_fn, CallError, ClientConfig, ClusterAuth, Demux, DemuxConfig, Handshake,
    Refusal, Router, Routes, RpcClient, RpcError, RpcHandler, RpcServer, ServerConfig,
    MAX_HANDSHAKE_FRAME, RPC_STREAM_MAGIC,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Barrier};
use uuid::Uuid;

mod support;

/// The longest any condition is waited for; only reached when broken.
const WAIT: Duration = Duration::from_secs(20);
/// Deadline of calls that are expected to succeed.
const CALL: Duration = Duration::from_secs(10);

fn auth(cluster: &str, key: Option<u8>) -> ClusterAuth {
    ClusterAuth {
        cluster: cluster.into(),
        security: match key {
            Some(k) => PacketSecurity::Encrypted(Keyring::new(&[[k; 32]]).expect("a key")),
            None => PacketSecurity::Plaintext,
        },
    }
}

fn client(auth: ClusterAuth) -> RpcClient {
    RpcClient::new(auth, ClientConfig::default())
}

/// One node's port: the demultiplexer and the rpc server behind it.
struct Node {
    demux: Demux,
    server: Arc<RpcServer>,
    addr: SocketAddr,
}

async fn serve_on(
    listener: TcpListener,
    auth: ClusterAuth,
    handler: impl RpcHandler,
    config: ServerConfig,
) -> Node {
    let addr = listener.local_addr().expect("bound");
    let server = RpcServer::new(auth, handler, config);
    let routes = Routes {
        gossip: None,
        rpc: Some(server.clone()),
    };
    let demux = Demux::spawn(listener, routes, DemuxConfig::default());
    Node {
        demux,
        server,
        addr,
    }
}

async fn serve(auth: ClusterAuth, handler: impl RpcHandler) -> Node {
    serve_with(auth, handler, ServerConfig::default()).await
}

async fn serve_with(auth: ClusterAuth, handler: impl RpcHandler, config: ServerConfig) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    serve_on(listener, auth, handler, config).await
}

/// Answers `echo` with the body, `fail` with an error, `panic` by
/// panicking; counts every invocation.
fn echo(calls: Arc<AtomicU64>) -> Router {
    let counted = move |calls: &Arc<AtomicU64>| {
        calls.fetch_add(1, Ordering::SeqCst);
    };
    let (a, b, c) = (calls.clone(), calls.clone(), calls);
    Router::new()
        .route(
            "echo",
            handler_fn(move |_, _, body| {
                counted(&a);
                async move { Ok(body) }
            }),
        )
        .route(
            "fail",
            handler_fn(move |_, _, _| {
                b.fetch_add(1, Ordering::SeqCst);
                async move { Err(RpcError::new("locked", "locked by txn T from node N")) }
            }),
        )
        .route(
            "panic",
            handler_fn(move |_, _, _| {
                c.fetch_add(1, Ordering::SeqCst);
                async move { panic!("a handler bug") }
            }),
        )
}

/// Reads whatever the server sends until it closes (or resets) the
/// connection.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    // A reset (we left bytes unread on its side) is a close too.
    let _ = support::within(
        WAIT,
        "the server to close",
        stream.read_to_end(&mut received),
    )
    .await;
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_gets_its_answer_or_the_handlers_error() {
    let a = auth("orders", Some(1));
    let calls = Arc::new(AtomicU64::new(0));
    let node = serve(a.clone(), echo(calls.clone())).await;
    let client = client(a);

    let answer = client.call(node.addr, "echo", b"hello", CALL).await;
    assert_eq!(answer, Ok(b"hello".to_vec()));
    let big = vec![7u8; 3 << 20];
    assert_eq!(client.call(node.addr, "echo", &big, CALL).await, Ok(big));

    match client.call(node.addr, "fail", b"", CALL).await {
        Err(CallError::Remote(e)) => {
            assert_eq!(
                (e.code.as_str(), e.message.as_str()),
                ("locked", "locked by txn T from node N")
            )
        }
        other => panic!("expected the handler's error, got {other:?}"),
    }
    match client.call(node.addr, "nope", b"", CALL).await {
        Err(CallError::Remote(e)) => assert_eq!(e.code, codes::UNKNOWN_METHOD),
        other => panic!("expected unknown_method, got {other:?}"),
    }
    match client.call(node.addr, "panic", b"", CALL).await {
        Err(CallError::Remote(e)) => assert_eq!(e.code, codes::INTERNAL),
        other => panic!("expected internal, got {other:?}"),
    }
    // The connection survived all of it.
    assert_eq!(
        client.call(node.addr, "echo", b"still", CALL).await,
        Ok(b"still".to_vec())
    );
    assert_eq!(node.server.stats().connections, 1);
    assert_eq!(client.connections_opened(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_calls_in_flight_share_one_connection_and_each_gets_its_own_answer() {
    const N: usize = 50;
    let a = auth("orders", Some(1));
    // Every handler waits for all N: they are provably in flight at once.
    let barrier = Arc::new(Barrier::new(N));
    let handler = handler_fn(move |_, _, body: Vec<u8>| {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            Ok(body.into_iter().rev().collect())
        }
    });
    let node = serve(a.clone(), handler).await;
    let client = client(a);
    let calls = (0..N).map(|i| {
        let client = client.clone();
        let body = format!("request {i}").into_bytes();
        async move { (client.call(node.addr, "reverse", &body, CALL).await, body) }
    });
    let results = support::within(WAIT, "the calls", futures_util::future::join_all(calls)).await;
    for (answer, body) in results {
        let expected: Vec<u8> = body.into_iter().rev().collect();
        assert_eq!(answer, Ok(expected));
    }
    assert_eq!(node.server.stats().connections, 1);
    assert_eq!(node.demux.stats().rpc_connections, 1);
    assert_eq!(client.connections_opened(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_is_opened_once_and_reused_for_every_call() {
    let a = auth("orders", Some(1));
    let node = serve(a.clone(), echo(Arc::default())).await;
    let client = client(a);
    assert!(!client.is_connected(node.addr), "opened lazily");
    for i in 0..200u32 {
        let body = i.to_be_bytes();
        assert_eq!(
            client.call(node.addr, "echo", &body, CALL).await,
            Ok(body.to_vec())
        );
    }
    assert!(client.is_connected(node.addr));
    assert_eq!(node.server.stats().connections, 1);
    assert_eq!(node.server.stats().requests, 200);
    assert_eq!(client.connections_opened(), 1);
}

/// Accepts one connection and forwards it to `target` only once `gate`
/// opens: a peer too busy to finish a handshake within a call's deadline.
async fn gated_proxy(target: SocketAddr, gate: Arc<tokio::sync::Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        gate.notified().await;
        let Ok(mut server) = TcpStream::connect(target).await else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_whose_caller_gave_up_is_still_opened_for_the_next_call() {
    let a = auth("orders", Some(1));
    let node = serve(a.clone(), echo(Arc::default())).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    let addr = gated_proxy(node.addr, gate.clone()).await;
    let client = client(a);
    let short = Duration::from_millis(100);
    // The handshake cannot finish within the call's deadline.
    assert_eq!(
        client.call(addr, "echo", b"1", short).await,
        Err(CallError::Timeout(short))
    );
    gate.notify_one();
    // The attempt goes on without its caller...
    support::eventually(WAIT, "the connection the first call started", || {
        client.is_connected(addr).then_some(())
    })
    .await;
    // ...so a call with the same short deadline now gets its answer,
    // over that connection.
    assert_eq!(
        client.call(addr, "echo", b"2", short).await,
        Ok(b"2".to_vec())
    );
    assert_eq!(client.connections_opened(), 1);
    assert_eq!(node.server.stats().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_connection_is_closed_and_the_next_call_opens_another() {
    let a = auth("orders", Some(1));
    let node = serve(a.clone(), echo(Arc::default())).await;
    let config = ClientConfig {
        idle_timeout: Duration::from_millis(100),
    };
    let client = RpcClient::new(a, config);
    assert_eq!(
        client.call(node.addr, "echo", b"1", CALL).await,
        Ok(b"1".to_vec())
    );
    support::eventually(WAIT, "the idle connection to close", || {
        (!client.is_connected(node.addr)).then_some(())
    })
    .await;
    assert_eq!(
        client.call(node.addr, "echo", b"2", CALL).await,
        Ok(b"2".to_vec())
    );
    assert_eq!(client.connections_opened(), 2);
    assert_eq!(node.server.stats().connections, 2);
}

/// Counts handlers running at once, and holds them in waves: a wave is
/// let go once `bound` run at once and every connection the servers have
/// accepted has reached its handler (so a caller over its bound shows, as
/// its extra calls arrive before the wave is let go), or once all `total`
/// have started. The peak is then exactly the bound the caller keeps.
struct Gate {
    bound: u64,
    total: u64,
    running: AtomicU64,
    started: AtomicU64,
    peak: AtomicU64,
    wave: AtomicU64,
    /// Connections accepted so far, when the test can count them.
    arrived: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
}

impl Gate {
    fn new(bound: u64, total: u64) -> Arc<Gate> {
        Arc::new(Gate {
            bound,
            total,
            running: AtomicU64::new(0),
            started: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            wave: AtomicU64::new(0),
            arrived: OnceLock::new(),
        })
    }

    async fn pass(&self) {
        let wave = self.wave.load(Ordering::SeqCst);
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.started.fetch_add(1, Ordering::SeqCst);
        self.peak.fetch_max(running, Ordering::SeqCst);
        while self.wave.load(Ordering::SeqCst) == wave {
            let started = self.started.load(Ordering::SeqCst);
            let arrived = self.arrived.get().map_or(started, |count| count());
            let full = self.running.load(Ordering::SeqCst) >= self.bound && arrived <= started;
            if full || started >= self.total {
                self.wave.fetch_add(1, Ordering::SeqCst);
                break;
            }
            // Polling a condition: what it waits for is in other tasks.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Let whatever else is ready run while this one still counts.
        tokio::task::yield_now().await;
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    fn handler(self: &Arc<Gate>) -> impl RpcHandler {
        let gate = self.clone();
        handler_fn(move |_, _, body| {
            let gate = gate.clone();
            async move {
                gate.pass().await;
                Ok(body)
            }
        })
    }
}

// One thread: the 12 requests go out in one write, so a server that read
// past its bound would start every handler before any could finish.
#[tokio::test]
async fn a_connection_runs_at_most_its_bound_of_requests_at_once() {
    let a = auth("orders", Some(1));
    let gate = Gate::new(4, 12);
    let config = ServerConfig {
        max_requests_per_connection: 4,
        ..ServerConfig::default()
    };
    let node = serve_with(a.clone(), gate.handler(), config).await;
    let client = client(a);
    let calls = (0..12u32).map(|i| {
        let client = client.clone();
        async move { client.call(node.addr, "m", &i.to_be_bytes(), CALL).await }
    });
    for answer in support::within(WAIT, "the calls", futures_util::future::join_all(calls)).await {
        assert!(answer.is_ok(), "{answer:?}");
    }
    assert_eq!(gate.peak(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_without_the_key_is_refused_before_any_request_is_read() {
    let ours = auth("orders", Some(1));
    let calls = Arc::new(AtomicU64::new(0));
    let node = serve(ours.clone(), echo(calls.clone())).await;

    let cases = [
        (auth("orders", Some(2)), Refusal::BadKey),
        (auth("orders", None), Refusal::Plaintext),
        (auth("billing", Some(1)), Refusal::WrongCluster),
    ];
    for (i, (theirs, reason)) in cases.into_iter().enumerate() {
        let outsider = client(theirs);
        let answer = outsider.call(node.addr, "echo", b"let me in", CALL).await;
        // The client learns only that it was refused: the server closed.
        assert_eq!(
            answer,
            Err(CallError::Refused(Refusal::Closed)),
            "{reason:?}"
        );
        support::eventually(WAIT, "the refusal to be counted", || {
            (node.server.stats().refused(reason) == 1).then_some(())
        })
        .await;
        let stats = node.server.stats();
        assert_eq!(stats.refused_total(), i as u64 + 1);
        assert_eq!((stats.established, stats.requests), (0, 0));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler never ran");

    // The cluster's own members still get in.
    let member = client(ours);
    assert_eq!(
        member.call(node.addr, "echo", b"hi", CALL).await,
        Ok(b"hi".to_vec())
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_plaintext_and_silence_get_nothing_but_a_closed_socket() {
    let ours = auth("orders", Some(1));
    let config = ServerConfig {
        handshake_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let calls = Arc::new(AtomicU64::new(0));
    let node = serve_with(ours, echo(calls.clone()), config).await;

    let send = |bytes: Vec<u8>| async move {
        let mut stream = TcpStream::connect(node.addr).await.expect("connect");
        stream.write_all(&bytes).await.expect("write");
        read_until_closed(&mut stream).await
    };
    let with_magic = |rest: &[u8]| [&RPC_STREAM_MAGIC[..], rest].concat();

    // Garbage after our preamble, and a length far beyond the handshake's.
    assert_eq!(send(with_magic(b"\x00\x00\x00\x05hello")).await, b"");
    assert_eq!(send(with_magic(&[0xff; 8])).await, b"");
    support::eventually(WAIT, "2 malformed", || {
        (node.server.stats().refused(Refusal::Malformed) == 2).then_some(())
    })
    .await;

    // A well-formed hello in plaintext, to a node that requires a key.
    let mut plain = Handshake::client(&auth("orders", None), [5; 32]);
    let hello = plain.poll_transmit().expect("a hello");
    assert_eq!(send(with_magic(&hello)).await, b"");
    support::eventually(WAIT, "1 plaintext", || {
        (node.server.stats().refused(Refusal::Plaintext) == 1).then_some(())
    })
    .await;

    // Our preamble, then nothing: closed at the handshake deadline.
    assert_eq!(send(with_magic(b"")).await, b"");
    support::eventually(WAIT, "1 timeout", || {
        (node.server.stats().refused(Refusal::Timeout) == 1).then_some(())
    })
    .await;

    // Not our protocol at all: the demultiplexer closes it.
    assert_eq!(
        send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await,
        b""
    );
    support::eventually(WAIT, "the demux to refuse", || {
        (node.demux.stats().refused == 1).then_some(())
    })
    .await;

    let stats = node.server.stats();
    assert_eq!((stats.established, stats.requests), (0, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// Forwards one connection to `target`, recording what the client sent.
async fn recording_proxy(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let record = recorded.clone();
    tokio::spawn(async move {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let Ok(server) = TcpStream::connect(target).await else {
            return;
        };
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = server.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
        let mut buf = [0u8; 4096];
        loop {
            let n = from_client.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            // Recorded before it is forwarded: once the answer is back,
            // the request is in the recording.
            record.lock().expect("lock").extend_from_slice(&buf[..n]);
            if to_server.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    (addr, recorded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recorded_connection_played_back_is_refused() {
    let a = auth("orders", Some(1));
    let calls = Arc::new(AtomicU64::new(0));
    let node = serve(a.clone(), echo(calls.clone())).await;
    let (proxy, recorded) = recording_proxy(node.addr).await;
    let client = client(a);
    assert_eq!(
        client.call(proxy, "echo", b"transfer", CALL).await,
        Ok(b"transfer".to_vec())
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let recording = recorded.lock().expect("lock").clone();
    let mut replay = TcpStream::connect(node.addr).await.expect("connect");
    replay.write_all(&recording).await.expect("write");
    let received = read_until_closed(&mut replay).await;
    // At most the server's hello (it cannot tell a replayed hello from a
    // fresh one); never an answer.
    assert!(
        received.len() <= 4 + MAX_HANDSHAKE_FRAME,
        "{} bytes back",
        received.len()
    );
    support::eventually(WAIT, "the replay to be refused", || {
        (node.server.stats().refused(Refusal::Replay) == 1).then_some(())
    })
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the replayed request did not run"
    );
    assert_eq!(node.server.stats().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deadline_holds_against_a_handler_that_never_answers() {
    struct Dropped(Arc<AtomicU64>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let a = auth("orders", Some(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    let never = handler_fn(move |_, _, _| {
        let guard = Dropped(counter.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok(Vec::new())
        }
    });
    let router = Router::new()
        .route("never", never)
        .route("echo", echo(Arc::default()));
    let node = serve(a.clone(), router).await;
    let client = client(a);

    let deadline = Duration::from_millis(300);
    let started = Instant::now();
    let answer = support::within(
        WAIT,
        "the call to give up",
        client.call(node.addr, "never", b"", deadline),
    )
    .await;
    assert_eq!(answer, Err(CallError::Timeout(deadline)));
    assert!(
        started.elapsed() >= deadline,
        "it waited the whole deadline"
    );
    // The server dropped the handler at the caller's deadline.
    support::eventually(WAIT, "the handler to be dropped", || {
        (dropped.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // The next call is answered (on this connection or a new one).
    assert_eq!(
        client.call(node.addr, "echo", b"next", CALL).await,
        Ok(b"next".to_vec())
    );

    // A peer that accepts and never speaks: the deadline covers the
    // handshake too.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let answer = support::within(
        WAIT,
        "the call to give up",
        client.call(silent.local_addr().expect("bound"), "echo", b"", deadline),
    )
    .await;
    assert_eq!(answer, Err(CallError::Timeout(deadline)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_reconnects_after_the_server_restarts() {
    let a = auth("orders", Some(1));
    let node = serve(a.clone(), echo(Arc::default())).await;
    let addr = node.addr;
    let client = client(a.clone());
    assert_eq!(
        client.call(addr, "echo", b"1", CALL).await,
        Ok(b"1".to_vec())
    );
    assert!(client.is_connected(addr));

    node.demux.stop().await;
    support::eventually(WAIT, "the client to see the connection close", || {
        (!client.is_connected(addr)).then_some(())
    })
    .await;
    match client.call(addr, "echo", b"2", CALL).await {
        Err(CallError::Unreachable(_)) => {}
        other => panic!("expected unreachable while the server is down, got {other:?}"),
    }

    let listener = TcpListener::bind(addr)
        .await
        .expect("bind the same port again");
    let node = serve_on(listener, a, echo(Arc::default()), ServerConfig::default()).await;
    assert_eq!(
        client.call(addr, "echo", b"3", CALL).await,
        Ok(b"3".to_vec())
    );
    assert_eq!(node.server.stats().connections, 1);
    assert_eq!(client.connections_opened(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fan_out_to_200_nodes_keeps_to_its_bound_and_reports_every_peer() {
    const NODES: u64 = 200;
    const BOUND: usize = 32;
    let a = auth("orders", Some(1));
    let gate = Gate::new(BOUND as u64, NODES);
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(serve(a.clone(), gate.handler()).await);
    }
    // Two peers that are down: they fail alone.
    let mut peers: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    for at in [0, 100] {
        let gone = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        peers.insert(at, gone.local_addr().expect("bound"));
    }
    let servers: Vec<Arc<RpcServer>> = nodes.iter().map(|n| n.server.clone()).collect();
    let arrived = move || servers.iter().map(|s| s.stats().connections).sum();
    assert!(gate.arrived.set(Box::new(arrived)).is_ok());
    let client = client(a);
    let results = support::within(
        WAIT,
        "the fan-out",
        client.fan_out(peers.clone(), "prepare", b"topology", CALL, BOUND),
    )
    .await;
    assert_eq!(results.len(), peers.len());
    for (i, ((peer, result), expected)) in results.iter().zip(&peers).enumerate() {
        assert_eq!(peer, expected, "results in input order");
        match i {
            0 | 100 => assert!(
                matches!(result, Err(CallError::Unreachable(_))),
                "{peer}: {result:?}"
            ),
            _ => assert_eq!(result.as_deref(), Ok(&b"topology"[..]), "{peer}"),
        }
    }
    assert_eq!(
        gate.peak(),
        BOUND as u64,
        "at most {BOUND} in flight, and that many"
    );
    for node in &nodes {
        assert_eq!(node.server.stats().requests, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plaintext_cluster_still_checks_its_name() {
    let open = auth("lab", None);
    let node = serve(open.clone(), echo(Arc::default())).await;
    assert_eq!(
        client(open).call(node.addr, "echo", b"hi", CALL).await,
        Ok(b"hi".to_vec())
    );
    let other = client(auth("other-lab", None));
    assert_eq!(
        other.call(node.addr, "echo", b"hi", CALL).await,
        Err(CallError::Refused(Refusal::Closed))
    );
    support::eventually(WAIT, "the refusal", || {
        (node.server.stats().refused(Refusal::WrongCluster) == 1).then_some(())
    })
    .await;
}

struct Quiet;

impl Observer for Quiet {
    fn on_events(&mut self, _swim: &Swim, _events: &[MemberEvent]) {}
}

/// A SWIM node and an rpc server on one port, behind the demultiplexer.
struct GossipNode {
    id: NodeId,
    addr: SocketAddr,
    handle: driver::Handle,
    demux: Demux,
}

async fn gossip_node(n: u128, security: &PacketSecurity) -> GossipNode {
    // One port number for UDP and TCP, as the agent binds it.
    let (udp, listener) = support::within(WAIT, "a port free for UDP and TCP", async {
        loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
            let addr = udp.local_addr().expect("bound");
            if let Ok(tcp) = TcpListener::bind(addr).await {
                return (udp, tcp);
            }
        }
    })
    .await;
    let addr = listener.local_addr().expect("bound");
    let id = NodeId(Uuid::from_u128(n));
    let local = LocalNode {
        id,
        generation: 1,
        addr,
    };
    let config = SwimConfig {
        cluster: "orders".into(),
        protocol_period: Duration::from_millis(200),
        ack_timeout: Duration::from_millis(100),
        ..SwimConfig::default()
    };
    let swim = Swim::new(
        std::time::Instant::now(),
        local,
        config,
        security.clone(),
        rand_seed(n),
    )
    .expect("swim config");
    let (streams_tx, streams) = mpsc::channel(64);
    let handle = driver::spawn_with_streams(swim, udp, streams, Quiet);
    let auth = ClusterAuth {
        cluster: "orders".into(),
        security: security.clone(),
    };
    let server = RpcServer::new(auth, echo(Arc::default()), ServerConfig::default());
    let routes = Routes {
        gossip: Some(streams_tx),
        rpc: Some(server),
    };
    let demux = Demux::spawn(listener, routes, DemuxConfig::default());
    GossipNode {
        id,
        addr,
        handle,
        demux,
    }
}

fn rand_seed(n: u128) -> u64 {
    0x5eed_0000 + n as u64
}

async fn sees_alive(node: &GossipNode, other: NodeId) -> bool {
    node.handle
        .inspect(move |swim| swim.member(other).map(|m| m.status) == Some(MemberStatus::Alive))
        .await
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gossip_streams_reach_the_membership_driver_through_the_demultiplexer() {
    let security = PacketSecurity::Encrypted(Keyring::new(&[[9; 32]]).expect("a key"));
    let a = gossip_node(1, &security).await;
    let b = gossip_node(2, &security).await;
    // Joining is a full-state exchange over TCP: it must cross the demux.
    b.handle.join(a.addr).await;
    support::within(WAIT, "each node to see the other alive", async {
        while !(sees_alive(&a, b.id).await && sees_alive(&b, a.id).await) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    support::eventually(WAIT, "the join's stream to pass the demux", || {
        (a.demux.stats().gossip_streams >= 1).then_some(())
    })
    .await;
    let streams = a.handle.inspect(|swim| swim.stats().streams_received).await;
    assert!(streams.unwrap_or(0) >= 1, "the driver got the stream");

    // The same port answers rpc.
    let client = client(ClusterAuth {
        cluster: "orders".into(),
        security,
    });
    assert_eq!(
        client.call(a.addr, "echo", b"hi", CALL).await,
        Ok(b"hi".to_vec())
    );
    assert_eq!(a.demux.stats().rpc_connections, 1);
}
