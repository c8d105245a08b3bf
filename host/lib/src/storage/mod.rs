//! Versioned storage: the backend behind the component's `storage` import.
//!
//! Every backend keeps the same contract: a successful write gives the record a version
//! that was never used for that key before (one counter per store), so a stale writer is
//! fenced off by compare-and-swap even after a delete and re-create.

#[cfg(any(feature = "postgres", feature = "redis"))]
pub mod cache;
mod changes;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;
mod wit;

use std::path::Path;
use std::sync::Arc;

pub use changes::Changes;
pub use memory::MemoryStorage;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStorage;
#[cfg(feature = "redis")]
pub use redis::RedisStorage;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStorage;
pub(crate) use wit::StorageImport;

pub use tokenvault_model::storage::{Entry, KeyPage, StorageError, Write, escape_key_part};

pub type StorageResult<T> = Result<T, StorageError>;

/// Records whose keys begin with this (the audit trail's) are written by nearly every call
/// and read only by the host that lists them: no cache keeps them, and a store that tells
/// other hosts of each change (PostgreSQL's notifications) does not tell of these.
pub const UNCACHED_PREFIX: &str = "audit";

#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The record as the store holds it: never older than anything this host has learned
    /// from the store, its own writes included.
    async fn get(&self, key: &str) -> StorageResult<Option<Entry>>;
    /// The record, perhaps from a copy this process keeps (PostgreSQL's cache), which a
    /// write by another host reaches a moment after it commits (see [`cache`]): for reads
    /// that lead to no write, or whose write is a compare-and-swap that a stale version
    /// only makes fail. Keys under [`UNCACHED_PREFIX`] are always read from the store.
    /// The default is [`Storage::get`].
    async fn get_cached(&self, key: &str) -> StorageResult<Option<Entry>> {
        self.get(key).await
    }
    /// Write if the current version is `expected` (`None`: only if absent).
    async fn put(&self, key: &str, value: &[u8], expected: Option<u64>) -> StorageResult<u64>;
    /// Delete if the current version is `expected`.
    async fn delete(&self, key: &str, expected: u64) -> StorageResult<()>;
    /// Keys with `prefix`, ascending, after `cursor`, at most `limit`.
    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> StorageResult<KeyPage>;
    /// All of `writes` or none of them (each key at most once): `Conflict` when any one's
    /// expected version does not match. The new version of each write (none for a delete).
    async fn commit(&self, writes: &[Write]) -> StorageResult<Vec<Option<u64>>>;
    /// What this backend is, for reports (never credentials).
    fn describe(&self) -> String;
}

/// Every key with `prefix`, ascending, read page by page: for the small sets a host keeps
/// beside the component's records (API keys, access tokens), not for those that grow
/// with the connections.
pub async fn all_keys(storage: &dyn Storage, prefix: &str) -> StorageResult<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page = storage.list(prefix, cursor.as_deref(), 500).await?;
        keys.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(keys),
        }
    }
}

/// Where records are kept, as an operator writes it.
#[derive(Clone, PartialEq, Eq)]
pub enum StorageUrl {
    Memory,
    Sqlite(std::path::PathBuf),
    /// A `postgres://` URL (may hold a password: never printed).
    Postgres(String),
    /// A `redis://` URL (may hold a password: never printed).
    Redis(String),
}

impl std::fmt::Debug for StorageUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageUrl::Memory => f.write_str("Memory"),
            StorageUrl::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            StorageUrl::Postgres(_) => f.write_str("Postgres(<url>)"),
            StorageUrl::Redis(_) => f.write_str("Redis(<url>)"),
        }
    }
}

impl StorageUrl {
    /// `memory:`, `sqlite://PATH` (relative paths are taken from the working directory),
    /// `postgres://…` (or `postgresql://`, optionally `?schema=NAME`) or `redis://…`
    /// (optionally `?namespace=NAME&cache=RECORDS`).
    pub fn parse(url: &str) -> Result<Self, String> {
        if url == "memory:" {
            Ok(StorageUrl::Memory)
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, e.g. sqlite://./vault.db".into());
            }
            Ok(StorageUrl::Sqlite(path.into()))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StorageUrl::Postgres(url.to_owned()))
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            Ok(StorageUrl::Redis(url.to_owned()))
        } else {
            Err("unsupported storage URL: use memory:, sqlite://PATH, postgres://… or redis://…".into())
        }
    }

    /// The embedded default: a SQLite file in the data directory.
    /// Whether the store belongs to this data directory alone (SQLite or memory), rather
    /// than being shared by hosts on several machines.
    pub fn is_embedded(&self) -> bool {
        matches!(self, StorageUrl::Memory | StorageUrl::Sqlite(_))
    }

    pub fn default_in(data_dir: &Path) -> Self {
        StorageUrl::Sqlite(data_dir.join("vault.db"))
    }

    pub async fn open(&self) -> Result<Arc<dyn Storage>, StorageError> {
        Ok(match self {
            StorageUrl::Memory => Arc::new(MemoryStorage::default()),
            #[cfg(feature = "sqlite")]
            StorageUrl::Sqlite(path) => Arc::new(SqliteStorage::open(path)?),
            #[cfg(feature = "postgres")]
            StorageUrl::Postgres(url) => Arc::new(PostgresStorage::connect(url).await?),
            #[cfg(feature = "redis")]
            StorageUrl::Redis(url) => Arc::new(RedisStorage::connect(url).await?),
            #[cfg(not(feature = "sqlite"))]
            StorageUrl::Sqlite(_) => return Err(not_built("sqlite")),
            #[cfg(not(feature = "postgres"))]
            StorageUrl::Postgres(_) => return Err(not_built("postgres")),
            #[cfg(not(feature = "redis"))]
            StorageUrl::Redis(_) => return Err(not_built("redis")),
        })
    }
}

/// A backend this build left out.
#[allow(dead_code)] // with every backend compiled in
fn not_built(feature: &str) -> StorageError {
    StorageError::Unavailable(format!(
        "this build has no {feature} backend (the tokenvault crate's `{feature}` feature)"
    ))
}

/// Take `name=value` out of a URL's query string (the drivers do not know our parameters).
#[cfg(any(feature = "postgres", feature = "redis"))]
fn split_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None) };
    let mut found = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => {
                found = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    let url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    (url, found)
}

/// The URL of a shared test server (`TOKENVAULT_TEST_POSTGRES`, `TOKENVAULT_TEST_REDIS`), or
/// `None` after reporting the test as skipped, by name, on stderr (written directly, so
/// the test harness does not swallow it).
#[cfg(any(test, feature = "testing"))]
pub fn test_server(var: &str, test: &str) -> Option<String> {
    use std::io::Write;
    let url = std::env::var(var).ok().filter(|u| !u.is_empty());
    if url.is_none() {
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {var} is not set (see README, Testing)");
    }
    url
}

/// A name no other test run uses, for a schema or namespace of its own.
#[cfg(any(test, feature = "testing"))]
pub fn unique_name(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    format!("{prefix}_{}", hex::encode(bytes))
}

/// In-memory storage that counts its reads: those of the store itself and those that may
/// come from a cache.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Counted {
    inner: MemoryStorage,
    pub gets: std::sync::atomic::AtomicUsize,
    pub cached_gets: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
#[async_trait::async_trait]
impl Storage for Counted {
    async fn get(&self, key: &str) -> StorageResult<Option<Entry>> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.get(key).await
    }
    async fn get_cached(&self, key: &str) -> StorageResult<Option<Entry>> {
        self.cached_gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: &[u8], expected: Option<u64>) -> StorageResult<u64> {
        self.inner.put(key, value, expected).await
    }
    async fn delete(&self, key: &str, expected: u64) -> StorageResult<()> {
        self.inner.delete(key, expected).await
    }
    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> StorageResult<KeyPage> {
        self.inner.list(prefix, cursor, limit).await
    }
    async fn commit(&self, writes: &[Write]) -> StorageResult<Vec<Option<u64>>> {
        self.inner.commit(writes).await
    }
    fn describe(&self) -> String {
        "counted".into()
    }
}

/// Whether `check` holds within `limit`, asked every millisecond.
#[cfg(all(test, any(feature = "postgres", feature = "redis")))]
pub(crate) async fn holds_within(limit: std::time::Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Read `key` through `storage`'s cache until `done` holds of its version; false after 2 s
/// (well under the cache's `MAX_AGE`: only the store telling of a change can have made it
/// true). Errors (a reconnection) retry.
#[cfg(all(test, any(feature = "postgres", feature = "redis")))]
pub(crate) async fn cached_reads_until(storage: &dyn Storage, key: &str, done: impl Fn(Option<u64>) -> bool) -> bool {
    holds_within(
        std::time::Duration::from_secs(2),
        async || matches!(storage.get_cached(key).await, Ok(entry) if done(entry.as_ref().map(|e| e.version))),
    )
    .await
}

/// One conformance suite, run against every backend: `conformance::run(storage)` panics,
/// naming the broken promise, where a backend breaks the contract. Public with the
/// `testing` feature, for embedders who bring their own [`Storage`].
#[cfg(any(test, feature = "testing"))]
pub mod conformance {
    use super::*;

    pub async fn run(storage: Arc<dyn Storage>) {
        sequential(&*storage).await;
        commits(&*storage).await;
        racing_writers(storage.clone()).await;
        racing_commits(storage).await;
    }

    fn put(key: &str, value: &[u8], expected: Option<u64>) -> Write {
        Write::Put { key: key.into(), value: value.to_vec(), expected }
    }

    /// A commit is all or nothing.
    async fn commits(storage: &dyn Storage) {
        let a = storage.put("c/a", b"a1", None).await.unwrap();
        let b = storage.put("c/b", b"b1", None).await.unwrap();
        // One stale expectation: nothing of the commit is written.
        let stale = [put("c/a", b"a2", Some(a)), put("c/new", b"n", None), put("c/b", b"b2", Some(a))];
        assert_eq!(storage.commit(&stale).await, Err(StorageError::Conflict), "one stale write");
        let exists = [put("c/new", b"n", None), put("c/a", b"a2", None)];
        assert_eq!(storage.commit(&exists).await, Err(StorageError::Conflict), "create over existing");
        let gone = [put("c/new", b"n", None), Write::Delete { key: "c/absent".into(), expected: 1 }];
        assert_eq!(storage.commit(&gone).await, Err(StorageError::Conflict), "delete of absent key");
        assert_eq!(storage.get("c/new").await.unwrap(), None, "nothing of a refused commit is written");
        assert_eq!(storage.get("c/a").await.unwrap().unwrap().version, a);

        let versions = storage
            .commit(&[
                put("c/a", b"a2", Some(a)),
                put("c/new", b"n", None),
                Write::Delete { key: "c/b".into(), expected: b },
            ])
            .await
            .unwrap();
        let [Some(a2), Some(new), None] = versions[..] else { panic!("{versions:?}") };
        assert!(a2 != a && new != a && new != a2 && a2 > b && new > b);
        assert_eq!(storage.get("c/a").await.unwrap(), Some(Entry { value: b"a2".to_vec(), version: a2 }));
        assert_eq!(storage.get("c/new").await.unwrap(), Some(Entry { value: b"n".to_vec(), version: new }));
        assert_eq!(storage.get("c/b").await.unwrap(), None);
        assert_eq!(storage.commit(&[]).await, Ok(vec![]));
        assert_eq!(storage.list("c/", None, 10).await.unwrap().keys, ["c/a", "c/new"]);

        // Creations in a row (an audit append's; PostgreSQL makes them in one statement):
        // each its own version, as stored. One of them already present, and nothing of the
        // commit is written.
        let existing = [put("c/r1", b"1", None), put("c/new", b"x", None), put("c/r2", b"2", None)];
        assert_eq!(storage.commit(&existing).await, Err(StorageError::Conflict), "a run over an existing key");
        assert_eq!(storage.get("c/r1").await.unwrap(), None, "nothing of a refused run is written");
        let run = ["c/r1", "c/r2", "c/r3"];
        let versions = storage.commit(&run.map(|key| put(key, key.as_bytes(), None))).await.unwrap();
        assert_eq!(versions.len(), 3);
        for (key, version) in run.iter().zip(&versions) {
            let stored = storage.get(key).await.unwrap().unwrap();
            assert_eq!((stored.value, Some(stored.version)), (key.as_bytes().to_vec(), *version), "{key}");
            storage.delete(key, stored.version).await.unwrap();
        }
        assert!(versions[0] != versions[1] && versions[1] != versions[2] && versions[0] != versions[2]);
        storage
            .commit(&[
                Write::Delete { key: "c/a".into(), expected: a2 },
                Write::Delete { key: "c/new".into(), expected: new },
            ])
            .await
            .unwrap();
    }

    /// Commits that each create the next key of a sequence and move its head: one wins
    /// each round, as a chain of appends needs.
    async fn racing_commits(storage: Arc<dyn Storage>) {
        let head = storage.put("seq/head", b"0", None).await.unwrap();
        let mut writers = tokio::task::JoinSet::new();
        for i in 0..8u8 {
            let storage = storage.clone();
            writers.spawn(async move {
                storage.commit(&[put("seq/head", b"1", Some(head)), put("seq/1", &[i], None)]).await
            });
        }
        let results = writers.join_all().await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
        assert!(results.iter().all(|r| matches!(r, Ok(_) | Err(StorageError::Conflict))));
        let Some(Ok(winner)) = results.iter().find(|r| r.is_ok()) else { unreachable!() };
        assert_eq!(storage.get("seq/head").await.unwrap().unwrap().version, winner[0].unwrap());
        assert_eq!(storage.get("seq/1").await.unwrap().unwrap().version, winner[1].unwrap());
    }

    async fn sequential(storage: &dyn Storage) {
        let k = "tok/t/u/p/n";
        assert_eq!(storage.get(k).await.unwrap(), None);
        assert_eq!(storage.delete(k, 1).await, Err(StorageError::Conflict), "delete of absent key");
        assert_eq!(storage.put(k, b"v1", Some(1)).await, Err(StorageError::Conflict), "update of absent key");

        let v1 = storage.put(k, b"v1", None).await.unwrap();
        assert_eq!(storage.put(k, b"again", None).await, Err(StorageError::Conflict), "create over existing");
        assert_eq!(storage.get(k).await.unwrap(), Some(Entry { value: b"v1".to_vec(), version: v1 }));

        let v2 = storage.put(k, b"v2", Some(v1)).await.unwrap();
        assert_ne!(v1, v2);
        assert_eq!(storage.put(k, b"stale", Some(v1)).await, Err(StorageError::Conflict), "stale writer");
        assert_eq!(storage.delete(k, v1).await, Err(StorageError::Conflict), "stale delete");
        storage.delete(k, v2).await.unwrap();
        assert_eq!(storage.get(k).await.unwrap(), None);

        // Re-created records never reuse a version: a writer holding v1 or v2 stays fenced.
        let v3 = storage.put(k, b"v3", None).await.unwrap();
        assert!(v3 != v1 && v3 != v2);
        storage.delete(k, v3).await.unwrap();

        // Values are bytes, all 256 of them.
        let binary: Vec<u8> = (0..=255).collect();
        let v = storage.put("bin", &binary, None).await.unwrap();
        assert_eq!(storage.get("bin").await.unwrap().unwrap().value, binary);
        storage.delete("bin", v).await.unwrap();

        for key in ["tok/a/1", "tok/a/2", "tok/a/3", "tok/ab/1", "tok/b/1", "prov/x", "tok/a%/1", "tok/a_/1"] {
            storage.put(key, b"x", None).await.unwrap();
        }
        let first = storage.list("tok/a/", None, 2).await.unwrap();
        assert_eq!(first.keys, vec!["tok/a/1", "tok/a/2"]);
        let rest = storage.list("tok/a/", first.cursor.as_deref(), 2).await.unwrap();
        assert_eq!(rest.keys, vec!["tok/a/3"]);
        assert_eq!(rest.cursor, None);
        let all = storage.list("", None, 100).await.unwrap();
        assert_eq!(all.keys.len(), 8);
        let mut sorted = all.keys.clone();
        sorted.sort();
        assert_eq!(all.keys, sorted, "keys come in byte order");
        assert_eq!(storage.list("tok/a%", None, 10).await.unwrap().keys, vec!["tok/a%/1"], "% is literal");
        assert_eq!(storage.list("tok/a_", None, 10).await.unwrap().keys, vec!["tok/a_/1"], "_ is literal");
    }

    /// Many writers holding the same version: exactly one wins.
    async fn racing_writers(storage: Arc<dyn Storage>) {
        let v0 = storage.put("race", b"0", None).await.unwrap();
        let mut writers = tokio::task::JoinSet::new();
        for i in 0..16u8 {
            let storage = storage.clone();
            writers.spawn(async move { storage.put("race", &[i], Some(v0)).await });
        }
        let results = writers.join_all().await;
        let winners: Vec<u64> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        assert!(results.iter().all(|r| matches!(r, Ok(_) | Err(StorageError::Conflict))));
        assert_eq!(storage.get("race").await.unwrap().unwrap().version, winners[0]);
    }

    /// For stores that cache: two hosts on one store, `here` reading through its cache. It
    /// reads its own writes at once, and after losing a race to `there`, the winner.
    pub async fn cached_reads_see_own_writes_and_the_winner(here: &dyn Storage, there: &dyn Storage) {
        let mut version = here.put("k", b"0", None).await.unwrap();
        for round in 0..100 {
            assert_eq!(here.get_cached("k").await.unwrap().unwrap().version, version);
            version = here.put("k", round.to_string().as_bytes(), Some(version)).await.unwrap();
            assert_eq!(here.get_cached("k").await.unwrap().unwrap().version, version, "round {round}");
        }
        for round in 0..50 {
            assert_eq!(here.get_cached("k").await.unwrap().unwrap().version, version);
            let winner = there.put("k", b"there", Some(version)).await.unwrap();
            assert_eq!(here.put("k", b"here", Some(version)).await, Err(StorageError::Conflict));
            assert_eq!(here.get_cached("k").await.unwrap().unwrap().version, winner, "round {round}");
            version = winner;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn all_keys_reads_every_page_of_its_prefix_only() {
        let storage = MemoryStorage::default();
        for i in 0..1201 {
            storage.put(&format!("a/{i:05}"), b"v", None).await.unwrap();
        }
        storage.put("b/0", b"v", None).await.unwrap();
        let keys = all_keys(&storage, "a/").await.unwrap();
        assert_eq!(keys.len(), 1201);
        assert!(keys.windows(2).all(|w| w[0] < w[1]) && keys.iter().all(|k| k.starts_with("a/")));
    }
}
