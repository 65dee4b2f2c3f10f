//! 2PC messages over the rpc layer. A call's body is a postcard
//! [`Envelope`] (the rpc peer address is an ephemeral port, so the sender
//! names itself). [`EXCHANGE_METHOD`] answers with the receiver's next
//! message to the caller about the same txn when it comes within
//! [`REPLY_WAIT`] (a PREPARE's vote, a decision's ack, a query's answer),
//! and empty otherwise: then that message travels as a call of its own,
//! like every other. [`METHOD`] always answers empty; agents before the
//! exchange only know it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::rpc::{HandlerFuture, RpcError, RpcHandler};
use crate::twophase::{Committed, Message, NodeId};

use super::driver::Input;

/// The rpc method that carries a 2PC message and answers nothing.
pub const METHOD: &str = "twophase";

/// The rpc method that carries a 2PC message and may answer with the
/// reply (an `Envelope`; empty when none came within [`REPLY_WAIT`]).
pub const EXCHANGE_METHOD: &str = "twophase.exchange";

/// How long an exchange waits for the reply before answering empty. A
/// vote takes a validation (parse and roles' checks) and an fsync; an ack,
/// an fsync and the topology file's write.
pub const REPLY_WAIT: Duration = Duration::from_secs(1);

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
            let (slot, mut reply) = tokio::sync::oneshot::channel();
            let exchange = method == EXCHANGE_METHOD;
            let message = Input::Message {
                envelope,
                reply: exchange.then_some(slot),
            };
            self.inbox.send(message).await.map_err(|_| unavailable())?;
            if !exchange {
                return Ok(Vec::new());
            }
            let reply = tokio::select! {
                reply = &mut reply => reply.ok(),
                () = tokio::time::sleep(REPLY_WAIT) => {
                    // A reply sent just now is still taken; the driver sends
                    // any later one as a call of its own.
                    reply.close();
                    reply.try_recv().ok()
                }
            };
            match reply {
                None => Ok(Vec::new()),
                Some(reply) => postcard::to_allocvec(&reply)
                    .map_err(|e| RpcError::internal(format!("cannot encode: {e}"))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::twophase::{TxnId, Vote};

    fn envelope(from: u128, to: u128, message: Message) -> Envelope {
        Envelope {
            from: NodeId(Uuid::from_u128(from)),
            to: NodeId(Uuid::from_u128(to)),
            message,
        }
    }

    fn vote() -> Message {
        Message::Vote {
            txn: TxnId {
                coordinator: NodeId(Uuid::from_u128(1)),
                seq: 1,
            },
            vote: Vote::Yes,
        }
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    #[tokio::test]
    async fn an_exchange_answers_with_the_reply_the_driver_gives() {
        let (endpoint, mut inbox) = super::super::channel();
        let body = postcard::to_allocvec(&envelope(1, 2, vote())).unwrap_or_default();
        let driver = tokio::spawn(async move {
            let Some(Input::Message {
                reply: Some(slot), ..
            }) = inbox.rx.recv().await
            else {
                panic!("no message with a reply slot")
            };
            let _ = slot.send(envelope(2, 1, vote()));
        });
        let answer = endpoint
            .handle(peer(), EXCHANGE_METHOD, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let reply: Envelope = postcard::from_bytes(&answer).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply, envelope(2, 1, vote()));
        driver.await.unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_exchange_with_no_reply_in_time_answers_empty_and_closes_the_slot() {
        let (endpoint, mut inbox) = super::super::channel();
        let body = postcard::to_allocvec(&envelope(1, 2, vote())).unwrap_or_default();
        let answer = endpoint
            .handle(peer(), EXCHANGE_METHOD, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(answer.is_empty());
        let Some(Input::Message {
            reply: Some(slot), ..
        }) = inbox.rx.recv().await
        else {
            panic!("no message with a reply slot")
        };
        // The driver sees the caller gone and sends its reply as a call.
        assert!(slot.is_closed());
    }

    #[tokio::test]
    async fn the_old_method_answers_empty_and_offers_no_slot() {
        let (endpoint, mut inbox) = super::super::channel();
        let body = postcard::to_allocvec(&envelope(1, 2, vote())).unwrap_or_default();
        let answer = endpoint
            .handle(peer(), METHOD, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(answer.is_empty());
        assert!(matches!(
            inbox.rx.recv().await,
            Some(Input::Message { reply: None, .. })
        ));
    }
}
