//! Removing connections: their tokens revoked at the provider (RFC 7009), then deleted
//! here whatever the provider says, with a receipt for each.

use crate::model::events::EventType;
use crate::model::*;
use crate::oauth;
use crate::platform::{Platform, Write};
use crate::record::{self, TokenRecord};
use crate::vault::{MAX_ATTEMPTS, Put, Vault, too_contended};

impl<P: Platform> Vault<P> {
    /// Revoke the connection's tokens upstream (RFC 7009), then delete it.
    pub fn remove(&self, key: &ConnectionKey) -> Result<RemovalReceipt> {
        let result = record::validate_key(key).and_then(|()| self.remove_connection(key));
        self.audit_token(AuditAction::TokenRemove, key, AuditOutcome::from(&result));
        result
    }

    /// Remove every connection of a user, each revoked upstream; a receipt each.
    pub fn revoke_all(&self, tenant: &str, user: &str) -> Result<Vec<RemovalReceipt>> {
        let result = self.revoke_all_inner(tenant, user);
        self.emit(AuditAction::RevokeAll, AuditOutcome::from(&result), Some(tenant), Some(user), None, None);
        result
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
                Err(err) => UpstreamRevocation::Failed { reason: err },
            };
            let mut event = self.new_event(EventType::Removed, key)?;
            event.revocation = Some((&upstream).into());
            let mut writes = vec![Write::Delete { key: storage_key.clone(), expected: entry.version }];
            writes.extend(self.event_writes(vec![event])?);
            if let Put::Written = self.commit(&writes)? {
                return Ok(RemovalReceipt { provider: key.provider.clone(), name: key.name.clone(), upstream });
            }
        }
        Err(too_contended("connection"))
    }

    /// RFC 7009: the refresh token first (revoking it ends the grant at most providers),
    /// then the access token.
    fn revoke_upstream(&self, key: &ConnectionKey, token: &TokenRecord) -> UpstreamRevocation {
        let provider = match self.load_provider(&key.provider) {
            Ok(provider) => provider,
            Err(err) => return UpstreamRevocation::Failed { reason: err },
        };
        if provider.revocation_url.is_none() {
            return UpstreamRevocation::Unsupported;
        }
        let http = |request| self.platform().http(request);
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
                Err(err) => return UpstreamRevocation::Failed { reason: err },
            }
        }
        UpstreamRevocation::Revoked
    }
}

#[cfg(test)]
mod tests {
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
            UpstreamRevocation::Failed { reason: VaultError::Provider(f) } => {
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
        assert!(matches!(receipt.upstream, UpstreamRevocation::Failed { reason: VaultError::Integrity(_) }));
        assert!(vault.platform().requests.borrow().is_empty());
        assert!(matches!(vault.remove(&key()), Err(VaultError::NotFound(_))));
    }
}
