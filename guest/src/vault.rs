//! The vault: its operations over any [`Platform`] are in the modules named after them
//! (`tokens`, `refresh`, `revocation`, `provider`, `connect`, `device`); here is what they
//! share: sealed records in storage, audit events and the time.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::*;
use crate::platform::{Platform, SealingKey, StorageError, Write};
use crate::record;
use crate::seal;

/// How often a write that keeps losing compare-and-swap races is retried.
pub(crate) const MAX_ATTEMPTS: usize = 5;
const LIST_PAGE: u32 = 100;

/// The token logic over one platform (the component's imports, or an in-process one).
pub struct Vault<P> {
    platform: P,
}

/// How a compare-and-swap write went.
pub(crate) enum Put {
    Written,
    /// The record's version was not the one expected: someone else wrote first.
    Conflict,
}

impl<P: Platform> Vault<P> {
    pub fn new(platform: P) -> Self {
        Vault { platform }
    }

    pub fn platform(&self) -> &P {
        &self.platform
    }

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

    pub(crate) fn open_sealed<T: DeserializeOwned>(
        &self,
        entry: &crate::platform::Entry,
        context: &seal::Context,
    ) -> Result<T> {
        let plaintext = self.open_bytes(&entry.value, context)?;
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
        self.put_sealed_with(storage_key, context, value, expected, Vec::new())
    }

    /// Like [`Vault::put_sealed`], with `also` in the same commit.
    pub(crate) fn put_sealed_with<T: Serialize>(
        &self,
        storage_key: &str,
        context: &seal::Context,
        value: &T,
        expected: Option<u64>,
        also: Vec<Write>,
    ) -> Result<Put> {
        let key = self.active_key()?;
        let sealed = self.seal_bytes(&key, context, &serde_json::to_vec(value).expect("records serialize"))?;
        let mut writes = vec![Write::Put { key: storage_key.to_owned(), value: sealed, expected }];
        writes.extend(also);
        self.commit(&writes)
    }

    /// Save a connection's token record by compare-and-swap on `expected` (`old` is the
    /// record at that version, if any), with the outbox writes of the events it causes
    /// ([`Vault::event_writes`]) and its entry in the due index moved to its new minute, in
    /// one commit.
    pub(crate) fn put_token(
        &self,
        key: &ConnectionKey,
        token: &record::TokenRecord,
        expected: Option<u64>,
        old: Option<&record::TokenRecord>,
        mut outbox: Vec<Write>,
    ) -> Result<Put> {
        outbox.extend(self.due_index_writes(key, old, Some(token))?);
        self.put_sealed_with(&record::token_key(key), &record::token_context(key), token, expected, outbox)
    }

    /// The due-index writes of a token going from `old` to `new` (none: deleted): its entry
    /// moved when its minute changes, made when it becomes renewable, dropped when it stops.
    pub(crate) fn due_index_writes(
        &self,
        key: &ConnectionKey,
        old: Option<&record::TokenRecord>,
        new: Option<&record::TokenRecord>,
    ) -> Result<Vec<Write>> {
        let (was, will) = (old.and_then(record::due_minute), new.and_then(record::due_minute));
        let mut writes = Vec::new();
        if was == will {
            return Ok(writes);
        }
        if let Some(minute) = will {
            let entry = record::due_key(minute, key);
            if self.storage_get(&entry)?.is_none() {
                writes.push(Write::Put { key: entry, value: Vec::new(), expected: None });
            }
        }
        if let Some(minute) = was {
            let entry = record::due_key(minute, key);
            if let Some(found) = self.storage_get(&entry)? {
                writes.push(Write::Delete { key: entry, expected: found.version });
            }
        }
        Ok(writes)
    }

    /// All of `writes` or none; a single one as a plain put or delete.
    pub(crate) fn commit(&self, writes: &[Write]) -> Result<Put> {
        let written = match writes {
            [Write::Put { key, value, expected }] => self.platform.storage_put(key, value, *expected).map(drop),
            [Write::Delete { key, expected }] => self.platform.storage_delete(key, *expected),
            _ => self.platform.storage_commit(writes).map(drop),
        };
        match written {
            Ok(()) => Ok(Put::Written),
            Err(StorageError::Conflict) => Ok(Put::Conflict),
            Err(StorageError::Unavailable(why)) => Err(VaultError::Storage(why)),
        }
    }

    /// The plaintext of a sealed envelope, opened with the key it names.
    pub(crate) fn open_bytes(&self, envelope: &[u8], context: &seal::Context) -> Result<Vec<u8>> {
        let key_id = seal::key_id(envelope)?;
        let key =
            self.platform.key_by_id(key_id).map_err(|why| VaultError::Storage(format!("keyring: {why}")))?.ok_or_else(
                || VaultError::Integrity(format!("{} record is sealed with unknown key {key_id:?}", context[0])),
            )?;
        seal::open(envelope, &key, context)
    }

    /// The key new records are sealed with.
    pub(crate) fn active_key(&self) -> Result<SealingKey> {
        self.platform.active_key().map_err(|why| VaultError::Storage(format!("keyring: {why}")))
    }

    /// `plaintext` sealed under `key` with a fresh nonce.
    pub(crate) fn seal_bytes(&self, key: &SealingKey, context: &seal::Context, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0; 12];
        getrandom::fill(&mut nonce).map_err(|_| VaultError::Storage("no randomness for a nonce".into()))?;
        seal::seal(&key.id, &key.material, context, plaintext, nonce)
    }

    pub(crate) fn storage_get(&self, storage_key: &str) -> Result<Option<crate::platform::Entry>> {
        self.platform.storage_get(storage_key).map_err(storage_error)
    }

    pub(crate) fn delete_record(&self, storage_key: &str, what: &str) -> Result<()> {
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

    pub(crate) fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
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

pub(crate) fn storage_error(err: StorageError) -> VaultError {
    match err {
        StorageError::Conflict => VaultError::Storage("unexpected version conflict".into()),
        StorageError::Unavailable(why) => VaultError::Storage(why),
    }
}

pub(crate) fn too_contended(what: &str) -> VaultError {
    VaultError::Storage(format!("the {what} record kept changing; gave up after {MAX_ATTEMPTS} attempts"))
}

/// What the operations' tests share: a vault on the in-memory platform with one provider.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::memory::MemoryPlatform;
    use crate::platform::HttpError;

    pub(crate) fn vault() -> Vault<MemoryPlatform> {
        vault_on(MemoryPlatform::new())
    }

    pub(crate) fn vault_on<P: Platform>(platform: P) -> Vault<P> {
        let vault = Vault::new(platform);
        vault.put_provider(None, provider_config()).unwrap();
        vault
    }

    /// The provider every fixture vault holds.
    pub(crate) fn provider_config() -> ProviderConfig {
        ProviderConfig {
            name: "acme".into(),
            authorization_url: Some("https://idp.example/authorize".into()),
            token_url: Some("https://idp.example/token".into()),
            client_id: "client".into(),
            client_secret: Some("client-secret-canary".into()),
            client_auth: Some(ClientAuth::ClientSecretBasic),
            scopes: vec!["read".into()],
            ..ProviderConfig::default()
        }
    }

    pub(crate) fn key() -> ConnectionKey {
        ConnectionKey::new("t1", "alice", "acme", "default")
    }

    pub(crate) fn grant(access: &str, refresh: Option<&str>, expires_in: Option<u64>) -> TokenGrant {
        TokenGrant {
            access_token: access.into(),
            token_type: "Bearer".into(),
            expires_in,
            refresh_token: refresh.map(String::from),
            scope: Some("read write".into()),
        }
    }

    pub(crate) fn json(
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

    pub(crate) fn form_of(request: &oauth2::HttpRequest) -> String {
        String::from_utf8(request.body().clone()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::record;

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
}
