//! Sealing of an event's person fields: AES-256-GCM under a key derived (HKDF-SHA256,
//! own label) from a spool master key, AAD = tag ++ cursor so a sealed blob cannot be
//! moved to another event.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::spool::MasterKey;

const SALT: &[u8] = b"phigate-events-v1";
const TAG: &[u8] = b"phigate-events-seal-v1";

pub(crate) struct EventKey(Zeroizing<[u8; 32]>);

impl EventKey {
    pub(crate) fn derive(master: &MasterKey) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(SALT), master.bytes());
        let mut k = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF's output limit.
        let _ = hk.expand(b"events-encryption", k.as_mut());
        EventKey(k)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.0.as_ref()))
    }

    pub(crate) fn seal(&self, cursor: u64, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = aad(cursor);
        // Only fails past AES-GCM's 64 GB message limit.
        let ct = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    pub(crate) fn open(&self, cursor: u64, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < 12 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(12);
        let aad = aad(cursor);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .ok()
            .map(Zeroizing::new)
    }
}

fn aad(cursor: u64) -> Vec<u8> {
    let mut a = TAG.to_vec();
    a.extend_from_slice(&cursor.to_be_bytes());
    a
}
