//! Removing connections: their tokens revoked at the provider (RFC 7009), then deleted
//! here whatever the provider says, with a receipt for each.

use crate::model::events::{Event, EventType, OUTBOX_PREFIX, UNDELIVERED_PREFIX, webhook_key};
use crate::model::*;
use crate::oauth;
use crate::platform::{Platform, Write};
use crate::record::{self, TokenRecord};
use crate::vault::{MAX_ATTEMPTS, Put, Vault, storage_error, too_contended};

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

    /// One step of erasing `tenant`: up to `limit` connections removed (revoked upstream,
    /// then deleted); once none is left, the rest of the tenant's records.
    pub fn erase_tenant(&self, tenant: &str, limit: u32) -> Result<ErasePage> {
        let result = self.erase_tenant_inner(tenant, limit);
        self.emit(AuditAction::TenantErase, AuditOutcome::from(&result), Some(tenant), None, None, None);
        result
    }

    fn erase_tenant_inner(&self, tenant: &str, limit: u32) -> Result<ErasePage> {
        record::validate_id("tenant", tenant)?;
        if limit == 0 || limit > 1000 {
            return Err(VaultError::InvalidInput("limit must be 1 to 1000".into()));
        }
        let mut page = ErasePage::default();
        let connections =
            self.platform().storage_list(&record::tenant_prefix(tenant), None, limit).map_err(storage_error)?;
        for key in connections.keys.iter().filter_map(|storage_key| record::parse_token_key(storage_key)) {
            match self.remove_connection(&key) {
                Ok(receipt) => page.removed.push(ErasedConnection { user: key.user.clone(), receipt }),
                Err(VaultError::NotFound(_)) => {} // removed meanwhile
                Err(err) => return Err(err),
            }
        }
        if !connections.keys.is_empty() {
            return Ok(page);
        }
        // No connection left: what else is the tenant's. Its events go before its webhook,
        // so none is written after the webhook is gone and none waits for a webhook gone.
        let mut doomed = self.list_keys(&record::provider_prefix(Some(tenant)))?;
        doomed.extend(self.list_keys(&record::lease_prefix(tenant))?);
        for prefix in [OUTBOX_PREFIX, UNDELIVERED_PREFIX] {
            for storage_key in self.list_keys(prefix)? {
                let event = self.storage_get(&storage_key)?.map(|entry| Event::from_json(&entry.value));
                if matches!(event, Some(Ok(event)) if event.tenant == tenant) {
                    doomed.push(storage_key);
                }
            }
        }
        for prefix in record::PENDING_PREFIXES {
            for storage_key in self.list_keys(prefix)? {
                if self.pending_of(&storage_key)?.is_some_and(|connection| connection.tenant == tenant) {
                    doomed.push(storage_key);
                }
            }
        }
        doomed.push(webhook_key(tenant));
        for storage_key in doomed {
            match self.delete_record(&storage_key, "record") {
                Ok(()) => page.deleted += 1,
                Err(VaultError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        page.done = true;
        Ok(page)
    }

    /// The connection a pending flow, device flow or link is for; none when it is gone or
    /// does not open (then it is not known to be this tenant's, and a sweep deletes it).
    fn pending_of(&self, storage_key: &str) -> Result<Option<ConnectionKey>> {
        #[derive(serde::Deserialize)]
        struct Pending {
            connection: ConnectionKey,
        }
        let (Some((kind, id)), Some(entry)) = (record::pending_context(storage_key), self.storage_get(storage_key)?)
        else {
            return Ok(None);
        };
        Ok(self.open_sealed::<Pending>(&entry, &[kind, &id]).ok().map(|pending| pending.connection))
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
            let token = self.open_sealed::<TokenRecord>(&entry, &record::token_context(key));
            let upstream = match &token {
                Ok(token) => self.revoke_upstream(key, token),
                Err(err) => UpstreamRevocation::Failed { reason: err.clone() },
            };
            let mut event = self.new_event(EventType::Removed, key)?;
            event.revocation = Some((&upstream).into());
            let mut writes = vec![Write::Delete { key: storage_key.clone(), expected: entry.version }];
            writes.extend(self.event_writes(vec![event])?);
            writes.extend(self.due_index_writes(key, token.as_ref().ok(), None)?);
            if let Put::Written = self.commit(&writes)? {
                return Ok(RemovalReceipt { provider: key.provider.clone(), name: key.name.clone(), upstream });
            }
        }
        Err(too_contended("connection"))
    }

    /// RFC 7009: the refresh token first (revoking it ends the grant at most providers),
    /// then the access token.
    fn revoke_upstream(&self, key: &ConnectionKey, token: &TokenRecord) -> UpstreamRevocation {
        let provider = match self.load_provider(key) {
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
            .put_provider(
                None,
                ProviderConfig {
                    name: "acme".into(),
                    authorization_url: Some("https://idp.example/authorize".into()),
                    token_url: Some("https://idp.example/token".into()),
                    revocation_url: Some("https://idp.example/revoke".into()),
                    client_id: "client".into(),
                    client_secret: Some("client-secret".into()),
                    ..ProviderConfig::default()
                },
            )
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
    fn erasing_a_tenant_revokes_and_deletes_everything_of_its_and_nothing_else() {
        let vault = vault(|_| (200, ""));
        let grant = |n: &str| TokenGrant {
            access_token: format!("at-{n}"),
            token_type: "Bearer".into(),
            expires_in: Some(3600),
            refresh_token: Some(format!("rt-{n}")),
            scope: None,
        };
        for user in ["bob", "carol"] {
            vault.store(&ConnectionKey::new("t1", user, "acme", "default"), grant(user)).unwrap();
        }
        let other = ConnectionKey::new("t2", "alice", "acme", "default");
        vault.store(&other, grant("other")).unwrap();
        let own = ProviderConfig {
            name: "own".into(),
            token_url: Some("https://own.example/t".into()),
            client_id: "c".into(),
            ..ProviderConfig::default()
        };
        vault.put_provider(Some("t1"), own.clone()).unwrap();
        vault.put_provider(Some("t2"), own).unwrap();
        vault
            .put_webhook(
                "t1",
                crate::model::events::WebhookConfig { url: "https://h.example/".into(), ..Default::default() },
            )
            .unwrap();
        vault.link(&key(), None).unwrap();
        vault.link(&other, None).unwrap();
        vault.platform().storage_put(&record::lease_key(&key()), b"{}", None).unwrap();

        // Two connections a step, then the rest.
        let first = vault.erase_tenant("t1", 2).unwrap();
        assert_eq!((first.removed.len(), first.done), (2, false));
        assert!(first.removed.iter().all(|erased| erased.receipt.upstream == UpstreamRevocation::Revoked));
        let second = vault.erase_tenant("t1", 2).unwrap();
        assert_eq!((second.removed.len(), second.done), (1, false));
        let last = vault.erase_tenant("t1", 2).unwrap();
        // Its provider, link, lease, webhook and the three removal events it had written.
        assert_eq!((last.removed.len(), last.deleted, last.done), (0, 7, true));
        assert_eq!(vault.erase_tenant("t1", 2).unwrap(), ErasePage { done: true, ..ErasePage::default() });

        let left: Vec<String> = vault.platform().records.borrow().keys().cloned().collect();
        assert!(left.iter().all(|key| !key.contains("t1")), "{left:?}");
        assert_eq!(revoked(&vault).len(), 6, "both tokens of each of t1's three connections");
        assert_eq!(vault.get(&other).unwrap().access_token, "at-other", "t2 untouched");
        assert_eq!(vault.get_provider(Some("t2"), "own").unwrap().tenant.as_deref(), Some("t2"));
        assert_eq!(left.iter().filter(|key| key.starts_with("link/")).count(), 1);
        assert!(vault.erase_tenant("t1", 0).is_err());
        // Every step audited under the tenant; the refused one as invalid input.
        let steps: Vec<_> = vault
            .platform()
            .events
            .borrow()
            .iter()
            .filter(|e| e.action == AuditAction::TenantErase)
            .map(|e| (e.outcome, e.tenant.clone()))
            .collect();
        let t1 = Some("t1".to_owned());
        let mut expected = vec![(AuditOutcome::Ok, t1.clone()); 4];
        expected.push((AuditOutcome::InvalidInput, t1));
        assert_eq!(steps, expected);
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
