//! SQLite storage: the embedded default, one file in the data directory.
//!
//! Several processes may share the file: writes run in `BEGIN IMMEDIATE` transactions
//! (WAL mode, with a busy timeout), and versions come from one counter row, so they are
//! never reused.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Entry, KeyPage, Storage, StorageError, StorageResult, Write};

pub struct SqliteStorage {
    conn: Arc<Mutex<Connection>>,
    path: std::path::PathBuf,
}

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
        let conn = Connection::open(path).map_err(unavailable)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        Ok(SqliteStorage { conn: Arc::new(Mutex::new(conn)), path: path.to_owned() })
    }

    /// `writes` in one transaction, which a refused write rolls back (on drop).
    async fn write_all(&self, writes: Vec<Write>) -> StorageResult<Vec<Option<u64>>> {
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
            let versions = writes.iter().map(|write| apply(&tx, write)).collect::<StorageResult<Vec<_>>>()?;
            tx.commit().map_err(unavailable)?;
            Ok(versions)
        })
        .await
    }

    /// Run a blocking SQLite call off the async workers.
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StorageResult<T> + Send + 'static,
    ) -> StorageResult<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(|e| StorageError::Unavailable(format!("sqlite task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl Storage for SqliteStorage {
    async fn get(&self, key: &str) -> StorageResult<Option<Entry>> {
        let key = key.to_owned();
        self.with_conn(move |conn| {
            conn.prepare_cached("SELECT value, version FROM tokenvault_records WHERE key = ?1")
                .and_then(|mut stmt| {
                    stmt.query_row([&key], |row| {
                        Ok(Entry { value: row.get(0)?, version: row.get::<_, i64>(1)? as u64 })
                    })
                    .optional()
                })
                .map_err(unavailable)
        })
        .await
    }

    async fn put(&self, key: &str, value: &[u8], expected: Option<u64>) -> StorageResult<u64> {
        let write = Write::Put { key: key.to_owned(), value: value.to_vec(), expected };
        let versions = self.write_all(vec![write]).await?;
        Ok(versions[0].expect("a put has a version"))
    }

    async fn delete(&self, key: &str, expected: u64) -> StorageResult<()> {
        let key = key.to_owned();
        self.with_conn(move |conn| {
            let changed = conn
                .execute(
                    "DELETE FROM tokenvault_records WHERE key = ?1 AND version = ?2",
                    params![key, expected as i64],
                )
                .map_err(unavailable)?;
            if changed == 1 { Ok(()) } else { Err(StorageError::Conflict) }
        })
        .await
    }

    async fn commit(&self, writes: &[Write]) -> StorageResult<Vec<Option<u64>>> {
        self.write_all(writes.to_vec()).await
    }

    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> StorageResult<KeyPage> {
        let (prefix, cursor) = (prefix.to_owned(), cursor.map(str::to_owned));
        self.with_conn(move |conn| {
            // A range on the primary key; substr() rather than LIKE so `%` and `_` are literal.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key FROM tokenvault_records
                     WHERE key >= ?1 AND substr(key, 1, length(?1)) = ?1 AND (?2 IS NULL OR key > ?2)
                     ORDER BY key LIMIT ?3",
                )
                .map_err(unavailable)?;
            let keys = stmt
                .query_map(params![prefix, cursor, limit], |row| row.get(0))
                .and_then(|rows| rows.collect::<Result<Vec<String>, _>>())
                .map_err(unavailable)?;
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
