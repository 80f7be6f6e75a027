//! Who may relay: the SMTP AUTH users file (argon2id), the AUTH failure limiter, and
//! the client-certificate allow list.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}, line {line}: {message}")]
    Format {
        file: String,
        line: usize,
        message: String,
    },
    #[error("invalid user name `{0}`: use letters, digits, '.', '_', '-' and '@'")]
    BadName(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// The users file: one `name:$argon2id$...` line per user, `#` comments allowed.
#[derive(Debug, Default, Clone)]
pub struct Users {
    users: BTreeMap<String, String>,
}

impl Users {
    /// Load `path`; a missing file is an empty user list.
    pub fn load(path: &Path) -> Result<Users, AuthError> {
        let file = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Users::default()),
            Err(source) => return Err(AuthError::Io { file, source }),
        };
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = line.split_once(':').ok_or_else(|| AuthError::Format {
                file: file.clone(),
                line: i + 1,
                message: "expected name:argon2id-hash".into(),
            })?;
            if PasswordHash::new(hash).is_err() {
                return Err(AuthError::Format {
                    file: file.clone(),
                    line: i + 1,
                    message: format!("user `{name}`: not a PHC password hash"),
                });
            }
            users.insert(name.to_string(), hash.to_string());
        }
        Ok(Users { users })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// Check a password. Unknown users cost as much as known ones, so timing does not
    /// reveal which names exist.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Bm1XyVS8rJRjYxhbn/ffIGXjWhDpCgSSCqb+Ugbcf6M";
        let (hash, known) = match self.users.get(name) {
            Some(h) => (h.as_str(), true),
            None => (DUMMY, false),
        };
        let ok = PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known
    }

    /// Add or replace a user with an argon2id hash of `password`.
    pub fn set(&mut self, name: &str, password: &str) -> Result<(), AuthError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        {
            return Err(AuthError::BadName(name.to_string()));
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| AuthError::Hash(e.to_string()))?
            .to_string();
        self.users.insert(name.to_string(), hash);
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> bool {
        self.users.remove(name).is_some()
    }

    /// Write atomically (temp file + rename), mode 0640.
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = path.display().to_string();
        let io = |source| AuthError::Io {
            file: file.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp: PathBuf = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)
            .map_err(io)?;
        writeln!(
            f,
            "# phigate users: name:argon2id-hash. Edit with `phigate user`."
        )
        .map_err(io)?;
        for (n, h) in &self.users {
            writeln!(f, "{n}:{h}").map_err(io)?;
        }
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// Slows down and then cuts off IPs that keep failing AUTH.
#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    lockout: Duration,
    state: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// What the limiter says about an IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitVerdict {
    /// Go on, after waiting this long (grows with each failure).
    Allow(Duration),
    /// Cut off until the lockout expires.
    Blocked,
}

impl FailureLimiter {
    pub fn new(max_failures: u32, lockout: Duration) -> Self {
        FailureLimiter {
            max_failures: max_failures.max(1),
            lockout,
            state: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn check(&self, ip: IpAddr) -> LimitVerdict {
        let mut map = self.lock();
        match map.get(&ip).copied() {
            Some((_, last)) if last.elapsed() > self.lockout => {
                map.remove(&ip);
                LimitVerdict::Allow(Duration::ZERO)
            }
            Some((n, _)) if n >= self.max_failures => LimitVerdict::Blocked,
            // Each earlier failure adds a second, capped, to slow guessing down.
            Some((n, _)) => LimitVerdict::Allow(Duration::from_secs(u64::from(n).min(5))),
            None => LimitVerdict::Allow(Duration::ZERO),
        }
    }

    /// Record a failure; returns true when the IP is now cut off.
    pub fn fail(&self, ip: IpAddr) -> bool {
        let mut map = self.lock();
        if map.len() > 100_000 {
            // Bound memory under a distributed attack: forget the oldest half.
            let mut v: Vec<_> = map.iter().map(|(k, (_, t))| (*t, *k)).collect();
            v.sort();
            for (_, k) in v.into_iter().take(50_000) {
                map.remove(&k);
            }
        }
        let e = map.entry(ip).or_insert((0, Instant::now()));
        e.0 += 1;
        e.1 = Instant::now();
        e.0 >= self.max_failures
    }

    pub fn succeed(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }
}

/// Does a verified client certificate (subject CN, SHA-256 hex) pass the allow list?
/// An empty list allows every certificate that chains to the client CA.
pub fn client_cert_allowed(allow: &[String], cn: Option<&str>, sha256_hex: &str) -> bool {
    if allow.is_empty() {
        return true;
    }
    allow.iter().any(|a| match a.strip_prefix("sha256:") {
        Some(fp) => fp.replace(':', "").eq_ignore_ascii_case(sha256_hex),
        None => cn == Some(a.as_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        let mut u = Users::load(&p).unwrap();
        u.set("ehr", "s3cret").unwrap();
        u.save(&p).unwrap();
        let u = Users::load(&p).unwrap();
        assert!(u.verify("ehr", "s3cret"));
        assert!(!u.verify("ehr", "wrong"));
        assert!(!u.verify("nobody", "s3cret"));
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("$argon2id$") && !text.contains("s3cret"));
        assert!(Users::default().set("bad name", "x").is_err());
    }

    #[test]
    fn corrupt_users_file_names_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        std::fs::write(&p, "# c\nalice:nothash\n").unwrap();
        let e = Users::load(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("alice"), "{e}");
    }

    #[test]
    fn limiter_slows_then_blocks() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(l.check(ip), LimitVerdict::Allow(Duration::ZERO));
        assert!(!l.fail(ip));
        assert_eq!(l.check(ip), LimitVerdict::Allow(Duration::from_secs(1)));
        assert!(!l.fail(ip));
        assert!(l.fail(ip));
        assert_eq!(l.check(ip), LimitVerdict::Blocked);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(l.check(other), LimitVerdict::Allow(Duration::ZERO));
    }

    #[test]
    fn cert_allow_list() {
        assert!(client_cert_allowed(&[], None, "ab"));
        let allow = vec!["ehr-01".to_string(), "sha256:AB:CD".to_string()];
        assert!(client_cert_allowed(&allow, Some("ehr-01"), "ff"));
        assert!(client_cert_allowed(&allow, None, "abcd"));
        assert!(!client_cert_allowed(&allow, Some("ehr-02"), "ff"));
    }
}
