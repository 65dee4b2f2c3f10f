//! `wire::open` (and `wire::seal`) on arbitrary bytes.
//!
//! 1. The input as a received frame, opened by a plaintext node and by a
//!    node with a two-key keyring: never panics; plaintext opens exactly the
//!    frames with header (WIRE_VERSION, 0) and returns the rest; anything a
//!    keyring opens is exactly FRAME_OVERHEAD shorter. What opens is decoded.
//! 2. The input as nonce (first 12 bytes) and body, sealed by a peer whose
//!    first key is the first or the second key of the ring: the ring opens
//!    it to the same body; a ring without that key, a plaintext node, and
//!    the ring after any one byte of the frame is flipped all refuse it.
#![no_main]

use cohort::membership::wire::{self, FrameError, FRAME_OVERHEAD, WIRE_VERSION};
use cohort::membership::PacketSecurity;
use cohort_fuzz::{keyring, sealed_with, KEY_A, KEY_B, KEY_OTHER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ring = PacketSecurity::Encrypted(keyring().clone());

    // 1. Arbitrary frames.
    let plaintext_header = data.len() >= 2 && data[0] == WIRE_VERSION && data[1] == 0;
    match wire::open(&PacketSecurity::Plaintext, data) {
        Ok(body) => {
            assert!(
                plaintext_header,
                "plaintext node opened a non-plaintext frame"
            );
            assert_eq!(body, &data[2..]);
            let _ = wire::decode_packet(&body);
        }
        Err(_) => assert!(
            !plaintext_header,
            "plaintext frame refused by a plaintext node"
        ),
    }
    match wire::open(&ring, data) {
        Ok(body) => {
            // Only a forged tag gets here: keep it, it would be a finding.
            assert_eq!(body.len() + FRAME_OVERHEAD, data.len());
            let _ = wire::decode_packet(&body);
        }
        Err(e) => assert_eq!(
            e == FrameError::PlaintextRefused,
            plaintext_header,
            "an encrypting node refuses exactly the plaintext frames"
        ),
    }

    // 2. Seal round trip; the input is nonce ‖ body.
    let mut nonce = [0u8; 12];
    let split = data.len().min(12);
    nonce[..split].copy_from_slice(&data[..split]);
    let body = &data[split..];
    for key in [KEY_A, KEY_B] {
        let frame = wire::seal(sealed_with(key), nonce, body).expect("seals");
        assert_eq!(frame.len(), body.len() + FRAME_OVERHEAD);
        assert_eq!(wire::open(&ring, &frame).as_deref(), Ok(body));
        assert_eq!(
            wire::open(sealed_with(KEY_OTHER), &frame),
            Err(FrameError::Decrypt)
        );
        assert_eq!(
            wire::open(&PacketSecurity::Plaintext, &frame),
            Err(FrameError::Decrypt)
        );
        // One flipped byte (position and bit from the input) never opens.
        let at = data.iter().fold(0usize, |a, b| {
            a.wrapping_mul(31).wrapping_add(usize::from(*b))
        });
        let mut tampered = frame.clone();
        let i = at % tampered.len();
        tampered[i] ^= 1 << (at % 8);
        assert!(
            wire::open(&ring, &tampered).is_err(),
            "tampered byte {i} accepted"
        );
    }
    let plain = wire::seal(&PacketSecurity::Plaintext, nonce, body).expect("seals");
    assert_eq!(plain.len(), body.len() + 2);
    assert_eq!(
        wire::open(&PacketSecurity::Plaintext, &plain).as_deref(),
        Ok(body)
    );
    assert_eq!(wire::open(&ring, &plain), Err(FrameError::PlaintextRefused));
});
