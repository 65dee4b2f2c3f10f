//! The gossip keyring: AES-256-GCM keys, the first encrypts and every one
//! decrypts, so keys rotate without downtime (add the new key everywhere,
//! make it first everywhere, then remove the old one).

use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::KeyInit;
use aes_gcm::{AeadInOut, Aes256Gcm, Nonce, Tag};
use base64::Engine;
use std::sync::{Arc, RwLock};

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// How packets are protected. Plaintext must be asked for by name.
#[derive(Clone, Debug)]
pub enum PacketSecurity {
    Encrypted(Keyring),
    /// No encryption and no authentication: for tests and trusted labs.
    Plaintext,
}

/// Several AES-256-GCM keys; never printed. Clones share the keys:
/// [`Keyring::replace`] (a reload) changes them for gossip, rpc and
/// discovery at once.
#[derive(Clone)]
pub struct Keyring {
    ciphers: Arc<RwLock<Arc<[Aes256Gcm]>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} keys)", self.len())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("the keyring holds no key")]
    Empty,
    #[error("line {line}: not base64: {reason}")]
    NotBase64 { line: usize, reason: String },
    #[error("line {line}: a key must be {KEY_LEN} bytes (44 base64 characters), this one is {len} bytes")]
    WrongLength { line: usize, len: usize },
    #[error("line {line}: the same key as line {first}")]
    Duplicate { line: usize, first: usize },
}

impl Keyring {
    /// The first key encrypts.
    pub fn new(keys: &[[u8; KEY_LEN]]) -> Result<Keyring, KeyringError> {
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        let ciphers: Arc<[Aes256Gcm]> = keys
            .iter()
            .map(|key| Aes256Gcm::new(&(*key).into()))
            .collect();
        Ok(Keyring {
            ciphers: Arc::new(RwLock::new(ciphers)),
        })
    }

    /// Takes `fresh`'s keys, here and in every clone of this keyring.
    pub fn replace(&self, fresh: &Keyring) {
        let keys = fresh.current();
        *self.ciphers.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    fn current(&self) -> Arc<[Aes256Gcm]> {
        self.ciphers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Parses a keyring file: one base64 key a line, `#` starts a comment,
    /// blank lines are skipped; the first key encrypts.
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let mut keys: Vec<([u8; KEY_LEN], usize)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(content)
                .map_err(|e| KeyringError::NotBase64 {
                    line,
                    reason: e.to_string(),
                })?;
            let key: [u8; KEY_LEN] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyringError::WrongLength {
                        line,
                        len: bytes.len(),
                    })?;
            if let Some((_, first)) = keys.iter().find(|(k, _)| *k == key) {
                return Err(KeyringError::Duplicate {
                    line,
                    first: *first,
                });
            }
            keys.push((key, line));
        }
        let keys: Vec<[u8; KEY_LEN]> = keys.into_iter().map(|(k, _)| k).collect();
        Keyring::new(&keys)
    }

    /// A key as it is written in a keyring file.
    pub fn encode_key(key: &[u8; KEY_LEN]) -> String {
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    pub fn len(&self) -> usize {
        self.current().len()
    }

    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    /// Ciphertext with its tag, under the first key: `open`'s input. Only
    /// tests want it allocated; frames are sealed in place.
    #[cfg(test)]
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
        let mut sealed = plaintext.to_vec();
        let tag = self.seal_in_place(nonce, aad, &mut sealed)?;
        sealed.extend_from_slice(&tag);
        Some(sealed)
    }

    /// Encrypts `buffer` in place under the first key and returns the tag:
    /// no allocation, for the packets sent many times a second. The nonce
    /// must never repeat under one key: callers draw it from a CSPRNG.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buffer: &mut [u8],
    ) -> Option<[u8; TAG_LEN]> {
        let ciphers = self.current();
        let tag = ciphers
            .first()?
            .encrypt_inout_detached(&Nonce::from(*nonce), aad, buffer.into())
            .ok()?;
        Some(tag.into())
    }

    /// Decrypts `ciphertext` into `plaintext` (as long) if a key
    /// authenticates it with `tag`; `plaintext` is unspecified otherwise.
    pub fn open_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8; TAG_LEN],
        plaintext: &mut [u8],
    ) -> bool {
        let (nonce, tag) = (Nonce::from(*nonce), Tag::from(*tag));
        self.current().iter().any(|cipher| {
            InOutBuf::new(ciphertext, &mut *plaintext).is_ok_and(|buffer| {
                cipher
                    .decrypt_inout_detached(&nonce, aad, buffer, &tag)
                    .is_ok()
            })
        })
    }

    /// The plaintext of `sealed` (ciphertext, then tag) if any key
    /// authenticates it.
    pub fn open(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (ciphertext, tag) = sealed.split_last_chunk::<TAG_LEN>()?;
        let mut plaintext = vec![0; ciphertext.len()];
        self.open_into(nonce, aad, ciphertext, tag, &mut plaintext)
            .then_some(plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; NONCE_LEN] = [7; NONCE_LEN];

    #[test]
    fn first_key_encrypts_all_keys_decrypt() {
        let old = Keyring::new(&[[1; 32]]).unwrap();
        let rotating = Keyring::new(&[[2; 32], [1; 32]]).unwrap();
        let new_only = Keyring::new(&[[2; 32]]).unwrap();
        let sealed = rotating.seal(&NONCE, b"hdr", b"hello").unwrap();
        assert_eq!(new_only.open(&NONCE, b"hdr", &sealed).unwrap(), b"hello");
        assert!(old.open(&NONCE, b"hdr", &sealed).is_none());
        let from_old = old.seal(&NONCE, b"hdr", b"hi").unwrap();
        assert_eq!(rotating.open(&NONCE, b"hdr", &from_old).unwrap(), b"hi");
    }

    #[test]
    fn in_place_forms_are_aes_gcm_and_rotate_alike() {
        use aes_gcm::aead::{Aead, Payload};
        let rotating = Keyring::new(&[[2; KEY_LEN], [1; KEY_LEN]]).unwrap();
        let old_only = Keyring::new(&[[1; KEY_LEN]]).unwrap();
        let new_only = Keyring::new(&[[2; KEY_LEN]]).unwrap();
        let mut buffer = b"hello".to_vec();
        let tag = rotating.seal_in_place(&NONCE, b"hdr", &mut buffer).unwrap();
        // The one-shot AES-256-GCM of the aead crate, as a reference.
        let reference = Aes256Gcm::new(&[2; KEY_LEN].into())
            .encrypt(
                &Nonce::from(NONCE),
                Payload {
                    msg: b"hello",
                    aad: b"hdr",
                },
            )
            .unwrap();
        assert_eq!([buffer.as_slice(), &tag[..]].concat(), reference);
        assert_eq!(new_only.open(&NONCE, b"hdr", &reference).unwrap(), b"hello");
        let mut out = [0u8; 5];
        assert!(new_only.open_into(&NONCE, b"hdr", &buffer, &tag, &mut out));
        assert_eq!(&out, b"hello");
        assert!(rotating.open_into(&NONCE, b"hdr", &buffer, &tag, &mut out));
        assert!(!old_only.open_into(&NONCE, b"hdr", &buffer, &tag, &mut out));
        assert!(!new_only.open_into(&NONCE, b"other", &buffer, &tag, &mut out));
        let mut short = [0u8; 4];
        assert!(!new_only.open_into(&NONCE, b"hdr", &buffer, &tag, &mut short));
    }

    #[test]
    fn tampering_is_detected() {
        let ring = Keyring::new(&[[9; 32]]).unwrap();
        let mut sealed = ring.seal(&NONCE, b"hdr", b"hello").unwrap();
        assert!(ring.open(&NONCE, b"other", &sealed).is_none());
        sealed[0] ^= 1;
        assert!(ring.open(&NONCE, b"hdr", &sealed).is_none());
    }

    #[test]
    fn parses_keys_comments_and_reports_bad_lines() {
        let a = Keyring::encode_key(&[1; 32]);
        let b = Keyring::encode_key(&[2; 32]);
        let text = format!("# rotated 2026-11\n{a}  # new\n\n  {b}\n");
        assert_eq!(Keyring::parse(&text).unwrap().len(), 2);
        assert_eq!(
            Keyring::parse("# nothing\n").unwrap_err(),
            KeyringError::Empty
        );
        assert!(matches!(
            Keyring::parse(&format!("{a}\n!!!\n")).unwrap_err(),
            KeyringError::NotBase64 { line: 2, .. }
        ));
        assert_eq!(
            Keyring::parse("AAAA\n").unwrap_err(),
            KeyringError::WrongLength { line: 1, len: 3 }
        );
        assert_eq!(
            Keyring::parse(&format!("{a}\n{a}\n")).unwrap_err(),
            KeyringError::Duplicate { line: 2, first: 1 }
        );
        assert_eq!(
            format!("{:?}", Keyring::parse(&a).unwrap()),
            "Keyring(1 keys)"
        );
    }

    #[test]
    fn a_replaced_keyring_changes_every_clone() {
        let old = Keyring::new(&[[1; KEY_LEN]]).unwrap();
        let in_membership = old.clone();
        let nonce = [7; NONCE_LEN];
        let sealed_old = old.seal(&nonce, b"", b"hello").unwrap();
        // Rotation step: the new key first, the old one still accepted.
        old.replace(&Keyring::new(&[[2; KEY_LEN], [1; KEY_LEN]]).unwrap());
        assert_eq!(in_membership.len(), 2);
        let sealed_new = in_membership.seal(&nonce, b"", b"hello").unwrap();
        assert_ne!(sealed_new, sealed_old, "sealed under the new key");
        assert_eq!(
            in_membership.open(&nonce, b"", &sealed_old).unwrap(),
            b"hello"
        );
        // The old key removed: what it sealed no longer opens.
        old.replace(&Keyring::new(&[[2; KEY_LEN]]).unwrap());
        assert_eq!(in_membership.open(&nonce, b"", &sealed_old), None);
        assert_eq!(
            in_membership.open(&nonce, b"", &sealed_new).unwrap(),
            b"hello"
        );
    }
}
