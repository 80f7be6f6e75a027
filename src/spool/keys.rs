//! Master keys (key-encryption keys) and the keyring file that holds them.
//!
//! File format (TOML), mode 0600 or stricter:
//! ```toml
//! current = "3f9c0a1b2c3d4e5f"
//! [[keys]]
//! id = "3f9c0a1b2c3d4e5f"
//! created = 1700000000
//! key = "<base64 of 32 bytes>"
//! ```

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::types::now_secs;

/// Errors reading, checking or writing a keyring.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("keyring {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("keyring {path} has mode {mode:04o}; it must not be readable or writable by group or others (chmod 600)")]
    InsecureMode { path: PathBuf, mode: u32 },
    #[error("keyring {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("keyring {0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("$CREDENTIALS_DIRECTORY is not set (no systemd LoadCredential)")]
    NoCredentialsDirectory,
    #[error("key {0} is not in the keyring")]
    UnknownKey(String),
    #[error("key {0} is the current key and cannot be removed")]
    RemoveCurrent(String),
}

/// One master key. The bytes are wiped on drop and never printed.
pub struct MasterKey {
    id: String,
    created: u64,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({}, created {})", self.id, self.created)
    }
}

impl MasterKey {
    fn generate() -> Self {
        let mut rng = rand::rngs::OsRng;
        let mut raw_id = [0u8; 8];
        rng.fill_bytes(&mut raw_id);
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        MasterKey {
            id: hex::encode(raw_id),
            created: now_secs(),
            key,
        }
    }

    /// A master key with caller-provided bytes (tests, imports).
    pub fn from_bytes(id: &str, created: u64, bytes: [u8; 32]) -> Self {
        MasterKey {
            id: id.to_string(),
            created,
            key: Zeroizing::new(bytes),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn created(&self) -> u64 {
        self.created
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// Key check value: HMAC of a fixed label, so a store can tell a wrong key with the
    /// right ID at start-up without revealing anything about the key.
    pub(crate) fn check_value(&self) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(b"phigate-master-key-check-v1");
        mac.finalize().into_bytes()[..16].to_vec()
    }
}

/// What `phigate keys list` shows: never key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub created: u64,
    pub current: bool,
}

/// The set of master keys; exactly one is current and wraps new messages.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<MasterKey>,
    current: usize,
}

#[derive(Serialize, Deserialize)]
struct FileKey {
    id: String,
    created: u64,
    key: String,
}

#[derive(Serialize, Deserialize)]
struct FileRing {
    current: String,
    keys: Vec<FileKey>,
}

impl Drop for FileRing {
    fn drop(&mut self) {
        for k in &mut self.keys {
            k.key.zeroize();
        }
    }
}

impl Keyring {
    /// A new in-memory keyring with one fresh current key.
    pub fn generate() -> Self {
        Keyring {
            keys: vec![MasterKey::generate()],
            current: 0,
        }
    }

    /// Build from explicit keys; `current` must be one of their IDs.
    pub fn from_keys(keys: Vec<MasterKey>, current: &str) -> Result<Self, KeyringError> {
        let idx = keys
            .iter()
            .position(|k| k.id == current)
            .ok_or_else(|| KeyringError::UnknownKey(current.to_string()))?;
        Ok(Keyring { keys, current: idx })
    }

    pub fn current(&self) -> &MasterKey {
        &self.keys[self.current]
    }

    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn keys(&self) -> impl Iterator<Item = &MasterKey> {
        self.keys.iter()
    }

    pub fn list(&self) -> Vec<KeyInfo> {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| KeyInfo {
                id: k.id.clone(),
                created: k.created,
                current: i == self.current,
            })
            .collect()
    }

    /// Add a fresh key and make it current; older keys stay to open older messages.
    pub fn rotate(&mut self) -> &MasterKey {
        self.keys.push(MasterKey::generate());
        self.current = self.keys.len() - 1;
        &self.keys[self.current]
    }

    /// Drop a retired key. Check `Spool::key_usage` first: messages it wraps become unreadable.
    pub fn remove(&mut self, id: &str) -> Result<(), KeyringError> {
        let idx = self
            .keys
            .iter()
            .position(|k| k.id == id)
            .ok_or_else(|| KeyringError::UnknownKey(id.to_string()))?;
        if idx == self.current {
            return Err(KeyringError::RemoveCurrent(id.to_string()));
        }
        self.keys.remove(idx);
        if idx < self.current {
            self.current -= 1;
        }
        Ok(())
    }

    /// Load a keyring file, refusing one that group or others may read or write.
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        let io = |source| KeyringError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyringError::InsecureMode {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(io)?);
        Self::parse(&text, path)
    }

    /// Load `$CREDENTIALS_DIRECTORY/<name>` (systemd `LoadCredential=`).
    pub fn load_credential(name: &str) -> Result<Self, KeyringError> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
            .ok_or(KeyringError::NoCredentialsDirectory)?;
        Self::load(&Path::new(&dir).join(name))
    }

    fn parse(text: &str, path: &Path) -> Result<Self, KeyringError> {
        let bad = |reason: String| KeyringError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        // toml's error text can quote the offending line, which may hold key material.
        let file: FileRing =
            toml::from_str(text).map_err(|_| bad("not a valid keyring TOML file".into()))?;
        let mut keys = Vec::with_capacity(file.keys.len());
        for fk in &file.keys {
            let raw = Zeroizing::new(
                B64.decode(fk.key.trim())
                    .map_err(|_| bad(format!("key {} is not base64", fk.id)))?,
            );
            if raw.len() != 32 {
                return Err(bad(format!("key {} is not 32 bytes", fk.id)));
            }
            if fk.id.is_empty()
                || fk.id.len() > 64
                || !fk.id.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(bad("key IDs must be 1-64 ASCII letters or digits".into()));
            }
            if keys.iter().any(|k: &MasterKey| k.id == fk.id) {
                return Err(bad(format!("duplicate key id {}", fk.id)));
            }
            let mut bytes = Zeroizing::new([0u8; 32]);
            bytes.copy_from_slice(&raw);
            keys.push(MasterKey {
                id: fk.id.clone(),
                created: fk.created,
                key: bytes,
            });
        }
        Self::from_keys(keys, &file.current)
            .map_err(|_| bad(format!("current key {} is not listed", file.current)))
    }

    fn to_toml(&self) -> Zeroizing<String> {
        let file = FileRing {
            current: self.current().id.clone(),
            keys: self
                .keys
                .iter()
                .map(|k| FileKey {
                    id: k.id.clone(),
                    created: k.created,
                    key: B64.encode(k.key.as_ref()),
                })
                .collect(),
        };
        Zeroizing::new(toml::to_string(&file).unwrap_or_default())
    }

    /// Write to a new file with mode 0600; never overwrites an existing file.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyringError> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyringError::Exists(path.to_path_buf())
                } else {
                    KeyringError::Io {
                        path: path.to_path_buf(),
                        source: e,
                    }
                }
            })?;
        let text = self.to_toml();
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|source| KeyringError::Io {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Replace an existing keyring file atomically (temp file 0600, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), KeyringError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let _ = fs::remove_file(&tmp);
        self.save_new(&tmp)?;
        fs::rename(&tmp, path).map_err(|source| KeyringError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// `phigate keys generate`: create a new keyring file with one key.
pub fn generate_file(path: &Path) -> Result<KeyInfo, KeyringError> {
    let ring = Keyring::generate();
    ring.save_new(path)?;
    Ok(ring.list().remove(0))
}

/// `phigate keys rotate`: add a new current key to an existing keyring file.
pub fn rotate_file(path: &Path) -> Result<KeyInfo, KeyringError> {
    let mut ring = Keyring::load(path)?;
    ring.rotate();
    ring.save(path)?;
    let cur = ring.current();
    Ok(KeyInfo {
        id: cur.id.clone(),
        created: cur.created,
        current: true,
    })
}

/// `phigate keys retire ID`: remove a key from the keyring file.
pub fn remove_from_file(path: &Path, id: &str) -> Result<(), KeyringError> {
    let mut ring = Keyring::load(path)?;
    ring.remove(id)?;
    ring.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_save_load_round_trip_and_no_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.toml");
        let info = generate_file(&path).expect("generate");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let ring = Keyring::load(&path).expect("load");
        assert_eq!(ring.current().id(), info.id);
        assert!(matches!(generate_file(&path), Err(KeyringError::Exists(_))));
        let rotated = rotate_file(&path).expect("rotate");
        let ring2 = Keyring::load(&path).expect("load2");
        assert_eq!(ring2.current().id(), rotated.id);
        assert_eq!(ring2.list().len(), 2);
        assert_eq!(
            ring2.get(&info.id).map(|k| *k.bytes()),
            Some(*ring.current().bytes())
        );
    }

    #[test]
    fn world_readable_keyring_is_refused_with_name_and_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.toml");
        generate_file(&path).expect("generate");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Keyring::load(&path).expect_err("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("0644"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    #[test]
    fn current_key_cannot_be_removed() {
        let mut ring = Keyring::generate();
        let old = ring.current().id().to_string();
        ring.rotate();
        let cur = ring.current().id().to_string();
        assert!(matches!(
            ring.remove(&cur),
            Err(KeyringError::RemoveCurrent(_))
        ));
        ring.remove(&old).expect("remove old");
        assert_eq!(ring.current().id(), cur);
    }

    #[test]
    fn credentials_directory_is_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("phigate-keys");
        let info = generate_file(&path).expect("generate");
        std::env::set_var("CREDENTIALS_DIRECTORY", dir.path());
        let ring = Keyring::load_credential("phigate-keys").expect("load");
        assert_eq!(ring.current().id(), info.id);
    }
}
