//! Redis storage, shared by many hosts.
//!
//! Each record is a hash (`d` = value, `v` = version) at `{namespace}:r:{key}`; a sorted
//! set `{namespace}:index` (all scores 0, so ordered by key bytes) lists keys by prefix;
//! `{namespace}:version` counts versions. Writes are Lua scripts, which Redis runs
//! atomically. All keys of a namespace must live on one node (no Redis Cluster).

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::postgres::split_param;
use super::{Entry, KeyPage, Storage, StorageError, StorageResult};

const PUT: &str = r"
local current = redis.call('HGET', KEYS[1], 'v')
if ARGV[2] == '' then
  if current then return -1 end
elseif current ~= ARGV[2] then
  return -1
end
local version = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'v', version, 'd', ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
return version
";

const DELETE: &str = r"
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
";

pub struct RedisStorage {
    conn: ConnectionManager,
    namespace: String,
    put: Script,
    delete: Script,
    describe: String,
}

fn unavailable(err: redis::RedisError) -> StorageError {
    StorageError::Unavailable(format!("redis: {}", err.category()))
}

impl RedisStorage {
    /// `redis://host:port/db`, optionally `?namespace=NAME` (default `tokenvault`).
    pub async fn connect(url: &str) -> StorageResult<Self> {
        let (url, namespace) = split_param(url, "namespace");
        let namespace = namespace.unwrap_or_else(|| "tokenvault".into());
        if namespace.is_empty() || namespace.contains(char::is_whitespace) {
            return Err(StorageError::Unavailable("redis: namespace must be a non-empty word".into()));
        }
        let client = redis::Client::open(url.as_str())
            .map_err(|_| StorageError::Unavailable("redis: the storage URL is not a valid connection URL".into()))?;
        let info = client.get_connection_info();
        let describe = format!("redis ({}, db {}, namespace {namespace})", info.addr(), info.redis_settings().db());
        let conn = ConnectionManager::new(client).await.map_err(unavailable)?;
        Ok(RedisStorage { conn, namespace, put: Script::new(PUT), delete: Script::new(DELETE), describe })
    }

    fn record(&self, key: &str) -> String {
        format!("{}:r:{key}", self.namespace)
    }

    fn index(&self) -> String {
        format!("{}:index", self.namespace)
    }
}

#[async_trait::async_trait]
impl Storage for RedisStorage {
    async fn get(&self, key: &str) -> StorageResult<Option<Entry>> {
        let mut conn = self.conn.clone();
        let (value, version): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.record(key))
            .arg("d")
            .arg("v")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(value.zip(version).map(|(value, version)| Entry { value, version }))
    }

    async fn put(&self, key: &str, value: &[u8], expected: Option<u64>) -> StorageResult<u64> {
        let mut conn = self.conn.clone();
        let version: i64 = self
            .put
            .key(self.record(key))
            .key(format!("{}:version", self.namespace))
            .key(self.index())
            .arg(value)
            .arg(expected.map(|v| v.to_string()).unwrap_or_default())
            .arg(key)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if version < 0 { Err(StorageError::Conflict) } else { Ok(version as u64) }
    }

    async fn delete(&self, key: &str, expected: u64) -> StorageResult<()> {
        let mut conn = self.conn.clone();
        let deleted: i64 = self
            .delete
            .key(self.record(key))
            .key(self.index())
            .arg(expected.to_string())
            .arg(key)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
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

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{conformance, test_server, unique_name};

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance() {
        let Some(url) = test_server("TOKENVAULT_TEST_REDIS", "storage::redis::conformance") else { return };
        let namespace = unique_name("tv_test");
        let storage = RedisStorage::connect(&format!("{url}?namespace={namespace}"))
            .await
            .expect("connect to TOKENVAULT_TEST_REDIS");
        let mut conn = storage.conn.clone();
        conformance::run(std::sync::Arc::new(storage)).await;
        let keys: Vec<String> = conn.keys(format!("{namespace}:*")).await.unwrap();
        let _: () = conn.del(keys).await.unwrap();
    }
}
