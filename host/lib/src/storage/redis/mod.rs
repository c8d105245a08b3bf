//! Redis storage, shared by many hosts.
//!
//! Each record is a hash (`d` = value, `v` = version) at `{namespace}:r:{key}`; a sorted
//! set `{namespace}:index` (all scores 0, so ordered by key bytes) lists keys by prefix;
//! `{namespace}:version` counts versions. Writes are Lua scripts, which Redis runs
//! atomically. All keys of a namespace must live on one node (no Redis Cluster).
//!
//! Reads are served from a local cache that Redis keeps true, so a warm `get` costs no
//! round trip. The connection turns on Redis's server-assisted client-side caching
//! (`CLIENT TRACKING` over RESP3): once this connection has read a record, Redis pushes an
//! invalidation down the same connection when anyone changes it. Replies and pushes arrive
//! in one ordered stream and are applied in that order, so whatever this host learns from
//! Redis after a write (a lease released, a version moved on) comes after that write's
//! invalidation: a cached record is never older than what the host has seen happen, and
//! `get` itself may use the cache. That is the order the single-flight refresh relies on
//! across processes. The rest of the cache's rules are [`super::cache`]'s. A `rediss://` URL makes the link TLS (rustls), verifying the
//! server against the Mozilla roots, or against the CA file `sslrootcert=PATH` names.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script, Value};

use super::cache::{self, RecordCache};
use super::split_param;
use super::{Entry, KeyPage, Storage, StorageError, StorageResult, Write};

/// Reconnection attempts a call makes while Redis is unreachable (100 ms, then 200 ms apart).
const RECONNECT_RETRIES: usize = 2;

// The write scripts are files of their own: the Node.js package runs `commit.lua` too.
const PUT: &str = include_str!("put.lua");
const DELETE: &str = include_str!("delete.lua");

/// KEYS: the version counter, the index, then one record per write; ARGV: four per write
/// (`p` or `d`, the expected version or '', the value, the storage key). Every expectation
/// is checked before anything is written.
const COMMIT: &str = include_str!("commit.lua");

pub struct RedisStorage {
    conn: ConnectionManager,
    cache: Option<Arc<RecordCache>>,
    namespace: String,
    put: Script,
    delete: Script,
    commit: Script,
    describe: String,
    /// Reads that went to Redis.
    #[cfg(test)]
    server_reads: std::sync::atomic::AtomicU64,
}

fn unavailable(err: redis::RedisError) -> StorageError {
    StorageError::Unavailable(format!("redis: {}", err.category()))
}

impl RedisStorage {
    /// `redis://host:port/db`, optionally `?namespace=NAME` (default `tokenvault`) and
    /// `cache=N`, how many records to keep locally (default 10,000; 0 turns the cache off).
    /// The cache needs Redis 6 or later (RESP3 and `CLIENT TRACKING`).
    pub async fn connect(url: &str) -> StorageResult<Self> {
        let (url, namespace) = split_param(url, "namespace");
        let (url, cache) = cache::from_url(&url, "redis")?;
        let cache = cache.map(Arc::new);
        let (url, root_cert) = split_param(&url, "sslrootcert");
        let namespace = namespace.unwrap_or_else(|| "tokenvault".into());
        if namespace.is_empty() || namespace.contains(char::is_whitespace) {
            return Err(StorageError::Unavailable("redis: namespace must be a non-empty word".into()));
        }
        let invalid_url = || StorageError::Unavailable("redis: the storage URL is not a valid connection URL".into());
        let mut info = url.as_str().into_connection_info().map_err(|_| invalid_url())?;
        if cache.is_some() {
            // Invalidations arrive as RESP3 pushes on the connection that read the key.
            let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
            info = info.set_redis_settings(settings);
        }
        let describe = format!(
            "redis ({}, db {}, namespace {namespace}, {})",
            info.addr(),
            info.redis_settings().db(),
            match &cache {
                Some(cache) => format!("cache of {} records", cache.capacity()),
                None => "no cache".into(),
            }
        );
        let client = match root_cert {
            None => redis::Client::open(info).map_err(|_| invalid_url())?,
            Some(_) if !url.starts_with("rediss://") => {
                return Err(StorageError::Unavailable("redis: sslrootcert needs a rediss:// URL".into()));
            }
            Some(path) => {
                let pem = std::fs::read(&path)
                    .map_err(|e| StorageError::Unavailable(format!("redis: CA file {path}: {e}")))?;
                let trusted = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
                redis::Client::build_with_tls(info, trusted).map_err(|_| invalid_url())?
            }
        };
        // While Redis is down a call fails within about a second, instead of waiting out the
        // manager's default reconnection (six tries, 6 s of backoff) and then failing anyway;
        // the next call tries again. No command of this backend blocks, so 5 s is long.
        let mut config = ConnectionManagerConfig::new()
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(Duration::from_millis(400))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        if let Some(cache) = &cache {
            let cache = cache.clone();
            config = config.set_push_sender(move |push: PushInfo| {
                apply_push(&cache, &push);
                Ok::<(), std::convert::Infallible>(())
            });
        }
        let conn = ConnectionManager::new_with_config(client, config).await.map_err(|err| {
            // A server that answers but refuses RESP3 (`HELLO 3`) is older than Redis 6.
            if cache.is_some() && !err.is_io_error() {
                StorageError::Unavailable(format!(
                    "redis: {} (the cache needs Redis 6 or later; ?cache=0 turns it off)",
                    err.category()
                ))
            } else {
                unavailable(err)
            }
        })?;
        Ok(RedisStorage {
            conn,
            cache,
            namespace,
            put: Script::new(PUT),
            delete: Script::new(DELETE),
            commit: Script::new(COMMIT),
            describe,
            #[cfg(test)]
            server_reads: Default::default(),
        })
    }

    fn record(&self, key: &str) -> String {
        format!("{}:r:{key}", self.namespace)
    }

    fn index(&self) -> String {
        format!("{}:index", self.namespace)
    }

    /// Read a record from Redis, asking Redis to say when it changes if it may be cached.
    async fn read(&self, record: &str) -> StorageResult<Option<Entry>> {
        #[cfg(test)]
        self.server_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        if self.cache.is_some() {
            // Idempotent, and sent with every tracked read so that a reconnected
            // connection tracks again before anything it reads is kept. OPTIN: only the
            // read right after `CACHING YES` is tracked, not the index or the scripts' reads.
            pipe.cmd("CLIENT").arg("TRACKING").arg("ON").arg("OPTIN").ignore();
            pipe.cmd("CLIENT").arg("CACHING").arg("YES").ignore();
        }
        pipe.cmd("HMGET").arg(record).arg("d").arg("v");
        let ((value, version),): ((Option<Vec<u8>>, Option<u64>),) =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(value.zip(version).map(|(value, version)| Entry { value, version }))
    }

    /// After a write of this host's, whatever its outcome: Redis pushes the invalidation of
    /// a client's own write after the write's reply, too late for a read that follows it.
    fn forget(&self, record: &str) {
        if let Some(cache) = &self.cache {
            cache.forget(record.as_bytes());
        }
    }
}

/// Apply a message Redis (or the client library) pushed on the connection. Called in the
/// connection's read order, before any reply that came after it is delivered.
fn apply_push(cache: &RecordCache, push: &PushInfo) {
    match (&push.kind, push.data.first()) {
        (PushKind::Invalidate, Some(Value::Array(keys))) => {
            for key in keys {
                match key {
                    Value::BulkString(key) => cache.forget(key),
                    _ => cache.forget_all(),
                }
            }
        }
        // A flush of the database (a null key list), or anything not understood.
        (PushKind::Invalidate, _) => cache.forget_all(),
        (PushKind::Disconnection, _) => cache.forget_all(),
        _ => {}
    }
}

#[async_trait::async_trait]
impl Storage for RedisStorage {
    /// From the cache when it holds the record (its order makes that as good as a read).
    async fn get(&self, key: &str) -> StorageResult<Option<Entry>> {
        let record = self.record(key);
        match &self.cache {
            Some(cache) => cache.read_through(record.as_bytes(), self.read(&record)).await,
            None => self.read(&record).await,
        }
    }

    async fn put(&self, key: &str, value: &[u8], expected: Option<u64>) -> StorageResult<u64> {
        let mut conn = self.conn.clone();
        let record = self.record(key);
        let written = self
            .put
            .key(&record)
            .key(format!("{}:version", self.namespace))
            .key(self.index())
            .arg(value)
            .arg(expected.map(|v| v.to_string()).unwrap_or_default())
            .arg(key)
            .invoke_async::<i64>(&mut conn)
            .await;
        self.forget(&record);
        let version = written.map_err(unavailable)?;
        if version < 0 { Err(StorageError::Conflict) } else { Ok(version as u64) }
    }

    async fn delete(&self, key: &str, expected: u64) -> StorageResult<()> {
        let mut conn = self.conn.clone();
        let record = self.record(key);
        let deleted = self
            .delete
            .key(&record)
            .key(self.index())
            .arg(expected.to_string())
            .arg(key)
            .invoke_async::<i64>(&mut conn)
            .await;
        self.forget(&record);
        let deleted = deleted.map_err(unavailable)?;
        if deleted == 1 { Ok(()) } else { Err(StorageError::Conflict) }
    }

    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> StorageResult<KeyPage> {
        let mut conn = self.conn.clone();
        // Keys are UTF-8, which never contains byte 0xFF: it bounds the prefix range.
        let min: Vec<u8> = match cursor {
            Some(c) => [b"(", c.as_bytes()].concat(),
            None => [b"[", prefix.as_bytes()].concat(),
        };
        let max: Vec<u8> = [b"(", prefix.as_bytes(), &[0xFF]].concat();
        let keys: Vec<String> =
            conn.zrangebylex_limit(self.index(), min, max, 0, limit as isize).await.map_err(unavailable)?;
        let keys: Vec<String> = keys.into_iter().filter(|k| k.starts_with(prefix)).collect();
        Ok(KeyPage::of(keys, limit))
    }

    async fn commit(&self, writes: &[Write]) -> StorageResult<Vec<Option<u64>>> {
        let mut conn = self.conn.clone();
        let mut invocation = self.commit.key(format!("{}:version", self.namespace));
        invocation.key(self.index());
        let records: Vec<String> = writes.iter().map(|write| self.record(write.key())).collect();
        for (write, record) in writes.iter().zip(&records) {
            invocation.key(record);
            match write {
                Write::Put { key, value, expected } => {
                    invocation.arg("p").arg(expected.map(|v| v.to_string()).unwrap_or_default()).arg(value).arg(key)
                }
                Write::Delete { key, expected } => invocation.arg("d").arg(expected.to_string()).arg("").arg(key),
            };
        }
        let written = invocation.invoke_async::<Option<Vec<u64>>>(&mut conn).await;
        records.iter().for_each(|record| self.forget(record));
        let versions = written.map_err(unavailable)?.ok_or(StorageError::Conflict)?;
        Ok(writes.iter().zip(versions).map(|(write, v)| matches!(write, Write::Put { .. }).then_some(v)).collect())
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    // Redis's `get` is its cached read: `get_cached` is `get`.
    use crate::storage::{cached_reads_until, conformance, test_server, unique_name};

    /// A namespace of its own on the test server, emptied when the test ends.
    struct Namespace {
        url: String,
        name: String,
    }

    impl Namespace {
        fn new(test: &str) -> Option<Self> {
            let url = test_server("TOKENVAULT_TEST_REDIS", test)?;
            Some(Namespace { url, name: unique_name("tv_test") })
        }

        /// A host on the namespace: a connection (and a cache) of its own.
        async fn host(&self, params: &str) -> RedisStorage {
            RedisStorage::connect(&format!("{}?namespace={}{params}", self.url, self.name))
                .await
                .expect("connect to TOKENVAULT_TEST_REDIS")
        }

        async fn clean(self) {
            let mut conn = self.host("&cache=0").await.conn;
            let keys: Vec<String> = conn.keys(format!("{}:*", self.name)).await.unwrap();
            let _: () = conn.del(keys).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance() {
        let Some(namespace) = Namespace::new("storage::redis::conformance") else { return };
        conformance::run(Arc::new(namespace.host("").await)).await;
        namespace.clean().await;
        let Some(namespace) = Namespace::new("storage::redis::conformance") else { return };
        let uncached = namespace.host("&cache=0").await;
        assert!(uncached.describe().ends_with("no cache)"), "{}", uncached.describe());
        conformance::run(Arc::new(uncached)).await;
        namespace.clean().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_warm_read_costs_no_round_trip_until_another_host_changes_the_record() {
        let Some(namespace) = Namespace::new("storage::redis::warm_read") else { return };
        let (here, there) = (namespace.host("").await, namespace.host("").await);
        let v1 = here.put("k", b"1", None).await.unwrap();
        for _ in 0..50 {
            assert_eq!(here.get("k").await.unwrap().unwrap().version, v1);
        }
        assert_eq!(here.server_reads.load(Ordering::Relaxed), 1, "one read, then the cache");

        let v2 = there.put("k", b"2", Some(v1)).await.unwrap();
        assert!(cached_reads_until(&here, "k", |v| v == Some(v2)).await, "the other host's write was never seen");
        there.delete("k", v2).await.unwrap();
        assert!(cached_reads_until(&here, "k", |v| v.is_none()).await, "the other host's delete was never seen");
        // Absence was kept too, and a create by the other host invalidates it.
        let reads = here.server_reads.load(Ordering::Relaxed);
        assert_eq!(here.get("k").await.unwrap(), None);
        assert_eq!(here.server_reads.load(Ordering::Relaxed), reads);
        let v3 = there.put("k", b"3", None).await.unwrap();
        assert!(cached_reads_until(&here, "k", |v| v == Some(v3)).await, "the other host's create was never seen");
        namespace.clean().await;
    }

    /// The single-flight refresh across processes relies on this order: the lease holder
    /// saves the token, then releases the lease; a waiter that sees the lease gone must then
    /// read the saved token, never its cached copy of the old one.
    #[tokio::test(flavor = "multi_thread")]
    async fn what_a_host_learns_after_a_write_never_meets_a_copy_from_before_it() {
        let Some(namespace) = Namespace::new("storage::redis::causal_order") else { return };
        let (waiter, holder) = (namespace.host("").await, namespace.host("").await);
        let mut token = holder.put("token", b"0", None).await.unwrap();
        for round in 0..200 {
            let lease = holder.put("lease", b"held", None).await.unwrap();
            // The waiter has both cached: the token as it was, and the lease as held.
            assert_eq!(waiter.get("token").await.unwrap().unwrap().version, token);
            assert!(cached_reads_until(&waiter, "lease", |v| v == Some(lease)).await);
            token = holder.put("token", round.to_string().as_bytes(), Some(token)).await.unwrap();
            holder.delete("lease", lease).await.unwrap();
            assert!(cached_reads_until(&waiter, "lease", |v| v.is_none()).await);
            assert_eq!(waiter.get("token").await.unwrap().unwrap().version, token, "round {round}");
        }
        namespace.clean().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_host_reads_its_own_writes_at_once_and_a_lost_race_reads_the_winner() {
        let Some(namespace) = Namespace::new("storage::redis::own_writes") else { return };
        let (here, there) = (namespace.host("").await, namespace.host("").await);
        // Redis's `get` is the cached read (get_cached is get).
        conformance::cached_reads_see_own_writes_and_the_winner(&here, &there).await;
        namespace.clean().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_lost_connection_empties_the_cache() {
        let Some(namespace) = Namespace::new("storage::redis::lost_connection") else { return };
        let (here, there) = (namespace.host("").await, namespace.host("").await);
        let v1 = here.put("k", b"1", None).await.unwrap();
        assert_eq!(here.get("k").await.unwrap().unwrap().version, v1);
        let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut here.conn.clone()).await.unwrap();
        let _: () =
            redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(&mut there.conn.clone()).await.unwrap();
        // Written while `here` has no connection, so no invalidation can reach it.
        let v2 = there.put("k", b"2", Some(v1)).await.unwrap();
        assert!(
            cached_reads_until(&here, "k", |v| v == Some(v2)).await,
            "served the copy from before the disconnection"
        );
        namespace.clean().await;
    }

    #[test]
    fn pushes_invalidate_what_they_name_and_a_flush_or_disconnection_everything() {
        let cache = RecordCache::new(std::num::NonZeroUsize::new(4).unwrap());
        let keep = |key: &[u8]| cache.keep(key, Some(Entry { value: vec![1], version: 1 }), cache.ticket(key));
        let invalidate = |keys: Value| PushInfo { kind: PushKind::Invalidate, data: vec![keys] };
        keep(b"a");
        keep(b"b");
        apply_push(&cache, &invalidate(Value::Array(vec![Value::BulkString(b"a".to_vec())])));
        assert_eq!((cache.get(b"a"), cache.records_held()), (None, 1), "only what was named goes");
        apply_push(&cache, &invalidate(Value::Nil));
        assert_eq!(cache.records_held(), 0, "a flush empties it");
        keep(b"a");
        apply_push(&cache, &PushInfo { kind: PushKind::Disconnection, data: vec![] });
        assert_eq!(cache.records_held(), 0, "a disconnection empties it");
    }

    #[tokio::test]
    async fn a_cache_size_that_is_not_a_number_is_refused() {
        let Err(err) = RedisStorage::connect("redis://127.0.0.1:1?cache=lots").await else { panic!() };
        assert_eq!(
            err.to_string(),
            "storage unavailable: redis: cache=lots is not a number of records (0 turns the cache off)"
        );
        // Nobody listening is not a server too old for the cache.
        let Err(err) = RedisStorage::connect("redis://127.0.0.1:1").await else { panic!() };
        assert!(!err.to_string().contains("Redis 6"), "{err}");
    }
}
