//! The component's `storage` import, served by the configured [`Storage`]: every write
//! that succeeds wakes the callers of this process waiting for that record.
//!
//! A call's reads may come from the store's cache ([`Storage::get_cached`]) until the call
//! first writes or waits; after that they read the store itself. What the component does
//! after a write depends on what others wrote before it: the refresh lease's holder
//! re-reads the token once it holds the lease, and must see the token the previous holder
//! saved before releasing it; a write that lost a compare-and-swap reads again to learn the
//! winner. Reads before any write can only be stale in ways a later compare-and-swap
//! refuses, or as a `get` answered a moment before another host's change arrived.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::HasData;

use super::{Changes, Storage, StorageError, Write};
use crate::bindings::tokenvault::vault::storage as wit_storage;
use crate::metrics::Metrics;

/// What one call's `storage` import reaches: the store, the registry of callers waiting
/// for records to change, and when the call must end.
pub struct StorageImport<'a> {
    pub storage: &'a Arc<dyn Storage>,
    pub changes: &'a Changes,
    pub deadline: Instant,
    pub metrics: &'a Metrics,
    /// The call has written or waited: read the store itself from now on.
    pub reads_latest: &'a mut bool,
}

impl StorageImport<'_> {
    /// The answer for the component, a failure of the backend counted.
    fn counted<T>(&self, result: Result<T, StorageError>) -> Result<T, wit_storage::StorageError> {
        if matches!(result, Err(StorageError::Unavailable(_))) {
            self.metrics.storage_error();
        }
        result.map_err(Into::into)
    }
}

impl HasData for StorageImport<'static> {
    type Data<'a> = StorageImport<'a>;
}

impl wit_storage::Host for StorageImport<'_> {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<wit_storage::Entry>, wit_storage::StorageError>> {
        let got = if *self.reads_latest { self.storage.get(&key).await } else { self.storage.get_cached(&key).await };
        let got = got.map(|e| e.map(Into::into));
        Ok(self.counted(got))
    }

    async fn put(
        &mut self,
        key: String,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> wasmtime::Result<Result<u64, wit_storage::StorageError>> {
        *self.reads_latest = true;
        let written = self.storage.put(&key, &value, expected).await;
        if let Ok(version) = written {
            self.changes.publish(&key, Some(version));
        }
        Ok(self.counted(written))
    }

    async fn delete(&mut self, key: String, expected: u64) -> wasmtime::Result<Result<(), wit_storage::StorageError>> {
        *self.reads_latest = true;
        let deleted = self.storage.delete(&key, expected).await;
        if deleted.is_ok() {
            self.changes.publish(&key, None);
        }
        Ok(self.counted(deleted))
    }

    async fn commit(
        &mut self,
        writes: Vec<wit_storage::Write>,
    ) -> wasmtime::Result<Result<Vec<Option<u64>>, wit_storage::StorageError>> {
        *self.reads_latest = true;
        let writes: Vec<Write> = writes.into_iter().map(Into::into).collect();
        let committed = self.storage.commit(&writes).await;
        if let Ok(versions) = &committed {
            for (write, version) in writes.iter().zip(versions) {
                self.changes.publish(write.key(), *version);
            }
        }
        Ok(self.counted(committed))
    }

    async fn wait_for_change(
        &mut self,
        key: String,
        seen: Option<u64>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<(), wit_storage::StorageError>> {
        *self.reads_latest = true;
        // The deadline stops a guest only while it runs, so a wait ends before it.
        let until_deadline = self.deadline.saturating_duration_since(Instant::now());
        let timeout = Duration::from_millis(timeout_ms.into()).min(until_deadline);
        let waited = self.changes.wait(self.storage, &key, seen, timeout).await;
        Ok(self.counted(waited))
    }

    async fn list(
        &mut self,
        prefix: String,
        cursor: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Result<wit_storage::KeyPage, wit_storage::StorageError>> {
        let listed = self.storage.list(&prefix, cursor.as_deref(), limit).await.map(Into::into);
        Ok(self.counted(listed))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::storage::Counted;

    /// Reads through a cache until the call first writes or waits, however it does.
    #[tokio::test]
    async fn a_call_reads_through_the_cache_until_it_first_writes_or_waits() {
        for first in ["put", "delete", "commit", "wait-for-change"] {
            let counted = Arc::new(Counted::default());
            let storage: Arc<dyn Storage> = counted.clone();
            let version = storage.put("k", b"1", None).await.unwrap();
            let (changes, metrics, mut reads_latest) = (Changes::default(), Metrics::default(), false);
            let mut import = StorageImport {
                storage: &storage,
                changes: &changes,
                deadline: Instant::now() + Duration::from_secs(30),
                metrics: &metrics,
                reads_latest: &mut reads_latest,
            };
            let reads = || (counted.cached_gets.load(Ordering::Relaxed), counted.gets.load(Ordering::Relaxed));
            for _ in 0..2 {
                wit_storage::Host::get(&mut import, "k".into()).await.unwrap().unwrap();
            }
            assert_eq!(reads(), (2, 0), "{first}: the reads before it");
            match first {
                "put" => {
                    wit_storage::Host::put(&mut import, "other".into(), b"x".to_vec(), None).await.map(|r| r.map(drop))
                }
                "delete" => wit_storage::Host::delete(&mut import, "k".into(), version).await,
                "commit" => {
                    let write = wit_storage::Write::Put(("other".into(), b"x".to_vec(), None));
                    wit_storage::Host::commit(&mut import, vec![write]).await.map(|r| r.map(drop))
                }
                _ => wit_storage::Host::wait_for_change(&mut import, "k".into(), Some(version + 1), 0).await,
            }
            .unwrap()
            .unwrap();
            let before = reads();
            wit_storage::Host::get(&mut import, "k".into()).await.unwrap().unwrap();
            assert_eq!(reads(), (before.0, before.1 + 1), "{first}: a read after it came from a cache");
        }
    }
}
