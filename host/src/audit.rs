//! The audit sink: one JSON line per event, appended to a file.
//!
//! An event carries identifiers and an outcome, nothing else: the component's WIT
//! `audit.event` has no field that could hold a value.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::error::Error;

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

pub trait AuditSink: Send + Sync + 'static {
    fn record(&self, record: &AuditRecord);
    fn describe(&self) -> String;
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
}
