//! The Node.js package (`host/node`) as a user gets it: packed with `npm pack`, installed
//! from the tarball into a new project, and its test file run there, importing the
//! installed `tokenvault`, against the real OAuth server, PostgreSQL and Redis. Then the
//! Rust host reads what it stored in a shared SQLite file and verifies the audit chain both
//! appended to, and Rust and Node.js processes race one expired token on SQLite and on
//! PostgreSQL.

use std::process::Command;

use tokenvault::audit::Trail;
use tokenvault_tests::{
    OAuthServer, connection_key, interop_dir, node_package_dir, open_sqlite_vault, output_of, random_value,
    single_flight_across_processes,
};

#[tokio::test(flavor = "multi_thread")]
async fn the_node_package_installs_from_its_tarball_and_serves() {
    let package = node_package_dir();
    let server = OAuthServer::start(3600);
    let (interop, plan) = interop_dir(&server).await;
    let work = tempfile::tempdir().unwrap();
    let component = work.path().join("tokenvault.wasm");
    std::fs::write(&component, tokenvault::COMPONENT_WASM).unwrap();
    let sandbox = work.path().join("sandbox-component");
    output_of(
        Command::new("node")
            .arg("build.mjs")
            .arg(env!("TOKENVAULT_SANDBOX_COMPONENT_PATH"))
            .arg("--out")
            .arg(&sandbox)
            .current_dir(&package),
    );

    // Packed as `npm publish` would pack it (its prepack script builds dist/ from the component).
    output_of(
        Command::new("npm")
            .args(["pack", "--loglevel=error", "--pack-destination"])
            .arg(work.path())
            .env("TOKENVAULT_COMPONENT", &component)
            .current_dir(&package),
    );
    let tarball = work.path().join("tokenvault-0.1.0.tgz");
    assert!(tarball.exists(), "npm pack made no {}", tarball.display());

    let project = work.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("package.json"), r#"{ "name": "uses-tokenvault", "private": true, "type": "module" }"#)
        .unwrap();
    output_of(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .arg(&tarball)
            .current_dir(&project),
    );
    for file in ["package.test.mjs", "race.mjs"] {
        std::fs::copy(package.join("test").join(file), project.join(file)).unwrap();
    }

    let shared = work.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let master = tokenvault::keys::MasterKey::generate().unwrap();
    std::fs::write(shared.join("master.key"), master.to_base64()).unwrap();
    // A schema and a namespace of their own on this machine's servers (README, Testing).
    let postgres = postgres_server();
    let redis = std::env::var("TOKENVAULT_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let postgres = format!("{postgres}?schema={}", random_value("node_"));
    let redis = format!("{redis}?namespace={}", random_value("node-"));
    let shown = output_of(
        Command::new("node")
            .args(["--test", "--test-reporter=spec", "package.test.mjs"])
            .env("OAUTH_ISSUER", &server.issuer)
            .env("OAUTH_BASIC_SECRET", &server.basic_secret)
            .env("TOKENVAULT_TEST_POSTGRES_STORAGE", &postgres)
            .env("TOKENVAULT_TEST_REDIS_STORAGE", &redis)
            .env("TOKENVAULT_SANDBOX_COMPONENT_DIR", &sandbox)
            .env("TOKENVAULT_SHARED_DIR", &shared)
            .env("TOKENVAULT_INTEROP_DIR", interop.path())
            .env_remove("TOKENVAULT_MASTER_KEY")
            .current_dir(&project),
    );
    println!("{shown}");
    assert!(shown.contains("ℹ pass 11") && shown.contains("ℹ fail 0"), "eleven tests passed:\n{shown}");

    // What the Node.js host stored in the Rust host's SQLite file, this host opens; the audit
    // entries both appended make one unbroken chain.
    let written = &plan["other_writes"];
    let vault = open_sqlite_vault(interop.path(), "rust.db").await;
    let token = vault.get(&connection_key(&written["key"])).await.unwrap();
    assert_eq!(token.access_token, written["access_token"].as_str().unwrap());
    assert_eq!(token.refresh_token.as_deref(), written["refresh_token"].as_str());
    let storage = tokenvault::storage::StorageUrl::Sqlite(interop.path().join("rust.db")).open().await.unwrap();
    let verified = Trail::new(storage).verify(|_, _| {}).await.unwrap();
    assert_eq!(verified.broken, None, "{verified:?}");
    assert!(verified.entries >= 5, "the Rust host's entries and the Node host's: {verified:?}");

    // Rust and Node.js hosts on one store race one expired token: one refresh for all.
    let postgres = format!("{}?schema={}", postgres_server(), random_value("node_flight_"));
    let sqlite = format!("sqlite://{}", work.path().join("shared.db").display());
    for storage in [sqlite, postgres] {
        single_flight_across_processes(&storage, |args| {
            let rust = || {
                let mut host = Command::new(env!("CARGO_BIN_EXE_vault_worker"));
                host.args(args);
                host
            };
            let node = || {
                let mut host = Command::new("node");
                host.arg("race.mjs").args(args).current_dir(&project);
                host
            };
            vec![rust(), node(), rust(), node()]
        })
        .await;
    }
}

fn postgres_server() -> String {
    std::env::var("TOKENVAULT_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}
