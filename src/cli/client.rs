//! A minimal HTTP/1.1 client for the agent's local API, with a deadline on
//! every call and errors that tell the operator what to do.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::ApiError;

const DEADLINE: Duration = Duration::from_secs(15);

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
        self.call(hyper::Method::GET, path, None)
    }

    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_vec(body).context("cannot encode the request")?;
        self.call(hyper::Method::POST, path, Some(body))
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<T> {
        let api = self.api;
        let bytes = self.runtime.block_on(async {
            let work = async {
                let response = send(api, method, path, body).await?;
                let bytes = response
                    .into_body()
                    .collect()
                    .await
                    .with_context(|| format!("reading the answer of {api} failed"))?
                    .to_bytes();
                Ok::<_, anyhow::Error>(bytes)
            };
            tokio::time::timeout(DEADLINE, work).await.map_err(|_| {
                anyhow!(
                    "the agent API at {api} did not answer within {}s",
                    DEADLINE.as_secs()
                )
            })?
        })?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("the answer to {path} is not what this cohort expects"))
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
                    .map_err(|_| {
                        anyhow!(
                            "the agent API at {api} did not answer within {}s",
                            DEADLINE.as_secs()
                        )
                    })??;
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

async fn send(
    api: SocketAddr,
    method: hyper::Method,
    path: &str,
    body: Option<Vec<u8>>,
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
    if body.is_some() {
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .context("cannot build the request")?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("{method} {path} on {api} failed"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        match serde_json::from_slice::<ApiError>(&body) {
            Ok(e) => bail!("{} ({})", e.message, e.code),
            Err(_) => bail!("{method} {path} on {api}: HTTP {status}"),
        }
    }
    Ok(response)
}
