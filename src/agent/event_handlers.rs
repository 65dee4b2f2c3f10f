//! Runs the node config's `events.handlers` for user events: each matching
//! executable is called with the event name as its argument, the payload
//! on stdin and the event's identity in the environment. Handlers run one
//! at a time, in arrival order, so a handler sees events in the order this
//! node delivered them; each gets a deadline, after which it is killed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::EventHandler;

/// A handler gets this long before it is killed.
pub const HANDLER_DEADLINE: Duration = Duration::from_secs(60);
/// Deliveries waiting for their handlers at most; beyond, one is logged as
/// not handled (never silently).
const QUEUE: usize = 1024;

/// One delivered user event, as handlers see it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub name: String,
    pub payload: Vec<u8>,
    /// `ORIGIN-UUID/GENERATION/SEQ`, unique per event.
    pub id: String,
    pub origin: String,
    /// The sending node's name when known.
    pub origin_name: String,
}

/// Hands deliveries to the handler task.
#[derive(Clone, Debug)]
pub struct Handlers {
    queue: mpsc::Sender<Delivery>,
}

impl Handlers {
    /// Starts the runner, or nothing when no handler is configured.
    pub fn spawn(handlers: Vec<EventHandler>) -> Option<Handlers> {
        if handlers.is_empty() {
            return None;
        }
        let (queue, deliveries) = mpsc::channel(QUEUE);
        tokio::spawn(run(handlers, deliveries));
        Some(Handlers { queue })
    }

    pub fn deliver(&self, delivery: Delivery) {
        if let Err(e) = self.queue.try_send(delivery) {
            let delivery = match e {
                mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => d,
            };
            error!(
                event = %delivery.name,
                id = %delivery.id,
                "user event NOT handled: {QUEUE} events already wait for their handlers"
            );
        }
    }
}

async fn run(handlers: Vec<EventHandler>, mut deliveries: mpsc::Receiver<Delivery>) {
    while let Some(delivery) = deliveries.recv().await {
        for handler in handlers
            .iter()
            .filter(|h| h.event == "*" || h.event == delivery.name)
        {
            run_one(&handler.exec, &delivery).await;
        }
    }
}

async fn run_one(exec: &PathBuf, delivery: &Delivery) {
    let spawned = Command::new(exec)
        .arg(&delivery.name)
        .env("COHORT_EVENT", &delivery.name)
        .env("COHORT_EVENT_ID", &delivery.id)
        .env("COHORT_EVENT_ORIGIN", &delivery.origin)
        .env("COHORT_EVENT_ORIGIN_NAME", &delivery.origin_name)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            return error!(
                handler = %exec.display(),
                event = %delivery.name,
                "cannot start event handler: {}",
                crate::storage::describe(&e)
            );
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A handler that does not read its payload is fine: ignore EPIPE.
        let _ = stdin.write_all(&delivery.payload).await;
    }
    match tokio::time::timeout(HANDLER_DEADLINE, child.wait_with_output()).await {
        Ok(Ok(output)) if output.status.success() => {
            info!(handler = %exec.display(), event = %delivery.name, id = %delivery.id, "event handler done");
        }
        Ok(Ok(output)) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            warn!(
                handler = %exec.display(),
                event = %delivery.name,
                id = %delivery.id,
                "event handler failed ({}): {}",
                output.status,
                stderr.trim()
            );
        }
        Ok(Err(e)) => warn!(handler = %exec.display(), "event handler: {e}"),
        Err(_) => warn!(
            handler = %exec.display(),
            event = %delivery.name,
            "event handler killed after {}s",
            HANDLER_DEADLINE.as_secs()
        ),
    }
}
