//! Envelope encryption for spool records.
//!
//! Every message has its own random 256-bit data key. Records (content, envelope,
//! recipient state) are sealed with AES-256-GCM under that key; the data key itself is
//! wrapped (AES-256-GCM again) by a master key from the keyring.
//!
//! Sealed record layout: `version(1) | kind(1) | data_key_id(8) | nonce(12) | ciphertext+tag`.
//! Wrapped key layout:   `version(1) | kek_id_len(1) | kek_id | data_key_id(8) | nonce(12) | wrapped(32+16)`.
//!
//! The record AAD binds message ID, record kind and the data key's own ID, so a blob
//! moved to another message, relabelled as another kind or paired with another key fails
//! authentication. It deliberately does not bind the master key ID: rewrapping under a new
//! master key then never needs to touch content blobs. The wrap AAD binds message ID,
//! master key ID and data key ID, so a wrapped key cannot be moved or relabelled either.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;
use zeroize::Zeroizing;

use super::keys::{Keyring, MasterKey};
use crate::types::MessageId;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const DK_ID_LEN: usize = 8;
const RECORD_AAD_TAG: &[u8] = b"phigate-spool-record-v1";
const WRAP_AAD_TAG: &[u8] = b"phigate-spool-wrap-v1";

/// What a sealed record holds; part of the AAD so records cannot be relabelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Content = 1,
    Envelope = 2,
    State = 3,
}

/// Why a record or wrapped key could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Authentication failed or the framing does not match: tampered, swapped or corrupt.
    #[error("record failed authentication")]
    Auth,
    /// The wrapping master key is not in the keyring.
    #[error("master key {0} is not in the keyring")]
    MissingKey(String),
}

/// A per-message data key. The key bytes are wiped on drop.
pub struct DataKey {
    id: [u8; DK_ID_LEN],
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", hex::encode(self.id))
    }
}

impl DataKey {
    /// A fresh random data key from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut rng = rand::rngs::OsRng;
        let mut id = [0u8; DK_ID_LEN];
        rng.fill_bytes(&mut id);
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        DataKey { id, key }
    }

    /// The key bytes, for deriving the blob chunk key.
    pub(super) fn bytes(&self) -> &[u8] {
        self.key.as_ref()
    }

    /// The key's ID (bound into every record and chunk it seals).
    pub(super) fn id(&self) -> &[u8] {
        &self.id
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.key.as_ref()))
    }
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

fn record_aad(msg: &MessageId, kind: RecordKind, dk_id: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(RECORD_AAD_TAG.len() + 1 + 16 + DK_ID_LEN);
    aad.extend_from_slice(RECORD_AAD_TAG);
    aad.push(kind as u8);
    aad.extend_from_slice(&msg.0.to_bytes());
    aad.extend_from_slice(dk_id);
    aad
}

fn wrap_aad(msg: &MessageId, kek_id: &str, dk_id: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(WRAP_AAD_TAG.len() + 16 + 1 + kek_id.len() + DK_ID_LEN);
    aad.extend_from_slice(WRAP_AAD_TAG);
    aad.extend_from_slice(&msg.0.to_bytes());
    aad.push(kek_id.len() as u8);
    aad.extend_from_slice(kek_id.as_bytes());
    aad.extend_from_slice(dk_id);
    aad
}

const HEADER_LEN: usize = 2 + DK_ID_LEN + NONCE_LEN;

/// Seal `plaintext` as a record of `kind` belonging to message `msg`.
pub fn seal(dk: &DataKey, msg: &MessageId, kind: RecordKind, plaintext: &[u8]) -> Vec<u8> {
    // Room for header and tag up front: sealing in place never reallocates, so no
    // stray plaintext copy is left behind in freed memory.
    let mut buf = Vec::with_capacity(HEADER_LEN + plaintext.len() + 16);
    buf.extend_from_slice(plaintext);
    seal_owned(dk, msg, kind, buf)
}

/// [`seal`] in place: the ciphertext takes over `plaintext`'s buffer.
pub fn seal_owned(dk: &DataKey, msg: &MessageId, kind: RecordKind, plaintext: Vec<u8>) -> Vec<u8> {
    use aes_gcm::aead::AeadInPlace;
    let nonce = random_nonce();
    let aad = record_aad(msg, kind, &dk.id);
    let mut buf = plaintext;
    // Encryption with a valid 32-byte key and 12-byte nonce only fails for inputs beyond
    // AES-GCM's ~64 GB limit, far above any SMTP size limit; never return plaintext.
    if dk
        .cipher()
        .encrypt_in_place(Nonce::from_slice(&nonce), &aad, &mut buf)
        .is_err()
    {
        return Vec::new();
    }
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.push(VERSION);
    header.push(kind as u8);
    header.extend_from_slice(&dk.id);
    header.extend_from_slice(&nonce);
    buf.splice(0..0, header);
    buf
}

/// Open a record sealed by [`seal`]; any mismatch of message, kind, key or bytes is `Auth`.
pub fn open(
    dk: &DataKey,
    msg: &MessageId,
    kind: RecordKind,
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    open_owned(dk, msg, kind, blob.to_vec())
}

/// [`open`] in place: the plaintext reuses `blob`'s buffer, so a large message is never
/// held twice while it is decrypted.
pub fn open_owned(
    dk: &DataKey,
    msg: &MessageId,
    kind: RecordKind,
    mut blob: Vec<u8>,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    use aes_gcm::aead::AeadInPlace;
    if blob.len() < HEADER_LEN + 16
        || blob[0] != VERSION
        || blob[1] != kind as u8
        || blob[2..2 + DK_ID_LEN] != dk.id
    {
        return Err(CryptoError::Auth);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&blob[2 + DK_ID_LEN..HEADER_LEN]);
    blob.drain(..HEADER_LEN);
    let mut blob = Zeroizing::new(blob);
    let aad = record_aad(msg, kind, &dk.id);
    dk.cipher()
        .decrypt_in_place(Nonce::from_slice(&nonce), &aad, &mut *blob)
        .map_err(|_| CryptoError::Auth)?;
    Ok(blob)
}

/// Wrap a data key for message `msg` under master key `kek`.
pub fn wrap(kek: &MasterKey, msg: &MessageId, dk: &DataKey) -> Vec<u8> {
    let nonce = random_nonce();
    let aad = wrap_aad(msg, kek.id(), &dk.id);
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(kek.bytes()));
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: dk.key.as_ref(),
                aad: &aad,
            },
        )
        .unwrap_or_default();
    let kid = kek.id().as_bytes();
    let mut out = Vec::with_capacity(2 + kid.len() + DK_ID_LEN + NONCE_LEN + ct.len());
    out.push(VERSION);
    out.push(kid.len() as u8);
    out.extend_from_slice(kid);
    out.extend_from_slice(&dk.id);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// The master key ID a wrapped key names, without unwrapping it.
pub fn wrapped_kek_id(wrapped: &[u8]) -> Result<&str, CryptoError> {
    let len = *wrapped.get(1).ok_or(CryptoError::Auth)? as usize;
    if wrapped[0] != VERSION {
        return Err(CryptoError::Auth);
    }
    let id = wrapped.get(2..2 + len).ok_or(CryptoError::Auth)?;
    std::str::from_utf8(id).map_err(|_| CryptoError::Auth)
}

/// Unwrap a data key with whichever keyring key the record names.
pub fn unwrap(keyring: &Keyring, msg: &MessageId, wrapped: &[u8]) -> Result<DataKey, CryptoError> {
    let kek_id = wrapped_kek_id(wrapped)?;
    let kek = keyring
        .get(kek_id)
        .ok_or_else(|| CryptoError::MissingKey(kek_id.to_string()))?;
    let start = 2 + kek_id.len();
    let body = &wrapped[start..];
    if body.len() != DK_ID_LEN + NONCE_LEN + 32 + 16 {
        return Err(CryptoError::Auth);
    }
    let mut id = [0u8; DK_ID_LEN];
    id.copy_from_slice(&body[..DK_ID_LEN]);
    let nonce = &body[DK_ID_LEN..DK_ID_LEN + NONCE_LEN];
    let aad = wrap_aad(msg, kek_id, &id);
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(kek.bytes()));
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: &body[DK_ID_LEN + NONCE_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Auth)?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&plain);
    Ok(DataKey { id, key })
}

/// `nonce(12) | ciphertext+tag` under a derived 256-bit key with caller-chosen AAD: the
/// layout of the audit trail's and the event store's sealed person fields.
pub fn seal_detached(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    // Only fails past AES-GCM's 64 GB message limit.
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
        .unwrap_or_default();
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    out
}

/// Open what `seal_detached` wrote; None if it is short, tampered or under another key/AAD.
pub fn open_detached(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip() {
        let dk = DataKey::generate();
        let id = MessageId::new();
        let blob = seal(&dk, &id, RecordKind::Content, b"hello world");
        let plain = open(&dk, &id, RecordKind::Content, &blob).expect("open");
        assert_eq!(plain.as_slice(), b"hello world");
        assert!(!blob.windows(11).any(|w| w == b"hello world"));
    }

    #[test]
    fn flipped_byte_kind_and_message_are_detected() {
        let dk = DataKey::generate();
        let id = MessageId::new();
        let mut blob = seal(&dk, &id, RecordKind::Content, b"secret");
        assert_eq!(
            open(&dk, &id, RecordKind::Envelope, &blob),
            Err(CryptoError::Auth)
        );
        assert_eq!(
            open(&dk, &MessageId::new(), RecordKind::Content, &blob),
            Err(CryptoError::Auth)
        );
        let last = blob.len() - 1;
        blob[last] ^= 1;
        assert_eq!(
            open(&dk, &id, RecordKind::Content, &blob),
            Err(CryptoError::Auth)
        );
    }

    #[test]
    fn wrap_unwrap_and_tamper() {
        let ring = Keyring::generate();
        let id = MessageId::new();
        let dk = DataKey::generate();
        let w = wrap(ring.current(), &id, &dk);
        let back = unwrap(&ring, &id, &w).expect("unwrap");
        assert_eq!(back.key.as_ref(), dk.key.as_ref());
        assert_eq!(
            unwrap(&ring, &MessageId::new(), &w).err(),
            Some(CryptoError::Auth)
        );
        let mut bad = w.clone();
        let n = bad.len() - 5;
        bad[n] ^= 0x40;
        assert_eq!(unwrap(&ring, &id, &bad).err(), Some(CryptoError::Auth));
        let other = Keyring::generate();
        assert!(matches!(
            unwrap(&other, &id, &w),
            Err(CryptoError::MissingKey(_))
        ));
    }
}
