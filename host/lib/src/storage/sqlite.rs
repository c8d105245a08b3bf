//! SQLite storage: the embedded default, one file in the data directory.
//!
//! Several processes may share the file: writes run in `BEGIN IMMEDIATE` transactions
//! (WAL mode, with a busy timeout), and versions come from one counter row, so they are
//! never reused. Within a process, writes go through one connection, one transaction at a
//! time, off the async workers; reads go through a pool of others, in place: in WAL mode a
//! reader neither waits for the writer nor for other readers, so a `get` does not queue
//! behind an audit append or another caller's read.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Entry, KeyPage, Storage, StorageError, StorageResult, Write};

pub struct SqliteStorage {
    writer: Arc<Mutex<Connection>>,
    /// Read connections not in use; more are opened while all are busy.
    idle_readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
}

/// Read connections kept open when idle; each holds its own page cache.
const IDLE_READERS: usize = 8;
/// How long a statement waits for another connection's lock before failing.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// Shared with the Node and Python hosts, which read files this host writes.
const SCHEMA: &str = include_str!("sqlite.sql");

fn unavailable(err: rusqlite::Error) -> StorageError {
    StorageError::Unavailable(format!("sqlite: {err}"))
}

impl SqliteStorage {
    pub fn open(path: &Path) -> StorageResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StorageError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        // Made private before SQLite opens it: SQLite gives the write-ahead log and its
        // index the database file's mode.
        let mut private = std::fs::OpenOptions::new();
        private.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut private, 0o600);
        private.open(path).map_err(|e| StorageError::Unavailable(format!("cannot create {}: {e}", path.display())))?;
        let writer = connect(path)?;
        writer.pragma_update(None, "journal_mode", "WAL").map_err(unavailable)?;
        writer.execute_batch(SCHEMA).map_err(unavailable)?;
        Ok(SqliteStorage { writer: Arc::new(Mutex::new(writer)), idle_readers: Arc::default(), path: path.to_owned() })
    }

    /// `writes` in one transaction, which a refused write rolls back (on drop).
    async fn write_all(&self, writes: Vec<Write>) -> StorageResult<Vec<Option<u64>>> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
            let versions = writes.iter().map(|write| apply(&tx, write)).collect::<StorageResult<Vec<_>>>()?;
            tx.commit().map_err(unavailable)?;
            Ok(versions)
        })
        .await
    }

    /// Run a blocking write on the writer connection, off the async workers.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StorageResult<T> + Send + 'static,
    ) -> StorageResult<T> {
        let writer = self.writer.clone();
        off_the_workers(move || f(&mut writer.lock().unwrap_or_else(|p| p.into_inner()))).await
    }

    /// Run a read on an idle read connection (or a new one), in place: in WAL mode a read
    /// takes microseconds and waits for no writer, so handing it to a blocking thread would
    /// cost more than it does. Only when SQLite answers busy (a checkpoint or a recovery
    /// holds the log's index) does it wait, [`BUSY_WAIT`] at most, off the async workers.
    async fn read<T: Send + 'static>(
        &self,
        f: impl Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StorageResult<T> {
        let taken = self.idle_readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let reader = match taken {
            Some(reader) => reader,
            None => {
                let reader = connect(&self.path)?;
                reader.pragma_update(None, "query_only", true).map_err(unavailable)?;
                reader.busy_timeout(Duration::ZERO).map_err(unavailable)?;
                reader
            }
        };
        match f(&reader) {
            Err(rusqlite::Error::SqliteFailure(why, _))
                if matches!(why.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                let idle = self.idle_readers.clone();
                off_the_workers(move || {
                    reader.busy_timeout(BUSY_WAIT).map_err(unavailable)?;
                    let result = f(&reader).map_err(unavailable);
                    if reader.busy_timeout(Duration::ZERO).is_ok() {
                        keep_idle(&idle, reader);
                    }
                    result
                })
                .await
            }
            result => {
                keep_idle(&self.idle_readers, reader);
                result.map_err(unavailable)
            }
        }
    }
}

fn keep_idle(idle: &Mutex<Vec<Connection>>, reader: Connection) {
    let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
    if idle.len() < IDLE_READERS {
        idle.push(reader);
    }
}

/// A connection to the file with the settings every one of ours has.
fn connect(path: &Path) -> StorageResult<Connection> {
    let conn = Connection::open(path).map_err(unavailable)?;
    conn.busy_timeout(BUSY_WAIT).map_err(unavailable)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(unavailable)?;
    Ok(conn)
}

async fn off_the_workers<T: Send + 'static>(f: impl FnOnce() -> StorageResult<T> + Send + 'static) -> StorageResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StorageError::Unavailable(format!("sqlite task failed: {e}")))?
}

#[async_trait::async_trait]
impl Storage for SqliteStorage {
    async fn get(&self, key: &str) -> StorageResult<Option<Entry>> {
        let key = key.to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT value, version FROM tokenvault_records WHERE key = ?1")?
                .query_row([&key], |row| Ok(Entry { value: row.get(0)?, version: row.get::<_, i64>(1)? as u64 }))
                .optional()
        })
        .await
    }

    async fn put(&self, key: &str, value: &[u8], expected: Option<u64>) -> StorageResult<u64> {
        let write = Write::Put { key: key.to_owned(), value: value.to_vec(), expected };
        let versions = self.write_all(vec![write]).await?;
        Ok(versions[0].expect("a put has a version"))
    }

    async fn delete(&self, key: &str, expected: u64) -> StorageResult<()> {
        self.write_all(vec![Write::Delete { key: key.to_owned(), expected }]).await.map(drop)
    }

    async fn commit(&self, writes: &[Write]) -> StorageResult<Vec<Option<u64>>> {
        self.write_all(writes.to_vec()).await
    }

    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> StorageResult<KeyPage> {
        let (prefix, cursor) = (prefix.to_owned(), cursor.map(str::to_owned));
        self.read(move |conn| {
            // A range on the primary key; substr() rather than LIKE so `%` and `_` are literal.
            let keys = conn
                .prepare_cached(
                    "SELECT key FROM tokenvault_records
                     WHERE key >= ?1 AND substr(key, 1, length(?1)) = ?1 AND (?2 IS NULL OR key > ?2)
                     ORDER BY key LIMIT ?3",
                )?
                .query_map(params![prefix, cursor, limit], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(KeyPage::of(keys, limit))
        })
        .await
    }

    fn describe(&self) -> String {
        format!("sqlite ({})", self.path.display())
    }
}

/// One write inside a transaction: its new version, or `Conflict`.
fn apply(tx: &rusqlite::Transaction<'_>, write: &Write) -> StorageResult<Option<u64>> {
    let (changed, version) = match write {
        Write::Put { key, value, expected } => {
            let version: i64 = tx
                .prepare_cached("UPDATE tokenvault_version_counter SET last = last + 1 WHERE id = 1 RETURNING last")
                .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)))
                .map_err(unavailable)?;
            let changed = match expected {
                None => tx.prepare_cached(
                    "INSERT INTO tokenvault_records (key, value, version) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO NOTHING",
                ).and_then(|mut stmt| stmt.execute(params![key, value, version])),
                Some(expected) => tx.prepare_cached(
                    "UPDATE tokenvault_records SET value = ?2, version = ?3 WHERE key = ?1 AND version = ?4",
                ).and_then(|mut stmt| stmt.execute(params![key, value, version, *expected as i64])),
            }
            .map_err(unavailable)?;
            (changed, Some(version as u64))
        }
        Write::Delete { key, expected } => {
            let changed = tx
                .prepare_cached("DELETE FROM tokenvault_records WHERE key = ?1 AND version = ?2")
                .and_then(|mut stmt| stmt.execute(params![key, *expected as i64]))
                .map_err(unavailable)?;
            (changed, None)
        }
    };
    if changed == 1 { Ok(version) } else { Err(StorageError::Conflict) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        super::super::conformance::run(Arc::new(SqliteStorage::open(&dir.path().join("v.db")).unwrap())).await;
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_database_and_its_write_ahead_log_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(&dir.path().join("v.db")).unwrap();
        storage.put("k", b"v", None).await.unwrap();
        for name in ["v.db", "v.db-wal", "v.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} is {mode:o}");
        }
    }

    /// A write held open (this process's writer busy, and another process's transaction
    /// holding the file's write lock) does not stop reads: they see the last commit.
    #[tokio::test(flavor = "multi_thread")]
    async fn reads_go_on_while_writes_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.db");
        let storage = Arc::new(SqliteStorage::open(&path).unwrap());
        let version = storage.put("k", b"1", None).await.unwrap();
        let other_process = Connection::open(&path).unwrap();
        other_process.execute_batch("BEGIN IMMEDIATE; UPDATE tokenvault_records SET value = x'32'").unwrap();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (locked, is_locked) = std::sync::mpsc::channel();
        let holder = std::thread::spawn({
            let writer = storage.writer.clone();
            move || {
                let _held = writer.lock().unwrap();
                locked.send(()).unwrap();
                released.recv().unwrap();
            }
        });
        is_locked.recv().unwrap();
        let waiting_write = tokio::spawn({
            let storage = storage.clone();
            async move { storage.put("k", b"3", Some(version)).await }
        });
        let (got, listed) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(storage.get("k"), storage.list("", None, 10))
        })
        .await
        .expect("reads do not wait for writes");
        assert_eq!(got.unwrap().unwrap(), Entry { value: b"1".to_vec(), version });
        assert_eq!(listed.unwrap().keys, ["k"]);
        assert!(!waiting_write.is_finished());
        release.send(()).unwrap();
        holder.join().unwrap();
        other_process.execute_batch("ROLLBACK").unwrap();
        let written = waiting_write.await.unwrap().unwrap();
        assert_eq!(storage.get("k").await.unwrap().unwrap(), Entry { value: b"3".to_vec(), version: written });
    }

    #[tokio::test]
    async fn two_handles_on_one_file_share_versions() {
        let dir = tempfile::tempdir().unwrap();
        let a = SqliteStorage::open(&dir.path().join("v.db")).unwrap();
        let b = SqliteStorage::open(&dir.path().join("v.db")).unwrap();
        let v1 = a.put("k", b"1", None).await.unwrap();
        assert_eq!(b.put("k", b"2", None).await, Err(StorageError::Conflict));
        let v2 = b.put("k", b"2", Some(v1)).await.unwrap();
        assert_eq!(a.put("k", b"3", Some(v1)).await, Err(StorageError::Conflict));
        assert_eq!(a.get("k").await.unwrap().unwrap().version, v2);
    }
}
