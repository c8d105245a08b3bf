//! Tokens: storing a token response, reading a token (refreshed first when due), and
//! listing a user's connections and a tenant's users.

use crate::expiry;
use crate::model::events::EventType;
use crate::model::*;
use crate::platform::Platform;
use crate::record::{self, TokenRecord};
use crate::refresh::Wanted;
use crate::vault::{MAX_ATTEMPTS, Put, Vault, storage_error, too_contended};

impl<P: Platform> Vault<P> {
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
            let page = self.platform().storage_list(&prefix, cursor.as_deref(), 500).map_err(storage_error)?;
            for key in page.keys.iter().filter_map(|storage_key| record::parse_token_key(storage_key)) {
                if users.last().is_none_or(|last| last.user != key.user) {
                    if users.len() == limit as usize {
                        let next = users.last().map(|last| last.user.clone());
                        return Ok(UserPage { users, next });
                    }
                    users.push(UserConnections { user: key.user.clone(), connections: Vec::new() });
                }
                users
                    .last_mut()
                    .expect("pushed above")
                    .connections
                    .push(ConnectionName { provider: key.provider, name: key.name });
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(UserPage { users, next: None }),
            }
        }
    }

    fn store_inner(&self, key: &ConnectionKey, grant: TokenGrant) -> Result<ConnectionInfo> {
        record::validate_key(key)?;
        self.load_provider(key)?;
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
            refresh_failing: None,
        };
        let storage_key = record::token_key(key);
        let context = record::token_context(key);
        for _ in 0..MAX_ATTEMPTS {
            let current = self.storage_get(&storage_key)?;
            // A new connection is news, and so is one that was broken; a healthy one's
            // tokens replaced is not.
            let old = current.as_ref().and_then(|entry| self.open_sealed::<TokenRecord>(entry, &context).ok());
            let event = match (&current, &old) {
                (None, _) => Some(EventType::ConnectionCreated),
                (Some(_), Some(old))
                    if old.status == ConnectionStatus::ReconnectRequired || old.refresh_failing.is_some() =>
                {
                    Some(EventType::Recovered)
                }
                _ => None,
            };
            let events = event.map(|kind| self.new_event(kind, key)).transpose()?.into_iter().collect();
            let outbox = self.event_writes(events)?;
            let expected = current.map(|entry| entry.version);
            if let Put::Written = self.put_token(key, &token, expected, old.as_ref(), outbox)? {
                return Ok(token.info(key));
            }
        }
        Err(too_contended("connection"))
    }

    pub(crate) fn get_inner(&self, key: &ConnectionKey) -> Result<TokenSet> {
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
            let provider = self.load_provider(key)?;
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

    pub(crate) fn load_token(&self, key: &ConnectionKey) -> Result<(TokenRecord, u64)> {
        self.load_sealed(&record::token_key(key), &record::token_context(key))?.ok_or_else(|| {
            VaultError::NotFound(format!("no {} connection named {:?} for this user", key.provider, key.name))
        })
    }
}

pub(crate) fn ensure_active(token: &TokenRecord) -> Result<()> {
    match token.status {
        ConnectionStatus::Active => Ok(()),
        ConnectionStatus::ReconnectRequired => Err(VaultError::ReconnectRequired(
            "the provider rejected this connection's refresh token; connect again".into(),
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::fixtures::*;

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
            vault.store(&ConnectionKey::new("t1", "bob", "acme", format!("c{i:03}")), grant("a", None, None)).unwrap();
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
        assert!(matches!(vault.put_provider(None, config.clone()), Err(VaultError::InvalidInput(_))));
        config.name = "ok".into();
        config.token_url = Some("ftp://x/token".into());
        assert!(matches!(vault.put_provider(None, config.clone()), Err(VaultError::InvalidInput(_))));
    }
}
