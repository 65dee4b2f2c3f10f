//! How the driver's 2PC messages leave the node.
//!
//! A message that answers one a peer is still waiting on (a vote to a
//! PREPARE, an ack to a decision, an answer to a query) goes back as the
//! answer of that peer's call ([`EXCHANGE_METHOD`]). Every other message
//! is a call of its own, on a task. Without that, a coordinator of a
//! 500-node apply received 499 votes on 499 new connections at once, each
//! needing a handshake, on a machine where it was one busy process among
//! 500: the voters gave up before it answered (issue 10).
//!
//! A PREPARE or a decision that the state machine re-sends while the last
//! call carrying it to that peer is still running is dropped: that call
//! either delivers it or fails, and the machine re-sends again after.
//! Otherwise a 500-node coordinator would re-send 499 × 45 KB at 0.2,
//! 0.6 and 1.4 s (its retry doubles from 200 ms) to peers that had not had
//! time to answer the first.

use std::collections::{HashMap, HashSet};
use std::mem::{discriminant, Discriminant};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error};

use crate::rpc::{codes, CallError, RpcClient};
use crate::twophase::{Message, NodeId, TxnId};

use super::directory::PeerDirectory;
use super::driver::Input;
use super::rpc::{Envelope, EXCHANGE_METHOD, METHOD, REPLY_WAIT};

/// Where the answer to a peer's waiting call goes (see `rpc`).
pub(super) type ReplySlot = oneshot::Sender<Envelope>;

type Flight = (NodeId, TxnId, Discriminant<Message>);

pub(super) struct Outbox {
    me: NodeId,
    directory: Arc<dyn PeerDirectory>,
    client: RpcClient,
    /// Deadline of one call (connecting included); an exchange may wait
    /// `REPLY_WAIT` longer for the answer.
    deadline: Duration,
    inbox: mpsc::WeakSender<Input>,
    /// Calls of peers waiting for our next message to them about a txn.
    replies: HashMap<(NodeId, TxnId), ReplySlot>,
    /// Re-sendable messages (PREPARE, decision) whose call still runs.
    in_flight: Arc<Mutex<HashSet<Flight>>>,
}

impl Outbox {
    pub(super) fn new(
        me: NodeId,
        directory: Arc<dyn PeerDirectory>,
        client: RpcClient,
        deadline: Duration,
        inbox: mpsc::WeakSender<Input>,
    ) -> Outbox {
        Outbox {
            me,
            directory,
            client,
            deadline,
            inbox,
            replies: HashMap::new(),
            in_flight: Arc::default(),
        }
    }

    /// `from`'s call that brought a message about `txn` waits for the
    /// answer in `slot`: our next message to `from` about `txn`, if it
    /// comes within `REPLY_WAIT`.
    pub(super) fn hold(&mut self, from: NodeId, txn: TxnId, slot: ReplySlot) {
        self.replies.retain(|_, slot| !slot.is_closed());
        self.replies.insert((from, txn), slot);
    }

    pub(super) fn send(&mut self, to: NodeId, message: Message) {
        let mut envelope = Envelope {
            from: self.me,
            to,
            message,
        };
        if let Some(slot) = self.replies.remove(&(to, envelope.message.txn())) {
            match slot.send(envelope) {
                Ok(()) => return,
                // The caller stopped waiting: a call of our own.
                Err(back) => envelope = back,
            }
        }
        let flight = match envelope.message {
            Message::Prepare(_) | Message::Decision { .. } => {
                let flight = (to, envelope.message.txn(), discriminant(&envelope.message));
                if !self
                    .in_flight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(flight)
                {
                    return debug!(%to, txn = %flight.1, "the last send of this message to the peer still runs; no re-send");
                }
                Some(InFlight {
                    set: self.in_flight.clone(),
                    flight,
                })
            }
            _ => None,
        };
        let body = match postcard::to_allocvec(&envelope) {
            Ok(body) => body,
            Err(e) => return error!("cannot encode a 2PC message: {e}"),
        };
        let directory = self.directory.clone();
        let client = self.client.clone();
        let deadline = self.deadline;
        let inbox = self.inbox.clone();
        let me = self.me;
        tokio::spawn(async move {
            let _flight = flight;
            let Some(peer) = directory.peer(to).await else {
                return debug!(%to, "no address for a 2PC peer; the message waits for a re-send");
            };
            let answer = match client
                .call(peer.addr, EXCHANGE_METHOD, &body, deadline + REPLY_WAIT)
                .await
            {
                Err(CallError::Remote(e)) if e.code == codes::UNKNOWN_METHOD => {
                    // An agent from before exchanges: its answers come as
                    // calls of their own.
                    client.call(peer.addr, METHOD, &body, deadline).await
                }
                answer => answer,
            };
            let reply = match answer {
                Ok(answer) if answer.is_empty() => return,
                Ok(answer) => answer,
                Err(e) => return debug!(%to, addr = %peer.addr, "2PC message not delivered: {e}"),
            };
            match postcard::from_bytes::<Envelope>(&reply) {
                Ok(reply) if reply.from == to && reply.to == me => {
                    if let Some(inbox) = inbox.upgrade() {
                        let _ = inbox
                            .send(Input::Message {
                                envelope: reply,
                                reply: None,
                            })
                            .await;
                    }
                }
                Ok(reply) => {
                    debug!(%to, from = %reply.from, "a 2PC answer from another node dropped")
                }
                Err(e) => debug!(%to, "a 2PC answer that does not decode dropped: {e}"),
            }
        });
    }
}

/// Takes a message off `in_flight` when its call ends, however it ends.
struct InFlight {
    set: Arc<Mutex<HashSet<Flight>>>,
    flight: Flight,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // A set of keys is never left half-updated by a panic.
        let mut set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        set.remove(&self.flight);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use uuid::Uuid;

    use super::*;
    use crate::agent::apply::directory::Peer;
    use crate::agent::apply::BoxFuture;
    use crate::membership::PacketSecurity;
    use crate::rpc::{ClientConfig, ClusterAuth};
    use crate::twophase::{Decision, Version, Vote};

    fn node(n: u128) -> NodeId {
        NodeId(Uuid::from_u128(n))
    }

    /// Counts the lookups and never answers one: every call it starts
    /// stays in flight.
    #[derive(Default)]
    struct Stalled {
        lookups: AtomicUsize,
    }

    impl PeerDirectory for Stalled {
        fn peers(&self) -> BoxFuture<'_, Vec<Peer>> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            Box::pin(std::future::pending())
        }
    }

    fn outbox(directory: Arc<Stalled>) -> (Outbox, mpsc::Sender<Input>) {
        let (tx, _rx) = mpsc::channel(1);
        let client = RpcClient::new(
            ClusterAuth {
                cluster: "t".into(),
                security: PacketSecurity::Plaintext,
            },
            ClientConfig::default(),
        );
        let outbox = Outbox::new(
            node(1),
            directory,
            client,
            Duration::from_secs(2),
            tx.downgrade(),
        );
        (outbox, tx)
    }

    fn txn() -> TxnId {
        TxnId {
            coordinator: node(2),
            seq: 7,
        }
    }

    async fn lookups_reach(directory: &Stalled, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while directory.lookups.load(Ordering::SeqCst) < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("fewer than {n} sends started"));
    }

    #[tokio::test]
    async fn a_reply_to_a_waiting_call_goes_back_on_it_and_starts_no_call() {
        let directory = Arc::new(Stalled::default());
        let (mut outbox, _tx) = outbox(directory.clone());
        let (slot, answer) = oneshot::channel();
        outbox.hold(node(2), txn(), slot);
        let vote = Message::Vote {
            txn: txn(),
            vote: Vote::Yes,
        };
        outbox.send(node(2), vote.clone());
        let envelope = answer.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((envelope.from, envelope.to), (node(1), node(2)));
        assert_eq!(envelope.message, vote);
        // The slot is used once: the next message is a call of its own.
        outbox.send(node(2), vote);
        lookups_reach(&directory, 1).await;
    }

    #[tokio::test]
    async fn a_caller_that_stopped_waiting_gets_the_reply_as_a_call() {
        let directory = Arc::new(Stalled::default());
        let (mut outbox, _tx) = outbox(directory.clone());
        let (slot, answer) = oneshot::channel();
        outbox.hold(node(2), txn(), slot);
        drop(answer);
        let ack = Message::Ack { txn: txn() };
        outbox.send(node(2), ack);
        lookups_reach(&directory, 1).await;
    }

    #[tokio::test]
    async fn a_resent_prepare_or_decision_waits_for_the_call_still_running() {
        let directory = Arc::new(Stalled::default());
        let (mut outbox, _tx) = outbox(directory.clone());
        let decision = Message::Decision {
            txn: txn(),
            version: Version(1),
            decision: Decision::Commit,
        };
        outbox.send(node(3), decision.clone());
        lookups_reach(&directory, 1).await;
        outbox.send(node(3), decision.clone());
        // Another peer, and another kind of message to the same peer, are
        // not held back.
        outbox.send(node(4), decision);
        outbox.send(
            node(3),
            Message::Query {
                txn: txn(),
                version: Version(1),
            },
        );
        lookups_reach(&directory, 3).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(directory.lookups.load(Ordering::SeqCst), 3);
    }
}
