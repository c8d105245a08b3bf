//! PostgreSQL storage, shared by many hosts.
//!
//! Every write is one conditional statement (`INSERT … ON CONFLICT DO NOTHING`, or
//! `UPDATE … WHERE version = $expected`), atomic on its own; versions come from one
//! sequence, so they are never reused. Tables are created on first use, idempotently and
//! under an advisory lock so that hosts starting together do not race. A commit of several
//! writes is a transaction on a second connection of its own: the first carries every
//! other call, pipelined, where a transaction would take in its neighbours' statements.
//! Each connection prepares its statements once, so a call is one round trip.
//! `sslmode=require` (or `verify-full`) in the URL makes every connection TLS (rustls),
//! verifying the server's certificate and name against the Mozilla roots and the CA file
//! `sslrootcert=PATH` names.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls, Statement};

use super::{Entry, KeyPage, Storage, StorageError, StorageResult, Write, split_param};

pub struct PostgresStorage {
    config: tokio_postgres::Config,
    /// None: plain TCP (`sslmode=disable`, the default).
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    schema: String,
    shared: Mutex<Option<Arc<Connection>>>,
    /// For commits, one at a time.
    transactions: Mutex<Option<Connection>>,
    statements: Statements,
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
}

/// SQL with the schema filled in.
struct Statements {
    get: String,
    insert: String,
    update: String,
    delete: String,
    list: String,
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
    /// `postgres://user@host:port/db`, optionally `?schema=NAME` (default `public`).
    pub async fn connect(url: &str) -> StorageResult<Self> {
        let (url, schema) = split_param(url, "schema");
        let schema = schema.unwrap_or_else(|| "public".into());
        if schema.is_empty() || !schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(StorageError::Unavailable("postgres: schema must be lowercase letters, digits and _".into()));
        }
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
        let storage = PostgresStorage {
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
            },
            config,
            tls,
            schema,
            shared: Mutex::new(None),
            transactions: Mutex::new(None),
        };
        let client = storage.open_client().await?;
        client
            .batch_execute(&format!(
                "BEGIN;
                 SELECT pg_advisory_xact_lock(7140591);
                 CREATE SCHEMA IF NOT EXISTS \"{schema}\";
                 CREATE SEQUENCE IF NOT EXISTS \"{schema}\".tokenvault_version;
                 CREATE TABLE IF NOT EXISTS {table} (
                     key TEXT COLLATE \"C\" PRIMARY KEY,
                     value BYTEA NOT NULL,
                     version BIGINT NOT NULL
                 );
                 COMMIT;",
                schema = storage.schema
            ))
            .await
            .map_err(unavailable)?;
        let prepared = storage.prepare(&client).await?;
        *storage.shared.lock().await = Some(Arc::new(Connection { client, prepared }));
        Ok(storage)
    }

    /// The shared connection, opened again if it was lost.
    async fn shared(&self) -> StorageResult<Arc<Connection>> {
        let mut slot = self.shared.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(connection.clone());
        }
        let connection = Arc::new(self.open().await?);
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn open(&self) -> StorageResult<Connection> {
        let client = self.open_client().await?;
        let prepared = self.prepare(&client).await?;
        Ok(Connection { client, prepared })
    }

    async fn prepare(&self, client: &Client) -> StorageResult<Prepared> {
        let statements = &self.statements;
        let (get, insert, update, delete, list) = tokio::try_join!(
            client.prepare(&statements.get),
            client.prepare(&statements.insert),
            client.prepare(&statements.update),
            client.prepare(&statements.delete),
            client.prepare(&statements.list),
        )
        .map_err(unavailable)?;
        Ok(Prepared { get, insert, update, delete, list })
    }

    async fn open_client(&self) -> StorageResult<Client> {
        fn drive<C: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static>(connection: C) {
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "postgres connection closed");
                }
            });
        }
        Ok(match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await.map_err(unavailable)?;
                drive(connection);
                client
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await.map_err(unavailable)?;
                drive(connection);
                client
            }
        })
    }
}

impl Prepared {
    /// One write inside `tx`: its new version, or `Conflict`.
    async fn apply(&self, tx: &tokio_postgres::Transaction<'_>, write: &Write) -> StorageResult<Option<u64>> {
        let written = match write {
            Write::Put { key, value, expected: None } => {
                tx.query_opt(&self.insert, &[key, value]).await.map(|row| row.map(|r| Some(r.get::<_, i64>(0) as u64)))
            }
            Write::Put { key, value, expected: Some(expected) } => tx
                .query_opt(&self.update, &[key, value, &(*expected as i64)])
                .await
                .map(|row| row.map(|r| Some(r.get::<_, i64>(0) as u64))),
            Write::Delete { key, expected } => {
                tx.execute(&self.delete, &[key, &(*expected as i64)]).await.map(|n| (n == 1).then_some(None))
            }
        };
        written.map_err(unavailable)?.ok_or(StorageError::Conflict)
    }
}

#[async_trait::async_trait]
impl Storage for PostgresStorage {
    async fn get(&self, key: &str) -> StorageResult<Option<Entry>> {
        let Connection { client, prepared } = &*self.shared().await?;
        let row = client.query_opt(&prepared.get, &[&key]).await.map_err(unavailable)?;
        Ok(row.map(|row| Entry { value: row.get(0), version: row.get::<_, i64>(1) as u64 }))
    }

    async fn put(&self, key: &str, value: &[u8], expected: Option<u64>) -> StorageResult<u64> {
        let Connection { client, prepared } = &*self.shared().await?;
        let row = match expected {
            None => client.query_opt(&prepared.insert, &[&key, &value]).await,
            Some(expected) => client.query_opt(&prepared.update, &[&key, &value, &(expected as i64)]).await,
        }
        .map_err(unavailable)?;
        row.map(|row| row.get::<_, i64>(0) as u64).ok_or(StorageError::Conflict)
    }

    async fn delete(&self, key: &str, expected: u64) -> StorageResult<()> {
        let Connection { client, prepared } = &*self.shared().await?;
        let deleted = client.execute(&prepared.delete, &[&key, &(expected as i64)]).await.map_err(unavailable)?;
        if deleted == 1 { Ok(()) } else { Err(StorageError::Conflict) }
    }

    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> StorageResult<KeyPage> {
        let Connection { client, prepared } = &*self.shared().await?;
        let rows = client.query(&prepared.list, &[&prefix, &cursor, &i64::from(limit)]).await.map_err(unavailable)?;
        let keys: Vec<String> = rows.into_iter().map(|row| row.get(0)).collect();
        Ok(KeyPage::of(keys, limit))
    }

    async fn commit(&self, writes: &[Write]) -> StorageResult<Vec<Option<u64>>> {
        let mut slot = self.transactions.lock().await;
        if slot.as_ref().is_none_or(|t| t.client.is_closed()) {
            *slot = Some(self.open().await?);
        }
        let Connection { client, prepared } = slot.as_mut().expect("opened above");
        let prepared = &*prepared;
        let tx = client.transaction().await.map_err(unavailable)?;
        // Sent together (tokio-postgres pipelines the statements of one connection), so a
        // commit costs a few round trips whatever its size.
        let applied = futures_util::future::join_all(writes.iter().map(|w| prepared.apply(&tx, w))).await;
        let versions = applied.into_iter().collect::<StorageResult<Vec<_>>>()?; // a refusal rolls back on drop
        tx.commit().await.map_err(unavailable)?;
        Ok(versions)
    }

    fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        format!(
            "postgres (host {}, database {}, schema {})",
            hosts.join(","),
            self.config.get_dbname().unwrap_or("(default)"),
            self.schema
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{conformance, test_server, unique_name};

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance() {
        let Some(url) = test_server("TOKENVAULT_TEST_POSTGRES", "storage::postgres::conformance") else { return };
        let schema = unique_name("tv_test");
        let storage = PostgresStorage::connect(&format!("{url}?schema={schema}"))
            .await
            .expect("connect to TOKENVAULT_TEST_POSTGRES");
        conformance::run(Arc::new(storage)).await;
        let again =
            PostgresStorage::connect(&format!("{url}?schema={schema}")).await.expect("migrations are idempotent");
        again.shared().await.unwrap().client.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
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
