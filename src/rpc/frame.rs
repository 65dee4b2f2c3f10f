//! Length-prefixed frames: a big-endian `u32` length, then that many
//! bytes. The decoder is sans-I/O (push bytes, pop frames), refuses a
//! length above its limit as soon as the prefix is in, and never panics.

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
}

/// Appends `payload` as one frame to `out`.
pub fn encode_into(out: &mut Vec<u8>, payload: &[u8], max: usize) -> Result<(), FrameError> {
    if payload.is_empty() {
        return Err(FrameError::Empty);
    }
    encode_with(out, payload.len(), max, |out| {
        out.extend_from_slice(payload)
    })
}

/// Appends one frame of `len` bytes to `out`, the bytes appended by
/// `write` (which must append exactly `len`): a frame built in place.
pub fn encode_with(
    out: &mut Vec<u8>,
    len: usize,
    max: usize,
    write: impl FnOnce(&mut Vec<u8>),
) -> Result<(), FrameError> {
    let prefix = u32::try_from(len)
        .ok()
        .filter(|&prefix| prefix as usize <= max)
        .ok_or(FrameError::TooLarge { len, max })?;
    out.reserve(LEN_PREFIX + len);
    out.extend_from_slice(&prefix.to_be_bytes());
    let start = out.len();
    write(out);
    debug_assert_eq!(
        out.len() - start,
        len,
        "a frame's writer appends its length"
    );
    Ok(())
}

/// Splits a byte stream into frames of at most `max` bytes.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes before this are consumed; compacted lazily so popping many
    /// small frames does not shift the buffer each time.
    start: usize,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Changes the limit for the frames not yet popped (raised once the
    /// handshake is done).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes pushed and not yet popped as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole frame, `None` if more bytes are needed. After an
    /// error the stream is unusable: the caller closes the connection.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let pending = &self.buf[self.start..];
        let Some(prefix) = pending.first_chunk::<LEN_PREFIX>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        let Some(frame) = pending.get(LEN_PREFIX..LEN_PREFIX + len) else {
            return Ok(None);
        };
        let frame = frame.to_vec();
        self.start += LEN_PREFIX + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode_into(&mut out, p, 1024).unwrap();
        }
        out
    }

    #[test]
    fn frames_survive_any_split_of_the_stream() {
        let payloads: [&[u8]; 3] = [b"a", b"hello", &[7u8; 300]];
        let wire = framed(&payloads);
        for chunk in 1..wire.len() {
            let mut decoder = FrameDecoder::new(1024);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                decoder.push(piece);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(got, payloads.map(<[u8]>::to_vec), "chunks of {chunk}");
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn a_length_over_the_limit_is_refused_before_its_body_arrives() {
        let mut decoder = FrameDecoder::new(16);
        decoder.push(&17u32.to_be_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        let mut decoder = FrameDecoder::new(16);
        decoder.push(&[0, 0, 0, 0]);
        assert_eq!(decoder.next_frame(), Err(FrameError::Empty));
    }

    #[test]
    fn the_encoder_refuses_what_the_decoder_would() {
        let mut out = Vec::new();
        assert_eq!(
            encode_into(&mut out, &[0; 17], 16),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        assert_eq!(encode_into(&mut out, &[], 16), Err(FrameError::Empty));
        assert!(out.is_empty());
    }

    #[test]
    fn raising_the_limit_applies_to_frames_still_buffered() {
        let mut decoder = FrameDecoder::new(4);
        let mut wire = framed(&[b"abc"]);
        encode_into(&mut wire, &[1; 100], 1024).unwrap();
        decoder.push(&wire);
        assert_eq!(decoder.next_frame().unwrap().unwrap(), b"abc");
        decoder.set_max(1024);
        assert_eq!(decoder.next_frame().unwrap().unwrap(), vec![1; 100]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
            max in 0usize..128,
        ) {
            let mut decoder = FrameDecoder::new(max);
            'feed: for chunk in &chunks {
                decoder.push(chunk);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => prop_assert!(!frame.is_empty() && frame.len() <= max),
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }
}
