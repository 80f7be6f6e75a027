//! Two-selector rotation without a gap. `phigate dkim rotate` appends a new `[[dkim]]`
//! entry to a domain's rotation group; the daemon looks the group's records up (at start,
//! on reload, hourly, and when `dkim check` asks) and signs with the newest key whose
//! record is published. The moment a key takes over is kept in a small state file, so
//! the advice for the key it replaced ("keep its record until ...") survives restarts.
//!
//! The lookup is the server's (its DNSSEC-validating resolver, without a cache so a new
//! record is seen at once); this module does no DNS itself.

use super::{Dkim, DkimKeys, KeyRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

/// How long a replaced key's record stays published after the new key took over:
/// mail signed with it may still sit in receivers' queues or be forwarded and
/// re-verified for days (receivers retry for up to five).
pub const GRACE_SECS: u64 = 7 * 86_400;

/// A record's TXT strings, or None when the lookup failed (what was known stands).
pub type Lookup =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<Vec<String>>> + Send>> + Send + Sync>;

/// When each key began signing in place of an older one (record name → Unix time).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub since: BTreeMap<String, u64>,
}

impl State {
    /// The state file, or an empty state when there is none or it cannot be read.
    pub fn load(path: &Path) -> State {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Written whole to a temporary file, synced and renamed over the old one.
    fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

/// One rotation group as the admin needs to see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signing {
    pub domain: String,
    /// The selector that signs now.
    pub selector: String,
    /// When it took over from an older key (None: it is the group's first key, or the
    /// daemon has not switched to it yet).
    pub since: Option<u64>,
    /// Newer selectors whose records are not seen published yet.
    pub waiting: Vec<String>,
    /// Older selectors it replaced, each with the end of its grace period when known.
    pub retiring: Vec<(String, Option<u64>)>,
}

/// Each rotation group of `keys`: who signs, who waits, who retires.
pub fn signing(keys: &DkimKeys, state: &State) -> Vec<Signing> {
    keys.groups()
        .into_iter()
        .map(|(members, signer)| {
            let current = &members[signer];
            let since = state.since.get(&current.name()).copied();
            Signing {
                domain: current.domain.clone(),
                selector: current.selector.clone(),
                since,
                waiting: members[signer + 1..]
                    .iter()
                    .map(|m| m.selector.clone())
                    .collect(),
                retiring: members[..signer]
                    .iter()
                    .map(|m| (m.selector.clone(), since.map(|s| s + GRACE_SECS)))
                    .collect(),
            }
        })
        .collect()
}

/// The state file and the lookup the server installed.
pub struct Rotation {
    path: Option<PathBuf>,
    state: Mutex<State>,
    lookup: Mutex<Option<Lookup>>,
}

impl Rotation {
    pub(super) fn new(path: Option<PathBuf>) -> Rotation {
        let state = path.as_deref().map(State::load).unwrap_or_default();
        Rotation {
            path,
            state: Mutex::new(state),
            lookup: Mutex::new(None),
        }
    }

    pub fn set_lookup(&self, lookup: Lookup) {
        *self.lookup.lock().unwrap_or_else(|p| p.into_inner()) = Some(lookup);
    }

    pub fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// `records` looked up one by one, each marked published or not in `keys`.
pub async fn look_up(keys: &DkimKeys, records: &[KeyRecord], lookup: &Lookup) {
    for r in records {
        if let Some(txts) = lookup(r.name()).await {
            keys.mark_published(r, txts.iter().any(|t| r.matches(t)));
        }
    }
}

impl Dkim {
    /// Look every rotation group's records up and sign with the newest published key of
    /// each; a key that takes over is logged with the advice for the one it replaces.
    pub async fn refresh(&self, now: u64) -> Vec<Signing> {
        let keys = self.keys();
        let lookup = self
            .rotation
            .lookup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let before = signing(&keys, &self.rotation.state());
        if let Some(lookup) = lookup {
            look_up(&keys, &keys.to_check(), &lookup).await;
        }
        let mut state = self.rotation.state();
        let mut changed = false;
        for (members, signer) in keys.groups() {
            let name = members[signer].name();
            if signer > 0 && !state.since.contains_key(&name) {
                state.since.insert(name, now);
                changed = true;
            }
        }
        // Forget keys no longer configured.
        let names: Vec<String> = keys.entries.iter().map(|e| e.name()).collect();
        let n = state.since.len();
        state.since.retain(|k, _| names.contains(k));
        changed |= state.since.len() != n;
        if changed {
            if let Some(path) = &self.rotation.path {
                if let Err(e) = state.save(path) {
                    tracing::warn!(file = %path.display(), error = %e, "DKIM rotation state not saved");
                }
            }
            *self
                .rotation
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = state.clone();
        }
        let after = signing(&keys, &state);
        for a in &after {
            let old = before
                .iter()
                .find(|b| b.domain == a.domain && b.selector != a.selector);
            if let Some(old) = old {
                let keep_until = a.retiring.iter().find_map(|(_, until)| *until).unwrap_or(0);
                tracing::info!(
                    signing_domain = %a.domain,
                    from = %old.selector,
                    to = %a.selector,
                    keep_old_record_until = keep_until,
                    "DKIM: the new key's record is published, signing with it"
                );
            }
        }
        after
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DkimConfig;

    fn key(dir: &Path, sel: &str) -> (DkimConfig, String) {
        let g = super::super::generate(super::super::Algorithm::Ed25519).expect("generate");
        let path = dir.join(format!("{sel}.key"));
        std::fs::write(&path, &g.pem).expect("write");
        let cfg = DkimConfig {
            domain: "clinic.example".into(),
            selector: sel.into(),
            key_file: path,
            headers: None,
            match_from: vec![],
        };
        (cfg, g.record)
    }

    fn selector(signed: &[u8]) -> String {
        let text = String::from_utf8_lossy(signed);
        let s = text.split("s=").nth(1).expect("s=");
        s.split(';').next().expect("selector").to_string()
    }

    #[tokio::test]
    async fn the_newest_published_key_signs() {
        let dir = tempfile::tempdir().expect("tmp");
        let (c1, r1) = key(dir.path(), "s1");
        let (c2, r2) = key(dir.path(), "s2");
        let state = dir.path().join("dkim-rotation.json");
        let dkim = Dkim::new(
            DkimKeys::load(&[c1.clone(), c2.clone()]).expect("load"),
            Some(state.clone()),
        );
        let msg = b"From: a@clinic.example\r\nTo: b@x.example\r\n\r\nbody\r\n";
        assert_eq!(
            selector(&dkim.sign(msg).expect("signed")),
            "s1",
            "before any check"
        );

        let published = Arc::new(Mutex::new(vec![("s1._domainkey.clinic.example", r1)]));
        let p = published.clone();
        dkim.rotation().set_lookup(Arc::new(move |name: String| {
            let txts: Vec<String> = p
                .lock()
                .expect("lock")
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, r)| r.clone())
                .collect();
            Box::pin(async move { Some(txts) })
        }));
        let s = dkim.refresh(1000).await;
        assert_eq!((s[0].selector.as_str(), s[0].since), ("s1", None));
        assert_eq!(s[0].waiting, vec!["s2".to_string()]);
        assert_eq!(selector(&dkim.sign(msg).expect("signed")), "s1");

        published
            .lock()
            .expect("lock")
            .push(("s2._domainkey.clinic.example", r2));
        let s = dkim.refresh(2000).await;
        assert_eq!((s[0].selector.as_str(), s[0].since), ("s2", Some(2000)));
        assert_eq!(
            s[0].retiring,
            vec![("s1".to_string(), Some(2000 + GRACE_SECS))]
        );
        assert_eq!(selector(&dkim.sign(msg).expect("signed")), "s2");

        // A reload keeps what is known, and the switch time survives a restart.
        dkim.replace(DkimKeys::load(&[c1.clone(), c2.clone()]).expect("load"));
        assert_eq!(selector(&dkim.sign(msg).expect("signed")), "s2");
        let s = dkim.refresh(3000).await;
        assert_eq!(s[0].since, Some(2000), "the takeover time is not moved");
        assert_eq!(
            State::load(&state)
                .since
                .get("s2._domainkey.clinic.example"),
            Some(&2000)
        );

        // s2's record withdrawn: back to s1 rather than unverifiable signatures.
        published.lock().expect("lock").truncate(1);
        dkim.refresh(4000).await;
        assert_eq!(selector(&dkim.sign(msg).expect("signed")), "s1");
    }
}
