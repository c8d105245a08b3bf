//! Tenants' webhooks: where their connection events go, which ones, and the secret that
//! signs each delivery (Standard Webhooks: `v1,` and the base64 HMAC-SHA256 of
//! `id.timestamp.body`). The secret is sealed like a client secret and leaves the sandbox
//! once, when it is made; hosts ask the component to sign. Here too: the events a change
//! writes to the outbox in its commit, while the tenant has a webhook.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub use crate::model::events::webhook_key;
use crate::model::events::{
    Event, EventType, SignedDelivery, WebhookConfig, WebhookInfo, filter_admits, validate_event_filter,
};
use crate::model::storage::{WEBHOOK_PREFIX, Write, unescape_key_part};
use crate::model::*;
use crate::platform::Platform;
use crate::record;
use crate::vault::{MAX_ATTEMPTS, Put, Vault, too_contended};

/// What a signing secret starts with, as the Standard Webhooks libraries expect it.
pub const SECRET_PREFIX: &str = "whsec_";
const SECRET_BYTES: usize = 32;
const MAX_URL_LEN: usize = 2048;

/// The plaintext of a webhook record (the secret is why it is sealed).
#[derive(Serialize, Deserialize)]
struct WebhookRecord {
    url: String,
    #[serde(default)]
    events: Vec<String>,
    /// The secret's bytes, base64.
    secret: String,
    created_at: u64,
    updated_at: u64,
}

pub fn parse_webhook_key(storage_key: &str) -> Option<String> {
    unescape_key_part(storage_key.strip_prefix(WEBHOOK_PREFIX)?)
}

/// The sealing context of a webhook record: it binds the record to its tenant.
pub fn webhook_context(tenant: &str) -> [&str; 2] {
    ["webhook", tenant]
}

impl<P: Platform> Vault<P> {
    /// Set `tenant`'s webhook; the new signing secret when one was made.
    pub fn put_webhook(&self, tenant: &str, config: WebhookConfig) -> Result<Option<String>> {
        let result = self.put_webhook_inner(tenant, config);
        self.emit(AuditAction::WebhookPut, AuditOutcome::from(&result), Some(tenant), None, None, None);
        result
    }

    pub fn get_webhook(&self, tenant: &str) -> Result<Option<WebhookInfo>> {
        record::validate_id("tenant", tenant)?;
        Ok(self.load_webhook(tenant)?.map(|(hook, _)| WebhookInfo {
            url: hook.url,
            events: hook.events,
            created_at: hook.created_at,
            updated_at: hook.updated_at,
        }))
    }

    /// Remove `tenant`'s webhook: from now on its events are neither written nor sent.
    pub fn remove_webhook(&self, tenant: &str) -> Result<()> {
        let result = record::validate_id("tenant", tenant)
            .and_then(|()| self.delete_record(&webhook_key(tenant), "webhook for this tenant"));
        self.emit(AuditAction::WebhookRemove, AuditOutcome::from(&result), Some(tenant), None, None, None);
        result
    }

    /// The signature of one delivery of an event of `event_type`, and where it goes; none
    /// when `tenant` has no webhook or its filter leaves the type out.
    pub fn sign_delivery(
        &self,
        tenant: &str,
        event_type: &str,
        id: &str,
        timestamp: u64,
        body: &[u8],
    ) -> Result<Option<SignedDelivery>> {
        record::validate_id("tenant", tenant)?;
        let kind =
            EventType::from_name(event_type).ok_or_else(|| VaultError::InvalidInput("unknown event type".into()))?;
        let Some((hook, _)) = self.load_webhook(tenant)? else {
            return Ok(None);
        };
        if !filter_admits(&hook.events, kind) {
            return Ok(None);
        }
        let secret = BASE64
            .decode(&hook.secret)
            .map_err(|_| VaultError::Integrity("webhook record opened but its secret does not parse".into()))?;
        Ok(Some(SignedDelivery { url: hook.url, signature: signature(&secret, id, timestamp, body) }))
    }

    /// A new event of `kind` about `key`, now.
    pub(crate) fn new_event(&self, kind: EventType, key: &ConnectionKey) -> Result<Event> {
        let mut random = [0; 16];
        getrandom::fill(&mut random).map_err(|_| VaultError::Storage("no randomness for an event id".into()))?;
        Ok(Event::connection(Event::new_id(random), kind, self.platform().now_us(), key))
    }

    pub(crate) fn has_webhook(&self, tenant: &str) -> Result<bool> {
        Ok(self.storage_get(&webhook_key(tenant))?.is_some())
    }

    /// The outbox writes of `events` (all of one tenant's): none while the tenant has no
    /// webhook, so a tenant without one stores nothing.
    pub(crate) fn event_writes(&self, events: Vec<Event>) -> Result<Vec<Write>> {
        let Some(tenant) = events.first().map(|event| event.tenant.clone()) else {
            return Ok(Vec::new());
        };
        if !self.has_webhook(&tenant)? {
            return Ok(Vec::new());
        }
        Ok(events.iter().map(Event::outbox_write).collect())
    }

    fn put_webhook_inner(&self, tenant: &str, config: WebhookConfig) -> Result<Option<String>> {
        record::validate_id("tenant", tenant)?;
        validate_url(&config.url)?;
        validate_event_filter(&config.events)?;
        let storage_key = webhook_key(tenant);
        let now = self.now();
        for _ in 0..MAX_ATTEMPTS {
            let current = self.load_webhook(tenant)?;
            let (secret, new_secret) = match (&current, config.rotate_secret) {
                (Some((hook, _)), false) => (hook.secret.clone(), None),
                _ => {
                    let secret = random_secret()?;
                    (BASE64.encode(&secret), Some(secret))
                }
            };
            let record = WebhookRecord {
                url: config.url.clone(),
                events: config.events.clone(),
                secret,
                created_at: current.as_ref().map_or(now, |(hook, _)| hook.created_at),
                updated_at: now,
            };
            let expected = current.map(|(_, version)| version);
            if let Put::Written = self.put_sealed(&storage_key, &webhook_context(tenant), &record, expected)? {
                return Ok(new_secret.map(|secret| format!("{SECRET_PREFIX}{}", BASE64.encode(secret))));
            }
        }
        Err(too_contended("webhook"))
    }

    fn load_webhook(&self, tenant: &str) -> Result<Option<(WebhookRecord, u64)>> {
        self.load_sealed(&webhook_key(tenant), &webhook_context(tenant))
    }
}

/// Standard Webhooks' signature: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`.
pub fn signature(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

fn random_secret() -> Result<Vec<u8>> {
    let mut secret = vec![0; SECRET_BYTES];
    getrandom::fill(&mut secret).map_err(|_| VaultError::Storage("no randomness for a webhook secret".into()))?;
    Ok(secret)
}

/// An http(s) URL with a host, no credentials and no fragment. Which origins may be used
/// is the host's rule; errors never quote the URL.
fn validate_url(url: &str) -> Result<()> {
    if url.len() > MAX_URL_LEN {
        return Err(VaultError::InvalidInput(format!("the webhook URL is longer than {MAX_URL_LEN} bytes")));
    }
    crate::provider::validate_url("the webhook URL", url).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::fixtures::*;

    fn config(url: &str) -> WebhookConfig {
        WebhookConfig { url: url.into(), ..WebhookConfig::default() }
    }

    #[test]
    fn a_webhook_is_made_with_a_secret_shown_once_and_kept_until_rotated() {
        let vault = vault();
        let secret = vault.put_webhook("t1", config("https://hooks.example/in")).unwrap().unwrap();
        assert!(secret.starts_with(SECRET_PREFIX) && secret.len() > 40, "{secret}");
        let info = vault.get_webhook("t1").unwrap().unwrap();
        assert_eq!((info.url.as_str(), info.events.len()), ("https://hooks.example/in", 0));
        assert_eq!(vault.put_webhook("t1", config("https://hooks.example/other")).unwrap(), None);
        let rotated = WebhookConfig { rotate_secret: true, ..config("https://hooks.example/other") };
        let new_secret = vault.put_webhook("t1", rotated).unwrap().unwrap();
        assert_ne!(new_secret, secret);
        assert_eq!(vault.get_webhook("t2").unwrap(), None);
        // The secret is sealed: its bytes are nowhere in storage.
        let raw = BASE64.decode(&new_secret[SECRET_PREFIX.len()..]).unwrap();
        for (value, _) in vault.platform().records.borrow().values() {
            assert!(!value.windows(raw.len()).any(|w| w == raw.as_slice()));
            assert!(!value.windows(8).any(|w| w == &new_secret.as_bytes()[6..14]));
        }
        vault.remove_webhook("t1").unwrap();
        assert_eq!(vault.get_webhook("t1").unwrap(), None);
        assert!(matches!(vault.remove_webhook("t1"), Err(VaultError::NotFound(_))));
        assert!(vault.put_webhook("t1", config("ftp://hooks.example/in")).is_err());

        // Each change audited, under its tenant, with its outcome.
        let audited: Vec<_> = vault
            .platform()
            .events
            .borrow()
            .iter()
            .filter(|e| matches!(e.action, AuditAction::WebhookPut | AuditAction::WebhookRemove))
            .map(|e| (e.action, e.outcome, e.tenant.clone()))
            .collect();
        let t1 = Some("t1".to_owned());
        assert_eq!(
            audited,
            [
                (AuditAction::WebhookPut, AuditOutcome::Ok, t1.clone()),
                (AuditAction::WebhookPut, AuditOutcome::Ok, t1.clone()),
                (AuditAction::WebhookPut, AuditOutcome::Ok, t1.clone()),
                (AuditAction::WebhookRemove, AuditOutcome::Ok, t1.clone()),
                (AuditAction::WebhookRemove, AuditOutcome::NotFound, t1.clone()),
                (AuditAction::WebhookPut, AuditOutcome::InvalidInput, t1),
            ]
        );
    }

    #[test]
    fn deliveries_are_signed_as_standard_webhooks_says_and_filtered() {
        let vault = vault();
        let secret = vault.put_webhook("t1", config("https://hooks.example/in")).unwrap().unwrap();
        let body = br#"{"type":"connection.created"}"#;
        let signed = vault.sign_delivery("t1", "connection.created", "evt_1", 1_700_000_000, body).unwrap().unwrap();
        assert_eq!(signed.url, "https://hooks.example/in");
        // The same HMAC, computed from the secret as a receiver holds it.
        let key = BASE64.decode(&secret[SECRET_PREFIX.len()..]).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(b"evt_1.1700000000.{\"type\":\"connection.created\"}");
        assert_eq!(signed.signature, format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())));

        let only_removed = WebhookConfig { events: vec!["connection.removed".into()], ..config("https://h.example/") };
        vault.put_webhook("t1", only_removed).unwrap();
        assert_eq!(vault.sign_delivery("t1", "connection.created", "evt_1", 1, body).unwrap(), None);
        assert!(vault.sign_delivery("t1", "ping", "evt_1", 1, body).unwrap().is_some());
        assert!(vault.sign_delivery("t1", "no.such", "evt_1", 1, body).is_err());
        assert_eq!(vault.sign_delivery("t2", "ping", "evt_1", 1, body).unwrap(), None);
    }

    #[test]
    fn bad_webhooks_are_refused_without_quoting_them() {
        let vault = vault();
        for url in ["ftp://h.example/", "not a url", "https://user:pw-canary@h.example/", "https://h.example/#x"] {
            let err = vault.put_webhook("t1", config(url)).unwrap_err();
            assert!(matches!(err, VaultError::InvalidInput(_)), "{url}: {err}");
            assert!(!err.to_string().contains("pw-canary"));
        }
        let unknown = WebhookConfig { events: vec!["connection.exploded".into()], ..config("https://h.example/") };
        assert!(matches!(vault.put_webhook("t1", unknown), Err(VaultError::InvalidInput(_))));
        assert!(vault.put_webhook("", config("https://h.example/")).is_err());
        assert_eq!(vault.get_webhook("t1").unwrap(), None);
    }

    fn kinds(vault: &Vault<crate::memory::MemoryPlatform>) -> Vec<&'static str> {
        vault.platform().outbox().iter().map(|event| event.kind.name()).collect()
    }

    #[test]
    fn a_connections_changes_write_their_events_while_its_tenant_has_a_webhook() {
        let vault = vault();
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(3600))).unwrap();
        vault.remove(&key()).unwrap();
        assert!(vault.platform().outbox().is_empty(), "no webhook, no events");

        vault.put_webhook("t1", config("https://hooks.example/in")).unwrap();
        vault.store(&key(), grant("at-1", Some("rt-1"), Some(3600))).unwrap();
        vault.store(&key(), grant("at-2", Some("rt-2"), Some(3600))).unwrap(); // replaced: no news
        assert_eq!(kinds(&vault), ["connection.created"]);
        // Events are in time order (milliseconds); this clock moves only when told.
        vault.platform().advance_secs(1);

        // The provider fails: one event for the first failure, none for the next.
        vault.platform().respond(json(503, r#"{"error":"temporarily_unavailable"}"#));
        assert!(vault.refresh(&key()).is_err());
        assert!(vault.refresh(&key()).is_err());
        assert_eq!(kinds(&vault), ["connection.created", "connection.refresh_failed"]);
        let failed = &vault.platform().outbox()[1];
        let failure = failed.failure.as_ref().unwrap();
        assert_eq!(
            (failure.kind.as_str(), failure.code.as_deref(), failure.status),
            ("provider-error", Some("temporarily_unavailable"), Some(503))
        );
        assert_eq!(vault.get(&key()).unwrap().refresh_token.as_deref(), Some("rt-2"), "tokens kept");

        vault.platform().advance_secs(1);
        // It answers again: recovered, once.
        vault.platform().respond(json(200, r#"{"access_token":"at-3","token_type":"bearer","expires_in":3600}"#));
        vault.refresh(&key()).unwrap();
        vault.refresh(&key()).unwrap();
        assert_eq!(kinds(&vault)[2..], ["connection.recovered"]);

        // The refresh token dies, the user connects again, then removes the connection.
        vault.platform().advance_secs(1);
        vault.platform().respond(json(400, r#"{"error":"invalid_grant"}"#));
        assert!(vault.refresh(&key()).is_err());
        vault.platform().advance_secs(1);
        vault.store(&key(), grant("at-4", Some("rt-4"), Some(3600))).unwrap();
        vault.platform().advance_secs(1);
        vault.remove(&key()).unwrap();
        let events = vault.platform().outbox();
        assert_eq!(kinds(&vault)[3..], ["connection.reconnect_required", "connection.recovered", "connection.removed"]);
        assert_eq!(events[3].failure.as_ref().unwrap().code.as_deref(), Some("invalid_grant"));
        assert_eq!(events[5].revocation.as_ref().unwrap().upstream, "unsupported");
        for event in &events {
            assert_eq!(event.connection_key(), Some(key()));
            assert!(event.id.starts_with("evt_") && event.id.len() == 36);
            let json = String::from_utf8(event.to_json()).unwrap();
            for value in ["at-", "rt-", "client-secret-canary"] {
                assert!(!json.contains(value), "{json}");
            }
        }
        let ids: std::collections::HashSet<_> = events.iter().map(|event| &event.id).collect();
        assert_eq!(ids.len(), events.len());
    }

    #[test]
    fn a_change_and_its_event_are_written_together_or_not_at_all() {
        let vault = vault();
        vault.put_webhook("t1", config("https://hooks.example/in")).unwrap();
        vault.platform().fail_puts("outbox/", 1);
        assert!(matches!(vault.store(&key(), grant("at-1", None, None)), Err(VaultError::Storage(_))));
        assert!(
            matches!(vault.get(&key()), Err(VaultError::NotFound(_))),
            "the connection was not stored without its event"
        );
        vault.store(&key(), grant("at-1", None, None)).unwrap();
        vault.platform().fail_puts("outbox/", 1);
        assert!(matches!(vault.remove(&key()), Err(VaultError::Storage(_))));
        assert_eq!(vault.get(&key()).unwrap().access_token, "at-1", "not removed without its event");
        assert_eq!(kinds(&vault), ["connection.created"]);
    }

    #[test]
    fn a_webhook_record_is_bound_to_its_tenant() {
        let vault = vault();
        vault.put_webhook("t1", config("https://hooks.example/in")).unwrap();
        let sealed = vault.platform().records.borrow()[&webhook_key("t1")].0.clone();
        vault.platform().records.borrow_mut().insert(webhook_key("t2"), (sealed, 999));
        assert!(matches!(vault.get_webhook("t2"), Err(VaultError::Integrity(_))));
        assert_eq!(parse_webhook_key(&webhook_key("a/b%c")).as_deref(), Some("a/b%c"));
    }
}
