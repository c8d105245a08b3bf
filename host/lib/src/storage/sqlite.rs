//! SQLite storage: the embedded default, one file in the data directory.
//!
//! Several processes may share the file: writes run in `BEGIN IMMEDIATE` transactions
//! (WAL mode, with a busy timeout), and versions come from one counter row, so they are
//! never reused.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Entry, KeyPage, Storage, StorageError, StorageResult};

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
        let (key, value) = (key.to_owned(), value.to_vec());
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
            let version: i64 = tx
                .query_row("UPDATE tokenvault_version_counter SET last = last + 1 WHERE id = 1 RETURNING last", [], |r| r.get(0))
                .map_err(unavailable)?;
            let changed = match expected {
                None => tx.execute(
                    "INSERT INTO tokenvault_records (key, value, version) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO NOTHING",
                    params![key, value, version],
                ),
                Some(expected) => tx.execute(
                    "UPDATE tokenvault_records SET value = ?2, version = ?3 WHERE key = ?1 AND version = ?4",
                    params![key, value, version, expected as i64],
                ),
            }
            .map_err(unavailable)?;
            if changed == 1 {
                tx.commit().map_err(unavailable)?;
                Ok(version as u64)
            } else {
                Err(StorageError::Conflict) // the transaction rolls back on drop
            }
        })
        .await
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
