//! The small tokio pieces both ends share: reading frames from a socket
//! (cancel-safe, so it can sit in a `select!`) and running a `Handshake`
//! over one.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{FrameDecoder, FrameError};
use super::handshake::{Handshake, Refusal, Session};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Frames gathered into one write at most, when several are ready.
pub(crate) const WRITE_BATCH: usize = 256 * 1024;

#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Frame(FrameError),
    /// The peer closed in the middle of a frame.
    Truncated,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => f.write_str(&crate::storage::describe(e)),
            ReadError::Frame(e) => e.fmt(f),
            ReadError::Truncated => f.write_str("connection closed in the middle of a frame"),
        }
    }
}

pub(crate) struct FrameReader<R> {
    io: R,
    decoder: FrameDecoder,
    chunk: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max: usize) -> FrameReader<R> {
        FrameReader {
            io,
            decoder: FrameDecoder::new(max),
            chunk: vec![0u8; READ_CHUNK].into_boxed_slice(),
        }
    }

    pub(crate) fn set_max(&mut self, max: usize) {
        self.decoder.set_max(max);
    }

    /// The next frame; `None` when the peer closed cleanly between frames.
    /// Cancel-safe: bytes already read stay in the decoder.
    pub(crate) async fn next_frame(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.next_frame().map_err(ReadError::Frame)? {
                return Ok(Some(frame));
            }
            let n = self.io.read(&mut self.chunk).await.map_err(ReadError::Io)?;
            if n == 0 {
                return match self.decoder.buffered() {
                    0 => Ok(None),
                    _ => Err(ReadError::Truncated),
                };
            }
            self.decoder.push(&self.chunk[..n]);
        }
    }
}

/// Runs `hs` to its end over a socket: writes what it asks (the first
/// write prefixed with `prefix`), feeds it what arrives. Whatever the
/// handshake still has to say when it fails is written before returning
/// (only "no common version" says anything).
pub(crate) async fn handshake<R, W>(
    mut hs: Handshake,
    reader: &mut FrameReader<R>,
    writer: &mut W,
    prefix: &[u8],
) -> Result<Session, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut prefix = Some(prefix);
    loop {
        if let Some(bytes) = hs.poll_transmit() {
            let mut out = prefix.take().unwrap_or_default().to_vec();
            out.extend_from_slice(&bytes);
            if writer.write_all(&out).await.is_err() {
                return Err(hs.refusal().unwrap_or(Refusal::Closed));
            }
        }
        if let Some(refusal) = hs.refusal() {
            return Err(refusal);
        }
        if hs.is_established() {
            return hs.into_session().ok_or(Refusal::Malformed);
        }
        let frame = match reader.next_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(ReadError::Io(_)) | Err(ReadError::Truncated) => {
                return Err(Refusal::Closed)
            }
            Err(ReadError::Frame(_)) => return Err(Refusal::Malformed),
        };
        // A refusal is returned at the top of the loop, after flushing.
        let _ = hs.handle_frame(&frame);
    }
}
