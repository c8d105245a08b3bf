//! Connection events, and the outbox where they wait for delivery to a tenant's webhook.
//!
//! An event is written to the outbox in the same storage commit as the change that caused
//! it (a crash cannot keep one and lose the other), and only while the tenant has a
//! webhook. A host delivers it, retrying, and deletes it once delivered. Outbox records are
//! plain JSON: an event holds names, kinds, codes and times, never a value.

use serde::{Deserialize, Serialize};

use crate::error::VaultError;
use crate::named_cases;
use crate::tokens::{ConnectionKey, UpstreamRevocation};

/// The storage key of `tenant`'s webhook (sealed by the component).
pub fn webhook_key(tenant: &str) -> String {
    format!("{}{}", crate::storage::WEBHOOK_PREFIX, crate::storage::escape_key_part(tenant))
}

/// Events waiting for delivery, oldest first: `outbox/{at_us:016}-{id}`, so one connection's events
/// (made by requests that follow each other) keep their order even within a millisecond..
pub const OUTBOX_PREFIX: &str = "outbox/";
/// Events given up on after the retry window, kept for the operator to see.
pub const UNDELIVERED_PREFIX: &str = "undelivered/";

named_cases!(
    /// What happened to a connection (or an access token), as a webhook's `type`.
    EventType {
        ConnectionCreated => "connection.created",
        RefreshFailed => "connection.refresh_failed",
        ReconnectRequired => "connection.reconnect_required",
        Recovered => "connection.recovered",
        Removed => "connection.removed",
        AccessTokenCreated => "access_token.created",
        AccessTokenRevoked => "access_token.revoked",
        Ping => "ping",
    }
);

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        EventType::from_name(&name).ok_or_else(|| serde::de::Error::custom("unknown event type"))
    }
}

/// A webhook's filter: each name a known event type (`ping` is always sent).
pub fn validate_event_filter(events: &[String]) -> Result<(), VaultError> {
    for name in events {
        if EventType::from_name(name).is_none_or(|kind| kind == EventType::Ping) {
            let known: Vec<_> = EventType::NAMES.iter().filter(|n| **n != "ping").copied().collect();
            return Err(VaultError::InvalidInput(format!(
                "unknown event type (at most 64 characters shown: {:?}); known: {}",
                name.chars().take(64).collect::<String>(),
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// Whether a webhook with this filter wants events of `kind`.
pub fn filter_admits(events: &[String], kind: EventType) -> bool {
    kind == EventType::Ping || events.is_empty() || events.iter().any(|name| name == kind.name())
}

/// A tenant's webhook as it is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are sent (`POST`): `https://…`, or `http://` where the host allows it.
    pub url: String,
    /// Event types to send; empty or absent: all of them.
    #[serde(default)]
    pub events: Vec<String>,
    /// Make a new signing secret even though the webhook has one.
    #[serde(default)]
    pub rotate_secret: bool,
}

/// A tenant's webhook as it is shown: without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookInfo {
    pub url: String,
    /// Empty: all event types.
    pub events: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
    pub updated_at: u64,
}

/// One delivery, signed: where it goes and its `webhook-signature`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDelivery {
    pub url: String,
    pub signature: String,
}

/// Why a refresh failed, as an event says it: the error's kind and what the provider said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFailure {
    /// The error's kind (`provider-error`, `egress-denied`, `reconnect-required`, …).
    pub kind: String,
    /// The OAuth error code (RFC 6749 §5.2), when the provider sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The provider's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
}

impl EventFailure {
    pub fn of(err: &VaultError) -> Self {
        match err {
            VaultError::Provider(failure) => EventFailure {
                kind: err.kind().into(),
                code: failure.code.clone(),
                status: failure.status,
                timed_out: failure.timed_out,
            },
            other => EventFailure { kind: other.kind().into(), code: None, status: None, timed_out: false },
        }
    }
}

/// What became of a removed connection's tokens at the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRevocation {
    /// `revoked`, `unsupported` or `failed`.
    pub upstream: String,
    /// Why it failed: the error's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&UpstreamRevocation> for EventRevocation {
    fn from(upstream: &UpstreamRevocation) -> Self {
        match upstream {
            UpstreamRevocation::Revoked => EventRevocation { upstream: "revoked".into(), error: None },
            UpstreamRevocation::Unsupported => EventRevocation { upstream: "unsupported".into(), error: None },
            UpstreamRevocation::Failed { reason } => {
                EventRevocation { upstream: "failed".into(), error: Some(reason.kind().into()) }
            }
        }
    }
}

/// One event, as the outbox keeps it and as its webhook body carries it (less `delivery`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `evt_` and 32 hex digits: the deliveries' `webhook-id`.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Unix microseconds.
    pub at_us: u64,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `connection.refresh_failed`, `connection.reconnect_required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<EventFailure>,
    /// `connection.removed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<EventRevocation>,
    /// `access_token.*`: the access token's id (never the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_id: Option<String>,
    /// The host's delivery state.
    #[serde(default)]
    pub delivery: Delivery,
}

impl Event {
    /// An event about a connection; `id` from [`Event::new_id`].
    pub fn connection(id: String, kind: EventType, at_us: u64, key: &ConnectionKey) -> Self {
        Event {
            user: Some(key.user.clone()),
            provider: Some(key.provider.clone()),
            name: Some(key.name.clone()),
            ..Event::tenant(id, kind, at_us, &key.tenant)
        }
    }

    /// An event of a tenant's that names no connection.
    pub fn tenant(id: String, kind: EventType, at_us: u64, tenant: &str) -> Self {
        Event {
            id,
            kind,
            at_us,
            tenant: tenant.into(),
            user: None,
            provider: None,
            name: None,
            failure: None,
            revocation: None,
            access_token_id: None,
            delivery: Delivery::default(),
        }
    }

    /// An event id from 16 random bytes.
    pub fn new_id(random: [u8; 16]) -> String {
        let mut id = String::from("evt_");
        for byte in random {
            id.push_str(&format!("{byte:02x}"));
        }
        id
    }

    /// Its outbox key: time order, then id.
    pub fn outbox_key(&self) -> String {
        format!("{OUTBOX_PREFIX}{:016}-{}", self.at_us, self.id)
    }

    /// Its record's write into the outbox, to commit with the change that caused it.
    pub fn outbox_write(&self) -> crate::storage::Write {
        crate::storage::Write::Put { key: self.outbox_key(), value: self.to_json(), expected: None }
    }

    /// Its key once given up on.
    pub fn undelivered_key(&self) -> String {
        format!("{UNDELIVERED_PREFIX}{:016}-{}", self.at_us, self.id)
    }

    /// What its events are delivered in order of: its connection, or its access token;
    /// none for a ping, which waits for nothing.
    pub fn sequence(&self) -> Option<String> {
        match (&self.access_token_id, self.connection_key()) {
            (Some(id), _) => Some(format!("access-token/{id}")),
            (None, Some(key)) => {
                let parts =
                    [&key.tenant, &key.user, &key.provider, &key.name].map(|p| crate::storage::escape_key_part(p));
                Some(parts.join("/"))
            }
            (None, None) => None,
        }
    }

    /// The connection it concerns, if it concerns one.
    pub fn connection_key(&self) -> Option<ConnectionKey> {
        Some(ConnectionKey::new(self.tenant.clone(), self.user.clone()?, self.provider.clone()?, self.name.clone()?))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events serialize")
    }

    pub fn from_json(json: &[u8]) -> Result<Self, VaultError> {
        crate::parse_json("outbox event", json)
    }
}

/// Where an event's delivery stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Deliveries tried so far.
    #[serde(default)]
    pub attempts: u32,
    /// Unix milliseconds before which no host tries again (0: at once).
    #[serde(default)]
    pub next_at_ms: u64,
    /// A host is delivering it until then (Unix milliseconds); after that, another may.
    #[serde(default)]
    pub claimed_until_ms: u64,
    /// What the last try came to, in tokenvault's words (`HTTP 503`, `timed out`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_round_trips_through_the_outbox_and_names_its_type() {
        let key = ConnectionKey::new("acme", "alice", "github", "default");
        let mut event =
            Event::connection(Event::new_id([7; 16]), EventType::RefreshFailed, 1_700_000_000_123_456, &key);
        event.failure = Some(EventFailure::of(&VaultError::provider(Some(400), Some("invalid_scope".into()), "x")));
        let json = event.to_json();
        assert!(String::from_utf8_lossy(&json).contains(r#""type":"connection.refresh_failed""#));
        assert_eq!(Event::from_json(&json).unwrap(), event);
        assert_eq!(event.outbox_key(), format!("outbox/1700000000123456-{}", event.id));
        assert_eq!(event.connection_key(), Some(key));
        assert!(Event::from_json(br#"{"id":"x","type":"nope","at_us":1,"tenant":"t"}"#).is_err());
    }

    #[test]
    fn a_filter_names_known_types_and_admits_what_it_names() {
        assert!(validate_event_filter(&["connection.created".into(), "access_token.revoked".into()]).is_ok());
        assert!(validate_event_filter(&["connection.exploded".into()]).is_err());
        assert!(validate_event_filter(&["ping".into()]).is_err());
        let only_removed = vec!["connection.removed".to_string()];
        assert!(filter_admits(&only_removed, EventType::Removed));
        assert!(!filter_admits(&only_removed, EventType::ConnectionCreated));
        assert!(filter_admits(&only_removed, EventType::Ping));
        assert!(filter_admits(&[], EventType::RefreshFailed));
    }
}
