//! A JSON-lines file of events, one line each: an extra sink beside the trail, for
//! operators who ship the host's files elsewhere.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{AuditRecord, AuditSink, AuditUnavailable};
use crate::error::Error;

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

    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.lock()?;
        let written = append_whole(&file, line);
        let _ = file.unlock(); // closing the file would release it too
        written
    }
}

#[async_trait::async_trait]
impl AuditSink for JsonLinesAudit {
    async fn record(&self, record: &AuditRecord) -> Result<(), AuditUnavailable> {
        let unavailable = |e: std::io::Error| AuditUnavailable(format!("{}: {e}", self.path.display()));
        let mut line = serde_json::to_vec(record).map_err(|e| unavailable(e.into()))?;
        line.push(b'\n');
        // A local append: short enough to run on the caller's thread.
        self.append(&line).map_err(|e| {
            tracing::error!(path = %self.path.display(), error = %e, "audit event could not be written");
            unavailable(e)
        })
    }

    fn describe(&self) -> String {
        format!("JSON lines file ({})", self.path.display())
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

#[cfg(test)]
mod tests {
    use super::super::KeepServing;
    use super::*;
    use std::sync::Arc;

    fn event(at_ms: u64) -> AuditRecord {
        AuditRecord {
            at_ms,
            action: "token-get".into(),
            outcome: "ok".into(),
            tenant: Some("acme".into()),
            user: Some("alice".into()),
            provider: None,
            name: None,
            actor: Some("api-key:k1".into()),
        }
    }

    #[tokio::test]
    async fn each_event_is_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let sink = JsonLinesAudit::open(&dir.path().join("audit.jsonl")).unwrap();
        for at in 0..3 {
            sink.record(&event(at)).await.unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        let lines: Vec<AuditRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines, [event(0), event(1), event(2)]);
    }

    #[tokio::test]
    async fn a_full_disk_refuses_the_event_or_counts_it_lost() {
        // /dev/full fails every write with ENOSPC, as a full disk does.
        let full = JsonLinesAudit::open(Path::new("/dev/full")).unwrap();
        let err = full.record(&event(1)).await.unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        let lenient = KeepServing::new(Arc::new(full));
        lenient.record(&event(2)).await.unwrap();
        lenient.record(&event(3)).await.unwrap();
        assert_eq!(lenient.events_lost(), 2);
    }
}
