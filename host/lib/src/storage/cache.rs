//! A shared store's local copy of the records this host reads, kept true by the store.
//!
//! The store says when a record changes (Redis pushes invalidations down the connection
//! that read it; PostgreSQL notifies a connection that listens), and the backend calls
//! [`RecordCache::forget`] for each key it names. Three cases those messages alone do not
//! cover:
//! - a read whose reply raced an invalidation: every invalidation bumps a generation (one of
//!   [`SLOTS`], by the key's hash, so that a busy store's writes to other keys do not stop
//!   every read from being kept), and a read is kept only if its key's generation did not
//!   move while it was in flight;
//! - this host's own writes, whose invalidation may come after the write's reply: the
//!   writer drops the key itself;
//! - a lost link, which loses messages with it: the backend empties the cache
//!   ([`RecordCache::forget_all`], or [`RecordCache::pause`] until it listens again), and an
//!   entry lives at most [`MAX_AGE`] in case a link dies without a word.
//!
//! Only sealed records live here, as storage holds them.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use super::{Entry, StorageError, StorageResult, split_param};

/// The longest a record is served from the cache without being read again.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// How many generations invalidations are spread over.
const SLOTS: usize = 64;

/// How many records a cache holds unless the storage URL says (`?cache=N`, 0 for none).
const DEFAULT_RECORDS: usize = 10_000;

/// Records by key (`None`: known to be absent), least recently used dropped first.
pub struct RecordCache {
    state: Mutex<State>,
}

struct State {
    records: LruCache<Vec<u8>, Cached>,
    /// Move on with every invalidation of a key of their slot; all of them with one of
    /// every key.
    generations: [u64; SLOTS],
    /// While the store cannot tell this host of changes: nothing is served or kept.
    paused: bool,
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

fn slot(key: &[u8]) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key) as usize % SLOTS
}

/// Take `cache=N` out of a storage URL: the cache it asks for (`None` for `cache=0`).
pub fn from_url(url: &str, backend: &str) -> StorageResult<(String, Option<RecordCache>)> {
    let (url, records) = split_param(url, "cache");
    let records = match records {
        None => DEFAULT_RECORDS,
        Some(n) => n.parse().map_err(|_| {
            StorageError::Unavailable(format!(
                "{backend}: cache={n} is not a number of records (0 turns the cache off)"
            ))
        })?,
    };
    Ok((url, NonZeroUsize::new(records).map(RecordCache::new)))
}

impl RecordCache {
    pub fn new(capacity: NonZeroUsize) -> Self {
        RecordCache {
            state: Mutex::new(State { records: LruCache::new(capacity), generations: [0; SLOTS], paused: false }),
        }
    }

    /// How many records it holds at most, for reports.
    pub fn capacity(&self) -> usize {
        self.state.lock().unwrap().records.cap().get()
    }

    /// The record as kept, or else as `read` finds it (kept if nothing changed meanwhile).
    pub async fn read_through(
        &self,
        key: &[u8],
        read: impl Future<Output = StorageResult<Option<Entry>>>,
    ) -> StorageResult<Option<Entry>> {
        if let Some(entry) = self.get(key) {
            return Ok(entry);
        }
        let ticket = self.ticket(key);
        let entry = read.await?;
        self.keep(key, entry.clone(), ticket);
        Ok(entry)
    }

    /// The record as last read, if that was less than [`MAX_AGE`] ago and nothing has
    /// changed it since.
    pub fn get(&self, key: &[u8]) -> Option<Option<Entry>> {
        let mut state = self.state.lock().unwrap();
        // (Paused, it holds nothing.)
        match state.records.get(key) {
            Some(cached) if cached.read_at.elapsed() < MAX_AGE => Some(cached.entry.clone()),
            Some(_) => {
                state.records.pop(key);
                None
            }
            None => None,
        }
    }

    /// Taken before `key` is read.
    pub fn ticket(&self, key: &[u8]) -> ReadTicket {
        ReadTicket { generation: self.state.lock().unwrap().generations[slot(key)], sent_at: Instant::now() }
    }

    /// Keep what a read of `key` sent under `ticket` returned, unless an invalidation came
    /// since.
    pub fn keep(&self, key: &[u8], entry: Option<Entry>, ticket: ReadTicket) {
        let mut state = self.state.lock().unwrap();
        if state.generations[slot(key)] == ticket.generation && !state.paused {
            state.records.put(key.to_vec(), Cached { entry, read_at: ticket.sent_at });
        }
    }

    /// Drop `key`, and any read in flight of a key of its slot.
    pub fn forget(&self, key: &[u8]) {
        let mut state = self.state.lock().unwrap();
        state.generations[slot(key)] += 1;
        state.records.pop(key);
    }

    /// Drop everything, and any read in flight.
    pub fn forget_all(&self) {
        let mut state = self.state.lock().unwrap();
        state.generations.iter_mut().for_each(|g| *g += 1);
        state.records.clear();
    }

    /// The store can no longer tell this host of changes: empty, and keep nothing until
    /// [`RecordCache::resume`].
    pub fn pause(&self) {
        let mut state = self.state.lock().unwrap();
        state.generations.iter_mut().for_each(|g| *g += 1);
        state.records.clear();
        state.paused = true;
    }

    /// The store tells this host of every change from now on. A read sent before this
    /// moment is not kept (it may have missed a change made while nobody listened).
    pub fn resume(&self) {
        let mut state = self.state.lock().unwrap();
        state.generations.iter_mut().for_each(|g| *g += 1);
        state.paused = false;
    }

    #[cfg(test)]
    pub fn records_held(&self) -> usize {
        self.state.lock().unwrap().records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64) -> Option<Entry> {
        Some(Entry { value: vec![version as u8], version })
    }

    fn cache() -> RecordCache {
        RecordCache::new(NonZeroUsize::new(2).unwrap())
    }

    #[test]
    fn keeps_a_read_and_drops_it_when_told_the_key_changed() {
        let cache = cache();
        let ticket = cache.ticket(b"a");
        cache.keep(b"a", entry(1), ticket);
        cache.keep(b"gone", None, cache.ticket(b"gone"));
        assert_eq!(cache.get(b"a"), Some(entry(1)));
        assert_eq!(cache.get(b"gone"), Some(None), "absence is kept too");
        cache.forget(b"a");
        assert_eq!(cache.get(b"a"), None);
        assert_eq!(cache.get(b"gone"), Some(None), "other keys stay");
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_kept() {
        let cache = cache();
        let ticket = cache.ticket(b"a");
        // The reply was on its way when another host's write was announced.
        cache.forget(b"a");
        cache.keep(b"a", entry(1), ticket);
        assert_eq!(cache.get(b"a"), None);
        let ticket = cache.ticket(b"a");
        cache.forget_all();
        cache.keep(b"a", entry(1), ticket);
        assert_eq!(cache.get(b"a"), None);
        // A write to a key of another slot does not stop the read from being kept.
        let other = (0..).map(|n: u32| n.to_string().into_bytes()).find(|k| slot(k) != slot(b"a")).unwrap();
        let ticket = cache.ticket(b"a");
        cache.forget(&other);
        cache.keep(b"a", entry(1), ticket);
        assert_eq!(cache.get(b"a"), Some(entry(1)));
    }

    #[test]
    fn paused_it_serves_and_keeps_nothing_nor_what_was_read_before_it_resumed() {
        let cache = cache();
        cache.keep(b"a", entry(1), cache.ticket(b"a"));
        cache.pause();
        assert_eq!((cache.get(b"a"), cache.records_held()), (None, 0));
        cache.keep(b"a", entry(1), cache.ticket(b"a"));
        assert_eq!(cache.records_held(), 0, "kept while paused");
        let before = cache.ticket(b"a");
        cache.resume();
        cache.keep(b"a", entry(1), before);
        assert_eq!(cache.records_held(), 0, "a read from before the resume was kept");
        cache.keep(b"a", entry(2), cache.ticket(b"a"));
        assert_eq!(cache.get(b"a"), Some(entry(2)));
    }

    #[test]
    fn is_bounded_and_ages_out() {
        let cache = cache();
        for key in [b"a", b"b", b"c"] {
            cache.keep(key, entry(1), cache.ticket(key));
        }
        assert_eq!(cache.records_held(), 2);
        assert_eq!(cache.get(b"a"), None, "least recently used goes first");
        let old = ReadTicket { sent_at: Instant::now() - MAX_AGE, ..cache.ticket(b"old") };
        cache.keep(b"old", entry(1), old);
        assert_eq!(cache.get(b"old"), None);
    }

    #[test]
    fn its_size_comes_from_the_url() {
        let (url, cache) = from_url("postgres://h/db?cache=5&schema=s", "postgres").unwrap();
        assert_eq!((url.as_str(), cache.unwrap().capacity()), ("postgres://h/db?schema=s", 5));
        assert!(from_url("redis://h?cache=0", "redis").unwrap().1.is_none());
        assert_eq!(from_url("redis://h", "redis").unwrap().1.unwrap().capacity(), DEFAULT_RECORDS);
        let Err(err) = from_url("redis://h?cache=lots", "redis") else { panic!() };
        assert_eq!(
            err.to_string(),
            "storage unavailable: redis: cache=lots is not a number of records (0 turns the cache off)"
        );
    }
}
