//! What coordinators and participants say to each other. The rpc layer
//! carries these (serde) between agents; a node hands each one to its
//! coordinator or its participant as `Message::role` says.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Decision, DecisionLog, NodeId, Proposal, TxnId, Version};

/// PREPARE: everything a participant needs to vote, and to stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    pub proposal: Proposal,
    /// Every participant, sorted: whom to ask if the decision is late.
    pub participants: Vec<NodeId>,
    /// How long the participant's lock lives before it starts asking.
    pub lease: Duration,
    /// Where this txn's decision is recorded, fixed by the coordinator
    /// when it starts the txn: a participant whose lease runs out asks the
    /// peers, or proposes to the replicated log, as the txn says.
    pub log: DecisionLog,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Vote {
    Yes,
    /// Why not, in words for the operator.
    No(String),
}

/// An answer to `Query`: what the answering node knows of a txn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Committed,
    Aborted,
    /// Prepared and undecided (a participant), or still collecting votes
    /// (the coordinator): no information.
    Prepared,
    /// Never prepared it, and now never will (recorded before answering).
    NotPrepared,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Coordinator → participant.
    Prepare(Prepare),
    /// Participant → coordinator.
    Vote { txn: TxnId, vote: Vote },
    /// Coordinator → participant; re-sent until acknowledged.
    Decision {
        txn: TxnId,
        version: Version,
        decision: Decision,
    },
    /// Participant → coordinator: the decision is applied here.
    Ack { txn: TxnId },
    /// A prepared participant whose lease ran out → the coordinator and the
    /// other participants.
    Query { txn: TxnId, version: Version },
    /// → the participant that asked.
    Answer { txn: TxnId, answer: Answer },
}

/// Which of a node's two state machines a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Participant,
}

impl Message {
    pub fn txn(&self) -> TxnId {
        match self {
            Message::Prepare(prepare) => prepare.proposal.txn,
            Message::Vote { txn, .. }
            | Message::Decision { txn, .. }
            | Message::Ack { txn }
            | Message::Query { txn, .. }
            | Message::Answer { txn, .. } => *txn,
        }
    }

    /// Where node `me` must hand this message. A query about a txn `me`
    /// coordinates is answered from its decision log, not by its participant.
    pub fn role(&self, me: NodeId) -> Role {
        match self {
            Message::Vote { .. } | Message::Ack { .. } => Role::Coordinator,
            Message::Query { txn, .. } if txn.coordinator == me => Role::Coordinator,
            Message::Prepare(_)
            | Message::Decision { .. }
            | Message::Query { .. }
            | Message::Answer { .. } => Role::Participant,
        }
    }
}
