//! The same component under two other hosts: Node.js through jco (`tests/node-host`) and
//! Python through wasmtime-py (`tests/python-host`), each supplying storage, keyring and
//! audit in its own language. These tests give each suite a real OAuth server and
//! records this (Rust) host wrote, run it, and read back what the Node host wrote: the
//! formats are one.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use tokenvault::storage::StorageUrl;
use tokenvault::{ConnectionKey, Options, TokenGrant, Vault};
use tokenvault_tests::{OAuthServer, ensure_npm_packages, provider_config, python_venv, random_value, tests_dir};

/// A data directory whose `rust.db` (its keyring wrapped by `master.key`) holds one connection written by
/// this host, and `plan.json` saying what it holds and what the other host should write.
async fn interop_dir(server: &OAuthServer) -> (tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().unwrap();
    let key = json!({"tenant": "acme", "user": "dora", "provider": "idp", "name": "default"});
    let plan = json!({
        "rust_wrote": {"key": key, "access_token": random_value("rust-at-"), "refresh_token": random_value("rust-rt-")},
        "node_writes": {"key": {"tenant": "acme", "user": "emil", "provider": "idp", "name": "default"},
            "access_token": random_value("node-at-"), "refresh_token": random_value("node-rt-")},
    });
    let vault = open(dir.path(), "rust.db").await;
    vault.put_provider(&provider_config(server, "idp", "vault-basic")).await.unwrap();
    let grant = TokenGrant {
        access_token: plan["rust_wrote"]["access_token"].as_str().unwrap().into(),
        token_type: "Bearer".into(),
        expires_in: Some(3600),
        refresh_token: Some(plan["rust_wrote"]["refresh_token"].as_str().unwrap().into()),
        scope: None,
    };
    vault.store(&connection_key(&key), &grant).await.unwrap();
    drop(vault); // closes the SQLite file, folding its write-ahead log into it
    std::fs::write(dir.path().join("plan.json"), plan.to_string()).unwrap();
    (dir, plan)
}

async fn open(dir: &Path, db: &str) -> Vault {
    let mut options = Options::from_data_dir(dir).unwrap();
    options.storage = StorageUrl::Sqlite(dir.join(db));
    options.cache_dir = None;
    Vault::open(&options).await.unwrap()
}

fn connection_key(key: &Value) -> ConnectionKey {
    let field = |name: &str| key[name].as_str().unwrap();
    ConnectionKey::new(field("tenant"), field("user"), field("provider"), field("name"))
}

/// The component this host embeds, as a file for the other hosts to load.
fn component_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokenvault.wasm");
    std::fs::write(&path, tokenvault::COMPONENT_WASM).unwrap();
    path
}

/// Run a suite with the environment its tests read; fail with its output if it fails.
fn run_suite(command: &mut Command, server: &OAuthServer, component: &Path, interop: &Path) -> String {
    let output = command
        .env("TOKENVAULT_COMPONENT", component)
        .env("OAUTH_ISSUER", &server.issuer)
        .env("OAUTH_BASIC_SECRET", &server.basic_secret)
        .env("TOKENVAULT_INTEROP_DIR", interop)
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let shown = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} failed:\n{shown}");
    println!("{shown}");
    shown
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_host_runs_the_component_and_shares_its_records() {
    let dir = tests_dir("node-host");
    ensure_npm_packages(&dir, "@bytecodealliance/jco");
    let server = OAuthServer::start(3600);
    let (interop, plan) = interop_dir(&server).await;
    let component = component_file(interop.path());

    let shown = run_suite(
        Command::new("node").args(["--test", "--test-reporter=spec", "test/"]).current_dir(&dir),
        &server,
        &component,
        interop.path(),
    );
    assert!(shown.contains("pass 7") && shown.contains("fail 0"), "seven tests passed:\n{shown}");

    // What the Node host sealed and stored, this host opens.
    let written = &plan["node_writes"];
    let vault = open(interop.path(), "node.db").await;
    let token = vault.get(&connection_key(&written["key"])).await.unwrap();
    assert_eq!(token.access_token, written["access_token"].as_str().unwrap());
    assert_eq!(token.refresh_token.as_deref(), written["refresh_token"].as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_host_runs_the_component() {
    let python = python_venv(&tests_dir("python-host"));
    let server = OAuthServer::start(3600);
    let (interop, _plan) = interop_dir(&server).await;
    let component = component_file(interop.path());

    let shown = run_suite(
        Command::new(python)
            .args(["-m", "pytest", "-v", "-p", "no:cacheprovider"])
            .current_dir(tests_dir("python-host")),
        &server,
        &component,
        interop.path(),
    );
    assert!(shown.contains("9 passed"), "nine tests passed:\n{shown}");
}
