//! Console sessions: who a browser is, kept server-side.
//!
//! A session id is 32 random bytes in an HttpOnly cookie. Storage keeps only its SHA-256,
//! under `session/<digest>`, with whom it is for, its CSRF token and its expiry, so every
//! `serve` process on one database knows the same sessions and signing out ends one
//! everywhere. A console link (how a backend lets its user in) is a pending session: its
//! code enters it once, and the browser gets a new id, so the code in the address bar and
//! the browser's history opens nothing.

use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Scope;
use tokenvault::clock::Clock;
use tokenvault::error::{Error, Result};
use tokenvault::storage::{Storage, StorageError};

const RECORD_PREFIX: &str = "session/";

/// How long a session lasts from sign-in: an admin's working day, an end user's visit.
pub const ADMIN_TTL_SECS: u64 = 8 * 3600;
pub const USER_TTL_SECS: u64 = 3600;
/// How long a console link can be entered.
pub const LINK_TTL_SECS: u64 = 15 * 60;

/// Whom a session acts for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    /// An administrator of one tenant, or the operator (every tenant).
    Admin {
        scope: Scope,
        /// `apikey:<id>` (the session ends when that key is revoked) or `oidc:<subject>`.
        via: String,
    },
    /// An end user, let in by a console link their backend asked for.
    User { tenant: String, user: String },
}

impl Principal {
    /// The API key a session stands on, if it does.
    pub fn api_key_id(&self) -> Option<&str> {
        match self {
            Principal::Admin { via, .. } => via.strip_prefix("apikey:"),
            Principal::User { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub principal: Principal,
    /// Every form of the session carries it back; a form without it is refused.
    pub csrf: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// A console link not yet entered: it is no session until then.
    #[serde(default)]
    pub pending: bool,
}

impl Session {
    pub fn csrf_matches(&self, presented: &str) -> bool {
        csrf_matches(&self.csrf, presented)
    }
}

/// Compares a form's CSRF token with the expected one in constant time.
pub fn csrf_matches(expected: &str, presented: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

#[derive(Clone)]
pub struct Sessions {
    storage: Arc<dyn Storage>,
    clock: Clock,
}

impl Sessions {
    pub fn new(storage: Arc<dyn Storage>, clock: Clock) -> Self {
        Sessions { storage, clock }
    }

    pub fn of(vault: &tokenvault::Vault) -> Self {
        let services = vault.services();
        Sessions::new(services.storage.clone(), services.clock.clone())
    }

    /// A signed-in session for `principal`: its id, for the cookie, and the session.
    pub async fn start(&self, principal: Principal, ttl_secs: u64) -> Result<(String, Session)> {
        self.create(principal, ttl_secs, false).await
    }

    /// A console link's code for `principal`, and when it stops working.
    pub async fn link(&self, principal: Principal) -> Result<(String, u64)> {
        let (code, session) = self.create(principal, LINK_TTL_SECS, true).await?;
        Ok((code, session.expires_at))
    }

    /// Spend a console link: a new session for its principal, or `None` when the code is
    /// unknown, spent or expired. Of two browsers entering one code, one gets in.
    pub async fn enter(&self, code: &str) -> Result<Option<(String, Session)>> {
        let Some((link, version)) = self.read(code).await? else {
            return Ok(None);
        };
        if !link.pending {
            return Ok(None);
        }
        match self.storage.delete(&record_key(code), version).await {
            Ok(()) => {}
            Err(StorageError::Conflict) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        if link.expires_at <= self.now() {
            return Ok(None);
        }
        self.start(link.principal, USER_TTL_SECS).await.map(Some)
    }

    /// The signed-in session with this id, if it exists and has not expired.
    pub async fn find(&self, id: &str) -> Result<Option<Session>> {
        match self.read(id).await? {
            Some((session, _)) if !session.pending && session.expires_at > self.now() => Ok(Some(session)),
            _ => Ok(None),
        }
    }

    /// Sign out: the session is gone for every process.
    pub async fn end(&self, id: &str) -> Result<()> {
        if let Some((_, version)) = self.read(id).await? {
            match self.storage.delete(&record_key(id), version).await {
                Ok(()) | Err(StorageError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// End every session and console link of `tenant`'s (its users' and its admins'); how
    /// many went.
    pub async fn end_tenant(&self, tenant: &str) -> Result<u32> {
        let mut ended = 0;
        for key in tokenvault::storage::all_keys(&*self.storage, RECORD_PREFIX).await? {
            let Some(entry) = self.storage.get(&key).await? else { continue };
            let Ok(session) = serde_json::from_slice::<Session>(&entry.value) else { continue };
            let its = match &session.principal {
                Principal::User { tenant: of, .. } => of == tenant,
                Principal::Admin { scope, .. } => *scope == Scope::Tenant(tenant.to_owned()),
            };
            if its && self.storage.delete(&key, entry.version).await.is_ok() {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Delete expired sessions and links; returns how many went.
    pub async fn sweep(&self) -> Result<u32> {
        let now = self.now();
        let (mut swept, mut cursor) = (0, None);
        loop {
            let page = self.storage.list(RECORD_PREFIX, cursor.as_deref(), 500).await?;
            for key in &page.keys {
                let Some(entry) = self.storage.get(key).await? else { continue };
                let expired = serde_json::from_slice::<Session>(&entry.value).is_ok_and(|s| s.expires_at <= now);
                if expired && self.storage.delete(key, entry.version).await.is_ok() {
                    swept += 1;
                }
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(swept),
            }
        }
    }

    async fn create(&self, principal: Principal, ttl_secs: u64, pending: bool) -> Result<(String, Session)> {
        let id = random_token()?;
        let session = Session { principal, csrf: random_token()?, expires_at: self.now() + ttl_secs, pending };
        let value = serde_json::to_vec(&session).expect("sessions serialize");
        self.storage.put(&record_key(&id), &value, None).await?;
        Ok((id, session))
    }

    async fn read(&self, id: &str) -> Result<Option<(Session, u64)>> {
        if id.is_empty() || id.len() > 100 {
            return Ok(None);
        }
        let Some(entry) = self.storage.get(&record_key(id)).await? else {
            return Ok(None);
        };
        let session = serde_json::from_slice(&entry.value)
            .map_err(|e| Error::integrity(format!("a console session record is unreadable: {e}")))?;
        Ok(Some((session, entry.version)))
    }

    fn now(&self) -> u64 {
        self.clock.now().as_secs()
    }
}

/// 32 random bytes, base64url: a session id, a link code or a CSRF token.
pub fn random_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Config(format!("no randomness for a console session: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn record_key(id: &str) -> String {
    format!("{RECORD_PREFIX}{}", hex::encode(Sha256::digest(id.as_bytes())))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use tokenvault::storage::MemoryStorage;

    fn sessions() -> (Sessions, Arc<dyn Storage>, Clock) {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
        let clock = Clock::system();
        (Sessions::new(storage.clone(), clock.clone()), storage, clock)
    }

    fn alice() -> Principal {
        Principal::User { tenant: "acme".into(), user: "alice".into() }
    }

    #[tokio::test]
    async fn a_session_is_found_by_its_id_and_only_its_digest_is_stored() {
        let (sessions, storage, _) = sessions();
        let (id, session) = sessions.start(alice(), USER_TTL_SECS).await.unwrap();
        assert_eq!(sessions.find(&id).await.unwrap().unwrap().principal, alice());
        assert!(session.csrf_matches(&session.csrf) && !session.csrf_matches("") && !session.csrf_matches("x"));
        let keys = storage.list(RECORD_PREFIX, None, 10).await.unwrap().keys;
        assert_eq!(keys.len(), 1);
        assert!(!keys[0].contains(&id), "the id is the storage key");
        let stored = storage.get(&keys[0]).await.unwrap().unwrap().value;
        assert!(!String::from_utf8(stored).unwrap().contains(&id), "the id is stored");
        assert!(sessions.find("made-up").await.unwrap().is_none());
        sessions.end(&id).await.unwrap();
        assert!(sessions.find(&id).await.unwrap().is_none(), "signed out, still found");
    }

    #[tokio::test]
    async fn a_link_enters_once_and_is_no_session_itself() {
        let (sessions, _, _) = sessions();
        let (code, _) = sessions.link(alice()).await.unwrap();
        assert!(sessions.find(&code).await.unwrap().is_none(), "a link code is a session");
        let (id, session) = sessions.enter(&code).await.unwrap().expect("the link enters");
        assert_ne!(id, code);
        assert_eq!((session.principal, session.pending), (alice(), false));
        assert!(sessions.enter(&code).await.unwrap().is_none(), "a link entered twice");
        assert!(sessions.enter(&id).await.unwrap().is_none(), "a session id enters as a link");
    }

    #[tokio::test]
    async fn expired_sessions_and_links_are_refused_and_swept() {
        let (sessions, storage, clock) = sessions();
        let (id, _) = sessions.start(alice(), 60).await.unwrap();
        let (code, _) = sessions.link(alice()).await.unwrap();
        let (kept, _) = sessions.start(alice(), 3600).await.unwrap();
        clock.advance(Duration::from_secs(LINK_TTL_SECS + 1));
        assert!(sessions.find(&id).await.unwrap().is_none());
        assert!(sessions.enter(&code).await.unwrap().is_none());
        let (_, _) = sessions.link(alice()).await.unwrap(); // still fresh: stays
        assert_eq!(sessions.sweep().await.unwrap(), 1, "the expired session (the spent link is gone already)");
        assert_eq!(storage.list(RECORD_PREFIX, None, 10).await.unwrap().keys.len(), 2);
        assert!(sessions.find(&kept).await.unwrap().is_some());
    }
}
