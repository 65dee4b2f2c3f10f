//! RPC between agents: request/response calls over TCP on the node's port
//! (shared with gossip streams through `demux`), authenticated with the
//! cluster keyring before any request is read, with a deadline on every
//! call. Protocol pieces are sans-I/O (`frame`, `seal`, `handshake`,
//! `message`); `client`, `server` and `demux` are the thin tokio side.
//!
//! A connection is the preamble `CRP1`, then length-prefixed frames, each
//! sealed with AES-256-GCM under the keyring (a direction byte, a sequence
//! number and both handshake challenges in the associated data), carrying
//! a postcard header and the raw body.

pub mod client;
pub mod demux;
pub mod frame;
pub mod handshake;
mod io;
pub mod message;
pub mod seal;
pub mod server;

use crate::membership::PacketSecurity;

pub use client::{CallError, ClientConfig, RpcClient};
pub use demux::{Demux, DemuxConfig, DemuxStats, Routes};
pub use handshake::{Handshake, Refusal};
pub use message::{codes, RpcError};
pub use server::{
    handler_fn, HandlerFuture, Router, RpcHandler, RpcServer, ServerConfig, ServerStats,
};

/// The first bytes of an rpc connection on the node's TCP port (gossip
/// streams start with `membership::driver::GOSSIP_STREAM_MAGIC`).
pub const RPC_STREAM_MAGIC: [u8; 4] = *b"CRP1";

/// Protocol versions this build speaks; the handshake picks the highest
/// both ends speak, and every frame of the connection follows it.
pub const MIN_VERSION: u16 = 1;
pub const MAX_VERSION: u16 = 1;

/// No frame after the handshake is bigger (a 2PC PREPARE carries a
/// topology text, far below this).
pub const MAX_FRAME: usize = 16 << 20;
/// Until the handshake completes a frame is at most this big, so a peer
/// without the key cannot make us buffer more than this.
pub const MAX_HANDSHAKE_FRAME: usize = 1024;

/// What a node proves it belongs to: the cluster's name, and its keyring
/// (or plaintext, for a cluster that runs with `gossip.allow_plaintext`).
#[derive(Clone, Debug)]
pub struct ClusterAuth {
    pub cluster: String,
    pub security: PacketSecurity,
}
