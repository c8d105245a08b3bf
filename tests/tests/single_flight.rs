//! Proof at scale: several processes on one database fire 200 concurrent `get`s at one
//! expired token. The OAuth server must see exactly one refresh, no invalid_grant, and every
//! caller must receive the same new access token. On SQLite, PostgreSQL and Redis.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use tokenvault::ConnectionKey;
use tokenvault::storage::StorageUrl;
use tokenvault_tests::{OAuthServer, provider_config};

const PROCESSES: usize = 4;
const GETS_PER_PROCESS: usize = 50;

async fn one_refresh_for_many_callers(storage_url: String) {
    let server = OAuthServer::start(600);
    let dir = tempfile::tempdir().unwrap();

    // Set up through an in-process host: provider, and a token that expires in 4 s (due at
    // 2 s, with the buffer at half the lifetime): the workers read it once while it is fresh.
    // Every host of a shared store is given the same master key: here, one file in the
    // data directory they share.
    let master_key = dir.path().join(tokenvault::keys::MASTER_KEY_FILE);
    tokenvault::keys::MasterKey::generate().unwrap().write_new(&master_key).unwrap();
    let mut options = tokenvault::Options::from_data_dir(dir.path()).unwrap();
    options.storage = StorageUrl::parse(&storage_url).unwrap();
    options.allow_outbound(&[server.origin()]).unwrap();
    let vault = tokenvault::Vault::open(&options).await.unwrap();
    vault.put_provider(&provider_config(&server, "idp", "vault-basic")).await.unwrap();
    let mut response = server.grant("vault-basic");
    response["expires_in"] = 4.into();
    let original = response["access_token"].as_str().unwrap().to_owned();
    let key = ConnectionKey::new("acme", "alice", "idp", "default");
    vault.store(&key, &tokenvault_tests::grant_of(&response)).await.unwrap();
    let expires = std::time::Instant::now() + std::time::Duration::from_secs(4);

    // The workers share the data directory (master key, compiled component) and the storage.
    let mut workers: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_vault_worker"))
                .args([dir.path().to_str().unwrap(), &storage_url, &server.origin(), "acme", "alice", "idp"])
                .arg(GETS_PER_PROCESS.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outputs: Vec<_> = workers.iter_mut().map(|w| BufReader::new(w.stdout.take().unwrap())).collect();
    for output in &mut outputs {
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
    }
    assert_eq!(server.refresh_stats(), (0, 0, 0), "the workers' warm-up gets came too late");
    std::thread::sleep(
        expires.saturating_duration_since(std::time::Instant::now()) + std::time::Duration::from_millis(100),
    );
    for worker in &mut workers {
        worker.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    let mut tokens = Vec::new();
    for (worker, output) in workers.iter_mut().zip(outputs) {
        tokens.extend(output.lines().map(Result::unwrap));
        assert!(worker.wait().unwrap().success());
    }

    assert_eq!(tokens.len(), PROCESSES * GETS_PER_PROCESS);
    let first = &tokens[0];
    assert!(tokens.iter().all(|t| t == first), "callers got different answers: {:?}", {
        let mut distinct = tokens.clone();
        distinct.sort();
        distinct.dedup();
        distinct.into_iter().map(|t| if t.starts_with("error") { t } else { "<token>".into() }).collect::<Vec<_>>()
    });
    assert!(!first.starts_with("error"), "{first}");
    assert_ne!(first, &original, "the token was not refreshed");
    assert_eq!(server.refresh_stats(), (1, 0, 0), "(refreshes ok, failed, invalid_grant) at the provider");
    // And the result was stored: one more get is served from storage.
    assert_eq!(&vault.get(&key).await.unwrap().access_token, first);
    assert_eq!(server.refresh_stats().0, 1);

    // Leave the shared server as we found it.
    let storage = &vault.services().storage;
    for key in storage.list("", None, 1000).await.unwrap().keys {
        let version = storage.get(&key).await.unwrap().unwrap().version;
        storage.delete(&key, version).await.unwrap();
    }
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
