//! The full receive path of an encrypting node (keyring A then B): the ops
//! of `swim_plaintext`, but a datagram's or stream's bytes are a body that
//! the harness seals first, with key A or (tag bit 6) the decrypt-only key
//! B, so that what the fuzzer writes is what `decode_packet` sees after
//! decryption. Tag bit 7 sends the bytes as a raw frame instead (plaintext
//! refused, decrypt failures).
#![no_main]

use cohort_fuzz::{Harness, Mode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    Harness::new(Mode::Sealed).run(data);
});
