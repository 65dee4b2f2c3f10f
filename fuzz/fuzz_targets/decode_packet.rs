//! `wire::decode_packet` on arbitrary bytes: never panics, and whatever it
//! accepts re-encodes to a body that decodes to the same packet (also when
//! built the sender's way, head then `assemble`d items).
#![no_main]

use cohort::membership::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = wire::decode_packet(data) {
        cohort_fuzz::check_packet(&packet);
    }
});
