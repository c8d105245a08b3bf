//! Re-encryption after a key rotation: a page at a time, every sealed record under a key
//! other than the active one is opened and sealed again under the active key. The host
//! drives the pages and keeps the cursor, so an interrupted pass resumes where it stopped.

use crate::model::storage::{ReencryptPage, SEALED_PREFIXES};
use crate::model::{AuditAction, AuditOutcome, Result, VaultError};
use crate::platform::{Platform, SealingKey, StorageError};
use crate::record;
use crate::seal;
use crate::vault::{MAX_ATTEMPTS, Vault, storage_error, too_contended};

/// What re-encrypting one record came to.
#[derive(Debug, PartialEq, Eq)]
enum Resealed {
    Moved,
    AlreadyCurrent,
    /// Does not open; left as it is for an operator to look at.
    Failed,
    /// Deleted meanwhile: nothing to move.
    Gone,
}

impl<P: Platform> Vault<P> {
    /// Re-seal, of the next `limit` sealed records after `cursor`, each one not sealed
    /// under the active key. Pass the cursor back until it is none. Each page is one audit
    /// event.
    pub fn reencrypt(&self, cursor: Option<&str>, limit: u32) -> Result<ReencryptPage> {
        let result = self.reencrypt_page(cursor, limit);
        self.emit(AuditAction::KeyReencrypt, AuditOutcome::from(&result), None, None, None, None);
        result
    }

    fn reencrypt_page(&self, cursor: Option<&str>, limit: u32) -> Result<ReencryptPage> {
        if limit == 0 || limit > 1000 {
            return Err(VaultError::InvalidInput("limit must be 1 to 1000".into()));
        }
        let at = cursor.map_or(Some(0), |c| SEALED_PREFIXES.iter().position(|p| c.starts_with(p)));
        let Some((at, prefix)) = at.and_then(|at| SEALED_PREFIXES.get(at).map(|p| (at, *p))) else {
            return Err(VaultError::InvalidInput("the cursor is not one a re-encryption pass gave".into()));
        };
        let active = self.active_key()?;
        let page = self.platform().storage_list(prefix, cursor, limit).map_err(storage_error)?;
        let mut done = ReencryptPage::default();
        for storage_key in page.keys.iter().filter(|key| key.starts_with(prefix)) {
            match self.reseal(storage_key, &active)? {
                Resealed::Moved => done.reencrypted += 1,
                Resealed::AlreadyCurrent => done.current += 1,
                Resealed::Failed => done.failed += 1,
                Resealed::Gone => {}
            }
        }
        // A finished prefix hands over to the next one: listing after "prov/" is all of it.
        done.cursor = page.cursor.or_else(|| SEALED_PREFIXES.get(at + 1).map(|next| (*next).to_owned()));
        Ok(done)
    }

    fn reseal(&self, storage_key: &str, active: &SealingKey) -> Result<Resealed> {
        let Some(context) = record::sealing_context(storage_key) else {
            return Ok(Resealed::Failed);
        };
        let context: Vec<&str> = context.iter().map(String::as_str).collect();
        for _ in 0..MAX_ATTEMPTS {
            let Some(entry) = self.storage_get(storage_key)? else {
                return Ok(Resealed::Gone);
            };
            match seal::key_id(&entry.value) {
                Ok(id) if id == active.id => return Ok(Resealed::AlreadyCurrent),
                Ok(_) => {}
                Err(_) => return Ok(Resealed::Failed),
            }
            let plaintext = match self.open_bytes(&entry.value, &context) {
                Ok(plaintext) => plaintext,
                Err(VaultError::Integrity(_)) => return Ok(Resealed::Failed),
                Err(other) => return Err(other),
            };
            let sealed = self.seal_bytes(active, &context, &plaintext)?;
            match self.platform().storage_put(storage_key, &sealed, Some(entry.version)) {
                Ok(_) => return Ok(Resealed::Moved),
                // Written meanwhile (a refresh, say): read it again, never overwrite it.
                Err(StorageError::Conflict) => continue,
                Err(StorageError::Unavailable(why)) => return Err(VaultError::Storage(why)),
            }
        }
        Err(too_contended("re-encrypted"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::storage::TOKEN_PREFIX;
    use crate::vault::fixtures::{grant, key, vault};

    fn pass(vault: &Vault<crate::memory::MemoryPlatform>, limit: u32) -> ReencryptPage {
        let mut total = ReencryptPage::default();
        let mut cursor = None;
        loop {
            let page = vault.reencrypt(cursor.as_deref(), limit).unwrap();
            total.reencrypted += page.reencrypted;
            total.current += page.current;
            total.failed += page.failed;
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return total,
            }
        }
    }

    #[test]
    fn a_pass_moves_every_record_to_the_active_key_and_a_second_finds_them_current() {
        let vault = vault(); // holds one provider
        for user in ["ann", "bob", "cy"] {
            let key = crate::model::ConnectionKey { user: user.into(), ..key() };
            vault.store(&key, grant("at", Some("rt"), Some(3600))).unwrap();
        }
        // A tenant's own provider, its webhook and a pending link: sealed too.
        let own = crate::model::ProviderConfig {
            name: "own".into(),
            token_url: Some("https://own.example/t".into()),
            client_id: "c".into(),
            client_secret: Some("own-secret".into()),
            ..Default::default()
        };
        vault.put_provider(Some("t1"), own).unwrap();
        let hook = crate::model::events::WebhookConfig { url: "https://h.example/".into(), ..Default::default() };
        let secret = vault.put_webhook("t1", hook).unwrap().unwrap();
        vault.link(&key(), None).unwrap();
        let old = vault.platform().active_key().unwrap().id;
        vault.platform().keys.borrow_mut().push(("k2".into(), vec![2; 32]));

        let first = pass(&vault, 2);
        assert_eq!((first.reencrypted, first.current, first.failed), (7, 0, 0));
        let pages = vault.platform().events.borrow().iter().filter(|e| e.action == AuditAction::KeyReencrypt).count();
        assert!(pages >= 2, "each page is audited, {pages} events");
        for (storage_key, (value, _)) in vault.platform().records.borrow().iter() {
            if let Some(id) = crate::model::storage::envelope_key_id(value) {
                assert_eq!(id, "k2", "{storage_key} still under {old}");
            }
        }
        let token = vault.get(&crate::model::ConnectionKey { user: "bob".into(), ..key() }).unwrap();
        assert_eq!(token.access_token, "at");
        // The tenant's records open under the new key, bound to their tenant as before.
        assert_eq!(vault.get_provider(Some("t1"), "own").unwrap().tenant.as_deref(), Some("t1"));
        let signed = vault.sign_delivery("t1", "ping", "evt_1", 1, b"{}").unwrap().unwrap();
        assert_eq!(signed.url, "https://h.example/");
        assert!(secret.starts_with(crate::webhooks::SECRET_PREFIX));
        let second = pass(&vault, 1000);
        assert_eq!((second.reencrypted, second.current, second.failed), (0, 7, 0));
    }

    #[test]
    fn a_record_that_does_not_open_is_counted_and_left_alone() {
        let vault = vault();
        vault.store(&key(), grant("at", None, None)).unwrap();
        let storage_key = record::token_key(&key());
        let mut entry = vault.platform().storage_get(&storage_key).unwrap().unwrap();
        let last = entry.value.len() - 1;
        entry.value[last] ^= 1;
        vault.platform().storage_put(&storage_key, &entry.value, Some(entry.version)).unwrap();
        vault.platform().keys.borrow_mut().push(("k2".into(), vec![2; 32]));

        let done = pass(&vault, 10);
        assert_eq!((done.reencrypted, done.failed), (1, 1), "the provider moved, the altered token did not");
        assert_eq!(vault.platform().storage_get(&storage_key).unwrap().unwrap().value, entry.value);
    }

    #[test]
    fn bad_limits_and_foreign_cursors_are_refused() {
        let vault = vault();
        assert!(matches!(vault.reencrypt(None, 0), Err(VaultError::InvalidInput(_))));
        assert!(matches!(vault.reencrypt(Some("apikey/x"), 10), Err(VaultError::InvalidInput(_))));
        assert!(vault.reencrypt(Some(TOKEN_PREFIX), 10).is_ok());
    }
}
