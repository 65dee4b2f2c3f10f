//! A minimal HTTP/1.1 client for the agent's local API, with a deadline on
//! every call and errors that tell the operator what to do.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::ApiError;
use crate::config::HumanDuration;

/// How long a call may take unless it says otherwise.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// The content type of a topology sent as text.
pub const YAML: &str = "application/yaml";

/// Why a call failed, for callers that react to the kind of failure (the
/// other failures are plain `anyhow` errors: no agent, broken connection,
/// an answer this cohort does not understand).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The agent answered with an error.
    #[error("{} ({})", error.message, error.code)]
    Api { status: StatusCode, error: ApiError },
    /// No complete answer within the call's deadline.
    #[error("the agent API at {api} did not answer within {}", HumanDuration(*deadline))]
    Deadline { api: SocketAddr, deadline: Duration },
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
    api: SocketAddr,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(api: SocketAddr) -> anyhow::Result<Client> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Client { api, runtime })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self
            .request(hyper::Method::GET, path, None, DEADLINE, &[])?
            .body)
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
        let api = self.api;
        let (status, bytes) = self.runtime.block_on(async {
            let work = async {
                let response = send(api, method.clone(), path, body).await?;
                let status = response.status();
                let bytes = response
                    .into_body()
                    .collect()
                    .await
                    .with_context(|| format!("reading the answer of {api} failed"))?
                    .to_bytes();
                Ok::<_, anyhow::Error>((status, bytes))
            };
            tokio::time::timeout(deadline, work)
                .await
                .map_err(|_| CallError::Deadline { api, deadline })?
        })?;
        if !status.is_success() && !typed.contains(&status) {
            return Err(failure(api, &method, path, status, &bytes));
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
        let api = self.api;
        self.runtime.block_on(async {
            let response =
                tokio::time::timeout(DEADLINE, send(api, hyper::Method::GET, path, None))
                    .await
                    .map_err(|_| CallError::Deadline {
                        api,
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
                return Err(failure(api, &hyper::Method::GET, path, status, &bytes));
            }
            let mut body = response.into_body();
            let mut pending = String::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.with_context(|| format!("the event stream from {api} broke"))?;
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
}

/// The error for an answer that is not a success: the agent's `ApiError`
/// when it sent one, else the bare status.
fn failure(
    api: SocketAddr,
    method: &hyper::Method,
    path: &str,
    status: StatusCode,
    body: &[u8],
) -> anyhow::Error {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(error) => CallError::Api { status, error }.into(),
        Err(_) => anyhow!("{method} {path} on {api}: HTTP {status}"),
    }
}

async fn send(
    api: SocketAddr,
    method: hyper::Method,
    path: &str,
    body: Option<Body>,
) -> anyhow::Result<hyper::Response<Incoming>> {
    let stream = tokio::net::TcpStream::connect(api).await.map_err(|e| {
        anyhow!(
            "cannot reach the agent API at {api}: {} (is the agent running? use --api to reach another node)",
            e.kind().to_string().replace('_', " ")
        )
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {api} failed"))?;
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method.clone())
        .uri(path)
        .header(hyper::header::HOST, api.to_string());
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
        .with_context(|| format!("{method} {path} on {api} failed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// A one-shot HTTP server: answers the first request with `status` and
    /// `body` (after `delay`), and hands back the request it got.
    fn serve_once(
        status: &'static str,
        body: &'static str,
        delay: Duration,
    ) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
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
        });
        (addr, server)
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
        let reply: Reply<crate::api::ApplyResult> = Client::new(addr)
            .unwrap()
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
    }

    #[test]
    fn a_typed_error_status_is_decoded_as_the_body() {
        let (addr, server) = serve_once(
            "409 Conflict",
            r#"{"outcome":"aborted","reasons":[{"node":"n2","reason":"no"}],"message":"m"}"#,
            Duration::ZERO,
        );
        let reply: Reply<crate::api::ApplyResult> = Client::new(addr)
            .unwrap()
            .put_text(APPLY, "x", DEADLINE, &TYPED)
            .unwrap();
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
        let e = Client::new(addr)
            .unwrap()
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
        let e = Client::new(addr)
            .unwrap()
            .get::<serde_json::Value>("/v1/topology")
            .unwrap_err();
        assert_eq!(e.to_string(), "an apply is in progress (busy)");
        server.join().unwrap();
    }

    #[test]
    fn a_call_gives_up_at_its_own_deadline() {
        let (addr, server) = serve_once("200 OK", "{}", Duration::from_millis(1500));
        let started = std::time::Instant::now();
        let e = Client::new(addr)
            .unwrap()
            .put_text::<serde_json::Value>(APPLY, "x", Duration::from_millis(300), &TYPED)
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1), "{e:#}");
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
}
