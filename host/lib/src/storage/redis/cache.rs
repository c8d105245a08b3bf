//! The Redis backend's local copy of the records it reads, kept true by Redis itself.
//!
//! The connection turns on Redis's server-assisted client-side caching (`CLIENT TRACKING`
//! over RESP3): once this connection has read a record, Redis pushes an invalidation down
//! the same connection when anyone changes it. Replies and pushes arrive in one ordered
//! stream and are applied in that order, so whatever this host learns from Redis after a
//! write (a lease released, a version moved on) comes after that write's invalidation: a
//! cached record is never older than what the host has seen happen. That is the order the
//! single-flight refresh relies on across processes.
//!
//! Three cases the push stream alone does not cover:
//! - a read whose reply raced an invalidation: every invalidation bumps a generation, and a
//!   read is kept only if the generation did not move while it was in flight;
//! - this host's own writes, whose invalidation Redis sends after the write's reply: the
//!   writer drops the key itself ([`RecordCache::forget`]);
//! - a lost connection, which loses pushes with it: its disconnection empties the cache, and
//!   an entry lives at most [`MAX_AGE`] in case a connection dies without a word.
//!
//! Only sealed records live here, as storage holds them.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;
use redis::{PushInfo, PushKind, Value};

use crate::storage::Entry;

/// The longest a record is served from the cache without being read again.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// Records by Redis key (`None`: known to be absent), least recently used dropped first.
pub struct RecordCache {
    state: Mutex<State>,
}

struct State {
    records: LruCache<Vec<u8>, Cached>,
    /// Moves on with every invalidation.
    generation: u64,
}

struct Cached {
    entry: Option<Entry>,
    read_at: Instant,
}

/// Taken before a read is sent; the read's result is kept only if nothing was invalidated
/// since.
#[derive(Clone, Copy)]
pub struct ReadTicket {
    generation: u64,
    sent_at: Instant,
}

impl RecordCache {
    pub fn new(capacity: NonZeroUsize) -> Self {
        RecordCache { state: Mutex::new(State { records: LruCache::new(capacity), generation: 0 }) }
    }

    /// The record as last read, if that was less than [`MAX_AGE`] ago and nothing has
    /// changed it since.
    pub fn get(&self, key: &[u8]) -> Option<Option<Entry>> {
        let mut state = self.state.lock().unwrap();
        match state.records.get(key) {
            Some(cached) if cached.read_at.elapsed() < MAX_AGE => Some(cached.entry.clone()),
            Some(_) => {
                state.records.pop(key);
                None
            }
            None => None,
        }
    }

    pub fn ticket(&self) -> ReadTicket {
        ReadTicket { generation: self.state.lock().unwrap().generation, sent_at: Instant::now() }
    }

    /// Keep what a read sent under `ticket` returned, unless an invalidation came since.
    pub fn keep(&self, key: &[u8], entry: Option<Entry>, ticket: ReadTicket) {
        let mut state = self.state.lock().unwrap();
        if state.generation == ticket.generation {
            state.records.put(key.to_vec(), Cached { entry, read_at: ticket.sent_at });
        }
    }

    /// Drop `key`, and any read of anything in flight.
    pub fn forget(&self, key: &[u8]) {
        let mut state = self.state.lock().unwrap();
        state.generation += 1;
        state.records.pop(key);
    }

    fn forget_all(&self) {
        let mut state = self.state.lock().unwrap();
        state.generation += 1;
        state.records.clear();
    }

    /// Apply a message Redis (or the client library) pushed on the connection. Called in
    /// the connection's read order, before any reply that came after it is delivered.
    pub fn on_push(&self, push: &PushInfo) {
        match (&push.kind, push.data.first()) {
            (PushKind::Invalidate, Some(Value::Array(keys))) => {
                for key in keys {
                    match key {
                        Value::BulkString(key) => self.forget(key),
                        _ => self.forget_all(),
                    }
                }
            }
            // A flush of the database (a null key list), or anything not understood.
            (PushKind::Invalidate, _) => self.forget_all(),
            (PushKind::Disconnection, _) => self.forget_all(),
            _ => {}
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64) -> Option<Entry> {
        Some(Entry { value: vec![version as u8], version })
    }

    fn invalidate(keys: &[&[u8]]) -> PushInfo {
        let keys = keys.iter().map(|k| Value::BulkString(k.to_vec())).collect();
        PushInfo { kind: PushKind::Invalidate, data: vec![Value::Array(keys)] }
    }

    fn cache() -> RecordCache {
        RecordCache::new(NonZeroUsize::new(2).unwrap())
    }

    #[test]
    fn keeps_a_read_and_drops_it_when_redis_says_the_key_changed() {
        let cache = cache();
        let ticket = cache.ticket();
        cache.keep(b"a", entry(1), ticket);
        cache.keep(b"gone", None, cache.ticket());
        assert_eq!(cache.get(b"a"), Some(entry(1)));
        assert_eq!(cache.get(b"gone"), Some(None), "absence is kept too");
        cache.on_push(&invalidate(&[b"a"]));
        assert_eq!(cache.get(b"a"), None);
        assert_eq!(cache.get(b"gone"), Some(None), "other keys stay");
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_kept() {
        let cache = cache();
        let ticket = cache.ticket();
        // The reply was on its way when another host's write was pushed.
        cache.on_push(&invalidate(&[b"a"]));
        cache.keep(b"a", entry(1), ticket);
        assert_eq!(cache.get(b"a"), None);
        // Nor one that raced this host's own write.
        let ticket = cache.ticket();
        cache.forget(b"a");
        cache.keep(b"a", entry(1), ticket);
        assert_eq!(cache.get(b"a"), None);
    }

    #[test]
    fn a_disconnection_or_a_flush_empties_it() {
        let cache = cache();
        cache.keep(b"a", entry(1), cache.ticket());
        cache.on_push(&PushInfo { kind: PushKind::Disconnection, data: vec![] });
        assert_eq!(cache.len(), 0);
        cache.keep(b"a", entry(1), cache.ticket());
        cache.on_push(&PushInfo { kind: PushKind::Invalidate, data: vec![Value::Nil] });
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn is_bounded_and_ages_out() {
        let cache = cache();
        for key in [b"a", b"b", b"c"] {
            cache.keep(key, entry(1), cache.ticket());
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(b"a"), None, "least recently used goes first");
        let old = ReadTicket { sent_at: Instant::now() - MAX_AGE, ..cache.ticket() };
        cache.keep(b"old", entry(1), old);
        assert_eq!(cache.get(b"old"), None);
    }
}
