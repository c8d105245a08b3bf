//! Refreshing: one upstream refresh however many callers find a token due (a lease in
//! storage), the renewed tokens saved before anything else, and background refresh.

use std::time::Duration;

use crate::expiry;
use crate::model::events::{EventFailure, EventType};
use crate::model::storage::{DUE_INDEX_KEY, DUE_PREFIX};
use crate::model::*;
use crate::oauth;
use crate::platform::{Platform, ResponseTimeout, StorageError};
use crate::record::{self, ProviderRecord, TokenRecord};
use crate::tokens::ensure_active;
use crate::vault::{MAX_ATTEMPTS, Put, Vault, storage_error, too_contended};

/// How long a refresh lease lasts. It must outlast any holder: the host's call deadline
/// (default 30 s, which also bounds the provider round trip) stops a holder before then.
pub const LEASE_MS: u64 = 40_000;
/// How long a caller waits for another caller's refresh; below the call deadline.
const WAIT_FOR_OTHERS_MS: u64 = 20_000;
/// Waiters wait for the lease to change (the host wakes them when it is released) and
/// read the token again at least this often: a holder that saved the token but could not
/// release its lease must not hold them up for the lease's whole life.
const RECHECK_MS: u64 = 1_000;
/// How long a refresh waits for the token endpoint to begin answering. Every caller that
/// needs the connection waits behind the lease meanwhile, so a provider that hangs is given
/// up on well before the host's general limit (15 s by default); token endpoints answer in
/// well under a second.
const REFRESH_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pauses between attempts to save a refreshed token while storage is unavailable.
const SAVE_RETRY_PAUSES_MS: [u64; 3] = [50, 250, 1_000];

/// Who holds a connection's refresh lease, as `acquire_lease` found it.
enum Lease {
    /// This caller holds the lease, at this version.
    Mine(u64),
    /// Another caller holds it (at this version, when known).
    Theirs(Option<u64>),
}

impl<P: Platform> Vault<P> {
    /// Refresh now, whatever the expiry.
    pub fn refresh(&self, key: &ConnectionKey) -> Result<TokenSet> {
        let result = self.refresh_inner(key);
        self.audit_token(AuditAction::TokenRefresh, key, AuditOutcome::from(&result));
        result
    }

    /// Background refresh, step one: of the next `limit` connections after `cursor` (every
    /// tenant's), those that can be renewed and whose token expires within `horizon_secs`.
    /// Read from the due index, a page of entries up to the horizon's minute, records not
    /// opened; until the index is complete (a store from before it), every record is read
    /// and indexed, and the pass that reaches the end completes it.
    pub fn due_for_refresh(&self, horizon_secs: u32, cursor: Option<&str>, limit: u32) -> Result<DuePage> {
        if limit == 0 || limit > 1000 {
            return Err(VaultError::InvalidInput("limit must be 1 to 1000".into()));
        }
        if self.storage_get(DUE_INDEX_KEY)?.is_none() {
            return self.due_by_reading_every_record(horizon_secs, cursor, limit);
        }
        let until = (self.now() + u64::from(horizon_secs)) / 60;
        let page = self.platform().storage_list(DUE_PREFIX, cursor, limit).map_err(storage_error)?;
        let mut keys = Vec::new();
        for storage_key in &page.keys {
            let Some((minute, key)) = record::parse_due_key(storage_key) else { continue };
            if minute > until {
                return Ok(DuePage { keys, cursor: None }); // the rest falls due later
            }
            // An entry whose connection is gone (a record that did not open when removed).
            if self.storage_get(&record::token_key(&key))?.is_none() {
                if let Some(entry) = self.storage_get(storage_key)? {
                    let _ = self.platform().storage_delete(storage_key, entry.version);
                }
                continue;
            }
            keys.push(key);
        }
        Ok(DuePage { keys, cursor: page.cursor })
    }

    /// Every record of a page read and opened, each renewable one put in the due index; the
    /// page that ends the walk marks the index complete.
    fn due_by_reading_every_record(&self, horizon_secs: u32, cursor: Option<&str>, limit: u32) -> Result<DuePage> {
        let page = self.platform().storage_list(record::ALL_TOKENS_PREFIX, cursor, limit).map_err(storage_error)?;
        let now = self.now();
        let mut keys = Vec::new();
        for key in page.keys.iter().filter_map(|storage_key| record::parse_token_key(storage_key)) {
            match self.load_token(&key) {
                Ok((token, _)) => {
                    if let Some(minute) = record::due_minute(&token) {
                        // Written meanwhile by a save, which indexes as it writes: fine.
                        let _ = self.platform().storage_put(&record::due_key(minute, &key), &[], None);
                        if expiry::expires_within(now, token.expires_at, horizon_secs) {
                            keys.push(key);
                        }
                    }
                }
                Err(VaultError::NotFound(_) | VaultError::Integrity(_)) => {}
                Err(err) => return Err(err),
            }
        }
        if page.cursor.is_none() {
            let _ = self.platform().storage_put(DUE_INDEX_KEY, b"{}", None);
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
    pub(crate) fn refresh_coordinated(
        &self,
        key: &ConnectionKey,
        mut token: TokenRecord,
        mut version: u64,
        wanted: Wanted,
    ) -> Result<TokenSet> {
        let lease_key = record::lease_key(key);
        let give_up_at = self.platform().now_ms() + WAIT_FOR_OTHERS_MS;
        loop {
            let held = match self.acquire_lease(&lease_key)? {
                Lease::Theirs(version) => version,
                Lease::Mine(lease_version) => {
                    let result = self.load_token(key).and_then(|(current, current_version)| {
                        ensure_active(&current)?;
                        if current_version != version && renewed_since(&token, &current) {
                            Ok(current.token_set()) // another holder finished in between
                        } else {
                            // Read under the lease: its newest configuration.
                            let provider = self.load_provider(key)?;
                            self.refresh_upstream(key, current, current_version, &provider)
                        }
                    });
                    // A failed release only delays others until the lease expires; they see
                    // the new token version long before that.
                    let _ = self.platform().storage_delete(&lease_key, lease_version);
                    return result;
                }
            };
            // Someone else is refreshing.
            if wanted == Wanted::Fresh && !expiry::is_expired(self.now(), token.expires_at) {
                return Ok(token.token_set());
            }
            if self.platform().now_ms() >= give_up_at {
                return Err(VaultError::provider(
                    None,
                    None,
                    format!(
                        "another caller's refresh of this connection did not finish within {} s",
                        WAIT_FOR_OTHERS_MS / 1000
                    ),
                ));
            }
            let timeout = give_up_at.saturating_sub(self.platform().now_ms()).min(RECHECK_MS);
            self.platform().storage_wait_for_change(&lease_key, held, timeout as u32).map_err(storage_error)?;
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
        let now = self.platform().now_ms();
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
                    return Ok(Lease::Theirs(Some(entry.version)));
                }
                Some(entry.version) // expired: its holder is gone; take it over
            }
        };
        match self.platform().storage_put(lease_key, &value, expected) {
            Ok(version) => Ok(Lease::Mine(version)),
            // Another caller took it first; its version is learned on the next read.
            Err(StorageError::Conflict) => Ok(Lease::Theirs(None)),
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
        let http = |mut request: oauth2::HttpRequest| {
            request.extensions_mut().insert(ResponseTimeout(REFRESH_RESPONSE_TIMEOUT));
            self.platform().http(request)
        };
        let renewed = match token.kind {
            ConnectionKind::User => oauth::refresh(provider, token.refresh_token.as_deref().unwrap_or_default(), &http),
            ConnectionKind::Client => oauth::client_credentials(provider, &token.requested_scopes, &http),
        };
        match renewed {
            Ok(grant) => self.save_refreshed(key, token, version, grant),
            Err(VaultError::ReconnectRequired(why)) => self.mark_reconnect_required(key, token, version, why),
            // Any other failure leaves the stored tokens as they were.
            Err(err) => {
                self.note_refresh_failure(key, token, version, &err);
                Err(err)
            }
        }
    }

    /// The first failure since the last success marks the record, its tokens untouched,
    /// and sends `connection.refresh_failed`; the failures after it change nothing.
    fn note_refresh_failure(&self, key: &ConnectionKey, mut token: TokenRecord, version: u64, err: &VaultError) {
        if token.refresh_failing.is_some() || matches!(err, VaultError::Storage(_)) {
            return;
        }
        let failure = EventFailure::of(err);
        let Ok(mut event) = self.new_event(EventType::RefreshFailed, key) else {
            return;
        };
        event.failure = Some(failure.clone());
        // Without a webhook there is no one to tell: the record stays exactly as it was.
        let outbox = match self.event_writes(vec![event]) {
            Ok(outbox) if !outbox.is_empty() => outbox,
            _ => return,
        };
        let old = token.clone();
        token.refresh_failing = Some(failure);
        // Lost to a newer write, or storage down: the next failure tries again.
        let _ = self.put_token(key, &token, Some(version), Some(&old), outbox);
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
            refresh_failing: None,
        };
        let recovered = match old.refresh_failing {
            Some(_) => self.event_writes(vec![self.new_event(EventType::Recovered, key)?])?,
            None => Vec::new(),
        };
        let mut unavailable = 0;
        let mut conflicts = 0;
        // The record at `version`, whose due-index entry the save moves.
        let mut base = old.clone();
        loop {
            match self.put_token(key, &renewed, Some(version), Some(&base), recovered.clone()) {
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
                    (base, version) = (current, current_version);
                }
                // The provider has already rotated: losing this write loses the grant.
                // Try again before giving up.
                Err(VaultError::Storage(_)) if unavailable < SAVE_RETRY_PAUSES_MS.len() => {
                    self.platform().sleep_ms(SAVE_RETRY_PAUSES_MS[unavailable]);
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
        let mut event = self.new_event(EventType::ReconnectRequired, key)?;
        // The one refresh answer that means this (oauth::refresh).
        event.failure = Some(EventFailure {
            code: Some("invalid_grant".into()),
            ..EventFailure::of(&VaultError::ReconnectRequired(String::new()))
        });
        let written = self
            .event_writes(vec![event])
            .and_then(|outbox| self.put_token(key, &token, Some(version), Some(&old), outbox));
        let lost_race = matches!(written, Ok(Put::Conflict));
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
}

/// What a refresh must produce.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wanted {
    /// A token that is still valid will do (`get`).
    Fresh,
    /// A token obtained after the call began (`refresh`).
    Renewed,
}

/// Whether `current` holds other tokens than `before`: renewed, or replaced by a store.
fn renewed_since(before: &TokenRecord, current: &TokenRecord) -> bool {
    current.access_token != before.access_token || current.refresh_token != before.refresh_token
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryPlatform;
    use crate::platform::HttpError;
    use crate::vault::fixtures::*;

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
    fn a_refresh_asks_the_host_to_give_up_on_a_silent_token_endpoint_soon() {
        let vault = vault();
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(100))).unwrap();
        vault.platform().respond(json(200, ROTATED));
        vault.refresh(&key()).unwrap();
        let requests = vault.platform().requests.borrow();
        let asked = requests.last().unwrap().extensions().get::<ResponseTimeout>();
        assert_eq!(asked, Some(&ResponseTimeout(REFRESH_RESPONSE_TIMEOUT)));
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
        let provider = record::provider_key(None, "acme");
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
        vault.remove_provider(None, "acme").unwrap();
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
        let err = vault.get(&key()).expect_err("must fail");
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
        let err = vault.refresh(&key()).expect_err("must fail");
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

    fn due_entries(vault: &Vault<MemoryPlatform>) -> Vec<(u64, String)> {
        let records = vault.platform().records.borrow();
        records.keys().filter_map(|k| record::parse_due_key(k)).map(|(minute, key)| (minute, key.name)).collect()
    }

    #[test]
    fn the_due_index_follows_each_tokens_writes() {
        let vault = vault();
        let at = |name: &str| ConnectionKey::new("t1", "alice", "acme", name);
        let minute = |expires_in: u64| (vault.now() + expires_in) / 60;
        vault.store(&at("a"), grant("at-1", Some("rt-1"), Some(600))).unwrap();
        vault.store(&at("no-refresh"), grant("at-2", None, Some(600))).unwrap();
        vault.store(&at("forever"), grant("at-3", Some("rt-3"), None)).unwrap();
        assert_eq!(due_entries(&vault), [(minute(600), "a".to_owned())], "only what background refresh renews");

        vault.platform().respond(json(200, r#"{"access_token":"at-4","token_type":"bearer","expires_in":7200}"#));
        vault.refresh(&at("a")).unwrap();
        assert_eq!(due_entries(&vault), [(minute(7200), "a".to_owned())], "moved with the renewed expiry");
        vault.store(&at("a"), grant("at-5", Some("rt-5"), Some(60))).unwrap();
        assert_eq!(due_entries(&vault), [(minute(60), "a".to_owned())], "moved by a store");

        vault.platform().respond(json(400, r#"{"error":"invalid_grant"}"#));
        assert!(vault.refresh(&at("a")).is_err());
        assert!(due_entries(&vault).is_empty(), "a connection to reconnect is not refreshed");
        vault.store(&at("a"), grant("at-6", Some("rt-6"), Some(600))).unwrap();
        vault.remove(&at("a")).unwrap();
        assert!(due_entries(&vault).is_empty(), "removed with its connection");
    }

    #[test]
    fn a_pass_over_a_complete_index_reads_only_what_is_due() {
        let vault = vault();
        for n in 0..200 {
            let expires_in = if n % 50 == 0 { 100 } else { 86_400 };
            let key = ConnectionKey::new("t1", format!("u{n}"), "acme", "default");
            vault.store(&key, grant("at", Some("rt"), Some(expires_in))).unwrap();
        }
        // A store from before the index: entries and marker gone.
        vault.platform().records.borrow_mut().retain(|k, _| !k.starts_with(DUE_PREFIX) && k != DUE_INDEX_KEY);
        let pass = |vault: &Vault<MemoryPlatform>| {
            vault.platform().reads.borrow_mut().clear();
            let (mut due, mut cursor) = (Vec::new(), None);
            loop {
                let page = vault.due_for_refresh(300, cursor.as_deref(), 50).unwrap();
                due.extend(page.keys.into_iter().map(|k| k.user));
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => return (due, vault.platform().reads.borrow().len()),
                }
            }
        };
        let (first, reads_first) = pass(&vault);
        assert_eq!(first, ["u0", "u100", "u150", "u50"]);
        assert!(vault.platform().records.borrow().contains_key(DUE_INDEX_KEY), "the walk completed the index");
        assert_eq!(due_entries(&vault).len(), 200);
        let (second, reads_second) = pass(&vault);
        assert_eq!(second, ["u0", "u100", "u150", "u50"]);
        assert!(reads_first > 200 && reads_second < 10, "{reads_first} reads, then {reads_second}");

        // An entry whose connection is gone is dropped by the pass that meets it.
        let gone = ConnectionKey::new("t1", "u0", "acme", "default");
        vault.platform().records.borrow_mut().remove(&record::token_key(&gone));
        assert_eq!(pass(&vault).0, ["u100", "u150", "u50"]);
        assert_eq!(due_entries(&vault).len(), 199);
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
