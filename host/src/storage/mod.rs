//! Versioned storage: the backend behind the component's `storage` import.
//!
//! Every backend keeps the same contract: a successful write gives the record a version
//! that was never used for that key before (one counter per store), so a stale writer is
//! fenced off by compare-and-swap even after a delete and re-create.

mod memory;
mod sqlite;

use std::path::Path;

pub use memory::MemoryStorage;
pub use sqlite::SqliteStorage;

/// A stored value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPage {
    pub keys: Vec<String>,
    /// Where the next page starts; none after the last page.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("version conflict")]
    Conflict,
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

pub type StorageResult<T> = Result<T, StorageError>;

#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    async fn get(&self, key: &str) -> StorageResult<Option<Entry>>;
    /// Write if the current version is `expected` (`None`: only if absent).
    async fn put(&self, key: &str, value: &[u8], expected: Option<u64>) -> StorageResult<u64>;
    /// Delete if the current version is `expected`.
    async fn delete(&self, key: &str, expected: u64) -> StorageResult<()>;
    /// Keys with `prefix`, ascending, after `cursor`, at most `limit`.
    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> StorageResult<KeyPage>;
    /// What this backend is, for reports (never credentials).
    fn describe(&self) -> String;
}

/// Where records are kept, as an operator writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    Memory,
    Sqlite(std::path::PathBuf),
}

impl StorageUrl {
    /// `memory:` or `sqlite://PATH` (relative paths are taken from the working directory).
    pub fn parse(url: &str) -> Result<Self, String> {
        if url == "memory:" {
            Ok(StorageUrl::Memory)
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, e.g. sqlite://./vault.db".into());
            }
            Ok(StorageUrl::Sqlite(path.into()))
        } else {
            Err(format!(
                "unsupported storage URL {url:?}: use memory: or sqlite://PATH"
            ))
        }
    }

    /// The embedded default: a SQLite file in the data directory.
    pub fn default_in(data_dir: &Path) -> Self {
        StorageUrl::Sqlite(data_dir.join("vault.db"))
    }

    pub fn open(&self) -> Result<std::sync::Arc<dyn Storage>, StorageError> {
        Ok(match self {
            StorageUrl::Memory => std::sync::Arc::new(MemoryStorage::default()),
            StorageUrl::Sqlite(path) => std::sync::Arc::new(SqliteStorage::open(path)?),
        })
    }
}

/// One conformance suite, run against every backend.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    pub async fn run(storage: &dyn Storage) {
        let k = "tok/t/u/p/n";
        assert_eq!(storage.get(k).await.unwrap(), None);
        assert_eq!(
            storage.delete(k, 1).await,
            Err(StorageError::Conflict),
            "delete of absent key"
        );
        assert_eq!(
            storage.put(k, b"v1", Some(1)).await,
            Err(StorageError::Conflict),
            "update of absent key"
        );

        let v1 = storage.put(k, b"v1", None).await.unwrap();
        assert_eq!(
            storage.put(k, b"again", None).await,
            Err(StorageError::Conflict),
            "create over existing"
        );
        assert_eq!(
            storage.get(k).await.unwrap(),
            Some(Entry {
                value: b"v1".to_vec(),
                version: v1
            })
        );

        let v2 = storage.put(k, b"v2", Some(v1)).await.unwrap();
        assert_ne!(v1, v2);
        assert_eq!(
            storage.put(k, b"stale", Some(v1)).await,
            Err(StorageError::Conflict),
            "stale writer"
        );
        assert_eq!(
            storage.delete(k, v1).await,
            Err(StorageError::Conflict),
            "stale delete"
        );
        storage.delete(k, v2).await.unwrap();
        assert_eq!(storage.get(k).await.unwrap(), None);

        // Re-created records never reuse a version: a writer holding v1 or v2 stays fenced.
        let v3 = storage.put(k, b"v3", None).await.unwrap();
        assert!(v3 != v1 && v3 != v2);
        storage.delete(k, v3).await.unwrap();

        for key in [
            "tok/a/1", "tok/a/2", "tok/a/3", "tok/ab/1", "tok/b/1", "prov/x",
        ] {
            storage.put(key, b"x", None).await.unwrap();
        }
        let first = storage.list("tok/a/", None, 2).await.unwrap();
        assert_eq!(first.keys, vec!["tok/a/1", "tok/a/2"]);
        let rest = storage
            .list("tok/a/", first.cursor.as_deref(), 2)
            .await
            .unwrap();
        assert_eq!(rest.keys, vec!["tok/a/3"]);
        assert_eq!(rest.cursor, None);
        let all = storage.list("", None, 100).await.unwrap();
        assert_eq!(all.keys.len(), 6);
        assert_eq!(
            storage.list("tok/a%", None, 10).await.unwrap().keys,
            Vec::<String>::new(),
            "no wildcard"
        );
    }
}
