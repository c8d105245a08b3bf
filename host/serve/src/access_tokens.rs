//! Access tokens: a user's credential for the proxy (`/v1/proxy/{provider}/…`) alone,
//! reaching only the connections, methods and paths it names, until it expires. One opaque
//! token can stand for several of the user's connections (an "umbrella token"), and never
//! for the provider tokens themselves: those stay in the vault.
//!
//! A token is `tvp_<id>_<secret>` (see [`crate::credential`]). As with API keys only its
//! SHA-256 is kept, under `accesstoken/<id>` in the vault's storage; the name index
//! `accesstoken-name/<tenant>/<user>/<name>` (written first, only if absent) keeps an active
//! name unique per user and lists a user's tokens.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::credential::{self, Kind};
use tokenvault::clock::Clock;
use tokenvault::error::{Error, Result};
use tokenvault::events::{Event, EventType};
use tokenvault::outbox::{Outbox, new_event};
use tokenvault::storage::{Entry, Storage, StorageError, Write, all_keys, escape_key_part as escape};
use tokenvault::{ConnectionKey, DEFAULT_CONNECTION_NAME};

/// How every access token begins, and the bytes of its id.
pub(crate) const KIND: Kind = Kind { prefix: "tvp_", id_bytes: 8 };
const RECORD_PREFIX: &str = "accesstoken/";
const NAME_PREFIX: &str = "accesstoken-name/";
const MAX_NAME_CHARS: usize = 100;
const MAX_ENTRIES: usize = 100;

/// What a new token may reach, as a user asks for it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessTokenRequest {
    /// Unique among the user's active tokens.
    pub name: String,
    /// The user's connections it reaches (`name` defaults to "default").
    pub connections: Vec<ConnectionRef>,
    /// Seconds until it expires [default and at most: the service's maximum lifetime].
    pub expires_in: Option<u64>,
    /// The HTTP methods it may send [default: any].
    pub methods: Option<Vec<String>>,
    /// The paths it may reach, `/user` exactly or `/repos/*`: `*` stands for one segment, or,
    /// last, for one or more [default: any].
    pub paths: Option<Vec<String>>,
}

/// One of the user's connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRef {
    pub provider: String,
    #[serde(default = "default_name")]
    pub name: String,
}

fn default_name() -> String {
    DEFAULT_CONNECTION_NAME.to_owned()
}

/// A token as listed: never the token, never its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccessTokenInfo {
    pub id: String,
    pub tenant: String,
    pub user: String,
    pub name: String,
    pub connections: Vec<ConnectionRef>,
    /// Empty: any.
    pub methods: Vec<String>,
    /// Empty: any.
    pub paths: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
}

impl AccessTokenInfo {
    /// The connection a proxied call for `provider` and connection `name` reaches, when
    /// this token names it.
    pub fn connection(&self, provider: &str, name: &str) -> Option<ConnectionKey> {
        self.connections
            .iter()
            .any(|c| c.provider == provider && c.name == name)
            .then(|| ConnectionKey::new(&self.tenant, &self.user, provider, name))
    }

    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    /// Whether `path` (no query) matches one of the patterns. The component refuses any path
    /// that climbs (`..`, raw or encoded) before it is sent, so a prefix matched here is
    /// one the provider sees.
    pub fn allows_path(&self, path: &str) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|pattern| path_matches(pattern, path))
    }
}

/// A token just made (or rotated): the only time `token` is known.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NewAccessToken {
    pub id: String,
    /// `tvp_…`: shown this once, kept only as a hash.
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for NewAccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccessToken")
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a token was not made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("an active access token of this user is already named {0:?}")]
    NameTaken(String),
    #[error(transparent)]
    Vault(#[from] Error),
}

impl From<StorageError> for CreateError {
    fn from(err: StorageError) -> Self {
        CreateError::Vault(err.into())
    }
}

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    #[serde(flatten)]
    info: AccessTokenInfo,
    sha256: String,
}

#[derive(Serialize, Deserialize)]
struct NameRecord {
    id: String,
}

#[derive(Clone)]
pub struct AccessTokens {
    storage: Arc<dyn Storage>,
    clock: Clock,
    /// The longest lifetime a token may be given, and the one it gets by default.
    pub max_lifetime_secs: u64,
}

/// Thirty days.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 30 * 24 * 3600;

impl AccessTokens {
    pub fn new(storage: Arc<dyn Storage>, clock: Clock, max_lifetime_secs: u64) -> Self {
        AccessTokens { storage, clock, max_lifetime_secs }
    }

    /// The tokens kept in `vault`'s storage.
    pub fn of(vault: &tokenvault::Vault, max_lifetime_secs: u64) -> Self {
        let services = vault.services();
        AccessTokens::new(services.storage.clone(), services.clock.clone(), max_lifetime_secs)
    }

    pub async fn create(
        &self,
        tenant: &str,
        user: &str,
        request: AccessTokenRequest,
    ) -> std::result::Result<NewAccessToken, CreateError> {
        let info = self.validated(tenant, user, request)?;
        let made = KIND.make()?;
        let info = AccessTokenInfo { id: made.id.clone(), ..info };
        self.claim_name(&info).await?;
        let expires_at = info.expires_at;
        let event = self.event(EventType::AccessTokenCreated, &info)?;
        let record = serde_json::to_vec(&TokenRecord { info, sha256: made.sha256 }).expect("token records serialize");
        let mut writes = vec![Write::Put { key: record_key(&made.id), value: record, expected: None }];
        writes.extend(Outbox::new(&*self.storage).event_writes(event).await?);
        self.storage.commit(&writes).await?;
        Ok(NewAccessToken { id: made.id, token: made.credential, expires_at })
    }

    /// The user's tokens, expired ones included until they are revoked.
    pub async fn list(&self, tenant: &str, user: &str) -> Result<Vec<AccessTokenInfo>> {
        let prefix = format!("{NAME_PREFIX}{}/{}/", escape(tenant), escape(user));
        let mut tokens = Vec::new();
        for name_key in all_keys(&*self.storage, &prefix).await? {
            if let Some((name, _)) = self.name_record(&name_key).await?
                && let Some((record, _)) = self.record(&name.id).await?
            {
                tokens.push(record.info);
            }
        }
        Ok(tokens)
    }

    /// Every tenant's tokens (for operators).
    pub async fn list_all(&self) -> Result<Vec<AccessTokenInfo>> {
        let mut tokens = Vec::new();
        for key in all_keys(&*self.storage, RECORD_PREFIX).await? {
            if let Some((record, _)) = self.record(&key[RECORD_PREFIX.len()..]).await? {
                tokens.push(record.info);
            }
        }
        Ok(tokens)
    }

    /// Revoke one of the user's tokens: refused from the next request on.
    pub async fn revoke(&self, tenant: &str, user: &str, id: &str) -> Result<AccessTokenInfo> {
        let (record, version) = self.owned(tenant, user, id).await?;
        let event = self.event(EventType::AccessTokenRevoked, &record.info)?;
        let mut writes = vec![Write::Delete { key: record_key(id), expected: version }];
        writes.extend(Outbox::new(&*self.storage).event_writes(event).await?);
        match self.storage.commit(&writes).await {
            Ok(_) => {}
            // Revoked (or rotated) meanwhile: gone either way once the name goes below.
            Err(StorageError::Conflict) => {}
            Err(e) => return Err(e.into()),
        }
        let name_key = name_key(&record.info);
        if let Some((name, version)) = self.name_record(&name_key).await?
            && name.id == id
        {
            match self.storage.delete(&name_key, version).await {
                Ok(()) | Err(StorageError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(record.info)
    }

    /// A new secret for one of the user's tokens; the old one is refused from then on. The
    /// token keeps its id, name, reach and expiry.
    pub async fn rotate(&self, tenant: &str, user: &str, id: &str) -> Result<NewAccessToken> {
        let (record, version) = self.owned(tenant, user, id).await?;
        if record.info.expires_at <= self.now() {
            return Err(Error::invalid_input(format!("access token {id} has expired: make a new one")));
        }
        let made = KIND.make_for(id)?;
        let expires_at = record.info.expires_at;
        let value =
            serde_json::to_vec(&TokenRecord { sha256: made.sha256, ..record }).expect("token records serialize");
        match self.storage.put(&record_key(id), &value, Some(version)).await {
            Ok(_) => Ok(NewAccessToken { id: made.id, token: made.credential, expires_at }),
            Err(StorageError::Conflict) => Err(Error::not_found(format!("access token {id} changed meanwhile"))),
            Err(e) => Err(e.into()),
        }
    }

    /// The token `presented` stands for, when it is one that exists and has not expired.
    pub async fn verify(&self, presented: &str) -> Result<Option<AccessTokenInfo>> {
        let Some(id) = KIND.id_of(presented) else {
            return Ok(None);
        };
        // A revocation on another host reaches this one's cache a moment later (storage's
        // get_cached; ARCHITECTURE.md, Scale).
        let Some(entry) = self.storage.get_cached(&record_key(id)).await? else {
            return Ok(None);
        };
        let (record, _) = parse_record(id, entry)?;
        let valid = credential::matches(presented, &record.sha256) && record.info.expires_at > self.now();
        Ok(valid.then_some(record.info))
    }

    fn now(&self) -> u64 {
        self.clock.now().as_secs()
    }

    /// The webhook event about a token (its id, never the token).
    fn event(&self, kind: EventType, info: &AccessTokenInfo) -> Result<Event> {
        let mut event = new_event(kind, &info.tenant, self.clock.now().as_micros() as u64)?;
        event.user = Some(info.user.clone());
        event.access_token_id = Some(info.id.clone());
        Ok(event)
    }

    fn validated(&self, tenant: &str, user: &str, request: AccessTokenRequest) -> Result<AccessTokenInfo> {
        let name = request.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(Error::invalid_input(format!(
                "an access token's name is 1 to {MAX_NAME_CHARS} characters, none of them control characters"
            )));
        }
        if request.connections.is_empty() || request.connections.len() > MAX_ENTRIES {
            return Err(Error::invalid_input(format!("name 1 to {MAX_ENTRIES} connections")));
        }
        if request.connections.iter().any(|c| c.provider.is_empty() || c.name.is_empty()) {
            return Err(Error::invalid_input("each connection needs a provider and a name"));
        }
        let lifetime = request.expires_in.unwrap_or(self.max_lifetime_secs);
        if lifetime == 0 || lifetime > self.max_lifetime_secs {
            return Err(Error::invalid_input(format!(
                "expires_in must be 1 to {} seconds (this service's maximum lifetime)",
                self.max_lifetime_secs
            )));
        }
        let methods = request.methods.unwrap_or_default();
        if methods.len() > MAX_ENTRIES
            || methods.iter().any(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()))
        {
            return Err(Error::invalid_input("each method is an HTTP method such as GET"));
        }
        let paths = request.paths.unwrap_or_default();
        if paths.len() > MAX_ENTRIES || paths.iter().any(|p| !valid_pattern(p)) {
            return Err(Error::invalid_input(
                "each path starts with / and is visible ASCII; * stands for a whole segment",
            ));
        }
        let now = self.now();
        Ok(AccessTokenInfo {
            id: String::new(),
            tenant: tenant.to_owned(),
            user: user.to_owned(),
            name: name.to_owned(),
            connections: request.connections,
            methods: methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            paths,
            created_at: now,
            expires_at: now.saturating_add(lifetime),
        })
    }

    /// Take the token's name for it: free, or held by a token that expired or is gone.
    async fn claim_name(&self, info: &AccessTokenInfo) -> std::result::Result<(), CreateError> {
        let key = name_key(info);
        let value = serde_json::to_vec(&NameRecord { id: info.id.clone() }).expect("name records serialize");
        match self.storage.put(&key, &value, None).await {
            Ok(_) => return Ok(()),
            Err(StorageError::Conflict) => {}
            Err(e) => return Err(e.into()),
        }
        let Some((held, version)) = self.name_record(&key).await? else {
            return Err(CreateError::NameTaken(info.name.clone())); // freed and taken meanwhile
        };
        if let Some((holder, _)) = self.record(&held.id).await?
            && holder.info.expires_at > self.now()
        {
            return Err(CreateError::NameTaken(info.name.clone()));
        }
        match self.storage.put(&key, &value, Some(version)).await {
            Ok(_) => Ok(()),
            Err(StorageError::Conflict) => Err(CreateError::NameTaken(info.name.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Token `id`, if it is the user's (not found otherwise, whoever holds it).
    async fn owned(&self, tenant: &str, user: &str, id: &str) -> Result<(TokenRecord, u64)> {
        if !KIND.is_id(id) {
            return Err(Error::not_found("no such access token for this user"));
        }
        match self.record(id).await? {
            Some((record, version)) if record.info.tenant == tenant && record.info.user == user => {
                Ok((record, version))
            }
            _ => Err(Error::not_found(format!("no access token {id} for this user"))),
        }
    }

    async fn record(&self, id: &str) -> Result<Option<(TokenRecord, u64)>> {
        let Some(entry) = self.storage.get(&record_key(id)).await? else {
            return Ok(None);
        };
        parse_record(id, entry).map(Some)
    }

    async fn name_record(&self, key: &str) -> Result<Option<(NameRecord, u64)>> {
        let Some(entry) = self.storage.get(key).await? else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&entry.value)
            .map_err(|e| Error::integrity(format!("access token name record is unreadable: {e}")))?;
        Ok(Some((record, entry.version)))
    }
}

fn record_key(id: &str) -> String {
    format!("{RECORD_PREFIX}{id}")
}

fn parse_record(id: &str, entry: Entry) -> Result<(TokenRecord, u64)> {
    let record = serde_json::from_slice(&entry.value)
        .map_err(|e| Error::integrity(format!("access token record {id} is unreadable: {e}")))?;
    Ok((record, entry.version))
}

fn name_key(info: &AccessTokenInfo) -> String {
    format!("{NAME_PREFIX}{}/{}/{}", escape(&info.tenant), escape(&info.user), escape(&info.name))
}

fn valid_pattern(pattern: &str) -> bool {
    pattern.starts_with('/')
        && pattern.len() <= 1000
        && pattern.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'?' && b != b'#')
        && pattern.split('/').all(|segment| segment == "*" || !segment.contains('*'))
}

/// `*` matches one non-empty segment; a last `*` matches one or more.
fn path_matches(pattern: &str, path: &str) -> bool {
    let (pattern, path): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    let last = pattern.len() - 1;
    for (i, want) in pattern.iter().enumerate() {
        match (*want, path.get(i)) {
            ("*", Some(got)) if !got.is_empty() => {
                if i == last {
                    return path[i..].iter().all(|s| !s.is_empty());
                }
            }
            (want, Some(got)) if want == *got => {}
            _ => return false,
        }
    }
    pattern.len() == path.len()
}

/// What `Tokenvault-Connection` names, or the default connection.
pub fn connection_name(header: Option<&str>) -> &str {
    header.map(str::trim).filter(|n| !n.is_empty()).unwrap_or(DEFAULT_CONNECTION_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokenvault::storage::MemoryStorage;

    fn tokens() -> (AccessTokens, Arc<dyn Storage>, Clock) {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
        let clock = Clock::system();
        (AccessTokens::new(storage.clone(), clock.clone(), 3600), storage, clock)
    }

    fn request(name: &str) -> AccessTokenRequest {
        AccessTokenRequest {
            name: name.into(),
            connections: vec![ConnectionRef { provider: "github".into(), name: "default".into() }],
            methods: Some(vec!["get".into()]),
            paths: Some(vec!["/user".into(), "/repos/*".into()]),
            ..AccessTokenRequest::default()
        }
    }

    #[tokio::test]
    async fn a_token_reaches_what_it_names_until_it_expires_and_only_its_digest_is_kept() {
        let (tokens, storage, clock) = tokens();
        let new = tokens.create("acme", "alice", request("ci")).await.unwrap();
        assert!(new.token.starts_with("tvp_") && new.token.len() > 60);
        let info = tokens.verify(&new.token).await.unwrap().unwrap();
        assert_eq!(
            (info.tenant.as_str(), info.user.as_str(), info.methods.as_slice()),
            ("acme", "alice", &["GET".to_owned()][..])
        );
        assert_eq!(
            info.connection("github", "default"),
            Some(ConnectionKey::new("acme", "alice", "github", "default"))
        );
        assert_eq!(info.connection("github", "work"), None);
        assert_eq!(info.connection("gitlab", "default"), None);
        assert!(info.allows_method("GET") && !info.allows_method("POST"));
        let stored = storage.get(&record_key(&new.id)).await.unwrap().unwrap();
        let secret = &new.token[KIND.prefix.len() + 2 * KIND.id_bytes + 1..];
        assert!(!String::from_utf8(stored.value).unwrap().contains(secret));
        assert!(!format!("{new:?}").contains(secret));

        clock.advance(Duration::from_secs(3601));
        assert_eq!(tokens.verify(&new.token).await.unwrap(), None, "expired");
        assert!(tokens.rotate("acme", "alice", &new.id).await.is_err(), "an expired token is not rotated");
    }

    #[test]
    fn path_patterns_match_whole_segments() {
        let info = AccessTokenInfo {
            id: String::new(),
            tenant: String::new(),
            user: String::new(),
            name: String::new(),
            connections: vec![],
            methods: vec![],
            paths: vec!["/user".into(), "/repos/*".into(), "/orgs/*/members".into()],
            created_at: 0,
            expires_at: 0,
        };
        for allowed in ["/user", "/repos/o", "/repos/o/r/issues", "/orgs/acme/members"] {
            assert!(info.allows_path(allowed), "{allowed}");
        }
        for refused in
            ["/user/x", "/users", "/repos", "/repos/", "/repos//x", "/orgs/acme/members/x", "/orgs//members", "/"]
        {
            assert!(!info.allows_path(refused), "{refused}");
        }
        assert!(!valid_pattern("repos") && !valid_pattern("/re*") && !valid_pattern("/a?b") && valid_pattern("/*"));
    }

    #[tokio::test]
    async fn an_active_name_is_unique_per_user_and_freed_by_revoking_or_expiring() {
        let (tokens, _, clock) = tokens();
        let first = tokens.create("acme", "alice", request("ci")).await.unwrap();
        assert!(matches!(tokens.create("acme", "alice", request("ci")).await, Err(CreateError::NameTaken(_))));
        tokens.create("acme", "bob", request("ci")).await.unwrap();
        tokens.revoke("acme", "alice", &first.id).await.unwrap();
        assert_eq!(tokens.verify(&first.token).await.unwrap(), None);
        let second = tokens.create("acme", "alice", request("ci")).await.unwrap();
        clock.advance(Duration::from_secs(3601));
        tokens.create("acme", "alice", request("ci")).await.unwrap();
        let listed: Vec<_> = tokens.list("acme", "alice").await.unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(listed.len(), 1);
        assert_ne!(listed[0], second.id, "the name now lists the new token");
        assert_eq!(tokens.list_all().await.unwrap().len(), 3, "the expired one stays until revoked");
    }

    #[tokio::test]
    async fn a_rotated_token_replaces_the_old_one_and_others_users_tokens_are_out_of_reach() {
        let (tokens, _, _) = tokens();
        let old = tokens.create("acme", "alice", request("ci")).await.unwrap();
        let new = tokens.rotate("acme", "alice", &old.id).await.unwrap();
        assert_eq!((new.id.as_str(), new.expires_at), (old.id.as_str(), old.expires_at));
        assert_eq!(tokens.verify(&old.token).await.unwrap(), None);
        assert!(tokens.verify(&new.token).await.unwrap().is_some());
        assert!(tokens.revoke("acme", "bob", &old.id).await.is_err());
        assert!(tokens.rotate("globex", "alice", &old.id).await.is_err());
        assert!(tokens.revoke("acme", "alice", "../x").await.is_err());
    }

    #[tokio::test]
    async fn bad_requests_are_refused() {
        let (tokens, _, _) = tokens();
        let bad = [
            AccessTokenRequest { name: " ".into(), ..request("x") },
            AccessTokenRequest { connections: vec![], ..request("x") },
            AccessTokenRequest { expires_in: Some(3601), ..request("x") },
            AccessTokenRequest { expires_in: Some(0), ..request("x") },
            AccessTokenRequest { methods: Some(vec!["G T".into()]), ..request("x") },
            AccessTokenRequest { paths: Some(vec!["repos".into()]), ..request("x") },
        ];
        for request in bad {
            assert!(matches!(tokens.create("acme", "alice", request).await, Err(CreateError::Vault(_))));
        }
        let default = tokens.create("acme", "alice", AccessTokenRequest { expires_in: None, ..request("x") }).await;
        let default = default.unwrap();
        assert!(default.expires_at >= Clock::system().now().as_secs() + 3599, "the maximum by default");
        for presented in ["", "tvp_", "tvp_zz_x", "tvk_0123456789abcdef_x", &default.token[..default.token.len() - 1]] {
            assert_eq!(tokens.verify(presented).await.unwrap(), None, "{presented:?}");
        }
    }
}
