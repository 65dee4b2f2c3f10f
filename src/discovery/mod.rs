//! Finding peers to join through: the `join:` seeds of the node config,
//! resolved to addresses (DNS names to all their A/AAAA records, again at
//! every attempt), retried with capped, jittered backoff until one answers;
//! and, when enabled, sealed announcements on a LAN multicast group.

mod backoff;
pub mod multicast;
mod seeds;

pub use backoff::Backoff;
pub use seeds::{resolve_seeds, Resolved};
