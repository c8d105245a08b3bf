//! The same component under Python through wasmtime-py (`tests/python-host`), supplying
//! storage, keyring and audit in its own language. This test gives its suite a real OAuth
//! server and records this (Rust) host wrote. (The Node.js package's test is `packages.rs`.)

use std::path::{Path, PathBuf};
use std::process::Command;

use tokenvault_tests::{OAuthServer, interop_dir, output_of, python_venv, tests_dir};

/// The component this host embeds, as a file for the other hosts to load.
fn component_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokenvault.wasm");
    std::fs::write(&path, tokenvault::COMPONENT_WASM).unwrap();
    path
}

/// Run a suite with the environment its tests read; fail with its output if it fails.
fn run_suite(command: &mut Command, server: &OAuthServer, component: &Path, interop: &Path) -> String {
    let shown = output_of(
        command
            .env("TOKENVAULT_COMPONENT", component)
            .env("OAUTH_ISSUER", &server.issuer)
            .env("OAUTH_BASIC_SECRET", &server.basic_secret)
            .env("TOKENVAULT_INTEROP_DIR", interop),
    );
    println!("{shown}");
    shown
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
