//! The vault's operations, over any [`Platform`].

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, VaultError};
use crate::expiry::{self, DEFAULT_REFRESH_BUFFER_SECS};
use crate::model::*;
use crate::oauth;
use crate::platform::{Platform, StorageError};
use crate::provider::{self, Endpoints};
use crate::record::{self, ProviderRecord, TokenRecord};
use crate::{discovery, seal, templates};

/// How often a write that keeps losing compare-and-swap races is retried.
const MAX_ATTEMPTS: usize = 5;
/// How long a refresh lease lasts. It must outlast any holder: the host's call deadline
/// (default 30 s, which also bounds the provider round trip) stops a holder before then.
pub const LEASE_MS: u64 = 40_000;
/// How long a caller waits for another caller's refresh; below the call deadline.
const WAIT_FOR_OTHERS_MS: u64 = 20_000;
/// Waiters wait for the lease to change (the host wakes them when it is released) and
/// read the token again at least this often: a holder that saved the token but could not
/// release its lease must not hold them up for the lease's whole life.
const RECHECK_MS: u64 = 1_000;
/// Pauses between attempts to save a refreshed token while storage is unavailable.
const SAVE_RETRY_PAUSES_MS: [u64; 3] = [50, 250, 1_000];
const LIST_PAGE: u32 = 100;
/// How long an expired pending record is kept before a sweep deletes it.
const SWEEP_GRACE_SECS: u64 = 3600;

pub struct Vault<P> {
    platform: P,
}

enum Lease {
    /// This caller holds the lease, at this version.
    Taken(u64),
    /// Another holder has it (at this version, when known).
    Held(Option<u64>),
}

pub(crate) enum Put {
    Written,
    Conflict,
}

impl<P: Platform> Vault<P> {
    pub fn new(platform: P) -> Self {
        Vault { platform }
    }

    pub fn platform(&self) -> &P {
        &self.platform
    }

    // ---- tokens -------------------------------------------------------------------

    /// Seal and save a token response, replacing what the connection held.
    pub fn store(&self, key: &ConnectionKey, grant: TokenGrant) -> Result<ConnectionInfo> {
        let result = self.store_inner(key, grant);
        self.audit_token(AuditAction::TokenStore, key, AuditOutcome::from(&result));
        result
    }

    /// A token fresh enough to use, refreshed first when due.
    pub fn get(&self, key: &ConnectionKey) -> Result<TokenSet> {
        let result = self.get_inner(key);
        self.audit_token(AuditAction::TokenGet, key, AuditOutcome::from(&result));
        result
    }

    /// Refresh now, whatever the expiry.
    pub fn refresh(&self, key: &ConnectionKey) -> Result<TokenSet> {
        let result = self.refresh_inner(key);
        self.audit_token(AuditAction::TokenRefresh, key, AuditOutcome::from(&result));
        result
    }

    /// Like [`Vault::get`], but a connect link where the user must connect (again).
    pub fn get_or_link(&self, key: &ConnectionKey, scopes: Option<Vec<String>>) -> Result<TokenOrLink> {
        let result = self.get_inner(key);
        self.audit_token(AuditAction::TokenGet, key, AuditOutcome::from(&result));
        match result {
            Ok(token) => Ok(TokenOrLink::Token(token)),
            // An unknown provider fails here too, and says so.
            Err(VaultError::NotFound(_) | VaultError::ReconnectRequired(_)) => {
                self.link(key, scopes).map(TokenOrLink::Link)
            }
            Err(err) => Err(err),
        }
    }

    /// Revoke the connection's tokens upstream (RFC 7009), then delete it.
    pub fn remove(&self, key: &ConnectionKey) -> Result<RemovalReceipt> {
        let result = record::validate_key(key).and_then(|()| self.remove_connection(key));
        self.audit_token(AuditAction::TokenRemove, key, AuditOutcome::from(&result));
        result
    }

    pub fn list(&self, tenant: &str, user: &str) -> Result<Vec<ConnectionInfo>> {
        record::validate_id("tenant", tenant)?;
        record::validate_id("user", user)?;
        let mut infos = Vec::new();
        for storage_key in self.list_keys(&record::user_prefix(tenant, user))? {
            let Some(key) = record::parse_token_key(&storage_key) else {
                continue;
            };
            match self.load_token(&key) {
                Ok((token, _)) => infos.push(token.info(&key)),
                Err(VaultError::NotFound(_)) => {} // removed since it was listed
                Err(err) => return Err(err),
            }
        }
        Ok(infos)
    }

    /// Remove every connection of a user, each revoked upstream; a receipt each.
    pub fn revoke_all(&self, tenant: &str, user: &str) -> Result<Vec<RemovalReceipt>> {
        let result = self.revoke_all_inner(tenant, user);
        self.emit(AuditAction::RevokeAll, AuditOutcome::from(&result), Some(tenant), Some(user), None, None);
        result
    }

    /// The tenant's users who hold connections: at most `limit` after the user `after`,
    /// each with all of their connections' names (records are not opened).
    pub fn users(&self, tenant: &str, after: Option<&str>, limit: u32) -> Result<UserPage> {
        record::validate_id("tenant", tenant)?;
        if limit == 0 || limit > 1000 {
            return Err(VaultError::InvalidInput("limit must be 1 to 1000".into()));
        }
        let prefix = record::tenant_prefix(tenant);
        let mut cursor = after.map(|user| record::after_user(tenant, user));
        let mut users: Vec<UserConnections> = Vec::new();
        loop {
            let page = self.platform.storage_list(&prefix, cursor.as_deref(), 500).map_err(storage_error)?;
            for key in page.keys.iter().filter_map(|storage_key| record::parse_token_key(storage_key)) {
                if users.last().is_none_or(|last| last.user != key.user) {
                    if users.len() == limit as usize {
                        let next = users.last().map(|last| last.user.clone());
                        return Ok(UserPage { users, next });
                    }
                    users.push(UserConnections { user: key.user.clone(), connections: Vec::new() });
                }
                users.last_mut().expect("pushed above").connections.push((key.provider, key.name));
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(UserPage { users, next: None }),
            }
        }
    }

    /// Background refresh, step one: of the next `limit` connections after `cursor` (every
    /// tenant's), those that can be renewed and whose token expires within `horizon_secs`.
    /// A record that fails to open is skipped here; `get` reports it.
    pub fn due_for_refresh(&self, horizon_secs: u32, cursor: Option<&str>, limit: u32) -> Result<DuePage> {
        if limit == 0 || limit > 1000 {
            return Err(VaultError::InvalidInput("limit must be 1 to 1000".into()));
        }
        let page = self.platform.storage_list(record::ALL_TOKENS_PREFIX, cursor, limit).map_err(storage_error)?;
        let now = self.now();
        let mut keys = Vec::new();
        for key in page.keys.iter().filter_map(|storage_key| record::parse_token_key(storage_key)) {
            match self.load_token(&key) {
                Ok((token, _))
                    if token.status == ConnectionStatus::Active
                        && token.renewable()
                        && expiry::expires_within(now, token.expires_at, horizon_secs) =>
                {
                    keys.push(key)
                }
                Ok(_) | Err(VaultError::NotFound(_) | VaultError::Integrity(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(DuePage { keys, cursor: page.cursor })
    }

    /// Background refresh, step two: refresh `key` if its token still expires within
    /// `horizon_secs`, through the same lease as every other caller, so a connection that
    /// another process just renewed is left alone. Audited when it refreshed or failed.
    pub fn refresh_if_due(&self, key: &ConnectionKey, horizon_secs: u32) -> Result<RefreshOutcome> {
        let result = self.refresh_if_due_inner(key, horizon_secs);
        if !matches!(result, Ok(RefreshOutcome::NotDue | RefreshOutcome::NotRenewable)) {
            self.audit_token(AuditAction::TokenRefresh, key, AuditOutcome::from(&result));
        }
        result
    }

    /// Housekeeping: of the next `limit` pending flows, device flows and connect links after
    /// `cursor`, delete those expired more than an hour ago (until then, using one says
    /// "expired" rather than "unknown"). A record that does not open is left for an
    /// operator to look at. Pass the cursor back until it is none.
    pub fn sweep_expired(&self, cursor: Option<&str>, limit: u32) -> Result<SweepPage> {
        #[derive(serde::Deserialize)]
        struct Expiring {
            expires_at: u64,
        }
        if limit == 0 || limit > 1000 {
            return Err(VaultError::InvalidInput("limit must be 1 to 1000".into()));
        }
        let prefixes = record::PENDING_PREFIXES;
        let at = cursor.map_or(Some(0), |c| prefixes.iter().position(|p| c.starts_with(p)));
        let Some((at, prefix)) = at.and_then(|at| prefixes.get(at).map(|p| (at, *p))) else {
            return Ok(SweepPage { deleted: 0, cursor: None });
        };
        let page = self.platform.storage_list(prefix, cursor, limit).map_err(storage_error)?;
        let now = self.now();
        let mut deleted = 0;
        for storage_key in &page.keys {
            let (Some((kind, id)), Some(entry)) =
                (record::pending_context(storage_key), self.storage_get(storage_key)?)
            else {
                continue;
            };
            let expired = self
                .open_sealed::<Expiring>(&entry, &[kind, &id])
                .is_ok_and(|record| record.expires_at.saturating_add(SWEEP_GRACE_SECS) < now);
            if expired {
                match self.platform.storage_delete(storage_key, entry.version) {
                    Ok(()) => deleted += 1,
                    Err(StorageError::Conflict) => {} // taken or replaced meanwhile
                    Err(StorageError::Unavailable(why)) => return Err(VaultError::Storage(why)),
                }
            }
        }
        // A finished prefix hands over to the next one: listing after "device/" is all of it.
        let cursor = page.cursor.or_else(|| prefixes.get(at + 1).map(|next| (*next).to_owned()));
        Ok(SweepPage { deleted, cursor })
    }

    fn refresh_if_due_inner(&self, key: &ConnectionKey, horizon_secs: u32) -> Result<RefreshOutcome> {
        record::validate_key(key)?;
        let (token, version) = self.load_token(key)?;
        if token.status != ConnectionStatus::Active || !token.renewable() {
            return Ok(RefreshOutcome::NotRenewable);
        }
        if !expiry::expires_within(self.now(), token.expires_at, horizon_secs) {
            return Ok(RefreshOutcome::NotDue);
        }
        self.refresh_coordinated(key, token, version, Wanted::Renewed)?;
        Ok(RefreshOutcome::Refreshed)
    }

    fn store_inner(&self, key: &ConnectionKey, grant: TokenGrant) -> Result<ConnectionInfo> {
        record::validate_key(key)?;
        self.load_provider(&key.provider)?;
        self.save_grant(key, grant, ConnectionKind::User, Vec::new())
    }

    /// Seal a token response as the connection's record, replacing what it held.
    /// `requested_scopes`: what a client connection asks for on renewal.
    pub(crate) fn save_grant(
        &self,
        key: &ConnectionKey,
        grant: TokenGrant,
        kind: ConnectionKind,
        requested_scopes: Vec<String>,
    ) -> Result<ConnectionInfo> {
        validate_grant(&grant)?;
        let now = self.now();
        let token = TokenRecord {
            expires_at: expiry::expires_at(now, grant.expires_in),
            scopes: record::split_scopes(grant.scope.as_deref()),
            access_token: grant.access_token,
            token_type: grant.token_type,
            refresh_token: grant.refresh_token,
            obtained_at: now,
            status: ConnectionStatus::Active,
            updated_at: now,
            kind,
            requested_scopes,
        };
        let storage_key = record::token_key(key);
        let context = record::token_context(key);
        for _ in 0..MAX_ATTEMPTS {
            let current = self.storage_get(&storage_key)?.map(|entry| entry.version);
            if let Put::Written = self.put_sealed(&storage_key, &context, &token, current)? {
                return Ok(token.info(key));
            }
        }
        Err(too_contended("connection"))
    }

    fn get_inner(&self, key: &ConnectionKey) -> Result<TokenSet> {
        record::validate_key(key)?;
        let (token, version) = self.load_token(key)?;
        ensure_active(&token)?;
        let now = self.now();
        // The common case, decided without reading the provider.
        if !expiry::could_be_due(now, token.obtained_at, token.expires_at) {
            return Ok(token.token_set());
        }
        // An expired token is due whatever the provider's refresh buffer: then only the
        // caller that takes the lease reads the provider, not each of a crowd waiting on it.
        let expired = expiry::is_expired(now, token.expires_at);
        if !expired {
            let provider = self.load_provider(&key.provider)?;
            if !expiry::refresh_due(now, token.obtained_at, token.expires_at, provider.refresh_buffer_secs) {
                return Ok(token.token_set());
            }
        }
        if !token.renewable() {
            return if expired {
                Err(VaultError::ReconnectRequired(
                    "the access token expired and the connection has no refresh token".into(),
                ))
            } else {
                Ok(token.token_set())
            };
        }
        self.refresh_coordinated(key, token, version, Wanted::Fresh)
    }

    fn refresh_inner(&self, key: &ConnectionKey) -> Result<TokenSet> {
        record::validate_key(key)?;
        let (token, version) = self.load_token(key)?;
        ensure_active(&token)?;
        if !token.renewable() {
            return Err(VaultError::InvalidInput("the connection has no refresh token to refresh with".into()));
        }
        self.refresh_coordinated(key, token, version, Wanted::Renewed)
    }

    /// Single-flight refresh: however many callers (threads, instances, processes, hosts on
    /// one database) find a token due at once, one of them refreshes and the others read its
    /// result. Coordination uses storage alone:
    ///
    /// 1. The refresher takes the connection's lease, a record created only if absent,
    ///    naming a random holder and an expiry. A lease past its expiry (its holder crashed)
    ///    is taken over by compare-and-swap on the lease's version.
    /// 2. Holding the lease, it re-reads the token: if it changed since it was read, another
    ///    holder finished in between and that result is used.
    /// 3. It refreshes upstream and saves by compare-and-swap on the token's version, so a
    ///    stale holder can never overwrite a newer token; then it releases the lease.
    /// 4. Callers that find the lease taken return the current token if it is still valid
    ///    (only `Wanted::Fresh`), and otherwise wait for the lease to change, then read the
    ///    token: renewed, they return it; if not (the holder failed), they try for the
    ///    lease themselves. Waiting costs them nothing: the host wakes them (BENCHMARKS.md,
    ///    coalesced refresh).
    fn refresh_coordinated(
        &self,
        key: &ConnectionKey,
        mut token: TokenRecord,
        mut version: u64,
        wanted: Wanted,
    ) -> Result<TokenSet> {
        let lease_key = record::lease_key(key);
        let give_up_at = self.platform.now_ms() + WAIT_FOR_OTHERS_MS;
        loop {
            let held = match self.acquire_lease(&lease_key)? {
                Lease::Held(version) => version,
                Lease::Taken(lease_version) => {
                    let result = self.load_token(key).and_then(|(current, current_version)| {
                        ensure_active(&current)?;
                        if current_version != version && renewed_since(&token, &current) {
                            Ok(current.token_set()) // another holder finished in between
                        } else {
                            // Read under the lease: its newest configuration.
                            let provider = self.load_provider(&key.provider)?;
                            self.refresh_upstream(key, current, current_version, &provider)
                        }
                    });
                    // A failed release only delays others until the lease expires; they see
                    // the new token version long before that.
                    let _ = self.platform.storage_delete(&lease_key, lease_version);
                    return result;
                }
            };
            // Someone else is refreshing.
            if wanted == Wanted::Fresh && !expiry::is_expired(self.now(), token.expires_at) {
                return Ok(token.token_set());
            }
            if self.platform.now_ms() >= give_up_at {
                return Err(VaultError::provider(
                    None,
                    None,
                    format!(
                        "another caller's refresh of this connection did not finish within {} s",
                        WAIT_FOR_OTHERS_MS / 1000
                    ),
                ));
            }
            let timeout = give_up_at.saturating_sub(self.platform.now_ms()).min(RECHECK_MS);
            self.platform.storage_wait_for_change(&lease_key, held, timeout as u32).map_err(storage_error)?;
            let (current, current_version) = self.load_token(key)?;
            if current_version != version {
                ensure_active(&current)?;
                if renewed_since(&token, &current) {
                    return Ok(current.token_set());
                }
                (token, version) = (current, current_version);
            }
        }
    }

    /// Take the lease, or learn which version of it another holder has.
    fn acquire_lease(&self, lease_key: &str) -> Result<Lease> {
        let now = self.platform.now_ms();
        let mut holder = [0u8; 8];
        getrandom::fill(&mut holder).map_err(|_| VaultError::Storage("no randomness for a lease holder".into()))?;
        let lease = record::Lease {
            holder: holder.iter().map(|b| format!("{b:02x}")).collect(),
            expires_at_ms: now + LEASE_MS,
        };
        let value = serde_json::to_vec(&lease).expect("leases serialize");
        let expected = match self.storage_get(lease_key)? {
            None => None,
            Some(entry) => {
                let expires =
                    serde_json::from_slice::<record::Lease>(&entry.value).map(|l| l.expires_at_ms).unwrap_or(0);
                if expires > now {
                    return Ok(Lease::Held(Some(entry.version)));
                }
                Some(entry.version) // expired: its holder is gone; take it over
            }
        };
        match self.platform.storage_put(lease_key, &value, expected) {
            Ok(version) => Ok(Lease::Taken(version)),
            // Another caller took it first; its version is learned on the next read.
            Err(StorageError::Conflict) => Ok(Lease::Held(None)),
            Err(StorageError::Unavailable(why)) => Err(VaultError::Storage(why)),
        }
    }

    /// One refresh at the provider, and its result saved before anything else happens.
    fn refresh_upstream(
        &self,
        key: &ConnectionKey,
        token: TokenRecord,
        version: u64,
        provider: &ProviderRecord,
    ) -> Result<TokenSet> {
        let http = |request| self.platform.http(request);
        let renewed = match token.kind {
            ConnectionKind::User => oauth::refresh(provider, token.refresh_token.as_deref().unwrap_or_default(), &http),
            ConnectionKind::Client => oauth::client_credentials(provider, &token.requested_scopes, &http),
        };
        match renewed {
            Ok(grant) => self.save_refreshed(key, token, version, grant),
            Err(VaultError::ReconnectRequired(why)) => self.mark_reconnect_required(key, token, version, why),
            // Any other failure leaves the stored token as it was.
            Err(err) => Err(err),
        }
    }

    fn save_refreshed(
        &self,
        key: &ConnectionKey,
        old: TokenRecord,
        mut version: u64,
        grant: TokenGrant,
    ) -> Result<TokenSet> {
        let now = self.now();
        let renewed = TokenRecord {
            expires_at: expiry::expires_at(now, grant.expires_in),
            scopes: match grant.scope.as_deref() {
                Some(scope) => record::split_scopes(Some(scope)),
                None => old.scopes.clone(),
            },
            access_token: grant.access_token,
            token_type: grant.token_type,
            // A response without a refresh token keeps the one we have.
            refresh_token: grant.refresh_token.or_else(|| old.refresh_token.clone()),
            obtained_at: now,
            status: ConnectionStatus::Active,
            updated_at: now,
            kind: old.kind,
            requested_scopes: old.requested_scopes.clone(),
        };
        let storage_key = record::token_key(key);
        let context = record::token_context(key);
        let mut unavailable = 0;
        let mut conflicts = 0;
        loop {
            match self.put_sealed(&storage_key, &context, &renewed, Some(version)) {
                Ok(Put::Written) => return Ok(renewed.token_set()),
                Ok(Put::Conflict) => {
                    // Lost a race: re-read, never overwrite a newer token.
                    let (current, current_version) = self.load_token(key)?;
                    if renewed_since(&old, &current) {
                        return Ok(current.token_set());
                    }
                    conflicts += 1;
                    if conflicts >= MAX_ATTEMPTS {
                        return Err(too_contended("connection"));
                    }
                    version = current_version;
                }
                // The provider has already rotated: losing this write loses the grant.
                // Try again before giving up.
                Err(VaultError::Storage(_)) if unavailable < SAVE_RETRY_PAUSES_MS.len() => {
                    self.platform.sleep_ms(SAVE_RETRY_PAUSES_MS[unavailable]);
                    unavailable += 1;
                }
                Err(VaultError::Storage(why)) => {
                    return Err(VaultError::Storage(format!(
                        "the provider issued new tokens but they could not be saved after {} attempts ({why}); \
                         the connection keeps its previous tokens",
                        SAVE_RETRY_PAUSES_MS.len() + 1
                    )));
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The provider said the refresh token is dead. Unless someone else renewed the
    /// connection meanwhile (their token then stands), mark it for reconnect.
    fn mark_reconnect_required(
        &self,
        key: &ConnectionKey,
        mut token: TokenRecord,
        version: u64,
        why: String,
    ) -> Result<TokenSet> {
        let old = token.clone();
        token.status = ConnectionStatus::ReconnectRequired;
        token.updated_at = self.now();
        let storage_key = record::token_key(key);
        let lost_race = matches!(
            self.put_sealed(&storage_key, &record::token_context(key), &token, Some(version)),
            Ok(Put::Conflict)
        );
        if lost_race
            && let Ok((current, _)) = self.load_token(key)
            && current.status == ConnectionStatus::Active
            && renewed_since(&old, &current)
        {
            return Ok(current.token_set());
        }
        // A storage failure leaves the old record, which the provider will refuse again.
        Err(VaultError::ReconnectRequired(why))
    }

    fn revoke_all_inner(&self, tenant: &str, user: &str) -> Result<Vec<RemovalReceipt>> {
        record::validate_id("tenant", tenant)?;
        record::validate_id("user", user)?;
        let mut receipts = Vec::new();
        for storage_key in self.list_keys(&record::user_prefix(tenant, user))? {
            let Some(key) = record::parse_token_key(&storage_key) else {
                continue;
            };
            match self.remove_connection(&key) {
                Ok(receipt) => receipts.push(receipt),
                Err(VaultError::NotFound(_)) => {} // removed since it was listed
                Err(err) => return Err(err),
            }
        }
        Ok(receipts)
    }

    /// Revoke upstream what the record holds, then delete exactly that version; a
    /// record renewed in between has its new tokens revoked too. A record that cannot be
    /// opened is deleted all the same: the caller wants it gone.
    fn remove_connection(&self, key: &ConnectionKey) -> Result<RemovalReceipt> {
        let storage_key = record::token_key(key);
        for _ in 0..MAX_ATTEMPTS {
            let Some(entry) = self.storage_get(&storage_key)? else {
                return Err(VaultError::NotFound(format!(
                    "no {} connection named {:?} for this user",
                    key.provider, key.name
                )));
            };
            let upstream = match self.open_sealed::<TokenRecord>(&entry, &record::token_context(key)) {
                Ok(token) => self.revoke_upstream(key, &token),
                Err(err) => UpstreamRevocation::Failed(err),
            };
            match self.platform.storage_delete(&storage_key, entry.version) {
                Ok(()) => {
                    return Ok(RemovalReceipt { provider: key.provider.clone(), name: key.name.clone(), upstream });
                }
                Err(StorageError::Conflict) => continue,
                Err(StorageError::Unavailable(why)) => return Err(VaultError::Storage(why)),
            }
        }
        Err(too_contended("connection"))
    }

    /// RFC 7009: the refresh token first (revoking it ends the grant at most providers),
    /// then the access token.
    fn revoke_upstream(&self, key: &ConnectionKey, token: &TokenRecord) -> UpstreamRevocation {
        let provider = match self.load_provider(&key.provider) {
            Ok(provider) => provider,
            Err(err) => return UpstreamRevocation::Failed(err),
        };
        if provider.revocation_url.is_none() {
            return UpstreamRevocation::Unsupported;
        }
        let http = |request| self.platform.http(request);
        let refresh = token.refresh_token.as_deref().map(oauth::RevocableToken::Refresh);
        let access = oauth::RevocableToken::Access(&token.access_token);
        for revocable in refresh.into_iter().chain([access]) {
            match oauth::revoke(&provider, revocable, &http) {
                Ok(()) => {}
                // Some servers revoke only refresh tokens; once that one is gone, so is the grant.
                Err(VaultError::Provider(failure))
                    if refresh.is_some()
                        && matches!(revocable, oauth::RevocableToken::Access(_))
                        && failure.code.as_deref() == Some("unsupported_token_type") => {}
                Err(err) => return UpstreamRevocation::Failed(err),
            }
        }
        UpstreamRevocation::Revoked
    }

    fn load_token(&self, key: &ConnectionKey) -> Result<(TokenRecord, u64)> {
        self.load_sealed(&record::token_key(key), &record::token_context(key))?.ok_or_else(|| {
            VaultError::NotFound(format!("no {} connection named {:?} for this user", key.provider, key.name))
        })
    }

    // ---- providers ----------------------------------------------------------------

    pub fn put_provider(&self, config: ProviderConfig) -> Result<ProviderInfo> {
        let name = config.name.clone();
        let result = self.put_provider_inner(config);
        self.emit(AuditAction::ProviderPut, AuditOutcome::from(&result), None, None, Some(&name), None);
        result
    }

    pub fn get_provider(&self, name: &str) -> Result<ProviderInfo> {
        validate_provider_name(name)?;
        Ok(self.load_provider(name)?.info(name))
    }

    pub fn list_providers(&self) -> Result<Vec<ProviderInfo>> {
        let mut infos = Vec::new();
        for storage_key in self.list_keys(record::provider_prefix())? {
            let Some(name) = record::parse_provider_key(&storage_key) else {
                continue;
            };
            match self.load_provider(&name) {
                Ok(provider) => infos.push(provider.info(&name)),
                Err(VaultError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(infos)
    }

    pub fn remove_provider(&self, name: &str) -> Result<()> {
        let result =
            validate_provider_name(name).and_then(|()| self.delete_record(&record::provider_key(name), "provider"));
        self.emit(AuditAction::ProviderRemove, AuditOutcome::from(&result), None, None, Some(name), None);
        result
    }

    fn put_provider_inner(&self, config: ProviderConfig) -> Result<ProviderInfo> {
        validate_provider_name(&config.name)?;
        let base = match (&config.template, &config.issuer) {
            (Some(_), Some(_)) => {
                return Err(VaultError::InvalidInput("give a template or an issuer, not both".into()));
            }
            (Some(template), None) => templates::resolve(template)?,
            (None, Some(issuer)) => discovery::discover(issuer, &|request| self.platform.http(request))?,
            (None, None) => Endpoints::default(),
        };
        let name = config.name.clone();
        let buffer = config.refresh_buffer_secs.unwrap_or(DEFAULT_REFRESH_BUFFER_SECS);
        let provider = provider::merge(config, base, buffer, self.now())?;
        let storage_key = record::provider_key(&name);
        let context = record::provider_context(&name);
        for _ in 0..MAX_ATTEMPTS {
            let current = self.storage_get(&storage_key)?.map(|entry| entry.version);
            if let Put::Written = self.put_sealed(&storage_key, &context, &provider, current)? {
                return Ok(provider.info(&name));
            }
        }
        Err(too_contended("provider"))
    }

    pub(crate) fn load_provider(&self, name: &str) -> Result<ProviderRecord> {
        self.load_sealed(&record::provider_key(name), &record::provider_context(name))?
            .map(|(provider, _)| provider)
            .ok_or_else(|| VaultError::NotFound(format!("provider {name:?} is not registered")))
    }

    // ---- sealed storage -----------------------------------------------------------

    pub(crate) fn load_sealed<T: DeserializeOwned>(
        &self,
        storage_key: &str,
        context: &seal::Context,
    ) -> Result<Option<(T, u64)>> {
        let Some(entry) = self.storage_get(storage_key)? else {
            return Ok(None);
        };
        Ok(Some((self.open_sealed(&entry, context)?, entry.version)))
    }

    fn open_sealed<T: DeserializeOwned>(&self, entry: &crate::platform::Entry, context: &seal::Context) -> Result<T> {
        let key_id = seal::key_id(&entry.value)?;
        let key =
            self.platform.key_by_id(key_id).map_err(|why| VaultError::Storage(format!("keyring: {why}")))?.ok_or_else(
                || VaultError::Integrity(format!("{} record is sealed with unknown key {key_id:?}", context[0])),
            )?;
        let plaintext = seal::open(&entry.value, &key, context)?;
        serde_json::from_slice(&plaintext)
            .map_err(|_| VaultError::Integrity(format!("{} record opened but does not parse", context[0])))
    }

    pub(crate) fn put_sealed<T: Serialize>(
        &self,
        storage_key: &str,
        context: &seal::Context,
        value: &T,
        expected: Option<u64>,
    ) -> Result<Put> {
        let key = self.platform.active_key().map_err(|why| VaultError::Storage(format!("keyring: {why}")))?;
        let plaintext = serde_json::to_vec(value).expect("records serialize");
        let mut nonce = [0; 12];
        getrandom::fill(&mut nonce).map_err(|_| VaultError::Storage("no randomness for a nonce".into()))?;
        let sealed = seal::seal(&key.id, &key.material, context, &plaintext, nonce)?;
        match self.platform.storage_put(storage_key, &sealed, expected) {
            Ok(_) => Ok(Put::Written),
            Err(StorageError::Conflict) => Ok(Put::Conflict),
            Err(StorageError::Unavailable(why)) => Err(VaultError::Storage(why)),
        }
    }

    pub(crate) fn storage_get(&self, storage_key: &str) -> Result<Option<crate::platform::Entry>> {
        self.platform.storage_get(storage_key).map_err(storage_error)
    }

    fn delete_record(&self, storage_key: &str, what: &str) -> Result<()> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(entry) = self.storage_get(storage_key)? else {
                return Err(VaultError::NotFound(format!("no such {what}")));
            };
            match self.platform.storage_delete(storage_key, entry.version) {
                Ok(()) => return Ok(()),
                Err(StorageError::Conflict) => continue,
                Err(StorageError::Unavailable(why)) => return Err(VaultError::Storage(why)),
            }
        }
        Err(too_contended(what))
    }

    fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.platform.storage_list(prefix, cursor.as_deref(), LIST_PAGE).map_err(storage_error)?;
            keys.extend(page.keys.into_iter().filter(|key| key.starts_with(prefix)));
            match page.cursor {
                Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => return Ok(keys),
            }
        }
    }

    // ---- audit and time -----------------------------------------------------------

    pub(crate) fn audit_token(&self, action: AuditAction, key: &ConnectionKey, outcome: AuditOutcome) {
        self.emit(action, outcome, Some(&key.tenant), Some(&key.user), Some(&key.provider), Some(&key.name));
    }

    /// Audit a call that failed before it named a connection (an unknown state, say).
    pub(crate) fn audit_unkeyed(&self, action: AuditAction, err: &VaultError) {
        self.emit(action, AuditOutcome::from(&Err::<(), _>(err.clone())), None, None, None, None);
    }

    pub(crate) fn emit(
        &self,
        action: AuditAction,
        outcome: AuditOutcome,
        tenant: Option<&str>,
        user: Option<&str>,
        provider: Option<&str>,
        name: Option<&str>,
    ) {
        self.platform.audit(AuditEvent {
            action,
            outcome,
            tenant: tenant.map(String::from),
            user: user.map(String::from),
            provider: provider.map(String::from),
            name: name.map(String::from),
            at_ms: self.platform.now_ms(),
        });
    }

    pub(crate) fn now(&self) -> u64 {
        self.platform.now_ms() / 1000
    }
}

/// What a refresh must produce.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// A token that is still valid will do (`get`).
    Fresh,
    /// A token obtained after the call began (`refresh`).
    Renewed,
}

/// Whether `current` holds other tokens than `before`: renewed, or replaced by a store.
fn renewed_since(before: &TokenRecord, current: &TokenRecord) -> bool {
    current.access_token != before.access_token || current.refresh_token != before.refresh_token
}

fn ensure_active(token: &TokenRecord) -> Result<()> {
    match token.status {
        ConnectionStatus::Active => Ok(()),
        ConnectionStatus::ReconnectRequired => Err(VaultError::ReconnectRequired(
            "the provider rejected this connection's refresh token; connect again".into(),
        )),
    }
}

fn storage_error(err: StorageError) -> VaultError {
    match err {
        StorageError::Conflict => VaultError::Storage("unexpected version conflict".into()),
        StorageError::Unavailable(why) => VaultError::Storage(why),
    }
}

fn too_contended(what: &str) -> VaultError {
    VaultError::Storage(format!("the {what} record kept changing; gave up after {MAX_ATTEMPTS} attempts"))
}

fn validate_grant(grant: &TokenGrant) -> Result<()> {
    if grant.access_token.is_empty() {
        return Err(VaultError::InvalidInput("access_token must not be empty".into()));
    }
    if grant.token_type.is_empty() {
        return Err(VaultError::InvalidInput("token_type must not be empty".into()));
    }
    if grant.refresh_token.as_deref() == Some("") {
        return Err(VaultError::InvalidInput("refresh_token must not be empty when given".into()));
    }
    Ok(())
}

fn validate_provider_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidInput("provider name must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryPlatform;
    use crate::platform::HttpError;

    fn vault() -> Vault<MemoryPlatform> {
        vault_on(MemoryPlatform::new())
    }

    fn vault_on<P: Platform>(platform: P) -> Vault<P> {
        let vault = Vault::new(platform);
        vault
            .put_provider(ProviderConfig {
                name: "acme".into(),
                authorization_url: Some("https://idp.example/authorize".into()),
                token_url: Some("https://idp.example/token".into()),
                client_id: "client".into(),
                client_secret: Some("client-secret-canary".into()),
                client_auth: Some(ClientAuth::ClientSecretBasic),
                scopes: vec!["read".into()],
                ..ProviderConfig::default()
            })
            .unwrap();
        vault
    }

    fn key() -> ConnectionKey {
        ConnectionKey::new("t1", "alice", "acme", "default")
    }

    fn grant(access: &str, refresh: Option<&str>, expires_in: Option<u64>) -> TokenGrant {
        TokenGrant {
            access_token: access.into(),
            token_type: "Bearer".into(),
            expires_in,
            refresh_token: refresh.map(String::from),
            scope: Some("read write".into()),
        }
    }

    fn json(
        status: u16,
        body: &'static str,
    ) -> impl Fn(&oauth2::HttpRequest) -> std::result::Result<oauth2::HttpResponse, HttpError> {
        move |_| {
            Ok(http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(body.as_bytes().to_vec())
                .unwrap())
        }
    }

    fn form_of(request: &oauth2::HttpRequest) -> String {
        String::from_utf8(request.body().clone()).unwrap()
    }

    #[test]
    fn store_then_get_returns_the_token_without_a_request() {
        let vault = vault();
        let info = vault.store(&key(), grant("at-1", Some("rt-1"), Some(3600))).unwrap();
        assert!(info.has_refresh_token);
        assert_eq!(info.scopes, vec!["read", "write"]);
        let token = vault.get(&key()).unwrap();
        assert_eq!(token.access_token, "at-1");
        assert_eq!(token.expires_at, Some(vault.now() + 3600));
        assert!(vault.platform().requests.borrow().is_empty());
    }

    #[test]
    fn storage_holds_only_ciphertext() {
        let vault = vault();
        vault.store(&key(), grant("at-canary-123", Some("rt-canary-456"), Some(3600))).unwrap();
        for (storage_key, (value, _)) in vault.platform().records.borrow().iter() {
            for canary in ["at-canary-123", "rt-canary-456", "client-secret-canary"] {
                assert!(!value.windows(canary.len()).any(|w| w == canary.as_bytes()), "{canary} in {storage_key}");
                assert!(!storage_key.contains(canary));
            }
        }
    }

    #[test]
    fn expiring_token_is_refreshed_and_rotation_is_saved() {
        let vault = vault();
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(3600))).unwrap();
        vault.platform().respond(json(
            200,
            r#"{"access_token":"at-2","token_type":"bearer","expires_in":3600,"refresh_token":"rt-2"}"#,
        ));
        vault.platform().advance_secs(3600 - 30);
        let token = vault.get(&key()).unwrap();
        assert_eq!((token.access_token.as_str(), token.refresh_token.as_deref()), ("at-2", Some("rt-2")));
        assert!(form_of(&vault.platform().requests.borrow()[0]).contains("refresh_token=rt-1"));
        // Saved: the next get is served from storage with the rotated token.
        let again = vault.get(&key()).unwrap();
        assert_eq!(again.refresh_token.as_deref(), Some("rt-2"));
        assert_eq!(vault.platform().requests.borrow().len(), 1);
        assert_eq!(again.scope.as_deref(), Some("read write"), "scope kept when the response has none");
    }

    #[test]
    fn response_without_refresh_token_keeps_the_old_one_and_without_expiry_never_expires() {
        let vault = vault();
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        vault.platform().respond(json(200, r#"{"access_token":"at-2","token_type":"bearer"}"#));
        let token = vault.refresh(&key()).unwrap();
        assert_eq!(token.refresh_token.as_deref(), Some("rt-1"));
        assert_eq!(token.expires_at, None);
        vault.platform().advance_secs(10 * 365 * 86_400);
        assert_eq!(vault.get(&key()).unwrap().access_token, "at-2");
    }

    #[test]
    fn invalid_grant_marks_the_connection_for_reconnect() {
        let vault = vault();
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        vault.platform().respond(json(400, r#"{"error":"invalid_grant"}"#));
        assert!(matches!(vault.refresh(&key()), Err(VaultError::ReconnectRequired(_))));
        assert!(matches!(vault.get(&key()), Err(VaultError::ReconnectRequired(_))));
        let listed = vault.list("t1", "alice").unwrap();
        assert_eq!(listed[0].status, ConnectionStatus::ReconnectRequired);
        assert_eq!(vault.platform().requests.borrow().len(), 1, "no further upstream calls");
        // Storing a new grant (a reconnect) makes it usable again.
        vault.store(&key(), grant("at-3", Some("rt-3"), Some(100))).unwrap();
        assert_eq!(vault.get(&key()).unwrap().access_token, "at-3");
    }

    #[test]
    fn provider_failure_leaves_the_stored_token_intact() {
        let vault = vault();
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        let before = vault.platform().records.borrow().clone();
        vault.platform().respond(json(500, r#"{"error":"server_error"}"#));
        assert!(matches!(vault.refresh(&key()), Err(VaultError::Provider(_))));
        vault.platform().respond(|_| Err(HttpError::Timeout));
        assert!(matches!(vault.refresh(&key()), Err(VaultError::Provider(_))));
        assert_eq!(*vault.platform().records.borrow(), before);
        assert_eq!(vault.get(&key()).unwrap().access_token, "at-1");
    }

    #[test]
    fn expired_token_without_refresh_token_needs_reconnect() {
        let vault = vault();
        vault.store(&key(), grant("at-1", None, Some(100))).unwrap();
        vault.platform().advance_secs(60);
        assert_eq!(vault.get(&key()).unwrap().access_token, "at-1", "still valid inside the buffer");
        vault.platform().advance_secs(40);
        assert!(matches!(vault.get(&key()), Err(VaultError::ReconnectRequired(_))));
        assert!(matches!(vault.refresh(&key()), Err(VaultError::InvalidInput(_))));
    }

    #[test]
    fn a_lost_race_reads_the_winner_instead_of_overwriting() {
        let platform: &'static MemoryPlatform = Box::leak(Box::new(MemoryPlatform::new()));
        let vault = vault_on(platform);
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        // While our refresh is in flight, another caller saves its own rotation.
        platform.respond(move |_| {
            let other = Vault::new(platform);
            other.store(&key(), grant("at-winner", Some("rt-winner"), Some(100))).unwrap();
            Ok(http::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(br#"{"access_token":"at-loser","token_type":"bearer","refresh_token":"rt-loser"}"#.to_vec())
                .unwrap())
        });
        assert_eq!(vault.refresh(&key()).unwrap().access_token, "at-winner");
        assert_eq!(vault.get(&key()).unwrap().refresh_token.as_deref(), Some("rt-winner"));
    }

    #[test]
    fn list_remove_and_revoke_all() {
        let vault = vault();
        for name in ["default", "work", "home"] {
            vault.store(&ConnectionKey::new("t1", "alice", "acme", name), grant("a", Some("r"), None)).unwrap();
        }
        vault.store(&ConnectionKey::new("t1", "alice2", "acme", "default"), grant("a", None, None)).unwrap();
        vault.store(&ConnectionKey::new("t2", "alice", "acme", "default"), grant("a", None, None)).unwrap();
        let names: Vec<_> = vault.list("t1", "alice").unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, vec!["default", "home", "work"]);

        vault.remove(&ConnectionKey::new("t1", "alice", "acme", "home")).unwrap();
        assert!(matches!(
            vault.remove(&ConnectionKey::new("t1", "alice", "acme", "home")),
            Err(VaultError::NotFound(_))
        ));
        let receipts = vault.revoke_all("t1", "alice").unwrap();
        let names: Vec<_> = receipts.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["default", "work"]);
        assert!(receipts.iter().all(|r| r.upstream == UpstreamRevocation::Unsupported), "acme has no revocation URL");
        assert!(vault.list("t1", "alice").unwrap().is_empty());
        assert_eq!(vault.list("t1", "alice2").unwrap().len(), 1, "other users untouched");
        assert_eq!(vault.list("t2", "alice").unwrap().len(), 1, "other tenants untouched");
    }

    #[test]
    fn list_pages_through_many_connections() {
        let vault = vault();
        for i in 0..250 {
            vault.store(&ConnectionKey::new("t1", "bob", "acme", &format!("c{i:03}")), grant("a", None, None)).unwrap();
        }
        assert_eq!(vault.list("t1", "bob").unwrap().len(), 250);
    }

    #[test]
    fn users_page_through_a_tenant_one_whole_user_at_a_time() {
        let vault = vault();
        let store = |tenant: &str, user: &str, name: &str| {
            vault.store(&ConnectionKey::new(tenant, user, "acme", name), grant("a", None, None)).unwrap();
        };
        // Names that sort around the separator once escaped: "a/b" is "a%2Fb", "a0" follows "a/".
        let names = ["a", "a/b", "a0", "a%", "a-", "b", "z"];
        for user in names {
            store("t1", user, "default");
        }
        for i in 0..600 {
            store("t1", "a0", &format!("c{i:03}")); // one user across storage pages
        }
        store("t2", "intruder", "default");
        store("t10", "intruder", "default");

        let (mut seen, mut after) = (Vec::new(), None::<String>);
        loop {
            let page = vault.users("t1", after.as_deref(), 2).unwrap();
            assert!(page.users.len() <= 2);
            for user in &page.users {
                let expected = if user.user == "a0" { 601 } else { 1 };
                assert_eq!(user.connections.len(), expected, "{}", user.user);
            }
            seen.extend(page.users.into_iter().map(|u| u.user));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        seen.sort();
        let mut expected = names.map(String::from).to_vec();
        expected.sort();
        assert_eq!(seen, expected);
        assert!(vault.users("t1", None, 0).is_err() && vault.users("t1", None, 1001).is_err());
        assert!(vault.users("nobody", None, 10).unwrap().users.is_empty());
    }

    #[test]
    fn moved_or_tampered_records_are_integrity_errors() {
        let vault = vault();
        vault.store(&key(), grant("at-1", Some("rt-1"), None)).unwrap();
        let alice_key = record::token_key(&key());
        let bob = ConnectionKey::new("t1", "bob", "acme", "default");
        let sealed = vault.platform().records.borrow()[&alice_key].0.clone();
        vault.platform().storage_put(&record::token_key(&bob), &sealed, None).unwrap();
        assert!(matches!(vault.get(&bob), Err(VaultError::Integrity(_))));

        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 0x80;
        vault.platform().records.borrow_mut().get_mut(&alice_key).unwrap().0 = flipped;
        assert!(matches!(vault.get(&key()), Err(VaultError::Integrity(_))));
    }

    #[test]
    fn records_sealed_with_an_older_key_still_open_and_new_writes_use_the_active_key() {
        let vault = vault();
        vault.store(&key(), grant("at-1", None, None)).unwrap();
        vault.platform().keys.borrow_mut().push(("k2".into(), vec![2; 32]));
        assert_eq!(vault.get(&key()).unwrap().access_token, "at-1");
        vault.store(&key(), grant("at-2", None, None)).unwrap();
        let sealed = vault.platform().records.borrow()[&record::token_key(&key())].0.clone();
        assert_eq!(seal::key_id(&sealed).unwrap(), "k2");
    }

    #[test]
    fn bad_input_is_refused() {
        let vault = vault();
        assert!(matches!(vault.store(&key(), grant("", None, None)), Err(VaultError::InvalidInput(_))));
        assert!(matches!(
            vault.store(&ConnectionKey::new("", "a", "acme", "d"), grant("a", None, None)),
            Err(VaultError::InvalidInput(_))
        ));
        assert!(matches!(
            vault.store(&ConnectionKey::new("t", "a", "nope", "d"), grant("a", None, None)),
            Err(VaultError::NotFound(_))
        ));
        let mut config = ProviderConfig {
            name: "bad name".into(),
            token_url: Some("https://x/token".into()),
            client_id: "c".into(),
            ..ProviderConfig::default()
        };
        assert!(matches!(vault.put_provider(config.clone()), Err(VaultError::InvalidInput(_))));
        config.name = "ok".into();
        config.token_url = Some("ftp://x/token".into());
        assert!(matches!(vault.put_provider(config.clone()), Err(VaultError::InvalidInput(_))));
    }

    #[test]
    fn providers_are_listed_without_secrets_and_every_operation_is_audited() {
        let vault = vault();
        let listed = vault.list_providers().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].has_client_secret);
        assert_eq!(listed[0].refresh_buffer_secs, DEFAULT_REFRESH_BUFFER_SECS);
        vault.store(&key(), grant("a", None, None)).unwrap();
        let _ = vault.get(&key());
        let _ = vault.get(&ConnectionKey::new("t1", "alice", "acme", "missing"));
        vault.remove(&key()).unwrap();
        vault.remove_provider("acme").unwrap();
        let seen: Vec<_> = vault.platform().events.borrow().iter().map(|e| (e.action, e.outcome)).collect();
        assert_eq!(
            seen,
            vec![
                (AuditAction::ProviderPut, AuditOutcome::Ok),
                (AuditAction::TokenStore, AuditOutcome::Ok),
                (AuditAction::TokenGet, AuditOutcome::Ok),
                (AuditAction::TokenGet, AuditOutcome::NotFound),
                (AuditAction::TokenRemove, AuditOutcome::Ok),
                (AuditAction::ProviderRemove, AuditOutcome::Ok),
            ]
        );
    }

    // ---- single-flight refresh ------------------------------------------------------

    const ROTATED: &str =
        r#"{"access_token":"at-new","token_type":"bearer","expires_in":100,"refresh_token":"rt-new"}"#;

    fn lease_of(vault: &Vault<impl Platform>) -> Option<record::Lease> {
        let entry = vault.platform().storage_get(&record::lease_key(&key())).unwrap()?;
        Some(serde_json::from_slice(&entry.value).unwrap())
    }

    fn hold_lease(platform: &MemoryPlatform, expires_at_ms: u64) {
        let lease = record::Lease { holder: "someone-else".into(), expires_at_ms };
        let key = record::lease_key(&key());
        let current = platform.storage_get(&key).unwrap().map(|e| e.version);
        platform.storage_put(&key, &serde_json::to_vec(&lease).unwrap(), current).unwrap();
    }

    #[test]
    fn the_refresher_releases_its_lease() {
        let vault = vault();
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        vault.platform().respond(json(200, ROTATED));
        vault.platform().advance_secs(100);
        assert_eq!(vault.get(&key()).unwrap().access_token, "at-new");
        assert!(lease_of(&vault).is_none(), "lease left behind");
    }

    #[test]
    fn while_another_caller_refreshes_a_still_valid_token_is_served_at_once() {
        let vault = vault();
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        vault.platform().advance_secs(80); // due (buffer 50 s), not expired
        hold_lease(vault.platform(), vault.platform().now_ms() + LEASE_MS);
        assert_eq!(vault.get(&key()).unwrap().access_token, "at-1");
        assert!(vault.platform().requests.borrow().is_empty());
        assert_eq!(vault.platform().slept_ms.get(), 0);
    }

    #[test]
    fn an_expired_token_waits_for_the_other_refresher_and_reads_its_result() {
        let platform: &'static MemoryPlatform = Box::leak(Box::new(MemoryPlatform::new()));
        let vault = vault_on(platform);
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        platform.advance_secs(100);
        hold_lease(platform, platform.now_ms() + LEASE_MS);
        // The other holder saves its result while we wait, then lets go.
        platform.on_sleep(|p| {
            if p.slept_ms.get() >= 100 && lease_of(&Vault::new(p)).is_some() {
                Vault::new(p).store(&key(), grant("at-theirs", Some("rt-theirs"), Some(100))).unwrap();
                let lease_key = record::lease_key(&key());
                let version = p.storage_get(&lease_key).unwrap().unwrap().version;
                p.storage_delete(&lease_key, version).unwrap();
            }
        });
        platform.reads.borrow_mut().clear();
        let token = vault.get(&key()).unwrap();
        assert_eq!(token.access_token, "at-theirs");
        assert!(platform.requests.borrow().is_empty(), "the waiter refreshed too");
        // Only the lease holder needs the provider (here the other one, whose `store`
        // reads it once): a crowd of waiters does not open it.
        let provider = record::provider_key("acme");
        assert_eq!(
            platform.reads.borrow().iter().filter(|k| **k == provider).count(),
            1,
            "the waiter read the provider"
        );
    }

    #[test]
    fn an_expired_token_of_a_removed_provider_is_not_found_and_leaves_no_lease() {
        let vault = vault();
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        vault.remove_provider("acme").unwrap();
        vault.platform().advance_secs(100);
        let Err(err) = vault.get(&key()) else { panic!("a token without its provider") };
        assert!(matches!(err, VaultError::NotFound(_)), "{err:?}");
        assert!(lease_of(&vault).is_none(), "lease left behind");
        assert!(vault.platform().requests.borrow().is_empty());
    }

    #[test]
    fn a_forced_refresh_waits_for_the_other_result_even_while_the_token_is_valid() {
        let platform: &'static MemoryPlatform = Box::leak(Box::new(MemoryPlatform::new()));
        let vault = vault_on(platform);
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(3600))).unwrap();
        hold_lease(platform, platform.now_ms() + LEASE_MS);
        platform.on_sleep(|p| {
            if p.slept_ms.get() >= 30 {
                Vault::new(p).store(&key(), grant("at-theirs", Some("rt-theirs"), Some(3600))).unwrap();
            }
        });
        assert_eq!(vault.refresh(&key()).unwrap().access_token, "at-theirs");
        assert!(platform.requests.borrow().is_empty());
    }

    #[test]
    fn a_crashed_holders_lease_is_taken_over_once_it_expires() {
        let vault = vault();
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        vault.platform().advance_secs(100);
        hold_lease(vault.platform(), vault.platform().now_ms() + 5_000);
        vault.platform().respond(json(200, ROTATED));
        // Nobody saves anything; after 5 s the lease is stale and we take it.
        let token = vault.get(&key()).unwrap();
        assert_eq!(token.access_token, "at-new");
        assert_eq!(vault.platform().requests.borrow().len(), 1);
        let waited = vault.platform().slept_ms.get();
        assert!((5_000..7_000).contains(&waited), "waited {waited} ms");
        assert!(lease_of(&vault).is_none());
    }

    #[test]
    fn waiting_is_bounded_when_the_holder_never_finishes() {
        let vault = vault();
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        vault.platform().advance_secs(100);
        // A holder that keeps renewing its lease but never saves.
        vault.platform().on_sleep(|p| hold_lease(p, p.now_ms() + LEASE_MS));
        hold_lease(vault.platform(), vault.platform().now_ms() + LEASE_MS);
        let err = vault.get(&key()).err().expect("must fail");
        assert!(matches!(err, VaultError::Provider(_)), "{err}");
        assert!(vault.platform().slept_ms.get() >= WAIT_FOR_OTHERS_MS);
        assert!(vault.platform().requests.borrow().is_empty());
    }

    #[test]
    fn a_holder_that_loses_the_grant_tells_the_waiters() {
        let platform: &'static MemoryPlatform = Box::leak(Box::new(MemoryPlatform::new()));
        let vault = vault_on(platform);
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        platform.advance_secs(100);
        hold_lease(platform, platform.now_ms() + LEASE_MS);
        platform.on_sleep(|p| {
            // The other holder got invalid_grant and marked the connection.
            let other = Vault::new(p);
            let (mut token, version) = other.load_token(&key()).unwrap();
            if token.status == ConnectionStatus::Active {
                token.status = ConnectionStatus::ReconnectRequired;
                let _ =
                    other.put_sealed(&record::token_key(&key()), &record::token_context(&key()), &token, Some(version));
            }
        });
        assert!(matches!(vault.get(&key()), Err(VaultError::ReconnectRequired(_))));
    }

    #[test]
    fn a_save_that_fails_is_retried_and_a_final_failure_keeps_the_old_record() {
        let vault = vault();
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        vault.platform().respond(json(200, ROTATED));

        // Two failed writes, then storage is back: the retry saves the rotation.
        vault.platform().fail_puts("tok/", 2);
        assert_eq!(vault.refresh(&key()).unwrap().refresh_token.as_deref(), Some("rt-new"));
        assert_eq!(vault.platform().slept_ms.get(), 50 + 250, "two pauses before the third attempt");
        assert_eq!(vault.get(&key()).unwrap().refresh_token.as_deref(), Some("rt-new"));

        // Storage stays down: a clear storage error, and the previous record intact.
        let before = vault.platform().records.borrow().get(&record::token_key(&key())).cloned();
        vault.platform().fail_puts("tok/", 100);
        let err = vault.refresh(&key()).err().expect("must fail");
        assert!(matches!(&err, VaultError::Storage(m) if m.contains("could not be saved")), "{err}");
        assert_eq!(vault.platform().records.borrow().get(&record::token_key(&key())).cloned(), before);
        assert!(lease_of(&vault).is_none(), "the lease is released after a failed save");
    }

    #[test]
    fn background_refresh_finds_due_connections_of_every_tenant_and_renews_each_once() {
        let vault = vault();
        let at = |tenant: &str, user: &str, name: &str| ConnectionKey::new(tenant, user, "acme", name);
        vault.store(&at("t1", "alice", "soon"), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        vault.store(&at("t2", "bob", "soon"), grant("at-2", Some("rt-2"), Some(200))).unwrap();
        vault.store(&at("t1", "alice", "later"), grant("at-3", Some("rt-3"), Some(3600))).unwrap();
        vault.store(&at("t1", "alice", "no-refresh"), grant("at-4", None, Some(100))).unwrap();
        vault.store(&at("t1", "alice", "forever"), grant("at-5", Some("rt-5"), None)).unwrap();

        // Within 300 s: the two "soon" ones, over two pages of three.
        let first = vault.due_for_refresh(300, None, 3).unwrap();
        let rest = vault.due_for_refresh(300, first.cursor.as_deref(), 3).unwrap();
        assert_eq!(rest.cursor, None);
        let mut due: Vec<_> =
            first.keys.iter().chain(&rest.keys).map(|k| (k.tenant.as_str(), k.name.as_str())).collect();
        due.sort();
        assert_eq!(due, [("t1", "soon"), ("t2", "soon")]);
        assert!(matches!(vault.due_for_refresh(300, None, 0), Err(VaultError::InvalidInput(_))));

        vault.platform().respond(json(200, ROTATED));
        assert_eq!(vault.refresh_if_due(&at("t1", "alice", "soon"), 300).unwrap(), RefreshOutcome::Refreshed);
        assert_eq!(vault.platform().requests.borrow().len(), 1);
        // Renewed for 100 s: not due within 60 s any more; a second pass leaves it alone.
        assert_eq!(vault.refresh_if_due(&at("t1", "alice", "soon"), 60).unwrap(), RefreshOutcome::NotDue);
        assert_eq!(vault.refresh_if_due(&at("t1", "alice", "later"), 300).unwrap(), RefreshOutcome::NotDue);
        assert_eq!(vault.refresh_if_due(&at("t1", "alice", "forever"), 300).unwrap(), RefreshOutcome::NotDue);
        assert_eq!(vault.refresh_if_due(&at("t1", "alice", "no-refresh"), 300).unwrap(), RefreshOutcome::NotRenewable);
        assert_eq!(vault.platform().requests.borrow().len(), 1, "only the due one went upstream");
        assert_eq!(vault.get(&at("t1", "alice", "soon")).unwrap().access_token, "at-new");
        let refresh_events =
            vault.platform().events.borrow().iter().filter(|e| e.action == AuditAction::TokenRefresh).count();
        assert_eq!(refresh_events, 1, "audited when it refreshed, not when there was nothing to do");
    }

    #[test]
    fn a_sweep_deletes_pending_records_an_hour_after_they_expire_and_nothing_else() {
        let vault = vault();
        let sweep_all = |vault: &Vault<MemoryPlatform>| {
            let (mut deleted, mut cursor, mut steps) = (0, None, 0);
            loop {
                let page = vault.sweep_expired(cursor.as_deref(), 1).unwrap();
                (deleted, steps) = (deleted + page.deleted, steps + 1);
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => return (deleted, steps),
                }
            }
        };
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        vault.begin(&key(), "http://127.0.0.1/callback", None, None).unwrap();
        let old_link = vault.link(&key(), None).unwrap();
        assert_eq!(sweep_all(&vault).0, 0, "nothing has expired");

        vault.platform().advance_secs(15 * 60 + 3600 + 1); // both expired over an hour ago
        let fresh_link = vault.link(&key(), None).unwrap();
        let (deleted, steps) = sweep_all(&vault);
        assert_eq!(deleted, 2);
        assert!(steps >= 3, "one page of one record at a time, every kind: {steps} steps");
        let left: Vec<String> = vault.platform().records.borrow().keys().cloned().collect();
        assert_eq!(left.iter().filter(|k| k.starts_with("link/")).count(), 1, "{left:?}");
        assert!(left.iter().any(|k| k.starts_with("tok/")) && !left.iter().any(|k| k.starts_with("flow/")));
        assert!(vault.open_link(&fresh_link.code, "http://127.0.0.1/callback", None).is_ok());
        assert!(matches!(
            vault.open_link(&old_link.code, "http://127.0.0.1/callback", None),
            Err(VaultError::InvalidInput(_))
        ));
        assert!(matches!(vault.sweep_expired(Some("tok/"), 5), Ok(SweepPage { deleted: 0, cursor: None })));
    }

    #[test]
    fn background_refresh_leaves_a_dead_connection_for_the_user_to_reconnect() {
        let vault = vault();
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        vault.platform().respond(json(400, r#"{"error":"invalid_grant"}"#));
        assert!(matches!(vault.refresh_if_due(&key(), 300), Err(VaultError::ReconnectRequired(_))));
        assert!(vault.due_for_refresh(300, None, 10).unwrap().keys.is_empty(), "no longer offered");
        assert_eq!(vault.refresh_if_due(&key(), 300).unwrap(), RefreshOutcome::NotRenewable);
        assert_eq!(vault.platform().requests.borrow().len(), 1);
    }
}

#[cfg(test)]
mod revocation_tests {
    use super::*;
    use crate::memory::MemoryPlatform;

    fn vault(answer: fn(&str) -> (u16, &'static str)) -> Vault<MemoryPlatform> {
        let vault = Vault::new(MemoryPlatform::new());
        vault
            .put_provider(ProviderConfig {
                name: "acme".into(),
                token_url: Some("https://idp.example/token".into()),
                revocation_url: Some("https://idp.example/revoke".into()),
                client_id: "client".into(),
                client_secret: Some("client-secret".into()),
                ..ProviderConfig::default()
            })
            .unwrap();
        vault.platform().respond(move |request| {
            let form: std::collections::HashMap<String, String> =
                oauth2::url::form_urlencoded::parse(request.body()).into_owned().collect();
            let (status, body) = answer(&form["token_type_hint"]);
            Ok(http::Response::builder().status(status).body(body.as_bytes().to_vec()).unwrap())
        });
        let grant = TokenGrant {
            access_token: "at-1".into(),
            token_type: "Bearer".into(),
            expires_in: Some(3600),
            refresh_token: Some("rt-1".into()),
            scope: None,
        };
        vault.store(&key(), grant).unwrap();
        vault
    }

    fn key() -> ConnectionKey {
        ConnectionKey::new("t1", "alice", "acme", "default")
    }

    fn revoked(vault: &Vault<MemoryPlatform>) -> Vec<(String, String)> {
        let requests = vault.platform().requests.borrow();
        requests
            .iter()
            .map(|r| {
                let form: std::collections::HashMap<String, String> =
                    oauth2::url::form_urlencoded::parse(r.body()).into_owned().collect();
                (form["token_type_hint"].clone(), form["token"].clone())
            })
            .collect()
    }

    #[test]
    fn remove_revokes_the_refresh_then_the_access_token() {
        let vault = vault(|_| (200, ""));
        let receipt = vault.remove(&key()).unwrap();
        assert_eq!(receipt.upstream, UpstreamRevocation::Revoked);
        assert_eq!(revoked(&vault), [("refresh_token".into(), "rt-1".into()), ("access_token".into(), "at-1".into())]);
        assert!(matches!(vault.get(&key()), Err(VaultError::NotFound(_))));
    }

    #[test]
    fn a_failed_revocation_still_deletes_and_says_why() {
        let vault = vault(|_| (503, "busy rt-1"));
        let receipt = vault.remove(&key()).unwrap();
        match receipt.upstream {
            UpstreamRevocation::Failed(VaultError::Provider(f)) => {
                assert_eq!(f.status, Some(503));
                assert!(!f.message.contains("rt-1"));
            }
            other => panic!("expected a failed revocation, got {other:?}"),
        }
        assert!(matches!(vault.get(&key()), Err(VaultError::NotFound(_))));
    }

    #[test]
    fn a_server_that_revokes_only_refresh_tokens_counts_as_revoked() {
        let vault = vault(|hint| match hint {
            "access_token" => (400, r#"{"error":"unsupported_token_type"}"#),
            _ => (200, ""),
        });
        assert_eq!(vault.remove(&key()).unwrap().upstream, UpstreamRevocation::Revoked);
    }

    #[test]
    fn an_unopenable_record_is_deleted_with_the_reason() {
        let vault = vault(|_| (200, ""));
        let storage_key = record::token_key(&key());
        vault.platform().records.borrow_mut().get_mut(&storage_key).unwrap().0[40] ^= 1;
        let receipt = vault.remove(&key()).unwrap();
        assert!(matches!(receipt.upstream, UpstreamRevocation::Failed(VaultError::Integrity(_))));
        assert!(vault.platform().requests.borrow().is_empty());
        assert!(matches!(vault.remove(&key()), Err(VaultError::NotFound(_))));
    }
}
