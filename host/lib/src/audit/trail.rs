//! The audit trail: events kept in the vault's storage, shared by every host on it, as one
//! hash chain.
//!
//! Each entry holds its position (`seq`), the hash of the entry before it and the event,
//! stored as `HASH\nJSON` where HASH is the hex SHA-256 of the JSON bytes. An append stores
//! its entries together in one row, keyed by the last one's position, as consecutive
//! entries joined by `\n` (one entry per row is the same format). The head record names
//! the last entry and its hash, and the checkpoint the chain starts from (the first entry
//! kept and the hash before it, moved by [`Trail::prune`]). An append is one
//! [`Storage::commit`]: the head, moved with compare-and-swap, and the new row, created
//! only if absent; so hosts appending at once each get their own positions, a loser takes
//! the head again, and no crash leaves a row without its head or a head without its row.
//! A task of its own appends, one commit after another while events wait: those that
//! arrive while an append is in flight go together in the next one (one commit, and one
//! row, for many events), and each call waits only for the commit that holds its event.
//!
//! Rows are keyed by `u64::MAX - last`, so storage's ascending listing reads newest first;
//! a row holding a tenant's events is also listed under that tenant's index, as an empty
//! record with the same position.
//!
//! [`Trail::verify`] finds an entry edited, removed or moved, and one added behind the
//! head. Anyone who can write the store can still rewrite a chain consistently from some
//! entry on; keep [`Verification::head`] somewhere else to catch that.

use std::collections::BTreeSet;
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
/// Events in one append, and so in one row, at most.
const BATCH: usize = 256;
/// Records read at once, by a page of the trail or by a verification.
const READ_AHEAD: usize = 64;
/// Entries one page of [`Trail::read`] examines at most before it returns what it found.
const SCAN_LIMIT: usize = 5_000;
/// Attempts at an append whose head keeps moving before it is given up.
const ATTEMPTS: usize = 100;
/// Between a page of the trail's cursor and the position it stopped at within its row.
const WITHIN_ROW: char = '@';

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

/// An entry as read from its row: the hash it claims, the hash of its content, and the
/// content; none when it cannot be read.
type Decoded<'a> = Option<(&'a str, String, Chained)>;

/// A row as read: the position of its last entry, and the entries it holds, oldest first.
struct Row<'a> {
    last: u64,
    entries: Vec<Decoded<'a>>,
}

impl<'a> Row<'a> {
    fn decode(last: u64, stored: &'a [u8]) -> Self {
        let lines: Vec<&[u8]> = stored.split(|b| *b == b'\n').collect();
        let entries = lines
            .chunks(2)
            .map(|entry| match entry {
                [claimed, json] => Some((
                    std::str::from_utf8(claimed).ok()?,
                    hex::encode(Sha256::digest(json)),
                    serde_json::from_slice(json).ok()?,
                )),
                _ => None,
            })
            .collect();
        Row { last, entries }
    }

    /// The position of its entry `index`: counted back from the row's key, so entries cut
    /// from a row leave the positions before them empty; none before position 0.
    fn position(&self, index: usize) -> Option<u64> {
        (self.last + 1 + index as u64).checked_sub(self.entries.len() as u64)
    }

    /// Its entries from position `from`, the first its row should hold, on, each with its
    /// [`Row::position`] (none for a position whose entry is missing); none at all when it
    /// holds an entry for a position before `from`, which an earlier row holds: an entry
    /// was added to it.
    fn from(self, from: u64) -> Option<impl Iterator<Item = (u64, Option<Decoded<'a>>)>> {
        if self.position(0).is_none_or(|at| at < from) {
            return None;
        }
        let (end, held) = (self.last + 1, self.entries.len() as u64);
        let mut entries = self.entries.into_iter();
        Some((from..end).map(move |at| (at, if at + held < end { None } else { entries.next() })))
    }
}

struct Pending {
    record: AuditRecord,
    done: oneshot::Sender<Result<(), AuditUnavailable>>,
}

/// Events waiting for an append, and whether a task is appending them.
#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    appending: bool,
}

/// What the appending task shares with the callers whose events it appends.
struct Appends {
    storage: Arc<dyn Storage>,
    queue: Mutex<Queue>,
    /// The head as this host last wrote it, and its version: the next append's guess.
    head: Mutex<Option<(Head, u64)>>,
}

pub struct Trail {
    /// The storage (`appends.storage`), and the appending task's share.
    appends: Arc<Appends>,
}

/// Owned by the appending task's future from the moment it is made: if that future is
/// dropped unfinished, even before its first poll (its runtime stopping, or a panic), the
/// events still waiting are answered as abandoned, and the next event starts a new task.
struct Draining {
    appends: Arc<Appends>,
    finished: bool,
}

impl Draining {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        if !self.finished {
            let mut queue = self.appends.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.pending.clear();
            queue.appending = false;
        }
    }
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

/// The key of the row whose last entry is at `seq`.
fn entry_key(seq: u64) -> String {
    format!("{ENTRY_PREFIX}{:020}", u64::MAX - seq)
}

/// The key that lists the row ending at `seq` under `tenant`'s index.
fn tenant_key(tenant: &str, seq: u64) -> String {
    format!("{TENANT_PREFIX}{}/{:020}", escape_key_part(tenant), u64::MAX - seq)
}

/// The position a key of the trail or of a tenant's index names.
fn seq_of(key: &str) -> Option<u64> {
    let inverted: u64 = key.rsplit('/').next()?.parse().ok()?;
    Some(u64::MAX - inverted)
}

/// An entry as stored, and its hash.
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

fn storage_error(err: StorageError) -> Error {
    Error::storage(err.to_string())
}

/// Where a page of [`Trail::read`] goes on: after the row at a key, or within it, below
/// a position.
fn cursor(key: &str, below: Option<u64>) -> String {
    match below {
        Some(seq) => format!("{key}{WITHIN_ROW}{seq}"),
        None => key.to_owned(),
    }
}

/// The head as stored, and its version; an empty chain's when there is none yet.
async fn load_head(storage: &dyn Storage) -> Result<(Head, Option<u64>), Error> {
    match storage.get(HEAD_KEY).await.map_err(storage_error)? {
        None => Ok((Head::empty(), None)),
        Some(Entry { value, version }) => {
            let head = serde_json::from_slice(&value)
                .map_err(|_| Error::storage("the audit trail's head record cannot be read"))?;
            Ok((head, Some(version)))
        }
    }
}

impl Appends {
    /// Append what waits, a batch at a time, until nothing does: the future of a task of
    /// its own, started by the event that found none running.
    fn drain(self: Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let mut task = Draining { appends: self, finished: false };
        async move {
            let appends = &task.appends;
            let mut cached = appends.head.lock().unwrap().take();
            loop {
                let batch: Vec<Pending> = {
                    let mut queue = appends.queue.lock().unwrap();
                    if queue.pending.is_empty() {
                        // The head goes back before another task may start and look for it.
                        *appends.head.lock().unwrap() = cached;
                        queue.appending = false;
                        break;
                    }
                    let n = queue.pending.len().min(BATCH);
                    queue.pending.drain(..n).collect()
                };
                let (records, waiting): (Vec<AuditRecord>, Vec<_>) =
                    batch.into_iter().map(|p| (p.record, p.done)).unzip();
                let appended = appends.append(&mut cached, &records).await;
                for done in waiting {
                    let _ = done.send(appended.clone());
                }
            }
            task.finish();
        }
    }

    /// Append `records` after the head (the cached one first, then the stored one when
    /// another host moved it).
    async fn append(&self, cached: &mut Option<(Head, u64)>, records: &[AuditRecord]) -> Result<(), AuditUnavailable> {
        let unavailable = |e: &dyn std::fmt::Display| AuditUnavailable(format!("the audit trail: {e}"));
        for _ in 0..ATTEMPTS {
            let (head, version) = match cached.take() {
                Some((head, version)) => (head, Some(version)),
                None => load_head(&*self.storage).await.map_err(|e| unavailable(&e))?,
            };
            let mut next = head.clone();
            let mut row = Vec::new();
            let mut tenants = BTreeSet::new();
            for record in records {
                next.last += 1;
                let (hash, stored) = encode(next.last, &next.hash, record);
                if !row.is_empty() {
                    row.push(b'\n');
                }
                row.extend_from_slice(&stored);
                tenants.extend(record.tenant.as_deref());
                next.hash = hash;
            }
            let mut writes = vec![
                Write::Put {
                    key: HEAD_KEY.into(),
                    value: serde_json::to_vec(&next).expect("a head serializes"),
                    expected: version,
                },
                Write::Put { key: entry_key(next.last), value: row, expected: None },
            ];
            writes.extend(tenants.into_iter().map(|tenant| Write::Put {
                key: tenant_key(tenant, next.last),
                value: Vec::new(),
                expected: None,
            }));
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
}

impl Trail {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Trail { appends: Arc::new(Appends { storage, queue: Mutex::default(), head: Mutex::default() }) }
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        &self.appends.storage
    }

    /// Records at `keys`, read `READ_AHEAD` at a time, in order.
    async fn get_all(&self, keys: Vec<String>) -> Result<Vec<Option<Entry>>, Error> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(READ_AHEAD) {
            let mut reads = tokio::task::JoinSet::new();
            for (i, key) in chunk.iter().enumerate() {
                let (storage, key) = (self.storage().clone(), key.clone());
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

    /// The rows whose last entry lies in `from..=to`, oldest first, each with its position.
    async fn rows_ending_within(&self, from: u64, to: u64) -> Result<Vec<(u64, Entry)>, Error> {
        // Ascending keys are descending positions: list from the key after `to`'s.
        let mut listed = Vec::new();
        let mut after = entry_key(to.saturating_add(1));
        'listing: loop {
            let page =
                self.storage().list(ENTRY_PREFIX, Some(&after), READ_AHEAD as u32).await.map_err(storage_error)?;
            for key in &page.keys {
                match seq_of(key) {
                    Some(seq) if seq < from => break 'listing,
                    Some(seq) => listed.push((seq, key.clone())),
                    None => {} // not a row's key: `verify` finds the positions it lacks
                }
            }
            match page.cursor {
                Some(cursor) => after = cursor,
                None => break,
            }
        }
        let (seqs, keys): (Vec<u64>, Vec<String>) = listed.into_iter().rev().unzip();
        let rows = self.get_all(keys).await?;
        // A row gone since it was listed was pruned: it is not the chain's any more.
        Ok(seqs.into_iter().zip(rows).filter_map(|(seq, row)| Some((seq, row?))).collect())
    }

    /// Check the chain from its checkpoint to its head; `progress` is told how many
    /// entries of how many are checked.
    pub async fn verify(&self, mut progress: impl FnMut(u64, u64)) -> Result<Verification, Error> {
        let (head, _) = load_head(&**self.storage()).await?;
        let total = head.last + 1 - head.first;
        let mut verification =
            Verification { entries: 0, first: head.first, last: head.last, head: head.hash.clone(), broken: None };
        let broken = |entry: u64, problem: String| Some(Break { entry, problem });
        let mut prev = head.first_prev.clone();
        let mut seq = head.first;
        while seq <= head.last {
            // A row holds one append, `BATCH` entries at most: one ends in this window.
            let rows = self.rows_ending_within(seq, head.last.min(seq + BATCH as u64 - 1)).await?;
            if rows.is_empty() {
                verification.broken = broken(seq, "is missing: it was removed".into());
                return Ok(verification);
            }
            for (last, row) in &rows {
                let Some(entries) = Row::decode(*last, &row.value).from(seq) else {
                    verification.broken = broken(seq, "shares its row with an entry added to it".into());
                    return Ok(verification);
                };
                for (at, entry) in entries {
                    let problem = match entry {
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
                seq = last + 1;
            }
            progress(verification.entries, total);
        }
        if prev != head.hash {
            verification.broken = broken(head.last, "does not match the trail's head: the head was rewritten".into());
            return Ok(verification);
        }
        let newest = self.storage().list(ENTRY_PREFIX, None, 1).await.map_err(storage_error)?;
        if newest.keys.first().and_then(|key| seq_of(key)).is_some_and(|seq| seq > head.last) {
            verification.broken = broken(head.last + 1, "lies beyond the trail's head: it was added behind it".into());
        }
        Ok(verification)
    }

    /// Delete the entries older than `before_ms` from the start of the chain, a page at a
    /// time (whole rows: an append's events are as old as each other), moving the
    /// checkpoint past them so that what is kept still verifies. Returns how many were
    /// deleted.
    pub async fn prune(&self, before_ms: u64) -> Result<u64, Error> {
        let mut pruned = 0;
        loop {
            let (head, Some(version)) = load_head(&**self.storage()).await? else { return Ok(pruned) };
            if head.first > head.last {
                return Ok(pruned);
            }
            let rows = self.rows_ending_within(head.first, head.last.min(head.first + BATCH as u64 - 1)).await?;
            let mut next = head.clone();
            let mut writes = vec![];
            let mut tenants = vec![];
            let mut removed = 0;
            'rows: for (last, row) in &rows {
                let mut old = BTreeSet::new();
                let mut hash = None;
                // A broken row stays, for `verify` to report.
                let Some(entries) = Row::decode(*last, &row.value).from(next.first) else { break 'rows };
                for (_, entry) in entries {
                    let Some(Some((_, actual, chained))) = entry else { break 'rows };
                    if chained.record.at_ms >= before_ms {
                        break 'rows;
                    }
                    old.extend(chained.record.tenant);
                    hash = Some(actual);
                }
                writes.push(Write::Delete { key: entry_key(*last), expected: row.version });
                tenants.extend(old.into_iter().map(|tenant| tenant_key(&tenant, *last)));
                removed += last + 1 - next.first;
                (next.first, next.first_prev) = (last + 1, hash.unwrap_or(next.first_prev));
            }
            if writes.is_empty() {
                return Ok(pruned);
            }
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
            match self.storage().commit(&writes).await {
                Ok(_) => pruned += removed,
                Err(StorageError::Conflict) => {} // an append moved the head: read it again
                Err(e) => return Err(storage_error(e)),
            }
        }
    }
}

/// Where a page stands while [`Trail::read`] fills it.
struct Reading<'q> {
    query: &'q AuditQuery,
    page: AuditPage,
    scanned: usize,
}

impl Reading<'_> {
    /// Take the events of the row listed at `key` (below position `below`, if given),
    /// newest first; true once the page is complete.
    fn take(&mut self, key: &str, row: &Row, below: Option<u64>) -> bool {
        for (i, entry) in row.entries.iter().enumerate().rev() {
            let Some(at) = row.position(i) else { break };
            if below.is_some_and(|below| at >= below) {
                continue;
            }
            self.scanned += 1;
            // Unreadable: `verify` reports that.
            let Some((_, _, chained)) = entry else { continue };
            if self.query.after_ms.is_some_and(|after| chained.record.at_ms <= after) {
                self.page.cursor = None;
                return true;
            }
            if self.query.filter.matches(&chained.record) {
                self.page.events.push(AuditEntry { id: at, record: chained.record.clone() });
                if self.page.events.len() >= self.query.limit {
                    self.page.cursor = Some(cursor(key, (i > 0).then_some(at)));
                    return true;
                }
            }
        }
        self.page.cursor = Some(key.to_owned());
        false
    }
}

#[async_trait::async_trait]
impl AuditSink for Trail {
    async fn record(&self, record: &AuditRecord) -> Result<(), AuditUnavailable> {
        let (done, outcome) = oneshot::channel();
        let start = {
            let mut queue = self.appends.queue.lock().unwrap();
            queue.pending.push(Pending { record: record.clone(), done });
            !std::mem::replace(&mut queue.appending, true)
        };
        if start {
            tokio::spawn(self.appends.clone().drain());
        }
        outcome.await.unwrap_or_else(|_| Err(AuditUnavailable("the audit trail's append was abandoned".into())))
    }

    fn describe(&self) -> String {
        format!("the trail in {}", self.storage().describe())
    }

    async fn read(&self, query: &AuditQuery) -> Result<Option<AuditPage>, Error> {
        let prefix = match &query.filter.tenant {
            Some(tenant) => format!("{TENANT_PREFIX}{}/", escape_key_part(tenant)),
            None => ENTRY_PREFIX.to_owned(),
        };
        // A cursor is the key of the row the last page ended in, and where within it.
        let (after, below) = match query.cursor.as_deref() {
            None => (None, None),
            Some(cursor) => {
                let (key, below) = match cursor.rsplit_once(WITHIN_ROW) {
                    Some((key, below)) if below.bytes().all(|b| b.is_ascii_digit()) => (key, Some(below)),
                    _ => (cursor, None),
                };
                let below = below.map(str::parse::<u64>).transpose().ok().flatten();
                if !key.starts_with(&prefix) || seq_of(key).is_none() || (below.is_none() && key != cursor) {
                    return Err(Error::invalid_input("cursor is not one this query gave"));
                }
                (Some(key.to_owned()), below)
            }
        };
        let mut reading = Reading { query, page: AuditPage { events: Vec::new(), cursor: None }, scanned: 0 };
        let row_of = |key: &str| entry_key(seq_of(key).expect("a listed key names a position"));
        if let (Some(key), Some(below)) = (&after, below) {
            // The rest of the row the last page stopped within.
            if let Some(row) = self.storage().get(&row_of(key)).await.map_err(storage_error)? {
                let row = Row::decode(seq_of(key).expect("checked above"), &row.value);
                if reading.take(key, &row, Some(below)) {
                    return Ok(Some(reading.page));
                }
            }
        }
        let mut after = after;
        loop {
            let keys =
                self.storage().list(&prefix, after.as_deref(), READ_AHEAD as u32).await.map_err(storage_error)?;
            let listed: Vec<(&String, u64)> = keys.keys.iter().filter_map(|k| Some((k, seq_of(k)?))).collect();
            let rows = self.get_all(listed.iter().map(|(key, _)| row_of(key)).collect()).await?;
            for ((key, seq), row) in listed.into_iter().zip(rows) {
                // Gone since it was listed: pruned.
                let Some(row) = row else { continue };
                if reading.take(key, &Row::decode(seq, &row.value), None) {
                    return Ok(Some(reading.page));
                }
            }
            if keys.cursor.is_none() {
                reading.page.cursor = None;
                return Ok(Some(reading.page));
            }
            if reading.scanned >= SCAN_LIMIT {
                return Ok(Some(reading.page));
            }
            after = keys.cursor;
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

    /// The one entry of a row that holds one.
    fn decode(stored: &[u8]) -> Decoded<'_> {
        Row::decode(0, stored).entries.into_iter().next().flatten()
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
        let rows = storage.list(ENTRY_PREFIX, None, 300).await.unwrap().keys.len();
        assert!(rows < 10, "events that waited together went in one row: {rows} rows");

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

    #[test]
    fn an_append_its_runtime_dropped_leaves_the_trail_appendable() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
        let trail = Trail::new(storage);
        let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let first = runtime();
        // The caller gives up at once: the appending task it started has not run yet, and
        // goes with its runtime.
        let dropped = event(1, Some("acme"), "token-get");
        first.block_on(async {
            let mut record = std::pin::pin!(trail.record(&dropped));
            let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(record.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "not appended yet");
        });
        drop(first);
        runtime().block_on(async {
            let second = event(2, None, "token-get");
            let appended = tokio::time::timeout(std::time::Duration::from_secs(10), trail.record(&second));
            appended.await.expect("a new task appends").unwrap();
            let verified = trail.verify(|_, _| {}).await.unwrap();
            assert_eq!((verified.entries, verified.broken), (1, None));
        });
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

    /// A trail of one append per size in `sizes`, each that many events (at 1 ms, 2 ms, …;
    /// the even ones acme's, the odd ones globex's), so each a row of that many entries.
    async fn trail_of_rows(sizes: &[usize]) -> (Arc<dyn Storage>, Trail) {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
        let trail = Trail::new(storage.clone());
        let mut at = 0;
        for &size in sizes {
            let records: Vec<AuditRecord> = (0..size)
                .map(|_| {
                    at += 1;
                    event(at, Some(if at % 2 == 0 { "acme" } else { "globex" }), "token-get")
                })
                .collect();
            let mut head = trail.appends.head.lock().unwrap().take();
            trail.appends.append(&mut head, &records).await.unwrap();
            *trail.appends.head.lock().unwrap() = head;
        }
        (storage, trail)
    }

    /// `edit` applied to the JSON of the `index`th entry of a row, as stored.
    fn edit_entry(row: Vec<u8>, index: usize, edit: impl FnOnce(&str) -> String) -> Vec<u8> {
        let mut lines: Vec<String> = String::from_utf8(row).unwrap().split('\n').map(String::from).collect();
        lines[index * 2 + 1] = edit(&lines[index * 2 + 1]);
        lines.join("\n").into_bytes()
    }

    async fn listed(storage: &dyn Storage, prefix: &str) -> Vec<u64> {
        storage.list(prefix, None, 100).await.unwrap().keys.iter().filter_map(|k| seq_of(k)).collect()
    }

    #[tokio::test]
    async fn an_append_is_one_row_listed_once_under_each_of_its_tenants() {
        let (storage, trail) = trail_of_rows(&[3, 4, 2]).await;
        assert_eq!(listed(&*storage, ENTRY_PREFIX).await, [9, 7, 3]);
        assert_eq!(listed(&*storage, "audit-tenant/acme/").await, [9, 7, 3]);
        let verified = trail.verify(|_, _| {}).await.unwrap();
        assert_eq!((verified.entries, verified.broken), (9, None));

        // Pages end within rows and go on from there.
        let (mut pages, mut cursor) = (vec![], None);
        loop {
            let page = trail.read(&AuditQuery { cursor, ..query(None, 2) }).await.unwrap().unwrap();
            pages.push(page.events.iter().map(|e| e.id).collect::<Vec<_>>());
            cursor = page.cursor;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(pages, [vec![9, 8], vec![7, 6], vec![5, 4], vec![3, 2], vec![1]]);
        let (mut acme, mut cursor) = (vec![], None);
        loop {
            let page = trail.read(&AuditQuery { cursor, ..query(Some("acme"), 1) }).await.unwrap().unwrap();
            acme.extend(page.events.iter().map(|e| (e.id, e.record.tenant.clone().unwrap())));
            cursor = page.cursor;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(acme, [8, 6, 4, 2].map(|id| (id, "acme".to_owned())));
        for bad in ["audit/x", "audit/00000000000000000001@", "audit/00000000000000000001@x", "elsewhere/1@2"] {
            let page = AuditQuery { cursor: Some(bad.into()), ..query(None, 2) };
            assert!(trail.read(&page).await.is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_change_within_a_row_is_found_where_it_was_made() {
        // Rows 1..=3, 4..=7 and 8..=9; entry 5 is the second of the middle row.
        let mallory = |json: &str| json.replace("alice", "mallory");
        let (storage, trail) = trail_of_rows(&[3, 4, 2]).await;
        tamper(&*storage, 7, |row| Some(edit_entry(row, 1, mallory))).await;
        assert_eq!(broken_at(&trail).await.unwrap(), (5, "was edited: its content does not match its hash".into()));

        let (storage, trail) = trail_of_rows(&[3, 4, 2]).await;
        let row = storage.get(&entry_key(7)).await.unwrap().unwrap().value;
        let (_, _, mut chained) = Row::decode(7, &row).entries.remove(1).unwrap();
        chained.record.user = Some("mallory".into());
        let (_, rehashed) = encode(5, &chained.prev, &chained.record);
        let rehashed = String::from_utf8(rehashed).unwrap();
        let json = rehashed.split_once('\n').unwrap().1.to_owned();
        let mut lines: Vec<String> = String::from_utf8(row).unwrap().split('\n').map(String::from).collect();
        (lines[2], lines[3]) = (rehashed.split_once('\n').unwrap().0.to_owned(), json);
        tamper(&*storage, 7, |_| Some(lines.join("\n").into_bytes())).await;
        assert_eq!(broken_at(&trail).await.unwrap().0, 6, "the entry after it no longer follows it");

        // A whole row removed, or one entry cut out of a row: named at the first position
        // that lost its entry.
        let (storage, trail) = trail_of_rows(&[3, 4, 2]).await;
        tamper(&*storage, 7, |_| None).await;
        assert_eq!(broken_at(&trail).await.unwrap(), (4, "is missing: it was removed".into()));
        let (storage, trail) = trail_of_rows(&[3, 4, 2]).await;
        tamper(&*storage, 7, |row| {
            let lines: Vec<&[u8]> = row.split(|b| *b == b'\n').collect();
            Some([&lines[..2], &lines[4..]].concat().join(&b'\n'))
        })
        .await;
        assert_eq!(broken_at(&trail).await.unwrap().0, 4);
        let (storage, trail) = trail_of_rows(&[3, 4, 2]).await;
        tamper(&*storage, 9, |_| None).await;
        assert_eq!(broken_at(&trail).await.unwrap(), (8, "is missing: it was removed".into()));

        // An entry added to a row, before those it holds: a true copy of entry 3, which the
        // row before holds; named at the row's first position, and its row not pruned.
        let (storage, trail) = trail_of_rows(&[3, 4, 2]).await;
        let three = storage.get(&entry_key(3)).await.unwrap().unwrap().value;
        let copy = three.split(|b| *b == b'\n').skip(4).collect::<Vec<_>>().join(&b'\n');
        tamper(&*storage, 7, |row| Some([copy, row].join(&b'\n'))).await;
        assert_eq!(broken_at(&trail).await.unwrap(), (4, "shares its row with an entry added to it".into()));
        assert_eq!(trail.prune(u64::MAX).await.unwrap(), 3, "only the row before it");
        assert_eq!(broken_at(&trail).await.unwrap().0, 4);

        // A row added behind the head.
        let (storage, trail) = trail_of_rows(&[3, 4, 2]).await;
        let nine = storage.get(&entry_key(9)).await.unwrap().unwrap().value;
        let (_, hash, chained) = Row::decode(9, &nine).entries.pop().unwrap().unwrap();
        let (tenth_hash, tenth) = encode(10, &hash, &chained.record);
        let (_, eleventh) = encode(11, &tenth_hash, &chained.record);
        storage.put(&entry_key(11), &[tenth, eleventh].join(&b'\n'), None).await.unwrap();
        assert_eq!(broken_at(&trail).await.unwrap().0, 10);
    }

    #[tokio::test]
    async fn pruning_takes_whole_rows_and_their_index_records() {
        let (storage, trail) = trail_of_rows(&[3, 4, 2]).await;
        // Entries 6 and 7 are not old enough, so the row of 4..=7 stays whole.
        assert_eq!(trail.prune(6).await.unwrap(), 3);
        let verified = trail.verify(|_, _| {}).await.unwrap();
        assert_eq!((verified.first, verified.last, verified.entries, verified.broken), (4, 9, 6, None));
        assert_eq!(listed(&*storage, "audit-tenant/acme/").await, [9, 7]);
        assert_eq!(trail.prune(100).await.unwrap(), 6);
        assert_eq!(listed(&*storage, "audit-tenant/").await, Vec::<u64>::new());
        assert_eq!(listed(&*storage, ENTRY_PREFIX).await, Vec::<u64>::new());
        trail.record(&event(200, Some("acme"), "token-get")).await.unwrap();
        let verified = trail.verify(|_, _| {}).await.unwrap();
        assert_eq!((verified.first, verified.last, verified.entries, verified.broken), (10, 10, 1, None));
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
