//! The outbox: connection events waiting in storage for delivery to their tenant's webhook.
//!
//! The component writes each event in the same commit as the change that caused it; a host
//! (any of those sharing the store) claims due events, delivers them, and deletes each once
//! its receiver answered 2xx. A claim is a compare-and-swap on the event's record that
//! holds it for [`CLAIM`]: a host that dies while delivering leaves the event to another
//! once the claim runs out, so delivery is at least once, never lost. A connection's events
//! (and an access token's) go out in order: while its oldest waits, the later ones wait
//! behind it. A failed try is
//! retried after a backoff that doubles (with jitter) up to an hour; an event still not
//! delivered after [`RetryPolicy::give_up_after`] moves to `undelivered/` for the operator.

use std::collections::HashSet;
use std::time::Duration;

use tokenvault_model::events::{Event, EventType, OUTBOX_PREFIX, UNDELIVERED_PREFIX, webhook_key};

use crate::storage::{Storage, StorageError, StorageResult, Write};

/// How long a claim holds an event for the host delivering it: twice the longest a
/// delivery may take (`serve`'s 15 s request timeout).
pub const CLAIM: Duration = Duration::from_secs(30);
/// Outbox keys a pass looks at, at most: a receiver that is down for a day must not make
/// every pass read a day of events.
const SCAN_LIMIT: usize = 2_000;
const PAGE: u32 = 500;

/// When to try again, and when to give up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The pause after the first failed try; it doubles with each try after that.
    pub first_backoff: Duration,
    /// The longest pause between tries.
    pub max_backoff: Duration,
    /// An event not delivered this long after it happened is given up on.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The pause after `attempts` failed tries: doubling from `first_backoff`, capped at
    /// `max_backoff`, then between half of it and all of it (`jitter` in 0..1), so hosts
    /// and events that failed together do not all try again together.
    pub fn backoff(&self, attempts: u32, jitter: f64) -> Duration {
        let doubled = self.first_backoff.saturating_mul(1 << attempts.saturating_sub(1).min(20));
        doubled.min(self.max_backoff).mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// An event this host holds for delivery until its claim runs out.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub event: Event,
    key: String,
    version: u64,
}

/// What a claiming pass found.
#[derive(Debug, Default)]
pub struct Claims {
    pub claimed: Vec<Claimed>,
    /// Events seen in the outbox (up to the pass's scan limit): the backlog.
    pub waiting: usize,
}

/// The outbox over a store.
pub struct Outbox<'a> {
    storage: &'a dyn Storage,
}

impl<'a> Outbox<'a> {
    pub fn new(storage: &'a dyn Storage) -> Self {
        Outbox { storage }
    }

    /// Claim up to `limit` events that are due at `now_ms`: oldest first, for each
    /// connection only its oldest waiting event.
    pub async fn claim_due(&self, now_ms: u64, limit: usize) -> StorageResult<Claims> {
        let mut claims = Claims::default();
        let mut waiting_behind: HashSet<String> = HashSet::new();
        let mut cursor: Option<String> = None;
        'pages: loop {
            let page = self.storage.list(OUTBOX_PREFIX, cursor.as_deref(), PAGE).await?;
            for key in page.keys {
                if claims.waiting == SCAN_LIMIT {
                    break 'pages;
                }
                claims.waiting += 1;
                if claims.claimed.len() >= limit {
                    continue; // counted, not read
                }
                let Some(entry) = self.storage.get(&key).await? else {
                    continue; // delivered meanwhile
                };
                let Ok(mut event) = Event::from_json(&entry.value) else {
                    tracing::warn!(%key, "an outbox record does not parse; left for the operator");
                    continue;
                };
                // Later events of a connection (or access token) wait for its oldest,
                // whatever becomes of it.
                if let Some(sequence) = event.sequence()
                    && !waiting_behind.insert(sequence)
                {
                    continue;
                }
                let delivery = &mut event.delivery;
                if delivery.next_at_ms > now_ms || delivery.claimed_until_ms > now_ms {
                    continue;
                }
                delivery.claimed_until_ms = now_ms + CLAIM.as_millis() as u64;
                match self.storage.put(&key, &event.to_json(), Some(entry.version)).await {
                    Ok(version) => claims.claimed.push(Claimed { event, key, version }),
                    Err(StorageError::Conflict) => {} // another host claimed it first
                    Err(err) => return Err(err),
                }
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(claims)
    }

    /// The receiver has it (or the tenant no longer wants it): gone from the outbox. A
    /// claim that ran out and was taken over is left to its new holder.
    pub async fn done(&self, claimed: &Claimed) -> StorageResult<()> {
        match self.storage.delete(&claimed.key, claimed.version).await {
            Ok(()) | Err(StorageError::Conflict) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// A try failed (`why`, in tokenvault's words): due again after the backoff, or given
    /// up on and moved to `undelivered/` once past the policy's window. True when given up.
    pub async fn failed(
        &self,
        claimed: Claimed,
        why: &str,
        now_ms: u64,
        policy: &RetryPolicy,
        jitter: f64,
    ) -> StorageResult<bool> {
        let Claimed { mut event, key, version } = claimed;
        event.delivery.attempts += 1;
        event.delivery.claimed_until_ms = 0;
        event.delivery.last_error = Some(why.to_owned());
        let give_up = now_ms.saturating_sub(event.at_us / 1000) >= policy.give_up_after.as_millis() as u64;
        let written = if give_up {
            let undelivered = Write::Put { key: event.undelivered_key(), value: event.to_json(), expected: None };
            self.storage.commit(&[Write::Delete { key, expected: version }, undelivered]).await.map(drop)
        } else {
            let pause = policy.backoff(event.delivery.attempts, jitter);
            event.delivery.next_at_ms = now_ms + pause.as_millis() as u64;
            self.storage.put(&key, &event.to_json(), Some(version)).await.map(drop)
        };
        match written {
            Ok(()) => Ok(give_up),
            Err(StorageError::Conflict) => Ok(false), // taken over: its new holder decides
            Err(err) => Err(err),
        }
    }

    /// Events given up on, newest first: at most `limit`, of `tenant` if named.
    pub async fn undelivered(&self, tenant: Option<&str>, limit: usize) -> StorageResult<Vec<Event>> {
        let keys = crate::storage::all_keys(self.storage, UNDELIVERED_PREFIX).await?;
        let mut events = Vec::new();
        for key in keys.iter().rev() {
            if events.len() >= limit {
                break;
            }
            let Some(entry) = self.storage.get(key).await? else {
                continue;
            };
            match Event::from_json(&entry.value) {
                Ok(event) if tenant.is_none_or(|t| t == event.tenant) => events.push(event),
                _ => {}
            }
        }
        Ok(events)
    }

    /// Write `event` to the outbox now.
    pub async fn add(&self, event: &Event) -> StorageResult<()> {
        self.storage.put(&event.outbox_key(), &event.to_json(), None).await.map(drop)
    }

    /// The outbox write of a host's own `event`, to commit with the change that caused it:
    /// none while its tenant has no webhook (as the component does for its events).
    pub async fn event_writes(&self, event: Event) -> StorageResult<Vec<Write>> {
        if self.storage.get(&webhook_key(&event.tenant)).await?.is_none() {
            return Ok(Vec::new());
        }
        Ok(vec![event.outbox_write()])
    }
}

/// A new event of `tenant`'s, of `kind`, at `now_us`, with a random id.
pub fn new_event(kind: EventType, tenant: &str, now_us: u64) -> crate::Result<Event> {
    let mut random = [0; 16];
    getrandom::fill(&mut random).map_err(|e| crate::Error::Config(format!("no randomness: {e}")))?;
    Ok(Event::tenant(Event::new_id(random), kind, now_us, tenant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;
    use tokenvault_model::ConnectionKey;
    use tokenvault_model::events::EventType;

    fn event(n: u8, at_ms: u64, user: &str) -> Event {
        event_at_us(n, at_ms * 1000, user)
    }

    fn event_at_us(n: u8, at_us: u64, user: &str) -> Event {
        let key = ConnectionKey::new("acme", user, "github", "default");
        Event::connection(Event::new_id([n; 16]), EventType::ConnectionCreated, at_us, &key)
    }

    #[tokio::test]
    async fn events_within_one_millisecond_keep_their_order_whatever_their_ids() {
        let storage = MemoryStorage::default();
        let outbox = Outbox::new(&storage);
        // The later event's id sorts first: only the time may order them.
        let (first, second) = (event_at_us(9, 1_000_000, "alice"), event_at_us(1, 1_000_001, "alice"));
        for event in [&first, &second] {
            outbox.add(event).await.unwrap();
        }
        let claimed = outbox.claim_due(10_000, 10).await.unwrap().claimed;
        assert_eq!(claimed.iter().map(|c| c.event.id.clone()).collect::<Vec<_>>(), [first.id]);
        outbox.done(&claimed[0]).await.unwrap();
        let next = outbox.claim_due(10_000, 10).await.unwrap().claimed;
        assert_eq!(next.iter().map(|c| c.event.id.clone()).collect::<Vec<_>>(), [second.id]);
    }

    #[tokio::test]
    async fn a_connections_events_go_one_at_a_time_in_order_and_a_claim_holds_each_once() {
        let storage = MemoryStorage::default();
        let outbox = Outbox::new(&storage);
        for (n, at, user) in [(1, 1_000, "alice"), (2, 2_000, "alice"), (3, 1_500, "bob")] {
            outbox.add(&event(n, at, user)).await.unwrap();
        }
        let claims = outbox.claim_due(10_000, 10).await.unwrap();
        let ids: Vec<_> = claims.claimed.iter().map(|c| c.event.id.clone()).collect();
        assert_eq!(ids, [event(1, 0, "").id, event(3, 0, "").id], "alice's second waits behind her first");
        assert_eq!(claims.waiting, 3);
        // Claimed: no other host takes them while the claim holds.
        assert!(outbox.claim_due(10_000, 10).await.unwrap().claimed.is_empty());
        // Delivered: alice's next is due; bob's has none left.
        for claimed in &claims.claimed {
            outbox.done(claimed).await.unwrap();
        }
        let next = outbox.claim_due(10_001, 10).await.unwrap();
        assert_eq!(next.claimed.iter().map(|c| c.event.id.clone()).collect::<Vec<_>>(), [event(2, 0, "").id]);
    }

    #[tokio::test]
    async fn a_claim_that_runs_out_is_taken_over() {
        let storage = MemoryStorage::default();
        let outbox = Outbox::new(&storage);
        outbox.add(&event(1, 1_000, "alice")).await.unwrap();
        let first = outbox.claim_due(2_000, 10).await.unwrap().claimed.remove(0);
        let later = 2_000 + CLAIM.as_millis() as u64 + 1;
        let second = outbox.claim_due(later, 10).await.unwrap().claimed.remove(0);
        assert_eq!(first.event.id, second.event.id);
        // The first holder's late answers change nothing; the second's count.
        outbox.done(&first).await.unwrap();
        assert_eq!(storage.list(OUTBOX_PREFIX, None, 10).await.unwrap().keys.len(), 1);
        outbox.done(&second).await.unwrap();
        assert!(storage.list(OUTBOX_PREFIX, None, 10).await.unwrap().keys.is_empty());
    }

    #[tokio::test]
    async fn a_failed_try_waits_its_backoff_and_is_given_up_after_the_window() {
        let storage = MemoryStorage::default();
        let outbox = Outbox::new(&storage);
        let policy = RetryPolicy {
            first_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
            give_up_after: Duration::from_secs(3600),
        };
        outbox.add(&event(1, 1_000, "alice")).await.unwrap();
        let claimed = outbox.claim_due(1_000, 1).await.unwrap().claimed.remove(0);
        assert!(!outbox.failed(claimed, "HTTP 503", 1_000, &policy, 1.0).await.unwrap());
        assert!(outbox.claim_due(5_999, 1).await.unwrap().claimed.is_empty(), "within its backoff");
        let claimed = outbox.claim_due(6_000, 1).await.unwrap().claimed.remove(0);
        assert_eq!(
            (claimed.event.delivery.attempts, claimed.event.delivery.last_error.as_deref()),
            (1, Some("HTTP 503"))
        );
        let past_window = 1_000 + 3_600_000;
        assert!(outbox.failed(claimed, "timed out", past_window, &policy, 0.5).await.unwrap());
        assert!(storage.list(OUTBOX_PREFIX, None, 10).await.unwrap().keys.is_empty());
        let given_up = outbox.undelivered(Some("acme"), 10).await.unwrap();
        assert_eq!((given_up.len(), given_up[0].delivery.attempts), (1, 2));
        assert!(outbox.undelivered(Some("other"), 10).await.unwrap().is_empty());
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_with_jitter_below_it() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(1, 1.0), Duration::from_secs(5));
        assert_eq!(policy.backoff(3, 1.0), Duration::from_secs(20));
        assert_eq!(policy.backoff(30, 1.0), Duration::from_secs(3600));
        assert_eq!(policy.backoff(3, 0.0), Duration::from_secs(10));
        // Tries within a day at the longest pauses: retried for all of it.
        let total: Duration = (1..=40).map(|n| policy.backoff(n, 1.0)).sum();
        assert!(total > policy.give_up_after);
    }
}
