//! SWIM membership: who is in the cluster, how alive each member looks, and
//! what each one carries. Everything here is a state machine without I/O;
//! a driver (tokio, or the simulator in `sim`) moves its bytes and time.

pub mod config;
pub mod dissemination;
pub mod driver;
pub mod health;
pub mod keyring;
pub mod member;
pub mod payload;
pub mod sim;
pub mod stats;
pub mod suspicion;
pub mod swim;
mod table;
pub mod user_event;
pub mod wire;

pub use config::{ConfigError, SwimConfig};
pub use keyring::{Keyring, KeyringError, PacketSecurity};
pub use member::{
    by_name, Incarnation, Member, MemberEvent, MemberRecord, MemberStatus, NamedMember, NodeId,
};
pub use payload::{ConfigStamp, Payload, PayloadTooLarge, RaftRole};
pub use stats::{DropStats, RttHistogram, Stats, RTT_BUCKETS_US};
pub use swim::{ClockOffset, LocalNode, Swim, Transmit, TransmitKind};
pub use user_event::{UserEvent, UserEventError};
