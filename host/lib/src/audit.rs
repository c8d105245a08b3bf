//! The audit sink: one JSON line per event, appended to a file.
//!
//! An event carries identifiers and an outcome, nothing else: the component's WIT
//! `audit.event` has no field that could hold a value.
//!
//! A call whose event cannot be written fails (the component is stopped at the event, so
//! nothing it would return is handed out) unless the operator chose to keep serving
//! ([`OnAuditFailure::Serve`]), in which case the sink counts the events it lost.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::Error;
pub use tokenvault_model::{AuditAction, AuditEvent, AuditOutcome};
use wasmtime::component::HasData;

use crate::bindings::tokenvault::vault::audit as wit;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub action: String,
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Which events to read back: each field set must match exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub tenant: Option<String>,
    pub user: Option<String>,
    pub provider: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
}

impl AuditFilter {
    pub fn matches(&self, record: &AuditRecord) -> bool {
        let field = |wanted: &Option<String>, got: Option<&str>| wanted.as_deref().is_none_or(|w| Some(w) == got);
        field(&self.tenant, record.tenant.as_deref())
            && field(&self.user, record.user.as_deref())
            && field(&self.provider, record.provider.as_deref())
            && field(&self.action, Some(&record.action))
            && field(&self.outcome, Some(&record.outcome))
    }
}

/// An audit event that could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the audit log could not record the call ({0}), so it was refused and nothing was handed out")]
pub struct AuditUnavailable(pub String);

/// What a call does when its audit event cannot be written (`audit_on_failure` in
/// tokenvault.toml).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnAuditFailure {
    /// The call fails with a storage error: nothing is done that the trail does not show.
    #[default]
    Refuse,
    /// The call goes on; the loss is logged and counted ([`AuditSink::events_lost`]).
    Serve,
}

pub trait AuditSink: Send + Sync + 'static {
    /// Write one event, whole or not at all.
    fn record(&self, record: &AuditRecord) -> Result<(), AuditUnavailable>;
    fn describe(&self) -> String;
    /// Events this sink failed to write and let pass (see [`KeepServing`]).
    fn events_lost(&self) -> u64 {
        0
    }
    /// The newest `limit` events matching `filter`, newest first; `None` when this sink
    /// cannot be read back. Blocking: call it off the async runtime.
    fn read(&self, _filter: &AuditFilter, _limit: usize) -> Result<Option<Vec<AuditRecord>>, Error> {
        Ok(None)
    }
}

/// The last `limit` of `records` that match, newest first.
fn newest(records: impl Iterator<Item = AuditRecord>, filter: &AuditFilter, limit: usize) -> Vec<AuditRecord> {
    let mut kept = VecDeque::with_capacity(limit.min(1024));
    for record in records.filter(|r| filter.matches(r)) {
        if kept.len() == limit {
            kept.pop_front();
        }
        kept.push_back(record);
    }
    kept.into_iter().rev().collect()
}

/// Appends JSON lines to an `O_APPEND` file. Each event is written whole under an
/// exclusive lock of the file, so lines from several processes do not interleave, and a
/// write cut short (a full disk) is cut off again: the file never holds a partial line.
pub struct JsonLinesAudit {
    file: Mutex<File>,
    path: PathBuf,
}

impl JsonLinesAudit {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file =
            options.open(path).map_err(|e| Error::Config(format!("cannot open audit log {}: {e}", path.display())))?;
        Ok(JsonLinesAudit { file: Mutex::new(file), path: path.to_owned() })
    }
}

impl AuditSink for JsonLinesAudit {
    fn record(&self, record: &AuditRecord) -> Result<(), AuditUnavailable> {
        let unavailable = |e: std::io::Error| AuditUnavailable(format!("{}: {e}", self.path.display()));
        let mut line = serde_json::to_vec(record).map_err(|e| unavailable(e.into()))?;
        line.push(b'\n');
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.lock().map_err(unavailable)?;
        let written = append_whole(&file, &line);
        let _ = file.unlock(); // closing the file would release it too
        written.map_err(|e| {
            tracing::error!(path = %self.path.display(), error = %e, "audit event could not be written");
            unavailable(e)
        })
    }

    fn describe(&self) -> String {
        format!("JSON lines file ({})", self.path.display())
    }

    /// Reads the whole file (a line that does not parse, say one cut short, is skipped).
    fn read(&self, filter: &AuditFilter, limit: usize) -> Result<Option<Vec<AuditRecord>>, Error> {
        let file = File::open(&self.path)
            .map_err(|e| Error::Config(format!("cannot read audit log {}: {e}", self.path.display())))?;
        let records = BufReader::new(file)
            .lines()
            .map_while(std::result::Result::ok)
            .filter_map(|line| serde_json::from_str::<AuditRecord>(&line).ok());
        Ok(Some(newest(records, filter, limit)))
    }
}

/// Append all of `line` or none of it: what a failing write left is truncated away. The
/// caller holds the file's lock, so the end of the file is this line's.
fn append_whole(mut file: &File, line: &[u8]) -> std::io::Result<()> {
    let mut written = 0;
    while written < line.len() {
        match file.write(&line[written..]) {
            Ok(0) => return undo(file, written, std::io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return undo(file, written, e),
        }
    }
    Ok(())
}

fn undo(file: &File, written: usize, cause: std::io::Error) -> std::io::Result<()> {
    if written > 0 {
        let len = file.metadata()?.len();
        file.set_len(len.saturating_sub(written as u64))?;
    }
    Err(cause)
}

/// A sink that lets every call go on when its event cannot be written
/// ([`OnAuditFailure::Serve`]): the loss is logged and counted instead.
pub struct KeepServing {
    sink: Arc<dyn AuditSink>,
    lost: AtomicU64,
}

impl KeepServing {
    pub fn new(sink: Arc<dyn AuditSink>) -> Self {
        KeepServing { sink, lost: AtomicU64::new(0) }
    }
}

impl AuditSink for KeepServing {
    fn record(&self, record: &AuditRecord) -> Result<(), AuditUnavailable> {
        if let Err(e) = self.sink.record(record) {
            self.lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "audit event lost; serving on as audit_on_failure = \"serve\" says");
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{}, serving on when it fails", self.sink.describe())
    }

    fn read(&self, filter: &AuditFilter, limit: usize) -> Result<Option<Vec<AuditRecord>>, Error> {
        self.sink.read(filter, limit)
    }

    fn events_lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// Keeps events in memory, for embedders' tests.
#[derive(Default)]
pub struct MemoryAudit {
    pub records: Mutex<Vec<AuditRecord>>,
}

impl AuditSink for MemoryAudit {
    fn record(&self, record: &AuditRecord) -> Result<(), AuditUnavailable> {
        self.records.lock().unwrap().push(record.clone());
        Ok(())
    }

    fn describe(&self) -> String {
        "in memory".into()
    }

    fn read(&self, filter: &AuditFilter, limit: usize) -> Result<Option<Vec<AuditRecord>>, Error> {
        let records = self.records.lock().unwrap().clone();
        Ok(Some(newest(records.into_iter(), filter, limit)))
    }
}

/// The component's `audit` import, served by a call's sink.
pub(crate) struct AuditImport;

impl HasData for AuditImport {
    type Data<'a> = &'a dyn AuditSink;
}

/// Each event becomes a record of the sink.
impl wit::Host for &dyn AuditSink {
    fn emit(&mut self, event: wit::Event) -> wasmtime::Result<()> {
        let event = AuditEvent::from(event);
        // An error here stops the component at the event: the call fails, and what it
        // would have returned never leaves the sandbox.
        self.record(&AuditRecord {
            at_ms: event.at_ms,
            action: event.action.name().into(),
            outcome: event.outcome.name().into(),
            tenant: event.tenant,
            user: event.user,
            provider: event.provider,
            name: event.name,
        })
        .map_err(wasmtime::Error::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at_ms: u64, action: &str, tenant: Option<&str>) -> AuditRecord {
        AuditRecord {
            at_ms,
            action: action.into(),
            outcome: "ok".into(),
            tenant: tenant.map(String::from),
            user: Some("alice".into()),
            provider: None,
            name: None,
        }
    }

    #[test]
    fn the_file_reads_back_newest_first_filtered_and_limited() {
        let dir = tempfile::tempdir().unwrap();
        let sink = JsonLinesAudit::open(&dir.path().join("audit.jsonl")).unwrap();
        for at in 0..10 {
            sink.record(&event(at, if at % 2 == 0 { "token-get" } else { "revoke-all" }, Some("acme"))).unwrap();
        }
        sink.record(&event(10, "token-get", Some("globex"))).unwrap();
        sink.record(&event(11, "provider-put", None)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("audit.jsonl"))
            .unwrap()
            .write_all(b"{cut")
            .unwrap();

        let acme = AuditFilter { tenant: Some("acme".into()), ..AuditFilter::default() };
        let at = |records: Vec<AuditRecord>| records.iter().map(|r| r.at_ms).collect::<Vec<_>>();
        assert_eq!(at(sink.read(&acme, 3).unwrap().unwrap()), [9, 8, 7]);
        let gets = AuditFilter { action: Some("token-get".into()), ..acme.clone() };
        assert_eq!(at(sink.read(&gets, 100).unwrap().unwrap()), [8, 6, 4, 2, 0]);
        assert_eq!(at(sink.read(&AuditFilter::default(), 2).unwrap().unwrap()), [11, 10]);
        let nobody = AuditFilter { user: Some("bob".into()), ..AuditFilter::default() };
        assert!(sink.read(&nobody, 10).unwrap().unwrap().is_empty());
    }

    #[test]
    fn a_full_disk_refuses_the_event_or_counts_it_lost() {
        // /dev/full fails every write with ENOSPC, as a full disk does.
        let full = JsonLinesAudit::open(Path::new("/dev/full")).unwrap();
        let err = full.record(&event(1, "token-get", None)).unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        let lenient = KeepServing::new(Arc::new(full));
        lenient.record(&event(2, "token-get", None)).unwrap();
        lenient.record(&event(3, "token-get", None)).unwrap();
        assert_eq!(lenient.events_lost(), 2);
    }
}
