//! The audit sink: one JSON line per event, appended to a file.
//!
//! An event carries identifiers and an outcome, nothing else: the component's WIT
//! `audit.event` has no field that could hold a value.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

pub trait AuditSink: Send + Sync + 'static {
    fn record(&self, record: &AuditRecord);
    fn describe(&self) -> String;
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

/// Appends JSON lines. Each event is one `write` on an `O_APPEND` file, so lines from
/// several processes do not interleave.
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
    fn record(&self, record: &AuditRecord) {
        let mut line = serde_json::to_vec(record).expect("audit records serialize");
        line.push(b'\n');
        if let Err(e) = self.file.lock().unwrap_or_else(|p| p.into_inner()).write_all(&line) {
            tracing::error!(path = %self.path.display(), error = %e, "audit event could not be written");
        }
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

/// Keeps events in memory, for embedders' tests.
#[derive(Default)]
pub struct MemoryAudit {
    pub records: Mutex<Vec<AuditRecord>>,
}

impl AuditSink for MemoryAudit {
    fn record(&self, record: &AuditRecord) {
        self.records.lock().unwrap().push(record.clone());
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
        self.record(&AuditRecord {
            at_ms: event.at_ms,
            action: event.action.name().into(),
            outcome: event.outcome.name().into(),
            tenant: event.tenant,
            user: event.user,
            provider: event.provider,
            name: event.name,
        });
        Ok(())
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
            sink.record(&event(at, if at % 2 == 0 { "token-get" } else { "revoke-all" }, Some("acme")));
        }
        sink.record(&event(10, "token-get", Some("globex")));
        sink.record(&event(11, "provider-put", None));
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
}
