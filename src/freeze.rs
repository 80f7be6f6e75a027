//! Containment: freezes (per identity or for everything), per-message holds, and the
//! revocation check for sessions that are already open.
//!
//! A freeze holds outbound delivery: new mail is still accepted, encrypted and spooled,
//! and waits. With `refuse_inbound` the identity's new mail is refused with 451 4.7.1
//! instead. A hold is the same for single messages. The whole state is one small JSON
//! document in the spool's metadata tree, written in the same store transaction as the
//! audit record of the admin action that changed it, so it survives restarts and never
//! disagrees with the trail. Identities (account names, never patients) are stored in
//! clear so `freeze status` can list them.
//!
//! Revocation: sessions keep the configuration snapshot they started with, so a user
//! deleted or a client certificate removed from the allow list would otherwise keep
//! working until the client disconnects. The pipeline asks [`Freeze::revoked`] before
//! MAIL and again at end of data against the credentials of the *current*
//! configuration (swapped in by every reload).

use crate::auth::{client_cert_allowed, Users};
use crate::config::Cidr;
use crate::spool::{Op, Store, Tree};
use crate::types::{AuthIdentity, MessageId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

const STATE_KEY: &[u8] = b"freeze/state";

/// Who froze something, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeEntry {
    pub admin: String,
    pub at: u64,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub refuse_inbound: bool,
}

/// The persisted containment state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeState {
    /// `freeze on --all`.
    pub all: Option<FreezeEntry>,
    /// Frozen identities.
    #[serde(default)]
    pub identities: BTreeMap<String, FreezeEntry>,
    /// Held message IDs (`queue hold`).
    #[serde(default)]
    pub held: BTreeMap<String, FreezeEntry>,
}

impl FreezeState {
    fn is_empty(&self) -> bool {
        self.all.is_none() && self.identities.is_empty() && self.held.is_empty()
    }
}

/// The credentials of the current configuration, for revocation.
#[derive(Debug, Default)]
struct Current {
    users: BTreeSet<String>,
    cert_allow: Vec<String>,
    networks: Vec<Cidr>,
    /// Set once the server has handed over a configuration (tests run without one).
    known: bool,
}

pub struct Freeze {
    store: Arc<dyn Store>,
    state: RwLock<FreezeState>,
    /// Serialises read-modify-write of the state by admin actions.
    change: tokio::sync::Mutex<()>,
    current: RwLock<Current>,
    /// Identity of each message the queue has asked about (envelopes are sealed; this
    /// saves decrypting one every pass while a freeze is on).
    identity_of: Mutex<HashMap<MessageId, Option<String>>>,
    /// Messages whose hold was logged by this process (once each).
    logged: Mutex<BTreeSet<MessageId>>,
}

impl std::fmt::Debug for Freeze {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Freeze")
    }
}

impl Freeze {
    /// Load the persisted state from `store` (empty when none).
    pub fn open(store: Arc<dyn Store>) -> std::io::Result<Freeze> {
        let state = store
            .get(Tree::Meta, STATE_KEY)?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default();
        Ok(Freeze {
            store,
            state: RwLock::new(state),
            change: tokio::sync::Mutex::new(()),
            current: RwLock::new(Current::default()),
            identity_of: Mutex::new(HashMap::new()),
            logged: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn state(&self) -> FreezeState {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Start an admin change: hold the returned guard, edit a copy of the state, commit
    /// [`Freeze::op`] with the audit record, then [`Freeze::applied`].
    pub async fn begin(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.change.lock().await
    }

    /// The write that stores `state`.
    pub fn op(state: &FreezeState) -> Op {
        Op::Put(
            Tree::Meta,
            STATE_KEY.to_vec(),
            serde_json::to_vec(state).unwrap_or_default(),
        )
    }

    /// `state` is durable: make it the one in force.
    pub fn applied(&self, state: FreezeState) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Is anything frozen or held? (The queue's fast path.)
    pub fn active(&self) -> bool {
        !self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Must delivery of `id` (sent by `identity`) wait? Returns the reason.
    pub fn holds(&self, id: &MessageId, identity: Option<&str>) -> Option<&'static str> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        if s.all.is_some() {
            return Some("frozen (all)");
        }
        if identity.is_some_and(|i| s.identities.contains_key(i)) {
            return Some("frozen (identity)");
        }
        if s.held.contains_key(&id.to_string()) {
            return Some("held");
        }
        None
    }

    /// True the first time this process holds `id` (so the hold is logged once).
    pub fn first_hold(&self, id: MessageId) -> bool {
        let mut l = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() > 100_000 {
            l.clear();
        }
        l.insert(id)
    }

    /// The remembered identity of `id`, or `lookup()`'s answer (then remembered).
    pub fn identity_of(
        &self,
        id: MessageId,
        lookup: impl FnOnce() -> Option<Option<String>>,
    ) -> Option<Option<String>> {
        let mut m = self.identity_of.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = m.get(&id) {
            return Some(v.clone());
        }
        let v = lookup()?;
        if m.len() > 100_000 {
            m.clear();
        }
        m.insert(id, v.clone());
        Some(v)
    }

    /// Is new mail from `identity` to be refused (`freeze on --refuse-inbound`)?
    pub fn refuses(&self, identity: &str) -> bool {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        s.all.as_ref().is_some_and(|e| e.refuse_inbound)
            || s.identities.get(identity).is_some_and(|e| e.refuse_inbound)
    }

    /// A reload (or the start) installed these credentials.
    pub fn set_credentials(&self, users: &Users, cert_allow: &[String], networks: &[Cidr]) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Current {
            users: users.names().map(str::to_string).collect(),
            cert_allow: cert_allow.to_vec(),
            networks: networks.to_vec(),
            known: true,
        };
    }

    /// Has the credential behind `auth` been revoked since the session authorised?
    /// `cert` is the session's verified client certificate (CN, SHA-256 hex).
    pub fn revoked(
        &self,
        auth: &AuthIdentity,
        peer: std::net::IpAddr,
        cert: Option<(Option<&str>, &str)>,
    ) -> bool {
        let c = self.current.read().unwrap_or_else(|p| p.into_inner());
        if !c.known {
            return false;
        }
        match auth {
            AuthIdentity::Password(u) => !c.users.contains(u),
            AuthIdentity::ClientCert(_) => match cert {
                Some((cn, sha)) => !client_cert_allowed(&c.cert_allow, cn, sha),
                None => true,
            },
            AuthIdentity::Ip(_) => !c.networks.iter().any(|n| n.contains(peer)),
            // The API looks its key up in the key store on every request (and again
            // just before the hand-off), so revocation needs no session re-check here.
            AuthIdentity::ApiKey(_) => false,
        }
    }

    /// Read the stored state again (tests: what a restart would see).
    pub fn stored(&self) -> std::io::Result<FreezeState> {
        Ok(self
            .store
            .get(Tree::Meta, STATE_KEY)?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SledStore;

    #[test]
    fn state_round_trips_and_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("open"));
        let f = Freeze::open(store.clone()).expect("freeze");
        assert!(!f.active());
        let id = MessageId::new();
        let mut s = f.state();
        let e = FreezeEntry {
            admin: "root".into(),
            at: 1,
            reason: "leak".into(),
            refuse_inbound: true,
        };
        s.identities.insert("password:ehr".into(), e);
        store.commit(&[Freeze::op(&s)]).expect("commit");
        f.applied(s);
        assert_eq!(
            f.holds(&id, Some("password:ehr")),
            Some("frozen (identity)")
        );
        assert_eq!(f.holds(&id, Some("password:other")), None);
        assert!(f.refuses("password:ehr"));
        let again = Freeze::open(store).expect("reopen");
        assert!(again.refuses("password:ehr"));
    }

    #[test]
    fn revocation_follows_current_credentials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("open"));
        let f = Freeze::open(store).expect("freeze");
        let ip: std::net::IpAddr = "192.0.2.1".parse().expect("ip");
        let pw = AuthIdentity::Password("ehr".into());
        assert!(
            !f.revoked(&pw, ip, None),
            "no configuration yet: nothing revoked"
        );
        let mut users = Users::default();
        users.set("ehr", "pw").expect("set");
        f.set_credentials(&users, &["cn-a".into()], &[]);
        assert!(!f.revoked(&pw, ip, None));
        let cert = AuthIdentity::ClientCert("cn-a".into());
        assert!(!f.revoked(&cert, ip, Some((Some("cn-a"), "00"))));
        f.set_credentials(&Users::default(), &["cn-b".into()], &[]);
        assert!(f.revoked(&pw, ip, None));
        assert!(f.revoked(&cert, ip, Some((Some("cn-a"), "00"))));
        assert!(f.revoked(&AuthIdentity::Ip("192.0.2.1".into()), ip, None));
    }
}
