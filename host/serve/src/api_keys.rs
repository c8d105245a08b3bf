//! API keys for the backends that call `tokenvault serve`.
//!
//! A key is `tvk_<id>_<secret>` (see [`crate::credential`]): the id names it (to list and
//! revoke it). Only the SHA-256 of the whole key is kept, in the vault's storage under
//! `apikey/<id>` beside the component's records (so every `serve` process on one database
//! knows the same keys); the key itself is shown once, when it is created.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::credential::{self, Kind};
use tokenvault::clock::Clock;
use tokenvault::error::{Error, Result};
use tokenvault::storage::{Entry, Storage, StorageError, all_keys};

/// How every API key begins, and the bytes of its id.
pub(crate) const KIND: Kind = Kind { prefix: "tvk_", id_bytes: 6 };
const RECORD_PREFIX: &str = "apikey/";

/// What a key may reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One tenant's connections; the provider registry read-only.
    Tenant(String),
    /// Every tenant, and the provider registry.
    Operator,
}

impl Scope {
    pub fn allows_tenant(&self, tenant: &str) -> bool {
        match self {
            Scope::Operator => true,
            Scope::Tenant(own) => own == tenant,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Operator => f.write_str("operator"),
            Scope::Tenant(tenant) => write!(f, "tenant {tenant}"),
        }
    }
}

/// A key as listed: never the key, never its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiKeyInfo {
    pub id: String,
    pub scope: Scope,
    /// Unix seconds.
    pub created_at: u64,
}

/// A key just created: the only time `key` is known.
#[derive(Serialize)]
pub struct NewApiKey {
    pub key: String,
    #[serde(flatten)]
    pub info: ApiKeyInfo,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey").field("key", &"<redacted>").field("info", &self.info).finish()
    }
}

#[derive(Serialize, Deserialize)]
struct KeyRecord {
    scope: Scope,
    sha256: String,
    created_at: u64,
}

#[derive(Clone)]
pub struct ApiKeys {
    storage: Arc<dyn Storage>,
    clock: Clock,
}

impl ApiKeys {
    pub fn new(storage: Arc<dyn Storage>, clock: Clock) -> Self {
        ApiKeys { storage, clock }
    }

    /// The keys kept in `vault`'s storage.
    pub fn of(vault: &tokenvault::Vault) -> Self {
        let services = vault.services();
        ApiKeys::new(services.storage.clone(), services.clock.clone())
    }

    pub async fn create(&self, scope: Scope) -> Result<NewApiKey> {
        if let Scope::Tenant(tenant) = &scope
            && tenant.is_empty()
        {
            return Err(Error::invalid_input("a tenant key needs a tenant"));
        }
        let made = KIND.make()?;
        let created_at = self.clock.now().as_secs();
        let record = KeyRecord { scope: scope.clone(), sha256: made.sha256, created_at };
        let value = serde_json::to_vec(&record).expect("key records serialize");
        self.storage.put(&record_key(&made.id), &value, None).await?;
        Ok(NewApiKey { key: made.credential, info: ApiKeyInfo { id: made.id, scope, created_at } })
    }

    /// Every key, by id.
    pub async fn list(&self) -> Result<Vec<ApiKeyInfo>> {
        let mut keys = Vec::new();
        for storage_key in all_keys(&*self.storage, RECORD_PREFIX).await? {
            let id = &storage_key[RECORD_PREFIX.len()..];
            if let Some((record, _)) = self.record(id).await? {
                keys.push(ApiKeyInfo { id: id.to_owned(), scope: record.scope, created_at: record.created_at });
            }
        }
        Ok(keys)
    }

    /// Delete a key: requests presenting it fail from now on.
    pub async fn revoke(&self, id: &str) -> Result<()> {
        let Some((_, version)) = self.record(id).await? else {
            return Err(Error::not_found(format!("no API key {id}")));
        };
        match self.storage.delete(&record_key(id), version).await {
            Ok(()) | Err(StorageError::Conflict) => Ok(()), // gone already
            Err(e) => Err(e.into()),
        }
    }

    /// Does the key with this id still exist (not revoked)?
    pub async fn exists(&self, id: &str) -> Result<bool> {
        Ok(self.record(id).await?.is_some())
    }

    /// The key's scope, if `presented` is a key that exists; `None` for anything else.
    pub async fn verify(&self, presented: &str) -> Result<Option<ApiKeyInfo>> {
        let Some(id) = KIND.id_of(presented) else {
            return Ok(None);
        };
        // A revocation on another host reaches this one's cache a moment later (storage's
        // get_cached; ARCHITECTURE.md, Scale).
        let Some(entry) = self.storage.get_cached(&record_key(id)).await? else {
            return Ok(None);
        };
        let (record, _) = parse_record(id, entry)?;
        Ok(credential::matches(presented, &record.sha256).then(|| ApiKeyInfo {
            id: id.to_owned(),
            scope: record.scope,
            created_at: record.created_at,
        }))
    }

    async fn record(&self, id: &str) -> Result<Option<(KeyRecord, u64)>> {
        let Some(entry) = self.storage.get(&record_key(id)).await? else {
            return Ok(None);
        };
        parse_record(id, entry).map(Some)
    }
}

fn record_key(id: &str) -> String {
    format!("{RECORD_PREFIX}{id}")
}

fn parse_record(id: &str, entry: Entry) -> Result<(KeyRecord, u64)> {
    let record = serde_json::from_slice(&entry.value)
        .map_err(|e| Error::integrity(format!("API key record {id} is unreadable: {e}")))?;
    Ok((record, entry.version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenvault::VaultError;
    use tokenvault::storage::MemoryStorage;

    fn keys() -> (ApiKeys, Arc<dyn Storage>) {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
        (ApiKeys::new(storage.clone(), Clock::system()), storage)
    }

    #[tokio::test]
    async fn a_created_key_verifies_and_only_its_digest_is_stored() {
        let (keys, storage) = keys();
        let new = keys.create(Scope::Tenant("acme".into())).await.unwrap();
        assert!(new.key.starts_with("tvk_") && new.key.len() > 50);
        assert_eq!(keys.verify(&new.key).await.unwrap(), Some(new.info.clone()));
        let stored = storage.get(&record_key(&new.info.id)).await.unwrap().unwrap();
        let stored = String::from_utf8(stored.value).unwrap();
        let secret = &new.key[KIND.prefix.len() + 2 * KIND.id_bytes + 1..];
        assert!(!stored.contains(secret), "the secret is stored: {stored}");
        assert!(!format!("{new:?}").contains(secret), "Debug shows the key");
        assert_eq!(keys.list().await.unwrap(), vec![new.info]);
    }

    #[tokio::test]
    async fn wrong_malformed_and_revoked_keys_fail() {
        let (keys, _) = keys();
        let new = keys.create(Scope::Operator).await.unwrap();
        let mut tampered = new.key.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        for presented in [tampered.as_str(), "", "tvk_", "tvk_zz_secret", "Bearer x", &new.key[4..]] {
            assert_eq!(keys.verify(presented).await.unwrap(), None, "{presented:?}");
        }
        keys.revoke(&new.info.id).await.unwrap();
        assert_eq!(keys.verify(&new.key).await.unwrap(), None);
        assert!(matches!(keys.revoke(&new.info.id).await, Err(Error::Vault(VaultError::NotFound(_)))));
        assert!(keys.list().await.unwrap().is_empty());
    }

    #[test]
    fn a_tenant_key_reaches_its_tenant_only() {
        assert!(Scope::Tenant("acme".into()).allows_tenant("acme"));
        assert!(!Scope::Tenant("acme".into()).allows_tenant("globex"));
        assert!(Scope::Operator.allows_tenant("globex"));
    }
}
