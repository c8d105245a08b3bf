//! Waiting for a record to change, behind the `storage.wait-for-change` import.
//!
//! Callers waiting for another caller's refresh park here instead of polling from inside
//! the sandbox. Each watched key has one channel holding the latest version anyone saw:
//! a write through this process publishes at once; writes by other processes or hosts
//! are noticed by one poller per key, however many callers wait on it. A waiter publishes
//! its own first read too, so the channel never holds a version older than what a waiter
//! compares with. A stale publication (a read that lost a race with a write) wakes
//! callers early, which the contract allows (they read the record again), or late by at
//! most one poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::{Storage, StorageResult};

/// How often a watched key is read for changes made by other processes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The keys callers are waiting on, each with the latest version seen (`None`: absent).
#[derive(Default)]
pub struct Changes {
    watched: Mutex<HashMap<String, Weak<watch::Sender<Option<u64>>>>>,
}

impl Changes {
    /// Record that `key` now has `version` (`None`: deleted), waking its waiters.
    pub fn publish(&self, key: &str, version: Option<u64>) {
        let watch = self.watched.lock().unwrap().get(key).and_then(Weak::upgrade);
        if let Some(watch) = watch {
            watch.send_if_modified(|latest| std::mem::replace(latest, version) != version);
        }
    }

    /// Wait until `key`'s version is no longer `seen`, or `timeout` passes.
    pub async fn wait(
        &self,
        storage: &Arc<dyn Storage>,
        key: &str,
        seen: Option<u64>,
        timeout: Duration,
    ) -> StorageResult<()> {
        let (watch, created) = self.watch(key);
        let mut latest = watch.subscribe();
        // Read after subscribing: a write from here on reaches `latest` (or the poller).
        let current = storage.get(key).await?.map(|e| e.version);
        self.publish(key, current);
        if created {
            tokio::spawn(poll(Arc::downgrade(&watch), storage.clone(), key.to_owned()));
        }
        if current != seen {
            return Ok(());
        }
        // A timeout, or the sender gone (impossible while we hold it): either way, done.
        let _ = tokio::time::timeout(timeout, latest.wait_for(|version| *version != seen)).await;
        Ok(())
    }

    /// The channel for `key`, and whether this call created it (and so starts its poller).
    fn watch(&self, key: &str) -> (Arc<watch::Sender<Option<u64>>>, bool) {
        let mut watched = self.watched.lock().unwrap();
        if let Some(watch) = watched.get(key).and_then(Weak::upgrade) {
            return (watch, false);
        }
        watched.retain(|_, watch| watch.strong_count() > 0);
        // The initial value is replaced by the creator's read before anyone waits on it.
        let watch = Arc::new(watch::Sender::new(None));
        watched.insert(key.to_owned(), Arc::downgrade(&watch));
        (watch, true)
    }
}

/// Read `key` every [`POLL_INTERVAL`] while anyone waits on it, publishing what changed.
async fn poll(watch: Weak<watch::Sender<Option<u64>>>, storage: Arc<dyn Storage>, key: String) {
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        if watch.strong_count() == 0 {
            return;
        }
        // An unreachable store is the waiters' timeout's business; keep polling.
        if let Ok(entry) = storage.get(&key).await {
            let version = entry.map(|e| e.version);
            let Some(watch) = watch.upgrade() else { return };
            watch.send_if_modified(|latest| std::mem::replace(latest, version) != version);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::storage::{Counted, MemoryStorage};

    fn memory() -> Arc<dyn Storage> {
        Arc::new(MemoryStorage::default())
    }

    #[tokio::test]
    async fn returns_at_once_when_the_version_already_differs() {
        let (storage, changes) = (memory(), Changes::default());
        let v1 = storage.put("k", b"1", None).await.unwrap();
        let started = Instant::now();
        changes.wait(&storage, "k", None, Duration::from_secs(5)).await.unwrap();
        changes.wait(&storage, "k", Some(v1 + 1), Duration::from_secs(5)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn an_unchanged_record_waits_for_the_timeout() {
        let (storage, changes) = (memory(), Changes::default());
        let v1 = storage.put("k", b"1", None).await.unwrap();
        let started = Instant::now();
        changes.wait(&storage, "k", Some(v1), Duration::from_millis(150)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_published_in_process_wakes_every_waiter_at_once() {
        let (storage, changes) = (memory(), Arc::new(Changes::default()));
        let v1 = storage.put("k", b"1", None).await.unwrap();
        let mut waiters = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (storage, changes) = (storage.clone(), changes.clone());
            waiters.spawn(async move { changes.wait(&storage, "k", Some(v1), Duration::from_secs(30)).await });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Only the publication (the store is unchanged, so the poller sees nothing), and
        // no time passes (the clock is paused; a poll would take 20 ms).
        let published_at = tokio::time::Instant::now();
        changes.publish("k", Some(v1 + 1));
        for result in waiters.join_all().await {
            result.unwrap();
        }
        assert_eq!(published_at.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_by_another_process_is_noticed_by_one_poller_for_all_waiters() {
        let counted = Arc::new(Counted::default());
        let (storage, changes): (Arc<dyn Storage>, _) = (counted.clone(), Arc::new(Changes::default()));
        let v1 = storage.put("k", b"1", None).await.unwrap();
        let mut waiters = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (storage, changes) = (storage.clone(), changes.clone());
            waiters.spawn(async move { changes.wait(&storage, "k", Some(v1), Duration::from_secs(30)).await });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Written behind this process's back: no publish.
        storage.put("k", b"2", Some(v1)).await.unwrap();
        let started = tokio::time::Instant::now();
        for result in waiters.join_all().await {
            result.unwrap();
        }
        assert!(started.elapsed() <= POLL_INTERVAL, "woke after {:?}", started.elapsed());
        // Each waiter's own first read, and one poll that saw the change.
        assert_eq!(counted.gets.load(std::sync::atomic::Ordering::Relaxed), 10 + 1);
        // The watch goes away with its last waiter, and its poller with it.
        tokio::time::sleep(POLL_INTERVAL * 2).await;
        assert!(changes.watched.lock().unwrap().values().all(|w| w.strong_count() == 0));
    }
}
