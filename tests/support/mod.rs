//! Shared by the integration tests: the real `cohort` binary, free loopback
//! ports, child processes that are killed if a test fails, and waiting for
//! a condition with a deadline (never a bare sleep to synchronise).
#![allow(dead_code)]

pub mod agents;
pub mod netns;
pub mod openapi;
pub mod seeds;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Fails the test unless it runs as root; `why` says what it needs root
/// for.
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{why}: run it as root (CI does), with util-linux installed"
    );
}

/// The cohort binary; as a CLI it sends the tests' API token
/// (`COHORT_TOKEN_FILE`), which a harness agent takes (`api.token_file`).
pub fn cohort() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cohort"));
    command.env("COHORT_TOKEN_FILE", token_file());
    command
}

/// The API token of the tests' agents: `http` and `http_with_body` send it.
pub const TOKEN: &str = "cohort-tests-api-token-6d1f0c2b";

/// A file holding `TOKEN`, for node configs (`api.token_file`) and the CLI.
/// Written once per test process, atomically: test binaries running at the
/// same time write the same bytes.
pub fn token_file() -> &'static Path {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join("api.token");
        let temp = dir.join(format!("api.token.{}", std::process::id()));
        std::fs::write(&temp, format!("{TOKEN}\n")).expect("write the test token");
        // As an operator keeps it: the agent warns of a file others may read.
        std::fs::set_permissions(&temp, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("make the test token private");
        std::fs::rename(&temp, &path).expect("install the test token");
        path
    })
}

/// True when both TCP and UDP can bind `port` on 127.0.0.1 now.
fn port_is_free(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
}

/// `count` consecutive ports free on 127.0.0.1 for TCP and UDP, never
/// handed out twice in one test process (tests run in parallel threads).
pub fn free_ports(count: u16) -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let base = 20_000 + (rand_u16() % 30_000);
        let range = base..base + count;
        if range.clone().all(|p| !given.contains(&p)) && range.clone().all(port_is_free) {
            given.extend(range);
            return base;
        }
    }
    panic!("no {count} consecutive free ports on 127.0.0.1");
}

pub fn free_port() -> u16 {
    free_ports(1)
}

fn rand_u16() -> u16 {
    // Distinct per call and per process without a RNG crate in tests.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() as u16
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `check` until it yields a value or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_until_or(timeout, check)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// `wait_until` for async tests: polls without blocking the runtime.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `work`, failing after `timeout`.
pub async fn within<T>(
    timeout: Duration,
    what: &str,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Like `wait_until`, but None at the deadline instead of a panic, so the
/// caller can say what it saw last.
pub fn wait_until_or<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A child process that is SIGKILLed and reaped if the test ends early.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(command: &mut Command) -> Proc {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .expect("start the cohort binary");
        Proc { child }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        signal_pid(self.pid(), signal);
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_until(timeout, "the process to exit", || {
            self.child.try_wait().expect("try_wait")
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `signal` to `pid`, which the test started (directly or through
/// `cohort dev`) and knows to be alive.
pub fn signal_pid(pid: i32, signal: i32) {
    assert!(try_signal_pid(pid, signal), "kill({pid}, {signal}) failed");
}

/// Like `signal_pid`, for clean-up paths that must not panic.
pub fn try_signal_pid(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc_kill(pid, signal) == 0 }
}

pub const SIGKILL: i32 = 9;
pub const SIGHUP: i32 = 1;
pub const SIGTERM: i32 = 15;

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// True while a process with this pid exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
    }
}

/// A plain HTTP/1.0 request on loopback with the tests' API token: the
/// status code and the body, or None when nothing answers.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    exchange(
        addr,
        &format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{}Content-Length: 0\r\n\r\n",
            bearer()
        ),
        Duration::from_secs(5),
    )
}

/// The `Authorization` header line of `TOKEN`.
pub fn bearer() -> String {
    format!("Authorization: Bearer {TOKEN}\r\n")
}

/// A GET on loopback; the body of a 200, else None.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    match http(addr, "GET", path)? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// Each replica set's master and fencing generation in a `GET
/// /v1/leaders` answer.
pub fn masters_of(
    leaders: &serde_json::Value,
) -> Option<std::collections::BTreeMap<String, (String, u64)>> {
    Some(
        leaders["masters"]
            .as_object()?
            .iter()
            .map(|(set, m)| {
                (
                    set.clone(),
                    (
                        m["node"].as_str().unwrap_or("").to_string(),
                        m["generation"].as_u64().unwrap_or(0),
                    ),
                )
            })
            .collect(),
    )
}

/// The node's status as JSON from its API, once it answers.
pub fn status(api: SocketAddr) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(api, "/v1/status")?).ok()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// An HTTP/1.0 request with `body` and the tests' API token on loopback,
/// waiting up to `timeout` for the answer: the status code and the body,
/// or None when nothing answers (or the connection breaks).
pub fn http_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    exchange(
        addr,
        &format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            bearer(),
            body.len()
        ),
        timeout,
    )
}

/// Sends `request` to `addr` and reads the answer until the server closes
/// the connection, waiting up to `timeout` for it: the status code and
/// the body.
pub fn exchange(addr: SocketAddr, request: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// An HTTP/1.0 request with `body` (JSON when it looks like it) and no
/// token on an agent's unix socket: the status code and the body, or None
/// when nothing answers.
pub fn unix_http(socket: &Path, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n{body}",
        if body.starts_with('{') {
            "application/json"
        } else {
            "text/plain"
        },
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// A free port below the kernel's ephemeral range, so that no outgoing
/// connection can take it between now and the bind of a process that a
/// test starts (or restarts) later.
pub fn free_port_not_ephemeral() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    for _ in 0..1000 {
        let port = free_port();
        if port < low {
            return port;
        }
    }
    panic!("no free port below the ephemeral range ({low})");
}

/// An HTTP answer with its headers, for checks of what the API sends.
pub struct Reply {
    pub status: u16,
    /// Names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `method path` (HTTP/1.0) on loopback with `headers` (`Name: value`),
/// `body`, and the tests' API token when `authorized`, waiting up to
/// `timeout`: the whole answer, or None when nothing answers.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
    authorized: bool,
    timeout: Duration,
) -> Option<Reply> {
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if authorized {
        head.push_str(&bearer());
    }
    for header in headers {
        head.push_str(&format!("{header}\r\n"));
    }
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(stream, "{head}Content-Length: {}\r\n\r\n{body}", body.len()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}
