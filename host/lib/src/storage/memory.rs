//! In-process storage, for tests and throwaway runs.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Entry, KeyPage, Storage, StorageError, StorageResult, Write};

#[derive(Default)]
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    records: BTreeMap<String, Entry>,
    last_version: u64,
}

#[async_trait::async_trait]
impl Storage for MemoryStorage {
    async fn get(&self, key: &str) -> StorageResult<Option<Entry>> {
        Ok(self.inner.lock().unwrap().records.get(key).cloned())
    }

    async fn put(&self, key: &str, value: &[u8], expected: Option<u64>) -> StorageResult<u64> {
        let mut inner = self.inner.lock().unwrap();
        if inner.records.get(key).map(|e| e.version) != expected {
            return Err(StorageError::Conflict);
        }
        inner.last_version += 1;
        let version = inner.last_version;
        inner.records.insert(key.to_owned(), Entry { value: value.to_vec(), version });
        Ok(version)
    }

    async fn delete(&self, key: &str, expected: u64) -> StorageResult<()> {
        let mut inner = self.inner.lock().unwrap();
        if inner.records.get(key).map(|e| e.version) != Some(expected) {
            return Err(StorageError::Conflict);
        }
        inner.records.remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> StorageResult<KeyPage> {
        let inner = self.inner.lock().unwrap();
        let start = match cursor {
            Some(c) => std::ops::Bound::Excluded(c.to_owned()),
            None => std::ops::Bound::Included(prefix.to_owned()),
        };
        let keys: Vec<String> = inner
            .records
            .range((start, std::ops::Bound::Unbounded))
            .map(|(k, _)| k)
            .skip_while(|k| k.as_str() < prefix)
            .take_while(|k| k.starts_with(prefix))
            .take(limit as usize)
            .cloned()
            .collect();
        Ok(KeyPage::of(keys, limit))
    }

    async fn commit(&self, writes: &[Write]) -> StorageResult<Vec<Option<u64>>> {
        let mut inner = self.inner.lock().unwrap();
        let version = |inner: &Inner, key: &str| inner.records.get(key).map(|e| e.version);
        let all_expected = writes.iter().all(|write| match write {
            Write::Put { key, expected, .. } => version(&inner, key) == *expected,
            Write::Delete { key, expected } => version(&inner, key) == Some(*expected),
        });
        if !all_expected {
            return Err(StorageError::Conflict);
        }
        Ok(writes
            .iter()
            .map(|write| match write {
                Write::Put { key, value, .. } => {
                    inner.last_version += 1;
                    let version = inner.last_version;
                    inner.records.insert(key.clone(), Entry { value: value.clone(), version });
                    Some(version)
                }
                Write::Delete { key, .. } => {
                    inner.records.remove(key);
                    None
                }
            })
            .collect())
    }

    fn describe(&self) -> String {
        "memory (in-process, not persisted)".into()
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance() {
        super::super::conformance::run(std::sync::Arc::new(super::MemoryStorage::default())).await;
    }
}
