//! Proof at scale: several processes on one database fire 200 concurrent `get`s at one
//! expired token. The OAuth server must see exactly one refresh, no invalid_grant, and every
//! caller must receive the same new access token. On SQLite, PostgreSQL and Redis. (With
//! Node.js hosts among them: `packages.rs`.)

use std::io::Write;
use std::process::Command;

use tokenvault_tests::single_flight_across_processes;

const PROCESSES: usize = 4;

/// `PROCESSES` Rust hosts (`vault_worker`) on `storage_url`.
async fn one_refresh_for_many_callers(storage_url: String) {
    single_flight_across_processes(&storage_url, |args| {
        (0..PROCESSES)
            .map(|_| {
                let mut host = Command::new(env!("CARGO_BIN_EXE_vault_worker"));
                host.args(args);
                host
            })
            .collect()
    })
    .await;
}

/// The shared server's URL, or a SKIPPED line naming the test.
fn server(var: &str, test: &str) -> Option<String> {
    let url = std::env::var(var).ok().filter(|u| !u.is_empty());
    if url.is_none() {
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {var} is not set (see README, Testing)");
    }
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_across_processes() {
    let db = tempfile::tempdir().unwrap();
    one_refresh_for_many_callers(format!("sqlite://{}", db.path().join("shared.db").display())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_across_processes() {
    let Some(url) = server("TOKENVAULT_TEST_POSTGRES", "single_flight::postgres_across_processes") else { return };
    let schema = tokenvault_tests::random_value("tv_flight_").replace('-', "_");
    one_refresh_for_many_callers(format!("{url}?schema={schema}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_across_processes() {
    let Some(url) = server("TOKENVAULT_TEST_REDIS", "single_flight::redis_across_processes") else { return };
    one_refresh_for_many_callers(format!("{url}?namespace={}", tokenvault_tests::random_value("tv_flight_"))).await;
}
