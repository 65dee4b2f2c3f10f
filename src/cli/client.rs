//! A minimal HTTP/1.1 client for the agent's local API, over TCP or the
//! agent's unix socket, with the API token when it has one, a deadline on
//! every call and errors that tell the operator what to do.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::ApiError;
use crate::config::{HumanDuration, DEFAULT_API, DEFAULT_API_SOCKET};

/// How long a call may take unless it says otherwise.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// The content type of a topology sent as text.
pub const YAML: &str = "application/yaml";

/// How often a waiting command tries again to reach an agent that is not
/// up yet.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Where an agent's API is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The agent a command talks to, as the command line and the environment
/// name it: `--api` (COHORT_API), `--socket` (COHORT_SOCKET) and
/// `--token-file` (COHORT_TOKEN_FILE). Resolved when a client is made, so
/// commands that need no agent never fail on these.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub api: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

impl Target {
    /// TCP to `addr`, no token.
    #[cfg(test)]
    pub fn tcp(addr: SocketAddr) -> Target {
        Target {
            api: Some(addr),
            ..Target::default()
        }
    }

    /// Which endpoint: a flag wins over the environment; with neither, the
    /// packaged agent's socket when it exists (no token needed there),
    /// else TCP to the default address.
    pub fn endpoint(&self) -> anyhow::Result<Endpoint> {
        choose(
            self.api,
            self.socket.as_deref(),
            env("COHORT_API"),
            env("COHORT_SOCKET"),
            Path::new(DEFAULT_API_SOCKET),
        )
    }
}

fn env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

fn choose(
    api: Option<SocketAddr>,
    socket: Option<&Path>,
    env_api: Option<OsString>,
    env_socket: Option<OsString>,
    default_socket: &Path,
) -> anyhow::Result<Endpoint> {
    // clap refuses both flags at once.
    if let Some(addr) = api {
        return Ok(Endpoint::Tcp(addr));
    }
    if let Some(path) = socket {
        return Ok(Endpoint::Unix(path.to_path_buf()));
    }
    match (env_api, env_socket) {
        (Some(_), Some(_)) => Err(anyhow!(
            "COHORT_API and COHORT_SOCKET are both set: unset one, or pass --api or --socket"
        )),
        (Some(text), None) => {
            let text = text.to_string_lossy();
            text.parse().map(Endpoint::Tcp).map_err(|_| {
                anyhow!("COHORT_API: `{text}` is not an address: write ip:port, like {DEFAULT_API}")
            })
        }
        (None, Some(path)) => Ok(Endpoint::Unix(path.into())),
        (None, None) if default_socket.exists() => Ok(Endpoint::Unix(default_socket.to_path_buf())),
        (None, None) => Ok(Endpoint::Tcp(DEFAULT_API)),
    }
}

/// A token and the file it came from (named in errors; the token never is).
#[derive(Clone)]
struct Credentials {
    token: String,
    file: PathBuf,
}

/// Why a call failed, for callers that react to the kind of failure (the
/// other failures are plain `anyhow` errors: a broken connection, an
/// answer this cohort does not understand).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The agent answered with an error.
    #[error("{} ({})", error.message, error.code)]
    Api { status: StatusCode, error: ApiError },
    /// The agent refused the request for want of the right token.
    #[error("unauthorized by the agent at {endpoint}{}: {message}",
        token_file.as_ref().map_or(String::new(), |f| format!(" (token from {})", f.display())))]
    Unauthorized {
        endpoint: Endpoint,
        token_file: Option<PathBuf>,
        message: String,
    },
    /// Nothing to talk to: no agent there, or not up yet. (`cause`, not
    /// `source`: the line says it already, and `{:#}` would say it again.)
    #[error(
        "cannot reach the agent API at {endpoint}: {}",
        unreachable(endpoint, cause)
    )]
    Unreachable {
        endpoint: Endpoint,
        cause: io::Error,
    },
    /// No complete answer within the call's deadline.
    #[error("the agent API at {api} did not answer within {}", HumanDuration(*deadline))]
    Deadline { api: Endpoint, deadline: Duration },
}

/// The reason and the advice of `CallError::Unreachable`.
fn unreachable(endpoint: &Endpoint, cause: &io::Error) -> String {
    match endpoint {
        Endpoint::Tcp(_) => format!(
            "{} (is the agent running? use --api to reach another node)",
            cause.kind().to_string().replace('_', " ")
        ),
        Endpoint::Unix(_) if cause.kind() == io::ErrorKind::PermissionDenied => format!(
            "{} (the socket is for root and the group cohort; or use --api with --token-file)",
            crate::storage::describe(cause)
        ),
        Endpoint::Unix(_) => format!(
            "{} (is the agent running? use --socket or --api to reach another node)",
            crate::storage::describe(cause)
        ),
    }
}

/// An answer with its HTTP status, for calls whose body is typed for some
/// error statuses too (`PUT /v1/topology` answers 409 and 422 with an
/// `ApplyResult`).
#[derive(Debug)]
pub struct Reply<T> {
    pub status: StatusCode,
    pub body: T,
}

/// A request body and its content type.
pub struct Body {
    bytes: Vec<u8>,
    content_type: &'static str,
}

impl Body {
    pub fn json(value: &impl Serialize) -> anyhow::Result<Body> {
        Ok(Body {
            bytes: serde_json::to_vec(value).context("cannot encode the request")?,
            content_type: "application/json",
        })
    }

    pub fn text(text: &str, content_type: &'static str) -> Body {
        Body {
            bytes: text.as_bytes().to_vec(),
            content_type,
        }
    }
}

/// One agent API, reached from a command.
pub struct Client {
    endpoint: Endpoint,
    credentials: Option<Credentials>,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// A client of the agent `target` names, with its token read.
    pub fn new(target: &Target) -> anyhow::Result<Client> {
        let endpoint = target.endpoint()?;
        let credentials = match &target.token_file {
            Some(file) => Some(Credentials {
                token: crate::api::access::read_token(file)?,
                file: file.clone(),
            }),
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Client {
            endpoint,
            credentials,
            runtime,
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self
            .request(hyper::Method::GET, path, None, DEADLINE, &[])?
            .body)
    }

    /// `get`, trying again while the agent cannot be reached (starting,
    /// restarting) until `deadline`: for commands that wait anyway.
    pub fn get_when_up<T: DeserializeOwned>(
        &self,
        path: &str,
        deadline: Instant,
    ) -> anyhow::Result<T> {
        loop {
            match self.get(path) {
                Err(e)
                    if matches!(
                        e.downcast_ref::<CallError>(),
                        Some(CallError::Unreachable { .. })
                    ) && Instant::now() < deadline =>
                {
                    // Polling: an agent that is not up has nothing to wait on.
                    std::thread::sleep(RETRY_PAUSE);
                }
                result => return result,
            }
        }
    }

    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let body = Body::json(body)?;
        Ok(self
            .request(hyper::Method::POST, path, Some(body), DEADLINE, &[])?
            .body)
    }

    /// PUTs `text` as YAML. The call may take up to `deadline`; answers
    /// with a status in `typed` are decoded as `T` like a success.
    pub fn put_text<T: DeserializeOwned>(
        &self,
        path: &str,
        text: &str,
        deadline: Duration,
        typed: &[StatusCode],
    ) -> anyhow::Result<Reply<T>> {
        self.request(
            hyper::Method::PUT,
            path,
            Some(Body::text(text, YAML)),
            deadline,
            typed,
        )
    }

    /// One call: a success, or a status in `typed`, is decoded as `T`; any
    /// other status becomes a `CallError::Api` when the agent explained it.
    pub fn request<T: DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Body>,
        deadline: Duration,
        typed: &[StatusCode],
    ) -> anyhow::Result<Reply<T>> {
        let (status, bytes) = self.runtime.block_on(async {
            let work = async {
                let response = self.send(method.clone(), path, body).await?;
                let status = response.status();
                let bytes = response
                    .into_body()
                    .collect()
                    .await
                    .with_context(|| format!("reading the answer of {} failed", self.endpoint))?
                    .to_bytes();
                Ok::<_, anyhow::Error>((status, bytes))
            };
            tokio::time::timeout(deadline, work)
                .await
                .map_err(|_| CallError::Deadline {
                    api: self.endpoint.clone(),
                    deadline,
                })?
        })?;
        if !status.is_success() && !typed.contains(&status) {
            return Err(self.failure(&method, path, status, &bytes));
        }
        let body = serde_json::from_slice(&bytes)
            .with_context(|| format!("the answer to {path} is not what this cohort expects"))?;
        Ok(Reply { status, body })
    }

    /// Follows a server-sent-event stream, calling `on_data` with each
    /// event's `data:` text, until the agent closes it.
    pub fn follow(
        &self,
        path: &str,
        mut on_data: impl FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.runtime.block_on(async {
            let response =
                tokio::time::timeout(DEADLINE, self.send(hyper::Method::GET, path, None))
                    .await
                    .map_err(|_| CallError::Deadline {
                        api: self.endpoint.clone(),
                        deadline: DEADLINE,
                    })??;
            let status = response.status();
            if !status.is_success() {
                let bytes = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                return Err(self.failure(&hyper::Method::GET, path, status, &bytes));
            }
            let mut body = response.into_body();
            let mut pending = String::new();
            while let Some(frame) = body.frame().await {
                let frame = frame
                    .with_context(|| format!("the event stream from {} broke", self.endpoint))?;
                let Some(chunk) = frame.data_ref() else {
                    continue;
                };
                pending.push_str(&String::from_utf8_lossy(chunk));
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    if let Some(data) = line.trim_end().strip_prefix("data:") {
                        on_data(data.trim_start())?;
                    }
                }
            }
            Ok(())
        })
    }

    /// The error for an answer that is not a success: the agent's
    /// `ApiError` when it sent one, else the bare status.
    fn failure(
        &self,
        method: &hyper::Method,
        path: &str,
        status: StatusCode,
        body: &[u8],
    ) -> anyhow::Error {
        match serde_json::from_slice::<ApiError>(body) {
            Ok(error) if status == StatusCode::UNAUTHORIZED => CallError::Unauthorized {
                endpoint: self.endpoint.clone(),
                token_file: self.credentials.as_ref().map(|c| c.file.clone()),
                message: error.message,
            }
            .into(),
            Ok(error) => CallError::Api { status, error }.into(),
            Err(_) => anyhow!("{method} {path} on {}: HTTP {status}", self.endpoint),
        }
    }

    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Body>,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        let mut sender = connect(&self.endpoint).await?;
        let host = match &self.endpoint {
            Endpoint::Tcp(addr) => addr.to_string(),
            Endpoint::Unix(_) => "localhost".to_string(),
        };
        let mut request = hyper::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, host);
        if let Some(credentials) = &self.credentials {
            request = request.header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", credentials.token),
            );
        }
        let bytes = match body {
            Some(body) => {
                request = request.header(hyper::header::CONTENT_TYPE, body.content_type);
                body.bytes
            }
            None => Vec::new(),
        };
        let request = request
            .body(Full::new(Bytes::from(bytes)))
            .context("cannot build the request")?;
        sender
            .send_request(request)
            .await
            .with_context(|| format!("{method} {path} on {} failed", self.endpoint))
    }
}

/// An HTTP/1.1 connection to `endpoint`.
async fn connect(endpoint: &Endpoint) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let unreachable = |cause| CallError::Unreachable {
        endpoint: endpoint.clone(),
        cause,
    };
    match endpoint {
        Endpoint::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(unreachable)?;
            handshake(TokioIo::new(stream), endpoint).await
        }
        Endpoint::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(unreachable)?;
            handshake(TokioIo::new(stream), endpoint).await
        }
    }
}

async fn handshake<I>(io: I, endpoint: &Endpoint) -> anyhow::Result<SendRequest<Full<Bytes>>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .with_context(|| format!("HTTP handshake with {endpoint} failed"))?;
    tokio::spawn(connection);
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// Answers the first request on `stream` with `status` and `body`
    /// (after `delay`), and hands back the request it got.
    fn answer<S: Read + Write>(stream: S, status: &str, body: &str, delay: Duration) -> String {
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut request_body = vec![0; length];
        reader.read_exact(&mut request_body).unwrap();
        std::thread::sleep(delay);
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = reader.get_mut().write_all(answer.as_bytes());
        head + &String::from_utf8(request_body).unwrap()
    }

    /// A one-shot HTTP server on loopback TCP.
    fn serve_once(
        status: &'static str,
        body: &'static str,
        delay: Duration,
    ) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            answer(stream, status, body, delay)
        });
        (addr, server)
    }

    fn client(addr: SocketAddr) -> Client {
        Client::new(&Target::tcp(addr)).unwrap()
    }

    const APPLY: &str = "/v1/topology?wait=true&timeout=1s";
    const TYPED: [StatusCode; 2] = [StatusCode::CONFLICT, StatusCode::UNPROCESSABLE_ENTITY];

    #[test]
    fn put_text_sends_the_text_as_yaml() {
        let (addr, server) = serve_once(
            "200 OK",
            r#"{"outcome":"unchanged","version":2,"message":"m"}"#,
            Duration::ZERO,
        );
        let reply: Reply<crate::api::ApplyResult> = client(addr)
            .put_text(APPLY, "cluster: c\n", DEADLINE, &TYPED)
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.version, Some(2));
        let request = server.join().unwrap();
        assert!(
            request.starts_with(&format!("PUT {APPLY} HTTP/1.1\r\n")),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("content-type: application/yaml\r\n"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\ncluster: c\n"), "{request}");
        assert!(
            !request.to_ascii_lowercase().contains("authorization"),
            "no token, no header: {request}"
        );
    }

    #[test]
    fn a_typed_error_status_is_decoded_as_the_body() {
        let (addr, server) = serve_once(
            "409 Conflict",
            r#"{"outcome":"aborted","reasons":[{"node":"n2","reason":"no"}],"message":"m"}"#,
            Duration::ZERO,
        );
        let reply: Reply<crate::api::ApplyResult> =
            client(addr).put_text(APPLY, "x", DEADLINE, &TYPED).unwrap();
        assert_eq!(reply.status, StatusCode::CONFLICT);
        assert_eq!(reply.body.outcome, crate::api::ApplyOutcome::Aborted);
        server.join().unwrap();
    }

    #[test]
    fn an_untyped_error_status_is_the_agents_api_error() {
        let (addr, server) = serve_once(
            "504 Gateway Timeout",
            r#"{"code":"timeout","message":"no decision within 1s"}"#,
            Duration::ZERO,
        );
        let e = client(addr)
            .put_text::<crate::api::ApplyResult>(APPLY, "x", DEADLINE, &TYPED)
            .unwrap_err();
        assert_eq!(e.to_string(), "no decision within 1s (timeout)");
        match e.downcast_ref::<CallError>() {
            Some(CallError::Api { status, error }) => {
                assert_eq!(*status, StatusCode::GATEWAY_TIMEOUT);
                assert_eq!(error.code, "timeout");
            }
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn a_typed_status_is_only_typed_for_the_call_that_says_so() {
        let (addr, server) = serve_once(
            "409 Conflict",
            r#"{"code":"busy","message":"an apply is in progress"}"#,
            Duration::ZERO,
        );
        let e = client(addr)
            .get::<serde_json::Value>("/v1/topology")
            .unwrap_err();
        assert_eq!(e.to_string(), "an apply is in progress (busy)");
        server.join().unwrap();
    }

    #[test]
    fn a_call_gives_up_at_its_own_deadline() {
        let (addr, server) = serve_once("200 OK", "{}", Duration::from_millis(1500));
        let e = client(addr)
            .put_text::<serde_json::Value>(APPLY, "x", Duration::from_millis(300), &TYPED)
            .unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<CallError>(),
                Some(CallError::Deadline { .. })
            ),
            "{e:#}"
        );
        assert_eq!(
            e.to_string(),
            format!("the agent API at {addr} did not answer within 300ms")
        );
        server.join().unwrap();
    }

    const UNAUTHORIZED: &str =
        r#"{"code":"unauthorized","message":"give cohort --token-file FILE"}"#;

    #[test]
    fn the_token_is_sent_as_a_bearer_and_a_401_is_one_line_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api.token");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let (addr, server) = serve_once("401 Unauthorized", UNAUTHORIZED, Duration::ZERO);
        let target = Target {
            token_file: Some(file.clone()),
            ..Target::tcp(addr)
        };
        let e = Client::new(&target)
            .unwrap()
            .post::<serde_json::Value>("/v1/leave", &serde_json::json!({}))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "unauthorized by the agent at {addr} (token from {}): give cohort --token-file FILE",
                file.display()
            )
        );
        let request = server.join().unwrap();
        assert!(
            request.contains("authorization: Bearer 0123456789abcdef0123\r\n"),
            "{request}"
        );

        let (addr, server) = serve_once("401 Unauthorized", UNAUTHORIZED, Duration::ZERO);
        let e = client(addr)
            .get::<serde_json::Value>("/v1/members")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("unauthorized by the agent at {addr}: give cohort --token-file FILE")
        );
        server.join().unwrap();
    }

    #[test]
    fn a_bad_token_file_fails_before_any_call() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api.token");
        std::fs::write(&file, "short\n").unwrap();
        let target = Target {
            token_file: Some(file),
            ..Target::tcp(DEFAULT_API)
        };
        let e = Client::new(&target).err().expect("refused").to_string();
        assert!(e.contains("holds a token of 5 characters"), "{e}");
    }

    #[test]
    fn the_unix_socket_is_spoken_to_like_tcp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            answer(stream, "200 OK", r#"{"status":"ok"}"#, Duration::ZERO)
        });
        let target = Target {
            socket: Some(path.clone()),
            ..Target::default()
        };
        let health: serde_json::Value = Client::new(&target).unwrap().get("/v1/health").unwrap();
        assert_eq!(health["status"], "ok");
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /v1/health HTTP/1.1\r\n"),
            "{request}"
        );

        let gone = dir.path().join("gone.sock");
        let target = Target {
            socket: Some(gone.clone()),
            ..Target::default()
        };
        let e = Client::new(&target)
            .unwrap()
            .get::<serde_json::Value>("/v1/health")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot reach the agent API at {}: No such file or directory (is the agent running? use --socket or --api to reach another node)", gone.display())
        );
    }

    #[test]
    fn a_waiting_call_tries_again_until_the_agent_is_up_or_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let target = Target {
            socket: Some(path.clone()),
            ..Target::default()
        };
        let client = Client::new(&target).unwrap();
        // Not up, and the deadline passed: the reason, at once.
        let e = client
            .get_when_up::<serde_json::Value>("/v1/members", Instant::now())
            .unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<CallError>(),
                Some(CallError::Unreachable { .. })
            ),
            "{e:#}"
        );
        // The agent comes up while the command waits.
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
            let (stream, _) = listener.accept().unwrap();
            answer(stream, "200 OK", r#"{"members":[]}"#, Duration::ZERO)
        });
        let members: serde_json::Value = client
            .get_when_up("/v1/members", Instant::now() + Duration::from_secs(30))
            .unwrap();
        assert_eq!(members["members"], serde_json::json!([]));
        server.join().unwrap();
    }

    #[test]
    fn flags_beat_the_environment_and_the_socket_is_the_default_when_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("api.sock");
        std::fs::write(&present, "").unwrap();
        let absent = dir.path().join("absent.sock");
        let addr: SocketAddr = "10.0.0.1:8300".parse().unwrap();
        let sock = PathBuf::from("/run/cohort/a/api.sock");
        let os = |s: &str| Some(OsString::from(s));
        let pick = |api, socket: Option<&Path>, e_api, e_socket, default: &Path| {
            choose(api, socket, e_api, e_socket, default).map_err(|e| e.to_string())
        };
        assert_eq!(
            pick(Some(addr), None, None, os("/x.sock"), &present),
            Ok(Endpoint::Tcp(addr))
        );
        assert_eq!(
            pick(None, Some(&sock), os("10.0.0.2:1"), None, &present),
            Ok(Endpoint::Unix(sock.clone()))
        );
        assert_eq!(
            pick(None, None, os("10.0.0.1:8300"), None, &present),
            Ok(Endpoint::Tcp(addr))
        );
        assert_eq!(
            pick(None, None, None, os("/run/cohort/a/api.sock"), &absent),
            Ok(Endpoint::Unix(sock))
        );
        assert_eq!(
            pick(None, None, None, None, &present),
            Ok(Endpoint::Unix(present.clone()))
        );
        assert_eq!(
            pick(None, None, None, None, &absent),
            Ok(Endpoint::Tcp(DEFAULT_API))
        );
        assert!(pick(None, None, os("a"), os("/b"), &absent)
            .unwrap_err()
            .contains("COHORT_API and COHORT_SOCKET are both set"));
        assert_eq!(
            pick(None, None, os("nowhere"), None, &absent),
            Err(
                "COHORT_API: `nowhere` is not an address: write ip:port, like 127.0.0.1:8300"
                    .into()
            )
        );
    }
}
