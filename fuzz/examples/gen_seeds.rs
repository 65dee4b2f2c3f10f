//! Writes the seed corpus of every fuzz target: real packets encoded by
//! the main crate's own encoder, so that the fuzzer starts from valid
//! frames and bodies (and the op streams of the `swim_*` targets).
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds [-- DIR]
//!
//! DIR defaults to `fuzz/seeds`; one subdirectory per target. The seeds
//! follow the crate's current wire format, so regenerate them after a
//! format change rather than keeping old ones.

use std::fs;
use std::path::PathBuf;

use cohort::membership::wire;
use cohort::membership::PacketSecurity;
use cohort_fuzz::{encode_advance, encode_op, op, sample_packets, sealed_with, KEY_A, KEY_B};

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds"));
    let mut written = 0;
    let mut write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = out.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), bytes)?;
        written += 1;
        Ok(())
    };

    let samples = sample_packets();
    let mut plaintext_session = Vec::new();
    let mut sealed_session = Vec::new();
    for (i, (name, packet)) in samples.iter().enumerate() {
        let body = wire::encode(packet).expect("encodes");
        let plain = wire::seal(&PacketSecurity::Plaintext, [0; 12], &body).expect("seals");
        let nonce = [i as u8; 12];
        let sealed = wire::seal(sealed_with(KEY_A), nonce, &body).expect("seals");
        let sealed_b = wire::seal(sealed_with(KEY_B), nonce, &body).expect("seals");
        let is_stream = name.starts_with("push_pull");
        let kind = if is_stream { op::STREAM } else { op::DATAGRAM };

        write("decode_packet", name, &body)?;
        write("open_frame", &format!("{name}.plain"), &plain)?;
        write("open_frame", &format!("{name}.sealed_a"), &sealed)?;
        write("open_frame", &format!("{name}.sealed_b"), &sealed_b)?;
        write("swim_plaintext", name, &encode_op(kind, 2, 0, &plain))?;
        write("swim_sealed", name, &encode_op(kind, 2, 0, &body))?;
        write(
            "swim_sealed",
            &format!("{name}.key_b"),
            &encode_op(kind, 2, op::KEY_B, &body),
        )?;

        // One long session per mode: every sample, with clock steps between
        // (probes, ack timeouts, suspicions and reclaims fire).
        plaintext_session.extend(encode_op(kind, 2, 0, &plain));
        plaintext_session.extend(encode_advance(700));
        sealed_session.extend(encode_op(kind, 2, 0, &body));
        sealed_session.extend(encode_advance(700));
    }
    // Local commands then a long quiet spell: leave, rejoin, payload, event.
    let commands: Vec<u8> = [
        encode_op(op::COMMAND, 3, 0, b"deploy"),
        encode_op(op::COMMAND, 2, 0, b"node-1"),
        encode_advance(30_000),
        encode_op(op::COMMAND, 1, 0, b""),
        encode_advance(5_000),
        encode_op(op::COMMAND, 0, 0, b""),
        encode_op(op::STREAM_FAILED, 2, 0, b""),
        encode_advance(60_000),
    ]
    .concat();
    plaintext_session.extend(&commands);
    sealed_session.extend(&commands);
    write("swim_plaintext", "session", &plaintext_session)?;
    write("swim_sealed", "session", &sealed_session)?;
    write("swim_plaintext", "commands", &commands)?;
    write("swim_sealed", "commands", &commands)?;
    // A sealed node given a plaintext frame and a frame it cannot open.
    let (_, first) = &samples[0];
    let body = wire::encode(first).expect("encodes");
    let plain = wire::seal(&PacketSecurity::Plaintext, [0; 12], &body).expect("seals");
    write(
        "swim_sealed",
        "raw_plaintext",
        &encode_op(op::DATAGRAM, 2, op::RAW, &plain),
    )?;

    println!("wrote {written} seeds under {}", out.display());
    Ok(())
}
