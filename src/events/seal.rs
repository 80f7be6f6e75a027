//! Sealing of an event's person fields: AES-256-GCM under a key derived (HKDF-SHA256,
//! own label) from a spool master key, AAD = tag ++ cursor so a sealed blob cannot be
//! moved to another event.

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

    pub(crate) fn seal(&self, cursor: u64, plain: &[u8]) -> Vec<u8> {
        crate::spool::crypto::seal_detached(&self.0, &aad(cursor), plain)
    }

    pub(crate) fn open(&self, cursor: u64, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        crate::spool::crypto::open_detached(&self.0, &aad(cursor), sealed)
    }
}

fn aad(cursor: u64) -> Vec<u8> {
    let mut a = TAG.to_vec();
    a.extend_from_slice(&cursor.to_be_bytes());
    a
}
