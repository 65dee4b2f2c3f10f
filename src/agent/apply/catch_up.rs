//! Catch-up: a node that missed applies (it was down, or cut off) sees in
//! gossip that peers run a newer committed version, fetches that version
//! from one of them (rpc `COMMITTED_METHOD`) and hands it to the driver,
//! which installs it like a commit once its 2PC lock is free.
//!
//! Polling the member table once a second is enough: a lagging node is a
//! rare state and a second is well inside what an operator notices; it
//! costs one scan of the table (no copy) and no traffic when nothing lags.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::rpc::RpcClient;
use crate::twophase::Committed;

use super::directory::PeerDirectory;
use super::driver::Input;
use super::rpc::COMMITTED_METHOD;
use super::ApplyStatus;

const INTERVAL: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(5);

/// Runs until the driver goes away.
pub(super) async fn run(
    tx: mpsc::WeakSender<Input>,
    mut status: watch::Receiver<ApplyStatus>,
    directory: Arc<dyn PeerDirectory>,
    client: RpcClient,
) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            changed = status.changed() => if changed.is_err() { return },
        }
        let (me, have, stopped, failing, locked) = {
            let s = status.borrow_and_update();
            (
                s.node,
                s.version,
                s.stopped.is_some(),
                s.disk_error.is_some(),
                s.lock.txn().is_some(),
            )
        };
        if stopped {
            return;
        }
        if locked || failing {
            // The driver would refuse it (see `Participant::catch_up`), or
            // could not write it (it retries what it holds); the lock's
            // release, or the first write that works, is a status change
            // that wakes us.
            continue;
        }
        let Some(peer) = directory.newest_above(me, have).await else {
            continue;
        };
        let committed = match client
            .call(peer.addr, COMMITTED_METHOD, &[], DEADLINE)
            .await
        {
            Ok(body) => match postcard::from_bytes::<Committed>(&body) {
                Ok(committed) => committed,
                Err(e) => {
                    debug!(peer = %peer.name, "catch-up: not a committed version: {e}");
                    continue;
                }
            },
            Err(e) => {
                debug!(peer = %peer.name, addr = %peer.addr, "catch-up: fetching the committed version failed: {e}");
                continue;
            }
        };
        if committed.version <= have {
            continue;
        }
        let Some(tx) = tx.upgrade() else { return };
        let input = Input::CatchUp {
            committed: Box::new(committed),
            from: peer.name.clone(),
        };
        if tx.send(input).await.is_err() {
            return;
        }
    }
}
