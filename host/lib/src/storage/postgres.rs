//! PostgreSQL storage, shared by many hosts.
//!
//! Every write is one conditional statement (`INSERT … ON CONFLICT DO NOTHING`, or
//! `UPDATE … WHERE version = $expected`), atomic on its own; versions come from one
//! sequence, so they are never reused. Tables are created on first use, idempotently and
//! under an advisory lock so that hosts starting together do not race. A commit of several
//! writes is one call of the function `tokenvault_commit` (postgres.sql), which applies them
//! in order or, at the first whose condition fails, none; commits go on a second connection
//! of their own, so that one waiting for its fsync holds up no read. Each connection
//! prepares its statements once, so a call, a commit included, is one round trip.
//!
//! [`Storage::get_cached`] is served from a cache of records kept per process (see
//! [`super::cache`]; `?cache=N` records, 10,000 unless the URL says, 0 for none). A trigger
//! on the table notifies channel `tokenvault_{schema}` with the key of every row written,
//! and each host listens on a connection of its own, forgetting each key named. That
//! connection is not the one reads come back on, so a cached copy may trail another host's
//! write by the moment the notification takes (typically under a millisecond on one
//! network): `get` never uses the cache. While the host is not listening (its listening
//! connection lost, or silent past two heartbeats of [`HEARTBEAT`]) the cache is empty and
//! unused, and an entry is at most [`super::cache::MAX_AGE`] old.
//! `sslmode=require` (or `verify-full`) in the URL makes every connection TLS (rustls),
//! verifying the server's certificate and name against the Mozilla roots and the CA file
//! `sslrootcert=PATH` names.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

use super::cache::{self, RecordCache};
use super::{Entry, KeyPage, Storage, StorageError, StorageResult, UNCACHED_PREFIX, Write, split_param};

/// How often the listening connection is asked whether it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// The first wait before listening again after the listening connection was lost; it
/// doubles up to [`RELISTEN_MAX`] while attempts fail.
const RELISTEN_MIN: Duration = Duration::from_millis(100);
const RELISTEN_MAX: Duration = Duration::from_secs(5);

/// The longest schema name: the channel `tokenvault_{schema}` must fit PostgreSQL's 63-byte
/// identifiers.
const MAX_SCHEMA: usize = 48;

/// The SQLSTATE `tokenvault_commit` raises when a write's condition fails.
const CONFLICT: &str = "TV409";

pub struct PostgresStorage {
    connector: Connector,
    schema: String,
    shared: Mutex<Option<Arc<Connection>>>,
    /// For commits, so that one waiting on its fsync holds up no read.
    committing: Mutex<Option<Arc<Connection>>>,
    statements: Statements,
    cache: Option<Arc<RecordCache>>,
    /// Keeps `cache` true while it runs; stopped when the storage is dropped.
    listener: Option<tokio::task::AbortHandle>,
    /// Reads that went to the database.
    #[cfg(test)]
    server_reads: std::sync::atomic::AtomicU64,
}

/// How to open a connection: the URL's settings and, with `sslmode=require`, TLS.
#[derive(Clone)]
struct Connector {
    config: tokio_postgres::Config,
    /// None: plain TCP (`sslmode=disable`, the default).
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

/// A connection, its statements prepared once.
struct Connection {
    client: Client,
    prepared: Prepared,
}

struct Prepared {
    get: Statement,
    insert: Statement,
    update: Statement,
    delete: Statement,
    list: Statement,
    commit: Statement,
}

/// SQL with the schema filled in.
struct Statements {
    get: String,
    insert: String,
    update: String,
    delete: String,
    list: String,
    commit: String,
}

fn unavailable(err: tokio_postgres::Error) -> StorageError {
    // The driver's Display names what failed, never parameters; a server's refusal says
    // why in its message (never its detail, which may quote a row).
    match err.as_db_error() {
        Some(refusal) => StorageError::Unavailable(format!("postgres: {}", refusal.message())),
        None => {
            // And what caused it: a refused certificate, say.
            let mut why = format!("postgres: {err}");
            let mut cause = std::error::Error::source(&err);
            while let Some(inner) = cause {
                why.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            StorageError::Unavailable(why)
        }
    }
}

impl PostgresStorage {
    /// `postgres://user@host:port/db`, optionally `?schema=NAME` (default `public`) and
    /// `cache=N`, how many records to keep locally (default 10,000; 0 turns the cache off).
    pub async fn connect(url: &str) -> StorageResult<Self> {
        let (url, schema) = split_param(url, "schema");
        let schema = schema.unwrap_or_else(|| "public".into());
        if schema.is_empty()
            || schema.len() > MAX_SCHEMA
            || !schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(StorageError::Unavailable(format!(
                "postgres: schema must be 1 to {MAX_SCHEMA} lowercase letters, digits and _"
            )));
        }
        let (url, cache) = cache::from_url(&url, "postgres")?;
        let (url, sslmode) = split_param(&url, "sslmode");
        let (url, root_cert) = split_param(&url, "sslrootcert");
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| StorageError::Unavailable("postgres: the storage URL is not a valid connection URL".into()))?;
        let tls = match (sslmode.as_deref(), root_cert) {
            (None | Some("disable"), None) => None,
            (None | Some("disable"), Some(_)) => {
                return Err(StorageError::Unavailable("postgres: sslrootcert needs sslmode=require".into()));
            }
            (Some("require" | "verify-ca" | "verify-full"), root_cert) => {
                let ca_files: Vec<std::path::PathBuf> = root_cert.into_iter().map(Into::into).collect();
                let tls = crate::tls::client_config(&ca_files)
                    .map_err(|e| StorageError::Unavailable(format!("postgres: {e}")))?;
                Some(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            }
            (Some(other), _) => {
                return Err(StorageError::Unavailable(format!(
                    "postgres: sslmode={other} is not supported: use require (TLS, the server's certificate and \
                     name verified) or disable"
                )));
            }
        };
        config.ssl_mode(if tls.is_some() { SslMode::Require } else { SslMode::Disable });
        let table = format!("\"{schema}\".tokenvault_records");
        let mut storage = PostgresStorage {
            statements: Statements {
                get: format!("SELECT value, version FROM {table} WHERE key = $1"),
                insert: format!(
                    "INSERT INTO {table} (key, value, version) VALUES ($1, $2, nextval('\"{schema}\".tokenvault_version')) \
                     ON CONFLICT (key) DO NOTHING RETURNING version"
                ),
                update: format!(
                    "UPDATE {table} SET value = $2, version = nextval('\"{schema}\".tokenvault_version') \
                     WHERE key = $1 AND version = $3 RETURNING version"
                ),
                delete: format!("DELETE FROM {table} WHERE key = $1 AND version = $2"),
                list: format!(
                    "SELECT key FROM {table} WHERE key >= $1 AND starts_with(key, $1) AND ($2::text IS NULL OR key > $2) \
                     ORDER BY key LIMIT $3"
                ),
                commit: format!("SELECT \"{schema}\".tokenvault_commit($1, $2, $3)"),
            },
            connector: Connector { config, tls },
            schema,
            shared: Mutex::new(None),
            committing: Mutex::new(None),
            cache: None,
            listener: None,
            #[cfg(test)]
            server_reads: Default::default(),
        };
        let (client, _) = storage.connector.connect(None).await?;
        client.batch_execute(&schema_sql(&storage.schema)).await.map_err(unavailable)?;
        let prepared = storage.prepare(&client).await?;
        *storage.shared.lock().await = Some(Arc::new(Connection { client, prepared }));
        if let Some(cache) = cache.map(Arc::new) {
            // Nothing is kept until this host listens.
            cache.pause();
            let listening = listen(&storage.connector, &cache, &storage.schema).await?;
            let listener = tokio::spawn(keep_listening(
                storage.connector.clone(),
                cache.clone(),
                storage.schema.clone(),
                listening,
            ));
            storage.listener = Some(listener.abort_handle());
            storage.cache = Some(cache);
        }
        Ok(storage)
    }

    /// The shared connection, opened again if it was lost.
    async fn shared(&self) -> StorageResult<Arc<Connection>> {
        self.connection(&self.shared).await
    }

    /// The connection in `slot`, opened again if it was lost.
    async fn connection(&self, slot: &Mutex<Option<Arc<Connection>>>) -> StorageResult<Arc<Connection>> {
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(connection.clone());
        }
        let connection = Arc::new(self.open().await?);
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn open(&self) -> StorageResult<Connection> {
        let (client, _) = self.connector.connect(None).await?;
        let prepared = self.prepare(&client).await?;
        Ok(Connection { client, prepared })
    }

    /// After a write of this host's, whatever its outcome.
    fn forget(&self, key: &str) {
        if let Some(cache) = &self.cache {
            cache.forget(key.as_bytes());
        }
    }

    async fn prepare(&self, client: &Client) -> StorageResult<Prepared> {
        let statements = &self.statements;
        let (get, insert, update, delete, list, commit) = tokio::try_join!(
            client.prepare(&statements.get),
            client.prepare(&statements.insert),
            client.prepare(&statements.update),
            client.prepare(&statements.delete),
            client.prepare(&statements.list),
            client.prepare(&statements.commit),
        )
        .map_err(unavailable)?;
        Ok(Prepared { get, insert, update, delete, list, commit })
    }
}

impl Connector {
    /// A client, its connection driven on a task of its own (returned). With `notified`,
    /// each notification names a key that cache forgets, and the connection's end pauses it.
    async fn connect(&self, notified: Option<Arc<RecordCache>>) -> StorageResult<(Client, JoinHandle<()>)> {
        Ok(match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await.map_err(unavailable)?;
                (client, drive(connection, notified))
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await.map_err(unavailable)?;
                (client, drive(connection, notified))
            }
        })
    }
}

fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>, notified: Option<Arc<RecordCache>>) -> JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let ended = std::future::poll_fn(|cx| {
            loop {
                match std::task::ready!(connection.poll_message(cx)) {
                    Some(Ok(AsyncMessage::Notification(note))) => {
                        if let Some(cache) = &notified {
                            match note.payload() {
                                "" => cache.forget_all(),
                                key => cache.forget(key.as_bytes()),
                            }
                        }
                    }
                    Some(Ok(_)) => {} // a notice
                    Some(Err(e)) => return Poll::Ready(Err(e)),
                    None => return Poll::Ready(Ok(())),
                }
            }
        })
        .await;
        if let Some(cache) = &notified {
            cache.pause();
        }
        if let Err(e) = ended {
            tracing::warn!(error = %e, "postgres connection closed");
        }
    })
}

/// The statements that create `schema`'s table, sequence and trigger (shared with the
/// Node.js package, which runs the same file).
fn schema_sql(schema: &str) -> String {
    include_str!("postgres.sql")
        .replace("{schema}", schema)
        .replace("{channel}", &channel_of(schema))
        .replace("{uncached}", UNCACHED_PREFIX)
}

/// The channel the trigger notifies of changes to `schema`'s records.
fn channel_of(schema: &str) -> String {
    format!("tokenvault_{schema}")
}

/// A connection listening on `schema`'s channel for `cache`, the cache resumed: its client
/// and the task driving it.
async fn listen(
    connector: &Connector,
    cache: &Arc<RecordCache>,
    schema: &str,
) -> StorageResult<(Client, JoinHandle<()>)> {
    let mut connector = connector.clone();
    // Named, so an operator can tell it in pg_stat_activity.
    connector.config.application_name(format!("tokenvault listener {schema}"));
    let (client, driver) = connector.connect(Some(cache.clone())).await?;
    if let Err(e) = client.batch_execute(&format!("LISTEN \"{}\"", channel_of(schema))).await {
        driver.abort();
        return Err(unavailable(e));
    }
    cache.resume();
    // Closed before the resume, its driver may have paused the cache first: pause it again.
    if client.is_closed() {
        cache.pause();
    }
    Ok((client, driver))
}

/// Keep `cache` true for as long as the storage lives: check the listening connection
/// every [`HEARTBEAT`], and when it is lost, pause the cache and listen again.
async fn keep_listening(
    connector: Connector,
    cache: Arc<RecordCache>,
    schema: String,
    mut listening: (Client, JoinHandle<()>),
) {
    loop {
        let (client, driver) = listening;
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            if !matches!(tokio::time::timeout(HEARTBEAT, client.simple_query("")).await, Ok(Ok(_))) {
                break;
            }
        }
        cache.pause();
        driver.abort();
        tracing::warn!(
            "postgres: stopped listening for changes; records are read from the database until it listens again"
        );
        let mut wait = RELISTEN_MIN;
        listening = loop {
            tokio::time::sleep(wait).await;
            match listen(&connector, &cache, &schema).await {
                Ok(listening) => break listening,
                Err(e) => {
                    tracing::warn!(error = %e, "postgres: could not listen for changes");
                    wait = (wait * 2).min(RELISTEN_MAX);
                }
            }
        };
    }
}

#[async_trait::async_trait]
impl Storage for PostgresStorage {
    async fn get(&self, key: &str) -> StorageResult<Option<Entry>> {
        #[cfg(test)]
        self.server_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Connection { client, prepared } = &*self.shared().await?;
        let row = client.query_opt(&prepared.get, &[&key]).await.map_err(unavailable)?;
        Ok(row.map(|row| Entry { value: row.get(0), version: row.get::<_, i64>(1) as u64 }))
    }

    async fn get_cached(&self, key: &str) -> StorageResult<Option<Entry>> {
        match &self.cache {
            Some(cache) if !key.starts_with(UNCACHED_PREFIX) => cache.read_through(key.as_bytes(), self.get(key)).await,
            _ => self.get(key).await,
        }
    }

    async fn put(&self, key: &str, value: &[u8], expected: Option<u64>) -> StorageResult<u64> {
        let Connection { client, prepared } = &*self.shared().await?;
        let row = match expected {
            None => client.query_opt(&prepared.insert, &[&key, &value]).await,
            Some(expected) => client.query_opt(&prepared.update, &[&key, &value, &(expected as i64)]).await,
        };
        self.forget(key);
        let row = row.map_err(unavailable)?;
        row.map(|row| row.get::<_, i64>(0) as u64).ok_or(StorageError::Conflict)
    }

    async fn delete(&self, key: &str, expected: u64) -> StorageResult<()> {
        let Connection { client, prepared } = &*self.shared().await?;
        let deleted = client.execute(&prepared.delete, &[&key, &(expected as i64)]).await;
        self.forget(key);
        let deleted = deleted.map_err(unavailable)?;
        if deleted == 1 { Ok(()) } else { Err(StorageError::Conflict) }
    }

    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> StorageResult<KeyPage> {
        let Connection { client, prepared } = &*self.shared().await?;
        let rows = client.query(&prepared.list, &[&prefix, &cursor, &i64::from(limit)]).await.map_err(unavailable)?;
        let keys: Vec<String> = rows.into_iter().map(|row| row.get(0)).collect();
        Ok(KeyPage::of(keys, limit))
    }

    async fn commit(&self, writes: &[Write]) -> StorageResult<Vec<Option<u64>>> {
        let Connection { client, prepared } = &*self.connection(&self.committing).await?;
        // One statement, its writes as three arrays (postgres.sql's tokenvault_commit).
        let mut keys = Vec::with_capacity(writes.len());
        let mut values = Vec::with_capacity(writes.len());
        let mut expected = Vec::with_capacity(writes.len());
        for write in writes {
            let (value, version) = match write {
                Write::Put { value, expected, .. } => (Some(value.as_slice()), expected.map(|v| v as i64)),
                Write::Delete { expected, .. } => (None, Some(*expected as i64)),
            };
            keys.push(write.key());
            values.push(value);
            expected.push(version);
        }
        let committed = client.query_one(&prepared.commit, &[&keys, &values, &expected]).await;
        writes.iter().for_each(|write| self.forget(write.key()));
        match committed {
            Ok(row) => Ok(row.get::<_, Vec<Option<i64>>>(0).into_iter().map(|v| v.map(|v| v as u64)).collect()),
            Err(e) if e.as_db_error().is_some_and(|refusal| refusal.code().code() == CONFLICT) => {
                Err(StorageError::Conflict)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    fn describe(&self) -> String {
        let config = &self.connector.config;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        format!(
            "postgres (host {}, database {}, schema {}, {})",
            hosts.join(","),
            config.get_dbname().unwrap_or("(default)"),
            self.schema,
            match &self.cache {
                Some(cache) => format!("cache of {} records", cache.capacity()),
                None => "no cache".into(),
            }
        )
    }
}

impl Drop for PostgresStorage {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::storage::{cached_reads_until, conformance, holds_within, test_server, unique_name};

    /// A schema of its own on the test server, dropped when the test ends.
    struct Schema {
        url: String,
        name: String,
    }

    impl Schema {
        fn new(test: &str) -> Option<Self> {
            let url = test_server("TOKENVAULT_TEST_POSTGRES", test)?;
            Some(Schema { url, name: unique_name("tv_test") })
        }

        /// A host on the schema: connections (and a cache) of its own.
        async fn host(&self, params: &str) -> PostgresStorage {
            PostgresStorage::connect(&format!("{}?schema={}{params}", self.url, self.name))
                .await
                .expect("connect to TOKENVAULT_TEST_POSTGRES")
        }

        async fn drop_schema(self) {
            let host = self.host("&cache=0").await;
            let client = &host.shared().await.unwrap().client;
            client.batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", self.name)).await.unwrap();
        }

        /// End this schema's listening connections, as a failing network would.
        async fn cut_listeners(&self) {
            let host = self.host("&cache=0").await;
            let client = &host.shared().await.unwrap().client;
            let cut = client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                    &[&format!("tokenvault listener {}", self.name)],
                )
                .await
                .unwrap();
            assert!(!cut.is_empty(), "no listening connection to cut");
        }
    }

    fn reads(host: &PostgresStorage) -> u64 {
        host.server_reads.load(Ordering::Relaxed)
    }

    /// Put an entry for `key` in `host`'s cache, as a read would.
    fn hold(host: &PostgresStorage, key: &str) {
        let cache = host.cache.as_ref().unwrap();
        cache.keep(key.as_bytes(), None, cache.ticket(key.as_bytes()));
    }

    /// Whether a notification takes `key` out of `host`'s cache within 2 s.
    async fn forgotten(host: &PostgresStorage, key: &str) -> bool {
        let cache = host.cache.as_ref().unwrap();
        holds_within(Duration::from_secs(2), async || cache.get(key.as_bytes()).is_none()).await
    }

    /// Wait until `here` has had the notification of every write committed so far, its own
    /// included: they come in commit order, so once a marker `there` writes now is
    /// forgotten, every earlier one has arrived.
    async fn caught_up(here: &PostgresStorage, there: &PostgresStorage) {
        let marker = unique_name("marker");
        hold(here, &marker);
        there.put(&marker, b"", None).await.unwrap();
        assert!(forgotten(here, &marker).await, "the marker's notification never came");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance() {
        let Some(schema) = Schema::new("storage::postgres::conformance") else { return };
        let storage = schema.host("").await;
        assert!(storage.describe().ends_with("cache of 10000 records)"), "{}", storage.describe());
        conformance::run(Arc::new(storage)).await;
        let again = schema.host("&cache=0").await;
        assert!(again.describe().ends_with("no cache)"), "migrations are idempotent: {}", again.describe());
        schema.drop_schema().await;

        let Some(uncached) = Schema::new("storage::postgres::conformance_uncached") else { return };
        conformance::run(Arc::new(uncached.host("&cache=0").await)).await;
        uncached.drop_schema().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_cached_read_costs_no_round_trip_until_another_host_changes_the_record() {
        let Some(schema) = Schema::new("storage::postgres::cached_read") else { return };
        let (here, there) = (schema.host("").await, schema.host("").await);
        let v1 = here.put("k", b"1", None).await.unwrap();
        // The notification of its own write would take the first read back out.
        caught_up(&here, &there).await;
        let before = reads(&here);
        for _ in 0..50 {
            assert_eq!(here.get_cached("k").await.unwrap().unwrap().version, v1);
        }
        assert_eq!(reads(&here) - before, 1, "one read, then the cache");
        assert_eq!(here.get("k").await.unwrap().unwrap().version, v1);
        assert_eq!(reads(&here) - before, 2, "get itself always reads the database");

        let v2 = there.put("k", b"2", Some(v1)).await.unwrap();
        assert!(cached_reads_until(&here, "k", |v| v == Some(v2)).await, "the other host's write was never seen");
        let v3 = there.commit(&[Write::Put { key: "k".into(), value: b"3".to_vec(), expected: Some(v2) }]).await;
        let v3 = v3.unwrap()[0].unwrap();
        assert!(cached_reads_until(&here, "k", |v| v == Some(v3)).await, "the other host's commit was never seen");
        there.delete("k", v3).await.unwrap();
        assert!(cached_reads_until(&here, "k", |v| v.is_none()).await, "the other host's delete was never seen");
        // Absence is kept too, and a create by the other host invalidates it.
        let before = reads(&here);
        assert_eq!(here.get_cached("k").await.unwrap(), None);
        assert_eq!(reads(&here), before);
        let v4 = there.put("k", b"4", None).await.unwrap();
        assert!(cached_reads_until(&here, "k", |v| v == Some(v4)).await, "the other host's create was never seen");
        schema.drop_schema().await;
    }

    /// The audit trail is written by nearly every call and cached by no host: its writes
    /// notify no one, and a cached read of it reads the database.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_audit_trails_writes_notify_no_one() {
        let Some(schema) = Schema::new("storage::postgres::audit_unnotified") else { return };
        let (here, there) = (schema.host("").await, schema.host("").await);
        let audit = format!("{UNCACHED_PREFIX}/1");
        let (v_audit, v_k) = (there.put(&audit, b"1", None).await.unwrap(), there.put("k", b"1", None).await.unwrap());
        caught_up(&here, &there).await;

        hold(&here, &audit);
        hold(&here, "k");
        there.put(&audit, b"2", Some(v_audit)).await.unwrap();
        there.put("k", b"2", Some(v_k)).await.unwrap();
        assert!(forgotten(&here, "k").await, "the record's notification never came");
        let cache = here.cache.as_ref().unwrap();
        assert!(cache.get(audit.as_bytes()).is_some(), "the trail's write was notified");

        let before = reads(&here);
        for _ in 0..2 {
            assert_eq!(here.get_cached(&audit).await.unwrap().unwrap().value, b"2");
        }
        assert_eq!(reads(&here) - before, 2, "the trail was read from a cache");
        schema.drop_schema().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_host_reads_its_own_writes_at_once_and_a_lost_race_reads_the_winner() {
        let Some(schema) = Schema::new("storage::postgres::own_writes") else { return };
        let (here, there) = (schema.host("").await, schema.host("").await);
        conformance::cached_reads_see_own_writes_and_the_winner(&here, &there).await;
        schema.drop_schema().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_lost_listening_connection_empties_the_cache_until_it_listens_again() {
        let Some(schema) = Schema::new("storage::postgres::lost_listener") else { return };
        let (here, there) = (schema.host("").await, schema.host("&cache=0").await);
        let v1 = here.put("k", b"1", None).await.unwrap();
        assert_eq!(here.get_cached("k").await.unwrap().unwrap().version, v1);
        schema.cut_listeners().await;
        // Written while `here` may have no one listening, so no notification need reach it.
        let v2 = there.put("k", b"2", Some(v1)).await.unwrap();
        assert!(cached_reads_until(&here, "k", |v| v == Some(v2)).await, "served the copy from before the cut");
        // It listens again within a moment, and then keeps what it reads.
        let cached_again = holds_within(Duration::from_secs(5), async || {
            here.get_cached("k").await.unwrap();
            let before = reads(&here);
            here.get_cached("k").await.unwrap();
            reads(&here) == before
        });
        assert!(cached_again.await, "never cached again after the cut");
        let v3 = there.put("k", b"3", Some(v2)).await.unwrap();
        assert!(cached_reads_until(&here, "k", |v| v == Some(v3)).await, "a write after it listened again was missed");
        schema.drop_schema().await;
    }

    #[tokio::test]
    async fn a_cache_size_that_is_not_a_number_or_a_schema_too_long_is_refused() {
        let Err(err) = PostgresStorage::connect("postgres://127.0.0.1:1/db?cache=lots").await else { panic!() };
        assert_eq!(
            err.to_string(),
            "storage unavailable: postgres: cache=lots is not a number of records (0 turns the cache off)"
        );
        let long = "s".repeat(MAX_SCHEMA + 1);
        let Err(err) = PostgresStorage::connect(&format!("postgres://127.0.0.1:1/db?schema={long}")).await else {
            panic!()
        };
        assert_eq!(
            err.to_string(),
            "storage unavailable: postgres: schema must be 1 to 48 lowercase letters, digits and _"
        );
    }

    #[test]
    fn our_parameters_are_taken_out_of_the_url() {
        assert_eq!(split_param("postgres://h/db?schema=s", "schema"), ("postgres://h/db".into(), Some("s".into())));
        assert_eq!(
            split_param("postgres://h/db?a=1&schema=s&b=2", "schema"),
            ("postgres://h/db?a=1&b=2".into(), Some("s".into()))
        );
        assert_eq!(split_param("postgres://h/db", "schema"), ("postgres://h/db".into(), None));
    }
}
