//! 2PC messages over the rpc layer: one method, [`METHOD`], whose body is
//! a postcard [`Envelope`] (the rpc peer address is an ephemeral port, so
//! the sender names itself). The answer is empty: replies travel as
//! messages of their own, like every other 2PC message.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::rpc::{HandlerFuture, RpcError, RpcHandler};
use crate::twophase::{Committed, Message, NodeId};

use super::driver::Input;

/// The rpc method that carries 2PC messages.
pub const METHOD: &str = "twophase";

/// The rpc method that answers the node's committed version (postcard
/// `Committed`, text included): how a node that missed applies catches up.
pub const COMMITTED_METHOD: &str = "twophase.committed";

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
        method: &'a str,
        body: Vec<u8>,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let unavailable = || RpcError::new(UNAVAILABLE, "the apply driver is not running");
            if method == COMMITTED_METHOD {
                let (reply, answer) = tokio::sync::oneshot::channel();
                self.inbox
                    .send(Input::Committed { reply })
                    .await
                    .map_err(|_| unavailable())?;
                let committed: Committed = answer.await.map_err(|_| unavailable())?;
                return postcard::to_allocvec(&committed)
                    .map_err(|e| RpcError::internal(format!("cannot encode: {e}")));
            }
            let envelope: Envelope = postcard::from_bytes(&body)
                .map_err(|e| RpcError::bad_request(format!("not a 2PC message: {e}")))?;
            self.inbox
                .send(Input::Message(envelope))
                .await
                .map_err(|_| unavailable())?;
            Ok(Vec::new())
        })
    }
}
