//! The audit trail: events kept in the vault's storage, shared by every host on it, as one
//! hash chain.
//!
//! Each entry holds its position (`seq`), the hash of the entry before it and the event,
//! stored as `HASH\nJSON` where HASH is the hex SHA-256 of the JSON bytes. The head record
//! names the last entry and its hash, and the checkpoint the chain starts from (the
//! first entry kept and the hash before it, moved by [`Trail::prune`]). An append is one
//! [`Storage::commit`]: the head, moved with compare-and-swap, and the new entries, created
//! only if absent; so hosts appending at once each get their own positions, a loser takes
//! the head again, and no crash leaves an entry without its head or a head without its
//! entries. Calls that arrive while an append is in flight go together in the next one:
//! one commit for many events.
//!
//! Entries are keyed by `u64::MAX - seq`, so storage's ascending listing reads newest
//! first; a tenant's events are also listed under an index of empty records.
//!
//! [`Trail::verify`] finds an entry edited, removed or moved, and one added behind the
//! head. Anyone who can write the store can still rewrite a chain consistently from some
//! entry on; keep [`Verification::head`] somewhere else to catch that.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::{AuditEntry, AuditPage, AuditQuery, AuditRecord, AuditSink, AuditUnavailable};
use crate::error::Error;
use crate::storage::{Entry, Storage, StorageError, Write, escape_key_part};

const ENTRY_PREFIX: &str = "audit/";
const TENANT_PREFIX: &str = "audit-tenant/";
const HEAD_KEY: &str = "audit-head";
/// The hash before the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Events in one commit at most.
const BATCH: usize = 256;
/// Records read at once, by a page of the trail or by a verification.
const READ_AHEAD: usize = 64;
/// Entries one page of [`Trail::read`] examines at most before it returns what it found.
const SCAN_LIMIT: usize = 5_000;
/// Attempts at an append whose head keeps moving before it is given up.
const ATTEMPTS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    /// The last entry, 0 before the first.
    last: u64,
    hash: String,
    /// The checkpoint: the first entry kept, and the hash of the one before it.
    first: u64,
    first_prev: String,
}

impl Head {
    fn empty() -> Self {
        Head { last: 0, hash: GENESIS.into(), first: 1, first_prev: GENESIS.into() }
    }
}

/// What is hashed and stored of an entry.
#[derive(Serialize, Deserialize)]
struct Chained {
    seq: u64,
    prev: String,
    #[serde(flatten)]
    record: AuditRecord,
}

struct Pending {
    record: AuditRecord,
    done: oneshot::Sender<Result<(), AuditUnavailable>>,
}

pub struct Trail {
    storage: Arc<dyn Storage>,
    /// Events waiting for the next append.
    pending: Mutex<Vec<Pending>>,
    /// Held by the caller appending; the head as this host last wrote it, and its version.
    head: tokio::sync::Mutex<Option<(Head, u64)>>,
}

/// What [`Trail::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Entries checked.
    pub entries: u64,
    /// The first entry kept (after pruning) and the last.
    pub first: u64,
    pub last: u64,
    /// The hash of the last entry: record it elsewhere to tell later that nobody rewrote
    /// the chain up to here.
    pub head: String,
    /// The first place the chain is broken; none when it is whole.
    pub broken: Option<Break>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// The entry where the chain breaks.
    pub entry: u64,
    pub problem: String,
}

fn entry_key(seq: u64) -> String {
    format!("{ENTRY_PREFIX}{:020}", u64::MAX - seq)
}

fn tenant_key(tenant: &str, seq: u64) -> String {
    format!("{TENANT_PREFIX}{}/{:020}", escape_key_part(tenant), u64::MAX - seq)
}

/// The position a key of the trail or of a tenant's index names.
fn seq_of(key: &str) -> Option<u64> {
    let inverted: u64 = key.rsplit('/').next()?.parse().ok()?;
    Some(u64::MAX - inverted)
}

fn encode(seq: u64, prev: &str, record: &AuditRecord) -> (String, Vec<u8>) {
    let json = serde_json::to_vec(&Chained { seq, prev: prev.to_owned(), record: record.clone() })
        .expect("an audit record serializes");
    let hash = hex::encode(Sha256::digest(&json));
    let mut stored = Vec::with_capacity(hash.len() + 1 + json.len());
    stored.extend_from_slice(hash.as_bytes());
    stored.push(b'\n');
    stored.extend_from_slice(&json);
    (hash, stored)
}

/// An entry as stored: the hash it claims, the hash of its content, and the content.
fn decode(stored: &[u8]) -> Option<(&str, String, Chained)> {
    let split = stored.iter().position(|b| *b == b'\n')?;
    let claimed = std::str::from_utf8(&stored[..split]).ok()?;
    let json = &stored[split + 1..];
    Some((claimed, hex::encode(Sha256::digest(json)), serde_json::from_slice(json).ok()?))
}

fn storage_error(err: StorageError) -> Error {
    Error::storage(err.to_string())
}

impl Trail {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Trail { storage, pending: Mutex::default(), head: tokio::sync::Mutex::default() }
    }

    /// The head as stored, and its version; an empty chain's when there is none yet.
    async fn load_head(&self) -> Result<(Head, Option<u64>), Error> {
        match self.storage.get(HEAD_KEY).await.map_err(storage_error)? {
            None => Ok((Head::empty(), None)),
            Some(Entry { value, version }) => {
                let head = serde_json::from_slice(&value)
                    .map_err(|_| Error::storage("the audit trail's head record cannot be read"))?;
                Ok((head, Some(version)))
            }
        }
    }

    /// Append `records` after the head (the cached one first, then the stored one when
    /// another host moved it).
    async fn append(&self, cached: &mut Option<(Head, u64)>, records: &[AuditRecord]) -> Result<(), AuditUnavailable> {
        let unavailable = |e: &dyn std::fmt::Display| AuditUnavailable(format!("the audit trail: {e}"));
        for _ in 0..ATTEMPTS {
            let (head, version) = match cached.take() {
                Some((head, version)) => (head, Some(version)),
                None => self.load_head().await.map_err(|e| unavailable(&e))?,
            };
            let mut next = head.clone();
            let mut writes = vec![Write::Put { key: HEAD_KEY.into(), value: Vec::new(), expected: version }];
            for record in records {
                next.last += 1;
                let (hash, stored) = encode(next.last, &next.hash, record);
                writes.push(Write::Put { key: entry_key(next.last), value: stored, expected: None });
                if let Some(tenant) = &record.tenant {
                    writes.push(Write::Put { key: tenant_key(tenant, next.last), value: Vec::new(), expected: None });
                }
                next.hash = hash;
            }
            writes[0] = Write::Put {
                key: HEAD_KEY.into(),
                value: serde_json::to_vec(&next).expect("a head serializes"),
                expected: version,
            };
            match self.storage.commit(&writes).await {
                Ok(versions) => {
                    *cached = Some((next, versions[0].expect("a put has a version")));
                    return Ok(());
                }
                Err(StorageError::Conflict) => continue, // another host appended: take its head
                Err(e) => return Err(unavailable(&e)),
            }
        }
        Err(unavailable(&"its head kept moving under other hosts' appends"))
    }

    /// Records at `keys`, read `READ_AHEAD` at a time, in order.
    async fn get_all(&self, keys: Vec<String>) -> Result<Vec<Option<Entry>>, Error> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(READ_AHEAD) {
            let mut reads = tokio::task::JoinSet::new();
            for (i, key) in chunk.iter().enumerate() {
                let (storage, key) = (self.storage.clone(), key.clone());
                reads.spawn(async move { (i, storage.get(&key).await) });
            }
            let mut got: Vec<(usize, _)> = reads.join_all().await;
            got.sort_by_key(|(i, _)| *i);
            for (_, entry) in got {
                found.push(entry.map_err(storage_error)?);
            }
        }
        Ok(found)
    }

    /// Check the chain from its checkpoint to its head; `progress` is told how many
    /// entries of how many are checked.
    pub async fn verify(&self, mut progress: impl FnMut(u64, u64)) -> Result<Verification, Error> {
        let (head, _) = self.load_head().await?;
        let total = head.last + 1 - head.first;
        let mut verification =
            Verification { entries: 0, first: head.first, last: head.last, head: head.hash.clone(), broken: None };
        let broken = |entry: u64, problem: String| Some(Break { entry, problem });
        let mut prev = head.first_prev.clone();
        let mut seq = head.first;
        while seq <= head.last {
            let end = head.last.min(seq + READ_AHEAD as u64 * 4 - 1);
            let entries = self.get_all((seq..=end).map(entry_key).collect()).await?;
            for (at, entry) in (seq..=end).zip(entries) {
                let problem = match entry.as_ref().map(|e| decode(&e.value)) {
                    None => Some("is missing: it was removed".to_owned()),
                    Some(None) => Some("cannot be read: it was edited".to_owned()),
                    Some(Some((claimed, actual, _))) if claimed != actual => {
                        Some("was edited: its content does not match its hash".to_owned())
                    }
                    Some(Some((_, _, chained))) if chained.seq != at => {
                        Some(format!("holds entry {}: entries were moved", chained.seq))
                    }
                    Some(Some((_, _, chained))) if chained.prev != prev => Some(if at == head.first {
                        "does not follow the trail's checkpoint: it or the checkpoint was rewritten".to_owned()
                    } else {
                        format!("does not follow entry {}: one of the two was rewritten", at - 1)
                    }),
                    Some(Some((_, actual, _))) => {
                        prev = actual;
                        None
                    }
                };
                if let Some(problem) = problem {
                    verification.broken = broken(at, problem);
                    return Ok(verification);
                }
                verification.entries += 1;
            }
            progress(verification.entries, total);
            seq = end + 1;
        }
        if prev != head.hash {
            verification.broken = broken(head.last, "does not match the trail's head: the head was rewritten".into());
        } else if self.storage.get(&entry_key(head.last + 1)).await.map_err(storage_error)?.is_some() {
            verification.broken = broken(head.last + 1, "lies beyond the trail's head: it was added behind it".into());
        }
        Ok(verification)
    }

    /// Delete the entries older than `before_ms` from the start of the chain, a page at a
    /// time, moving the checkpoint past them so that what is kept still verifies. Returns
    /// how many were deleted.
    pub async fn prune(&self, before_ms: u64) -> Result<u64, Error> {
        let mut pruned = 0;
        loop {
            let (head, Some(version)) = self.load_head().await? else { return Ok(pruned) };
            if head.first > head.last {
                return Ok(pruned);
            }
            let end = head.last.min(head.first + BATCH as u64 - 1);
            let entries = self.get_all((head.first..=end).map(entry_key).collect()).await?;
            let mut next = head.clone();
            let mut writes = vec![];
            let mut tenants = vec![];
            for (seq, entry) in (head.first..=end).zip(entries) {
                let Some(entry) = entry else { break };
                let Some((_, hash, chained)) = decode(&entry.value) else { break };
                if chained.record.at_ms >= before_ms {
                    break;
                }
                writes.push(Write::Delete { key: entry_key(seq), expected: entry.version });
                if let Some(tenant) = &chained.record.tenant {
                    tenants.push(tenant_key(tenant, seq));
                }
                (next.first, next.first_prev) = (seq + 1, hash);
            }
            if writes.is_empty() {
                return Ok(pruned);
            }
            let removed = writes.len() as u64;
            for (key, entry) in tenants.iter().zip(self.get_all(tenants.clone()).await?) {
                if let Some(entry) = entry {
                    writes.push(Write::Delete { key: key.clone(), expected: entry.version });
                }
            }
            let head_write = Write::Put {
                key: HEAD_KEY.into(),
                value: serde_json::to_vec(&next).expect("a head serializes"),
                expected: Some(version),
            };
            writes.insert(0, head_write);
            match self.storage.commit(&writes).await {
                Ok(_) => pruned += removed,
                Err(StorageError::Conflict) => {} // an append moved the head: read it again
                Err(e) => return Err(storage_error(e)),
            }
        }
    }
}

#[async_trait::async_trait]
impl AuditSink for Trail {
    async fn record(&self, record: &AuditRecord) -> Result<(), AuditUnavailable> {
        let (done, mut outcome) = oneshot::channel();
        self.pending.lock().unwrap().push(Pending { record: record.clone(), done });
        let mut head = self.head.lock().await;
        loop {
            // Whoever appended before took this event and answered it, or it still waits.
            match outcome.try_recv() {
                Ok(appended) => return appended,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(AuditUnavailable("the audit trail's append was abandoned".into()));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let (records, waiting): (Vec<AuditRecord>, Vec<_>) = {
                let mut pending = self.pending.lock().unwrap();
                let n = pending.len().min(BATCH);
                pending.drain(..n).map(|p| (p.record, p.done)).unzip()
            };
            let appended = self.append(&mut head, &records).await;
            for done in waiting {
                let _ = done.send(appended.clone());
            }
        }
    }

    fn describe(&self) -> String {
        format!("the trail in {}", self.storage.describe())
    }

    async fn read(&self, query: &AuditQuery) -> Result<Option<AuditPage>, Error> {
        let prefix = match &query.filter.tenant {
            Some(tenant) => format!("{TENANT_PREFIX}{}/", escape_key_part(tenant)),
            None => ENTRY_PREFIX.to_owned(),
        };
        if query.cursor.as_deref().is_some_and(|c| !c.starts_with(&prefix) || seq_of(c).is_none()) {
            return Err(Error::invalid_input("cursor is not one this query gave"));
        }
        let mut page = AuditPage { events: Vec::new(), cursor: query.cursor.clone() };
        let mut scanned = 0;
        loop {
            let keys =
                self.storage.list(&prefix, page.cursor.as_deref(), READ_AHEAD as u32).await.map_err(storage_error)?;
            let seqs: Vec<u64> = keys.keys.iter().filter_map(|k| seq_of(k)).collect();
            let entries = self.get_all(seqs.iter().copied().map(entry_key).collect()).await?;
            for ((key, seq), entry) in keys.keys.iter().zip(seqs).zip(entries) {
                page.cursor = Some(key.clone());
                scanned += 1;
                // Gone since it was listed (pruned), or unreadable: `verify` reports that.
                let Some((_, _, chained)) = entry.as_ref().and_then(|e| decode(&e.value)) else { continue };
                if query.after_ms.is_some_and(|after| chained.record.at_ms <= after) {
                    page.cursor = None;
                    return Ok(Some(page));
                }
                if query.filter.matches(&chained.record) {
                    page.events.push(AuditEntry { id: seq, record: chained.record });
                    if page.events.len() >= query.limit {
                        return Ok(Some(page));
                    }
                }
            }
            if keys.cursor.is_none() {
                page.cursor = None;
                return Ok(Some(page));
            }
            if scanned >= SCAN_LIMIT {
                return Ok(Some(page));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemoryStorage, UNCACHED_PREFIX};

    #[test]
    fn every_key_of_the_trail_is_one_no_cache_keeps() {
        for key in [entry_key(1), tenant_key("acme", 1), HEAD_KEY.into()] {
            assert!(key.starts_with(UNCACHED_PREFIX), "{key}");
        }
    }

    fn event(at_ms: u64, tenant: Option<&str>, action: &str) -> AuditRecord {
        AuditRecord {
            at_ms,
            action: action.into(),
            outcome: "ok".into(),
            tenant: tenant.map(String::from),
            user: Some("alice".into()),
            provider: Some("github".into()),
            name: Some("default".into()),
            actor: Some("api-key:k1".into()),
        }
    }

    fn query(tenant: Option<&str>, limit: usize) -> AuditQuery {
        AuditQuery {
            filter: super::super::AuditFilter { tenant: tenant.map(String::from), ..Default::default() },
            after_ms: None,
            cursor: None,
            limit,
        }
    }

    async fn ids(trail: &Trail, query: &AuditQuery) -> (Vec<u64>, Option<String>) {
        let page = trail.read(query).await.unwrap().unwrap();
        (page.events.iter().map(|e| e.id).collect(), page.cursor)
    }

    #[tokio::test]
    async fn concurrent_events_are_chained_once_each_and_read_back_newest_first() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
        let trail = Arc::new(Trail::new(storage.clone()));
        let mut callers = tokio::task::JoinSet::new();
        for i in 0..200 {
            let trail = trail.clone();
            let tenant = if i % 4 == 0 { "globex" } else { "acme" };
            callers.spawn(async move { trail.record(&event(i, Some(tenant), "token-get")).await });
        }
        callers.join_all().await.into_iter().for_each(|r| r.unwrap());
        // A second host on the same store appends after the first one's entries.
        let other = Trail::new(storage.clone());
        other.record(&event(500, None, "provider-put")).await.unwrap();
        trail.record(&event(501, Some("acme"), "token-refresh")).await.unwrap();

        let verified = trail.verify(|_, _| {}).await.unwrap();
        assert_eq!((verified.entries, verified.first, verified.last, verified.broken), (202, 1, 202, None));

        let (newest, cursor) = ids(&trail, &query(None, 3)).await;
        assert_eq!(newest, [202, 201, 200]);
        let next = AuditQuery { cursor, ..query(None, 3) };
        assert_eq!(ids(&trail, &next).await.0, [199, 198, 197]);
        let globex = trail.read(&query(Some("globex"), 100)).await.unwrap().unwrap();
        assert_eq!(globex.events.len(), 50);
        assert!(globex.events.iter().all(|e| e.record.tenant.as_deref() == Some("globex")));
        assert_eq!(globex.cursor, None);
        let acme = trail.read(&query(Some("acme"), 1)).await.unwrap().unwrap();
        assert_eq!(acme.events[0].record, event(501, Some("acme"), "token-refresh"));
        let since = AuditQuery { after_ms: Some(499), ..query(None, 100) };
        assert_eq!(ids(&trail, &since).await, (vec![202, 201], None));
        let foreign = AuditQuery { cursor: Some(entry_key(10)), ..query(Some("acme"), 10) };
        assert!(trail.read(&foreign).await.is_err(), "a cursor of another scope");
    }

    /// Rewrite the stored bytes of entry `seq` with `edit`, as someone with the database would.
    async fn tamper(storage: &dyn Storage, seq: u64, edit: impl FnOnce(Vec<u8>) -> Option<Vec<u8>>) {
        let entry = storage.get(&entry_key(seq)).await.unwrap().unwrap();
        match edit(entry.value) {
            Some(value) => storage.put(&entry_key(seq), &value, Some(entry.version)).await.map(drop).unwrap(),
            None => storage.delete(&entry_key(seq), entry.version).await.unwrap(),
        }
    }

    async fn trail_of(n: u64) -> (Arc<dyn Storage>, Trail) {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
        let trail = Trail::new(storage.clone());
        for i in 1..=n {
            trail.record(&event(i, Some("acme"), "token-get")).await.unwrap();
        }
        (storage, trail)
    }

    async fn broken_at(trail: &Trail) -> Option<(u64, String)> {
        trail.verify(|_, _| {}).await.unwrap().broken.map(|b| (b.entry, b.problem))
    }

    #[tokio::test]
    async fn an_edited_removed_moved_or_added_entry_is_named() {
        let (storage, trail) = trail_of(10).await;
        let swap = |value: Vec<u8>, from: &str, to: &str| String::from_utf8(value).unwrap().replace(from, to);
        tamper(&*storage, 4, |v| Some(swap(v, "token-get", "token-put").into_bytes())).await;
        let (entry, problem) = broken_at(&trail).await.unwrap();
        assert_eq!(entry, 4);
        assert!(problem.contains("edited"), "{problem}");

        // Edited and hashed again: the next entry no longer follows it.
        let (storage, trail) = trail_of(10).await;
        let entry = storage.get(&entry_key(4)).await.unwrap().unwrap();
        let (_, _, mut chained) = decode(&entry.value).unwrap();
        chained.record.user = Some("mallory".into());
        let (_, rehashed) = encode(4, &chained.prev, &chained.record);
        tamper(&*storage, 4, |_| Some(rehashed)).await;
        let (entry, problem) = broken_at(&trail).await.unwrap();
        assert_eq!(entry, 5);
        assert!(problem.contains("does not follow entry 4"), "{problem}");

        let (storage, trail) = trail_of(10).await;
        tamper(&*storage, 7, |_| None).await;
        assert_eq!(broken_at(&trail).await.unwrap(), (7, "is missing: it was removed".into()));

        // Entries 3 and 6 trade places.
        let (storage, trail) = trail_of(10).await;
        let three = storage.get(&entry_key(3)).await.unwrap().unwrap().value;
        let six = storage.get(&entry_key(6)).await.unwrap().unwrap().value;
        tamper(&*storage, 3, |_| Some(six)).await;
        tamper(&*storage, 6, |_| Some(three)).await;
        assert_eq!(broken_at(&trail).await.unwrap(), (3, "holds entry 6: entries were moved".into()));

        let (storage, trail) = trail_of(10).await;
        let ten = storage.get(&entry_key(10)).await.unwrap().unwrap().value;
        let (hash, _, chained) = decode(&ten).unwrap();
        let (_, eleventh) = encode(11, hash, &chained.record);
        storage.put(&entry_key(11), &eleventh, None).await.unwrap();
        assert_eq!(broken_at(&trail).await.unwrap().0, 11);

        // The last entry removed: the head still names it.
        let (storage, trail) = trail_of(10).await;
        tamper(&*storage, 10, |_| None).await;
        assert_eq!(broken_at(&trail).await.unwrap().0, 10);
    }

    #[tokio::test]
    async fn pruning_keeps_the_rest_verifiable_from_its_checkpoint() {
        let (storage, trail) = trail_of(600).await;
        trail.record(&event(700, None, "provider-put")).await.unwrap();
        assert_eq!(trail.prune(301).await.unwrap(), 300);
        let verified = trail.verify(|_, _| {}).await.unwrap();
        assert_eq!((verified.first, verified.last, verified.entries, verified.broken), (301, 601, 301, None));
        assert_eq!(storage.get(&entry_key(300)).await.unwrap(), None);
        assert_eq!(storage.get(&tenant_key("acme", 300)).await.unwrap(), None, "its index entry went with it");
        let acme = trail.read(&query(Some("acme"), 1000)).await.unwrap().unwrap();
        assert_eq!(acme.events.len(), 300);
        // Appends carry on after a prune, and a prune of nothing old deletes nothing.
        trail.record(&event(800, Some("acme"), "token-get")).await.unwrap();
        assert_eq!(trail.prune(301).await.unwrap(), 0);
        assert_eq!(trail.verify(|_, _| {}).await.unwrap().broken, None);
        // The checkpoint is part of what is checked.
        tamper(&*storage, 301, |v| Some(String::from_utf8(v).unwrap().replace("alice", "bob").into_bytes())).await;
        assert_eq!(broken_at(&trail).await.unwrap().0, 301);
    }

    /// One change to the stored trail, made the way someone with the database would.
    #[derive(Debug, Clone)]
    enum Change {
        /// An entry's content changed, its hash not.
        Edit(u64),
        /// An entry's content changed and hashed again.
        Rehash(u64),
        Remove(u64),
        /// Two entries' places traded.
        Swap(u64, u64),
    }

    fn change() -> impl proptest::strategy::Strategy<Value = (u64, Change)> {
        use proptest::prelude::*;
        (2u64..40).prop_flat_map(|n| {
            let change = prop_oneof![
                (1..=n).prop_map(Change::Edit),
                (1..n).prop_map(Change::Rehash),
                (1..=n).prop_map(Change::Remove),
                (1..=n, 1..=n)
                    .prop_filter("two places", |(a, b)| a != b)
                    .prop_map(|(a, b)| Change::Swap(a.min(b), a.max(b))),
            ];
            (Just(n), change)
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Whatever one change is made to a trail of any length, verify finds it, at the
        /// entry it hit (an entry hashed again: at the one after it).
        #[test]
        fn any_one_change_is_found_where_it_was_made((n, change) in change()) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let found = runtime.block_on(async {
                let (storage, trail) = trail_of(n).await;
                let edit = |v: Vec<u8>| Some(String::from_utf8(v).unwrap().replace("alice", "mallory").into_bytes());
                let expected = match change {
                    Change::Edit(k) => {
                        tamper(&*storage, k, edit).await;
                        k
                    }
                    Change::Rehash(k) => {
                        let entry = storage.get(&entry_key(k)).await.unwrap().unwrap();
                        let (_, _, mut chained) = decode(&entry.value).unwrap();
                        chained.record.user = Some("mallory".into());
                        let (_, rehashed) = encode(k, &chained.prev, &chained.record);
                        tamper(&*storage, k, |_| Some(rehashed)).await;
                        k + 1
                    }
                    Change::Remove(k) => {
                        tamper(&*storage, k, |_| None).await;
                        k
                    }
                    Change::Swap(a, b) => {
                        let (va, vb) = (storage.get(&entry_key(a)).await.unwrap().unwrap().value, storage.get(&entry_key(b)).await.unwrap().unwrap().value);
                        tamper(&*storage, a, |_| Some(vb)).await;
                        tamper(&*storage, b, |_| Some(va)).await;
                        a
                    }
                };
                (broken_at(&trail).await.map(|(entry, _)| entry), expected)
            });
            proptest::prop_assert_eq!(found.0, Some(found.1));
        }
    }
}
