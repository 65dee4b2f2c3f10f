//! A minimal HTTP/1.1 client for the agent's local API, with a deadline on
//! every call and errors that tell the operator what to do.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::api::ApiError;

const DEADLINE: Duration = Duration::from_secs(5);

/// `GET path` on the agent at `api`; the body of a 2xx answer.
pub fn get(api: SocketAddr, path: &str) -> anyhow::Result<Bytes> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        tokio::time::timeout(DEADLINE, get_async(api, path))
            .await
            .map_err(|_| {
                anyhow!(
                    "the agent API at {api} did not answer within {}s",
                    DEADLINE.as_secs()
                )
            })?
    })
}

async fn get_async(api: SocketAddr, path: &str) -> anyhow::Result<Bytes> {
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
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, api.to_string())
        .body(Empty::<Bytes>::new())
        .context("cannot build the request")?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("GET {path} on {api} failed"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer of {api} failed"))?
        .to_bytes();
    if !status.is_success() {
        match serde_json::from_slice::<ApiError>(&body) {
            Ok(e) => bail!("{} ({})", e.message, e.code),
            Err(_) => bail!("GET {path} on {api}: HTTP {status}"),
        }
    }
    Ok(body)
}
