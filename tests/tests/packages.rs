//! The Node.js and Python packages (`host/node`, `host/python`) as users get them: the npm
//! tarball installed into a new project, the wheel into a new virtualenv, and each
//! package's test file run there, importing the installed `tokenvault`, against the real
//! OAuth server, PostgreSQL and Redis. Then the Rust host reads what each stored in a shared
//! SQLite file and verifies the audit chain they appended to, and `tokenvault serve`, Node.js
//! and Python processes race one expired token on SQLite and on PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tokenvault::audit::Trail;
use tokenvault_tests::{
    OAuthServer, connection_key, interop_dir, node_package_dir, open_sqlite_vault, output_of, random_value,
    single_flight_across_processes, tests_dir, tokenvault_bin,
};

/// A folder of this run's own under the target directory, made empty.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packages").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The product component, as a file for the packages' builds.
fn component_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokenvault.wasm");
    std::fs::write(&path, tokenvault::COMPONENT_WASM).unwrap();
    path
}

/// A project with the npm package installed from its tarball, and its test files; made
/// once per run of this file.
fn node_project() -> &'static Path {
    static PROJECT: OnceLock<PathBuf> = OnceLock::new();
    PROJECT.get_or_init(|| {
        let package = node_package_dir();
        let work = fresh_dir("node");
        // Packed as `npm publish` would pack it (its prepack script builds dist/ from the component).
        output_of(
            Command::new("npm")
                .args(["pack", "--loglevel=error", "--pack-destination"])
                .arg(&work)
                .env("TOKENVAULT_COMPONENT", component_file(&work))
                .current_dir(&package),
        );
        let tarball = work.join("tokenvault-0.1.0.tgz");
        assert!(tarball.exists(), "npm pack made no {}", tarball.display());
        let project = work.join("project");
        std::fs::create_dir(&project).unwrap();
        std::fs::write(
            project.join("package.json"),
            r#"{ "name": "uses-tokenvault", "private": true, "type": "module" }"#,
        )
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
        // The sandbox test component, transpiled as the package transpiles its own.
        output_of(
            Command::new("node")
                .arg("build.mjs")
                .arg(env!("TOKENVAULT_SANDBOX_COMPONENT_PATH"))
                .arg("--out")
                .arg(project.join("sandbox-component"))
                .current_dir(&package),
        );
        project
    })
}

/// A virtualenv with the wheel installed (its dependencies pinned with hashes by
/// `host/python/tests/requirements.txt`), and a project folder with the test files: the
/// virtualenv's python, and the project. Made once per run of this file.
fn python_project() -> &'static (PathBuf, PathBuf) {
    static PROJECT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PROJECT.get_or_init(|| {
        let package = tests_dir("../host/python");
        let work = fresh_dir("python");
        output_of(
            Command::new("python3")
                .arg("build.py")
                .arg("--component")
                .arg(component_file(&work))
                .args(["--egress", env!("TOKENVAULT_EGRESS_COMPONENT_PATH"), "--out"])
                .arg(work.join("dist"))
                .current_dir(&package),
        );
        let wheel = work.join("dist/tokenvault-0.1.0-py3-none-any.whl");
        assert!(wheel.exists(), "build.py made no {}", wheel.display());
        let venv = work.join("venv");
        output_of(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        let python = venv.join("bin/python");
        let pip = |args: &[&str]| {
            output_of(Command::new(&python).args(["-m", "pip", "--disable-pip-version-check"]).args(args))
        };
        let requirements = package.join("tests/requirements.txt");
        pip(&["install", "--quiet", "--require-hashes", "-r", requirements.to_str().unwrap()]);
        pip(&["install", "--quiet", "--no-deps", wheel.to_str().unwrap()]);
        pip(&["check"]); // the pinned packages satisfy what the wheel asks for
        let project = work.join("project");
        std::fs::create_dir(&project).unwrap();
        for file in ["test_package.py", "race.py"] {
            std::fs::copy(package.join("tests").join(file), project.join(file)).unwrap();
        }
        (python, project)
    })
}

/// What a package's test file reads: the OAuth server, PostgreSQL and Redis URLs naming a
/// schema and namespace of their own, a master key for them, and the Rust host's data
/// directory. Runs the suite and returns what it printed.
fn run_suite(command: &mut Command, server: &OAuthServer, interop: &Path, prefix: &str) -> String {
    let shared = tempfile::tempdir().unwrap();
    let master = tokenvault::keys::MasterKey::generate().unwrap();
    std::fs::write(shared.path().join("master.key"), master.to_base64()).unwrap();
    let shown = output_of(
        command
            .env("OAUTH_ISSUER", &server.issuer)
            .env("OAUTH_BASIC_SECRET", &server.basic_secret)
            .env("TOKENVAULT_TEST_POSTGRES_STORAGE", format!("{}?schema={}", postgres_server(), random_value(prefix)))
            .env("TOKENVAULT_TEST_REDIS_STORAGE", format!("{}?namespace={}", redis_server(), random_value(prefix)))
            .env("TOKENVAULT_SHARED_DIR", shared.path())
            .env("TOKENVAULT_INTEROP_DIR", interop)
            .env_remove("TOKENVAULT_MASTER_KEY"),
    );
    println!("{shown}");
    shown
}

/// What the other host stored in the Rust host's SQLite file, this host opens; the audit
/// entries both appended make one unbroken chain.
async fn rust_reads_what_the_other_host_stored(interop: &Path, plan: &serde_json::Value) {
    let written = &plan["other_writes"];
    let vault = open_sqlite_vault(interop, "rust.db").await;
    let token = vault.get(&connection_key(&written["key"])).await.unwrap();
    assert_eq!(token.access_token, written["access_token"].as_str().unwrap());
    assert_eq!(token.refresh_token.as_deref(), written["refresh_token"].as_str());
    let storage = tokenvault::storage::StorageUrl::Sqlite(interop.join("rust.db")).open().await.unwrap();
    let verified = Trail::new(storage).verify(|_, _| {}).await.unwrap();
    assert_eq!(verified.broken, None, "{verified:?}");
    assert!(verified.entries >= 5, "the Rust host's entries and the other host's: {verified:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_package_installs_from_its_tarball_and_serves() {
    let project = node_project();
    let server = OAuthServer::start(3600);
    let (interop, plan) = interop_dir(&server).await;
    let shown = run_suite(
        Command::new("node")
            .args(["--test", "--test-reporter=spec", "package.test.mjs"])
            .env("TOKENVAULT_SANDBOX_COMPONENT_DIR", project.join("sandbox-component"))
            .env("TOKENVAULT_CLI", tokenvault_bin())
            .current_dir(project),
        &server,
        interop.path(),
        "node_",
    );
    assert!(shown.contains("ℹ pass 12") && shown.contains("ℹ fail 0"), "twelve tests passed:\n{shown}");
    rust_reads_what_the_other_host_stored(interop.path(), &plan).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_package_installs_from_its_wheel_and_serves() {
    let (python, project) = python_project();
    let server = OAuthServer::start(3600);
    let (interop, plan) = interop_dir(&server).await;
    let shown = run_suite(
        Command::new(python)
            .args(["-m", "pytest", "-v", "-p", "no:cacheprovider", "test_package.py"])
            .env("TOKENVAULT_SANDBOX_COMPONENT", env!("TOKENVAULT_SANDBOX_COMPONENT_PATH"))
            .env("TOKENVAULT_CLI", tokenvault_bin())
            .current_dir(project),
        &server,
        interop.path(),
        "python_",
    );
    assert!(shown.contains("13 passed"), "thirteen tests passed:\n{shown}");
    rust_reads_what_the_other_host_stored(interop.path(), &plan).await;
}

/// `tokenvault serve`, a Node.js process and a Python process on one store race one expired
/// token, 50 callers each: one refresh for all.
#[tokio::test(flavor = "multi_thread")]
async fn serve_node_and_python_processes_share_one_refresh() {
    let node = node_project();
    let (python, python_dir) = python_project();
    let work = tempfile::tempdir().unwrap();
    let postgres = format!("{}?schema={}", postgres_server(), random_value("flight_"));
    let sqlite = format!("sqlite://{}", work.path().join("shared.db").display());
    for storage in [sqlite, postgres] {
        single_flight_across_processes(&storage, |args| {
            let mut serve = Command::new(env!("CARGO_BIN_EXE_serve_worker"));
            serve.args(args);
            let mut node_host = Command::new("node");
            node_host.arg("race.mjs").args(args).current_dir(node);
            let mut python_host = Command::new(python);
            python_host.arg("race.py").args(args).current_dir(python_dir);
            vec![serve, node_host, python_host]
        })
        .await;
    }
}

fn postgres_server() -> String {
    std::env::var("TOKENVAULT_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn redis_server() -> String {
    std::env::var("TOKENVAULT_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}
