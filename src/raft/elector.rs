//! The tokio side of [`super::election`]: one task per openraft instance
//! runs its [`ElectionTimer`] and asks openraft to stand when it runs out
//! (openraft's own timer is off: [`super::driver::raft_config`]). What the
//! node hears comes through [`Inbound`], which every message to this node
//! passes on its way to openraft.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::info;

use super::election::{Contact, ElectionTimeouts, ElectionTimer};
use super::{runtime, NodeId, Raft, TypeConfig};

/// The election task of one instance; it stops with the instance, or
/// when this is dropped.
pub struct Elector {
    may_stand: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Elector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Elector {
    /// Starts the timer of `raft` (made with `config`); it stands only
    /// while `may_stand` (a voter that may not lead still votes).
    pub fn spawn(raft: &Raft, config: &openraft::Config, may_stand: bool) -> (Elector, Inbound) {
        let (heard_tx, heard) = watch::channel(None);
        let may_stand = Arc::new(AtomicBool::new(may_stand));
        let task = tokio::spawn(run(
            raft.clone(),
            ElectionTimeouts::of(config),
            heard,
            may_stand.clone(),
        ));
        let inbound = Inbound {
            raft: raft.clone(),
            heard: Arc::new(heard_tx),
        };
        (Elector { may_stand, task }, inbound)
    }

    pub fn set_may_stand(&self, yes: bool) {
        self.may_stand.store(yes, Ordering::Relaxed);
    }
}

async fn run(
    raft: Raft,
    timeouts: ElectionTimeouts,
    mut heard: watch::Receiver<Option<(Instant, Contact)>>,
    may_stand: Arc<AtomicBool>,
) {
    let mut rng = runtime::rng();
    let mut metrics = raft.metrics();
    let term = metrics.borrow().current_term;
    let mut timer = ElectionTimer::new(timeouts, term, Instant::now().into_std(), &mut rng);
    loop {
        let (term, state) = {
            let m = metrics.borrow_and_update();
            (m.current_term, m.state)
        };
        timer.observe(term, state, Instant::now().into_std(), &mut rng);
        if let Some((at, contact)) = *heard.borrow_and_update() {
            timer.heard(contact, at.into_std());
        }
        let deadline = timer.deadline().map(Instant::from_std);
        // News first: a term or a contact that came while the timer ran
        // out puts the election off.
        tokio::select! {
            biased;
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            changed = heard.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = sleep_until(deadline) => {
                timer.fired(Instant::now().into_std());
                if may_stand.load(Ordering::Relaxed) {
                    info!(term, "no leader heard from within the election timeout: standing");
                    if raft.trigger().elect().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The node's side of every Raft message: passed to openraft, and what
/// resets the election timer (an accepted leader's message, a granted
/// vote) told to it.
#[derive(Clone)]
pub struct Inbound {
    raft: Raft,
    heard: Arc<watch::Sender<Option<(Instant, Contact)>>>,
}

impl Inbound {
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    fn heard(&self, contact: Contact) {
        self.heard.send_replace(Some((Instant::now(), contact)));
    }

    pub async fn append_entries(
        &self,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let answer = self.raft.append_entries(rpc).await;
        if matches!(&answer, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
            self.heard(Contact::Leader);
        }
        answer
    }

    pub async fn install_snapshot(
        &self,
        rpc: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        let vote = rpc.vote;
        let answer = self.raft.install_snapshot(rpc).await;
        if matches!(&answer, Ok(a) if a.vote <= vote) {
            self.heard(Contact::Leader);
        }
        answer
    }

    pub async fn vote(
        &self,
        rpc: VoteRequest<NodeId>,
    ) -> Result<VoteResponse<NodeId>, RaftError<NodeId>> {
        let answer = self.raft.vote(rpc).await;
        if matches!(&answer, Ok(a) if a.vote_granted) {
            self.heard(Contact::VoteGranted);
        }
        answer
    }
}
