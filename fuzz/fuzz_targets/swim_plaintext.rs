//! The full receive path of a plaintext node: a `Swim` that has joined a
//! small cluster is fed the input as a sequence of ops (datagrams and
//! streams given to `handle_datagram` / `handle_stream` as raw frames,
//! clock steps running its timers, local commands), and everything it
//! sends back is checked (see `cohort_fuzz::Harness`). Nothing may panic.
//!
//! Op format: `tag, len u16 LE, len bytes`; tag bits 0..2 the kind
//! (0 datagram, 1 stream, 2 clock step of len×10 ms with no bytes,
//! 3 command, 4 stream failure, 5..7 datagram), bits 3..5 the peer.
#![no_main]

use cohort_fuzz::{Harness, Mode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    Harness::new(Mode::Plaintext).run(data);
});
