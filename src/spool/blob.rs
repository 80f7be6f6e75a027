//! Large message content outside the metadata store, in chunked AES-256-GCM files.
//!
//! sled copies a value on insert and again on every get, and a large transaction is where
//! it hung on a full disk; content over [`INLINE_MAX`] therefore goes to
//! `<spool>/blobs/<id>.blob` (format in docs/blob-format.md). The file is written to a
//! temporary name, fsynced, renamed and its directory fsynced before the records that
//! reference it are committed, so a durable record never points at a missing file (sled
//! flushes on its own timer too, so this cannot wait for the group commit). A crash in
//! between leaves an orphan that [`Blobs::sweep`] removes at start-up; crypto-shredding is
//! still the deletion of the wrapped data key, the file going soon after.
//!
//! Chunk keys are derived from the message's data key, and each chunk's AAD binds message
//! ID, data key ID, chunk index and chunk count, so chunks cannot be reordered, dropped,
//! truncated, or moved to another message.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, Key, KeyInit, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::crypto::DataKey;
use crate::types::MessageId;

/// Content up to this size stays in the metadata store (one group-committed write).
pub const INLINE_MAX: usize = 256 * 1024;
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const MAGIC: &[u8; 8] = b"PHGBLOB1";
const HEADER_LEN: usize = 32;
const TAG_LEN: usize = 16;
const AAD_TAG: &[u8] = b"phigate-blob-chunk-v1";
const KEY_LABEL: &[u8] = b"phigate blob chunk key v1";

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A chunk failed authentication, or the framing does not add up.
    #[error("blob failed authentication")]
    Auth,
}

/// The chunk cipher of one message: a key derived from its data key (HMAC-SHA256), so
/// chunk nonces (the chunk index) never meet the data key's own random-nonce records.
fn chunk_cipher(dk: &DataKey) -> Aes256Gcm {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(dk.bytes()).expect("HMAC accepts keys of any length");
    mac.update(KEY_LABEL);
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&mac.finalize().into_bytes());
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_ref()))
}

fn nonce(index: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&index.to_be_bytes());
    n
}

fn aad(id: &MessageId, dk: &DataKey, index: u32, count: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_TAG.len() + 16 + 8 + 8);
    a.extend_from_slice(AAD_TAG);
    a.extend_from_slice(&id.0.to_bytes());
    a.extend_from_slice(dk.id());
    a.extend_from_slice(&index.to_be_bytes());
    a.extend_from_slice(&count.to_be_bytes());
    a
}

fn chunks_for(len: usize) -> Option<u32> {
    u32::try_from(len.div_ceil(CHUNK).max(1)).ok()
}

/// The blob directory of one spool.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    pub fn open(spool_dir: &Path) -> io::Result<Blobs> {
        let dir = spool_dir.join("blobs");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Blobs { dir })
    }

    fn path(&self, id: &MessageId) -> PathBuf {
        self.dir.join(format!("{id}.blob"))
    }

    /// Seal `content` into `id`'s file, durable (file and directory synced) on return.
    /// On error no file is left behind.
    pub fn write(&self, id: &MessageId, dk: &DataKey, content: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{id}.tmp"));
        let res = self.write_to(&tmp, id, dk, content).and_then(|()| {
            std::fs::rename(&tmp, self.path(id))?;
            File::open(&self.dir)?.sync_all()
        });
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    fn write_to(&self, tmp: &Path, id: &MessageId, dk: &DataKey, content: &[u8]) -> io::Result<()> {
        let count = chunks_for(content.len()).ok_or_else(|| io::Error::other("blob too large"))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)?;
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&(CHUNK as u32).to_be_bytes());
        header[12..16].copy_from_slice(&count.to_be_bytes());
        header[16..24].copy_from_slice(&(content.len() as u64).to_be_bytes());
        let mut out = io::BufWriter::with_capacity(CHUNK + TAG_LEN, &mut f);
        out.write_all(&header)?;
        let cipher = chunk_cipher(dk);
        // One chunk-sized buffer, wiped on drop: plaintext never lingers in freed memory.
        let mut buf = Zeroizing::new(Vec::with_capacity(CHUNK));
        for index in 0..count {
            let start = index as usize * CHUNK;
            let end = (start + CHUNK).min(content.len());
            buf.clear();
            buf.extend_from_slice(&content[start..end]);
            let tag = cipher
                .encrypt_in_place_detached(
                    Nonce::from_slice(&nonce(index)),
                    &aad(id, dk, index, count),
                    &mut buf,
                )
                .map_err(|_| io::Error::other("chunk encryption failed"))?;
            out.write_all(&buf)?;
            out.write_all(&tag)?;
        }
        out.flush()?;
        drop(out);
        f.sync_all()
    }

    /// Open and authenticate `id`'s content.
    pub fn read(&self, id: &MessageId, dk: &DataKey) -> Result<Vec<u8>, BlobError> {
        let f = File::open(self.path(id))?;
        let len = f.metadata()?.len();
        decode(f, len, id, dk)
    }

    /// Remove `id`'s file (gone already is fine).
    pub fn remove(&self, id: &MessageId) {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(msg_id = %id, error = %e, "blob file not removed"),
        }
    }

    /// Remove temporary files and every blob `keep` does not claim (crash leftovers and
    /// shredded messages' files). Returns how many files went.
    pub fn sweep(&self, keep: impl Fn(&MessageId) -> bool) -> io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let orphan = match name.strip_suffix(".blob") {
                Some(id) => !id.parse().is_ok_and(|id| keep(&id)),
                None => name.ends_with(".tmp"),
            };
            if orphan && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Authenticate and decrypt a blob of `file_len` bytes read from `f` (a file, or bytes
/// under test). The header's length is checked against `file_len` before anything is
/// allocated for it, so a forged header cannot make phigate allocate.
pub fn decode(
    mut f: impl Read,
    file_len: u64,
    id: &MessageId,
    dk: &DataKey,
) -> Result<Vec<u8>, BlobError> {
    let mut header = [0u8; HEADER_LEN];
    f.read_exact(&mut header).map_err(|_| BlobError::Auth)?;
    let field = |r: std::ops::Range<usize>| header.get(r).unwrap_or_default();
    let u32_at = |r| u32::from_be_bytes(field(r).try_into().unwrap_or_default());
    if field(0..8) != MAGIC || u32_at(8..12) as usize != CHUNK {
        return Err(BlobError::Auth);
    }
    let count = u32_at(12..16);
    let len = u64::from_be_bytes(field(16..24).try_into().unwrap_or_default());
    let expect = (HEADER_LEN as u64)
        .checked_add(len)
        .and_then(|n| n.checked_add(u64::from(count) * TAG_LEN as u64));
    let len = usize::try_from(len).map_err(|_| BlobError::Auth)?;
    if chunks_for(len) != Some(count) || expect != Some(file_len) {
        return Err(BlobError::Auth);
    }
    let cipher = chunk_cipher(dk);
    let mut content = vec![0u8; len];
    let mut tag = [0u8; TAG_LEN];
    for index in 0..count {
        let start = index as usize * CHUNK;
        let end = (start + CHUNK).min(len);
        let chunk = &mut content[start..end];
        f.read_exact(chunk).map_err(|_| BlobError::Auth)?;
        f.read_exact(&mut tag).map_err(|_| BlobError::Auth)?;
        cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce(index)),
                &aad(id, dk, index, count),
                chunk,
                Tag::from_slice(&tag),
            )
            .map_err(|_| BlobError::Auth)?;
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_chunk_edges() {
        let dir = tempfile::tempdir().expect("tmp");
        let blobs = Blobs::open(dir.path()).expect("open");
        let dk = DataKey::generate();
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let id = MessageId::new();
            let c = content(n);
            blobs.write(&id, &dk, &c).expect("write");
            assert_eq!(blobs.read(&id, &dk).expect("read"), c, "{n} bytes");
        }
    }

    #[test]
    fn tampering_reordering_truncation_and_swaps_fail() {
        let dir = tempfile::tempdir().expect("tmp");
        let blobs = Blobs::open(dir.path()).expect("open");
        let dk = DataKey::generate();
        let (a, b) = (MessageId::new(), MessageId::new());
        let c = content(3 * CHUNK);
        blobs.write(&a, &dk, &c).expect("write");
        blobs.write(&b, &dk, &c).expect("write");
        let raw = std::fs::read(blobs.path(&a)).expect("raw");
        let plain = c[..64].to_vec();
        assert!(
            !raw.windows(64).any(|w| w == plain.as_slice()),
            "plaintext on disk"
        );
        let check = |bytes: &[u8], what: &str| {
            std::fs::write(blobs.path(&a), bytes).expect("write");
            assert!(
                matches!(blobs.read(&a, &dk), Err(BlobError::Auth)),
                "{what} went unnoticed"
            );
        };
        let mut flipped = raw.clone();
        flipped[HEADER_LEN + 5] ^= 1;
        check(&flipped, "a flipped bit");
        let step = CHUNK + TAG_LEN;
        let mut swapped = raw.clone();
        let (first, second) = (
            HEADER_LEN..HEADER_LEN + step,
            HEADER_LEN + step..HEADER_LEN + 2 * step,
        );
        let one = raw[first.clone()].to_vec();
        swapped[first].copy_from_slice(&raw[second.clone()]);
        swapped[second].copy_from_slice(&one);
        check(&swapped, "reordered chunks");
        check(&raw[..raw.len() - step], "a dropped last chunk");
        let mut fewer = raw[..raw.len() - step].to_vec();
        fewer[12..16].copy_from_slice(&2u32.to_be_bytes());
        fewer[16..24].copy_from_slice(&((2 * CHUNK) as u64).to_be_bytes());
        check(&fewer, "a truncated blob with a matching header");
        check(
            &std::fs::read(blobs.path(&b)).expect("b"),
            "another message's blob",
        );
        std::fs::write(blobs.path(&a), &raw).expect("restore");
        assert!(matches!(
            blobs.read(&a, &DataKey::generate()),
            Err(BlobError::Auth)
        ));
        assert_eq!(blobs.read(&a, &dk).expect("intact"), c);
    }

    #[test]
    fn sweep_keeps_only_claimed_blobs() {
        let dir = tempfile::tempdir().expect("tmp");
        let blobs = Blobs::open(dir.path()).expect("open");
        let dk = DataKey::generate();
        let (kept, orphan) = (MessageId::new(), MessageId::new());
        blobs.write(&kept, &dk, b"keep").expect("write");
        blobs.write(&orphan, &dk, b"orphan").expect("write");
        std::fs::write(blobs.dir.join(format!("{}.tmp", MessageId::new())), b"x").expect("tmp");
        assert_eq!(blobs.sweep(|id| *id == kept).expect("sweep"), 2);
        assert!(blobs.read(&kept, &dk).is_ok());
        assert!(blobs.read(&orphan, &dk).is_err());
    }
}
