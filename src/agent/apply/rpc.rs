//! 2PC messages over the rpc layer: one method, [`METHOD`], whose body is
//! a postcard [`Envelope`] (the rpc peer address is an ephemeral port, so
//! the sender names itself). The answer is empty: replies travel as
//! messages of their own, like every other 2PC message.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::rpc::{HandlerFuture, RpcError, RpcHandler};
use crate::twophase::{Message, NodeId};

use super::driver::Input;

/// The rpc method that carries 2PC messages.
pub const METHOD: &str = "twophase";

/// Error code when the node's apply driver is not running.
pub const UNAVAILABLE: &str = "unavailable";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: NodeId,
    /// The node meant; another node now on that address drops it.
    pub to: NodeId,
    pub message: Message,
}

/// The rpc side of a driver: hands each message to it. Made before the rpc
/// server (see `channel`), so the router can be built first.
#[derive(Clone)]
pub struct ApplyEndpoint {
    pub(super) inbox: mpsc::Sender<Input>,
}

impl RpcHandler for ApplyEndpoint {
    fn handle<'a>(
        &'a self,
        _from: SocketAddr,
        _method: &'a str,
        body: Vec<u8>,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let envelope: Envelope = postcard::from_bytes(&body)
                .map_err(|e| RpcError::bad_request(format!("not a 2PC message: {e}")))?;
            self.inbox
                .send(Input::Message(envelope))
                .await
                .map_err(|_| RpcError::new(UNAVAILABLE, "the apply driver is not running"))?;
            Ok(Vec::new())
        })
    }
}
