//! The end-to-end harness: a real OAuth server (oidc-provider on 127.0.0.1), the
//! `tokenvault` binary, and helpers to drive both.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use serde_json::{Value, json};
use tokenvault::storage::StorageUrl;
use tokenvault::{ConnectionKey, Options, TokenGrant, Vault};

pub mod canary;
pub mod postgres;
pub mod redis;
pub mod tls;

/// A folder of the tests: the OAuth server, and the Node and Python hosts.
pub fn tests_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// Run `install` in `dir` unless `installed` exists there. Test binaries run in parallel,
/// so installs run under a file lock in that folder.
pub fn install_once(dir: &Path, installed: &str, install: &mut Command) {
    let lock = std::fs::File::create(dir.join(".install.lock")).expect("create install lock");
    lock.lock().expect("take install lock");
    if !dir.join(installed).exists() {
        let status = install.current_dir(dir).status().unwrap_or_else(|e| panic!("run {install:?}: {e}"));
        assert!(status.success(), "{install:?} in {} failed", dir.display());
    }
}

/// Install a folder's npm packages (the versions its package-lock.json pins) if they are
/// missing. Node.js 20+ and npm are needed. `npm ci` installs exactly the lock file and fails
/// when it does not match package.json.
pub fn ensure_npm_packages(dir: &Path, marker_package: &str) {
    let marker = format!("node_modules/{marker_package}/package.json");
    install_once(dir, &marker, Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]));
}

/// The virtual environment of a folder with a requirements.txt (pinned with hashes), its
/// packages installed on first use and again when the requirements change; returns its
/// interpreter. Python 3.9+ is needed.
pub fn python_venv(dir: &Path) -> PathBuf {
    let modified = |path: PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if let (Some(pinned), Some(installed)) =
        (modified(dir.join("requirements.txt")), modified(dir.join(".venv/installed")))
        && pinned > installed
    {
        std::fs::remove_file(dir.join(".venv/installed")).unwrap();
    }
    let script = tests_dir("python-venv.sh");
    install_once(dir, ".venv/installed", Command::new("sh").arg(script).arg(dir));
    dir.join(".venv/bin/python")
}

/// Run `command`; its stdout and stderr, or a failure showing them when it fails.
pub fn output_of(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let shown = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} failed:\n{shown}");
    shown
}

/// The Node.js package's folder (`host/node`) with its build tools (jco) installed; their
/// install scripts are not needed to build, so they are not run.
pub fn node_package_dir() -> PathBuf {
    let dir = tests_dir("../host/node");
    install_once(
        &dir,
        "node_modules/@bytecodealliance/jco/package.json",
        Command::new("npm").args(["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]),
    );
    dir
}

/// A random number below `n`.
pub fn random_below(n: u64) -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    u64::from_le_bytes(bytes) % n
}

/// A random value, e.g. a client secret that doubles as a canary.
pub fn random_value(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).unwrap();
    format!("{prefix}{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl OAuthServer {
    /// The provider registration `serve`'s API takes for this server (`PUT /v1/providers/…`):
    /// client `vault-basic`, refresh tokens, revocation, a consent prompt.
    pub fn provider_body(&self) -> Value {
        json!({
            "token_url": self.token_url(),
            "authorization_url": format!("{}/auth", self.issuer),
            "revocation_url": format!("{}/token/revocation", self.issuer),
            "client_id": "vault-basic",
            "client_secret": self.basic_secret,
            "client_auth": "client_secret_basic",
            "scopes": ["openid", "offline_access"],
            "authorization_params": [["prompt", "consent"]],
        })
    }
}

/// The account on the OAuth server's login page (its `tenant` claim is acme).
pub const TEST_LOGIN: &str = "test-user";
pub const TEST_PASSWORD: &str = "test-password";

/// oidc-provider on 127.0.0.1 with refresh-token rotation and short-lived access tokens.
/// Stops when dropped.
pub struct OAuthServer {
    child: Child,
    pub issuer: String,
    pub port: u16,
    /// The origin of a provider API beside it (`http://127.0.0.1:PORT`) that accepts only
    /// this server's active access tokens (checked by introspection): `/echo/...` answers
    /// what it received as JSON, `/status/NNN` with that status, `/big?bytes=N`,
    /// `/slow?ms=N` and `/leak` (sends the Authorization header back).
    pub api: String,
    /// Secret of client `vault-basic` (client_secret_basic).
    pub basic_secret: String,
    /// Secret of client `vault-post` (client_secret_post).
    pub post_secret: String,
    /// Secret of client `console`: an operator's OpenID Connect login for the console.
    pub console_secret: String,
    agent: ureq::Agent,
}

impl OAuthServer {
    /// Start a server whose access tokens live `access_ttl_secs`.
    pub fn start(access_ttl_secs: u32) -> Self {
        ensure_npm_packages(&tests_dir("oauth-server"), "oidc-provider");
        let basic_secret = random_value("basic-secret-");
        let post_secret = random_value("post-secret-");
        let console_secret = random_value("console-secret-");
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(tests_dir("oauth-server"))
            .env("ACCESS_TTL", access_ttl_secs.to_string())
            .env("BASIC_SECRET", &basic_secret)
            .env("POST_SECRET", &post_secret)
            .env("CONSOLE_SECRET", &console_secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node (Node.js 20+ is needed for the OAuth test server)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("read the server's ready line");
        let ready: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("OAuth server did not start: {line:?}"));
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        OAuthServer {
            child,
            issuer: ready["issuer"].as_str().unwrap().to_owned(),
            port: ready["port"].as_u64().unwrap() as u16,
            api: ready["api"].as_str().unwrap().to_owned(),
            basic_secret,
            post_secret,
            console_secret,
            agent,
        }
    }

    /// The origin to allow (`--allow-outbound`).
    pub fn origin(&self) -> String {
        self.issuer.clone()
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// Tokens from a real authorization-code + PKCE flow for `client_id`.
    pub fn grant(&self, client_id: &str) -> Value {
        self.post_json("/__test/grant", json!({ "client_id": client_id }))
    }

    /// Act as the user's browser on an authorization URL: log in and consent (or refuse,
    /// with `deny`) and return the redirect the provider ends at.
    pub fn authorize(&self, url: &str, deny: bool) -> String {
        let answer = self.post_json("/__test/authorize", json!({ "url": url, "deny": deny }));
        answer["location"].as_str().expect("a redirect location").to_owned()
    }

    /// Act as the user on the device verification page: enter `user_code`, log in and
    /// consent (or abort, with `deny`).
    pub fn enter_user_code(&self, user_code: &str, deny: bool) {
        self.post_json("/__test/device", json!({ "user_code": user_code, "deny": deny }));
    }

    /// Whether the server holds `token` as active (RFC 7662), asked as `client_id`.
    pub fn is_active(&self, client_id: &str, token: &str) -> bool {
        let request = self.agent.post(format!("{}/token/introspection", self.issuer));
        let mut response = match client_id {
            "vault-basic" => {
                request.header("authorization", basic_auth(client_id, &self.basic_secret)).send_form([("token", token)])
            }
            "vault-post" => request.send_form([
                ("token", token),
                ("client_id", client_id),
                ("client_secret", self.post_secret.as_str()),
            ]),
            other => panic!("{other} cannot introspect"),
        }
        .unwrap();
        assert_eq!(response.status(), 200, "introspection failed");
        let answer: Value = response.body_mut().read_json().unwrap();
        answer["active"].as_bool().expect("introspection answers active")
    }

    /// Token requests with a device code that reached the provider, plus faults served
    /// in place of any token request.
    pub fn device_polls_and_faults(&self) -> (u64, u64) {
        let stats = self.stats();
        (stats["device_polls"].as_u64().unwrap(), stats["faults_served"].as_u64().unwrap())
    }

    /// A JWT with `claims`, signed by the key at `{issuer}/__test/jwks`, valid for `ttl_secs`
    /// (negative: expired that long ago).
    pub fn jwt(&self, claims: Value, ttl_secs: i64) -> String {
        let answer = self.post_json("/__test/jwt", json!({ "claims": claims, "ttl": ttl_secs }));
        answer["jwt"].as_str().expect("a jwt").to_owned()
    }

    /// Make the next token request(s) fail: {status, body, content_type, delay_ms, reset, count}.
    pub fn fault(&self, fault: Value) {
        self.post_json("/__test/fault", fault);
    }

    /// Refresh-token grants the server saw: (succeeded, failed, of which invalid_grant).
    pub fn refresh_stats(&self) -> (u64, u64, u64) {
        let stats = self.stats();
        let n = |k: &str| stats[k].as_u64().unwrap();
        (n("refresh_ok"), n("refresh_error"), n("invalid_grant"))
    }

    fn stats(&self) -> Value {
        self.agent.get(format!("{}/__test/stats", self.issuer)).call().unwrap().body_mut().read_json().unwrap()
    }

    /// A refresh grant sent straight to the token endpoint as `client_id`, bypassing the vault.
    pub fn raw_refresh(&self, client_id: &str, refresh_token: &str) -> (u16, Value) {
        let form = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
        let request = self.agent.post(self.token_url());
        let mut response = match client_id {
            "vault-basic" => request.header("authorization", basic_auth(client_id, &self.basic_secret)).send_form(form),
            _ => request.send_form([
                form[0],
                form[1],
                ("client_id", client_id),
                ("client_secret", self.post_secret.as_str()),
            ]),
        }
        .unwrap();
        (response.status().as_u16(), response.body_mut().read_json().unwrap_or(Value::Null))
    }

    /// Every request the API server received, in order: method, url (path and query as
    /// sent), headers, body_bytes.
    pub fn api_seen(&self) -> Vec<Value> {
        let mut response = self.agent.get(format!("{}/__test/api/seen", self.issuer)).call().unwrap();
        response.body_mut().read_json().unwrap()
    }

    /// How many TCP connections the API server has accepted.
    pub fn api_connections(&self) -> u64 {
        let mut response = self.agent.get(format!("{}/__test/api/connections", self.issuer)).call().unwrap();
        response.body_mut().read_json::<Value>().unwrap()["connections"].as_u64().unwrap()
    }

    /// Make the API server's next `count` requests answer `status` (or wait `delay_ms`
    /// first) without looking at their token: `{"status": 401, "count": 2}`.
    pub fn api_fault(&self, fault: Value) {
        self.post_json("/__test/api/fault", fault);
    }

    fn post_json(&self, path: &str, body: Value) -> Value {
        let mut response = self.agent.post(format!("{}{path}", self.issuer)).send_json(body).unwrap();
        assert!(response.status().is_success(), "{path} answered {}", response.status());
        response.body_mut().read_json().unwrap()
    }
}

fn basic_auth(client_id: &str, secret: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}")))
}

impl OAuthServer {
    /// Every secret this server handed out so far, and its clients' secrets.
    pub fn secrets(&self) -> Vec<String> {
        let mut response = self.agent.get(format!("{}/__test/issued", self.issuer)).call().unwrap();
        let mut secrets: Vec<String> = response.body_mut().read_json().unwrap();
        secrets.extend([self.basic_secret.clone(), self.post_secret.clone(), self.console_secret.clone()]);
        secrets
    }
}

impl Drop for OAuthServer {
    /// Stops the server, after the canary scan: nothing tokenvault showed in this test
    /// process holds a secret this server handed out (see [`canary`]).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let findings = canary::findings(&self.secrets());
            let _ = self.child.kill();
            let _ = self.child.wait();
            if let Some((source, text)) = findings.first() {
                panic!(
                    "canary scan: {} texts tokenvault showed hold a secret; the first, from {source}:\n{text}",
                    findings.len()
                );
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `tokenvault` binary cargo built next to this test (cargo builds the host's
/// binary for its own integration tests, which `cargo test --workspace` includes).
pub fn tokenvault_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join(format!("tokenvault{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} is missing: build it with `cargo build -p tokenvault-cli`", bin.display());
    bin
}

/// One run of the CLI.
#[derive(Debug, Clone)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        assert_eq!(self.code, 0, "command failed: {}", self.stderr);
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// The error's kind: the first word of the one stderr line.
    pub fn error_kind(&self) -> String {
        assert_ne!(self.code, 0, "command succeeded: {}", self.stdout);
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let last = lines.last().unwrap_or_else(|| panic!("no error line on stderr"));
        last.split(':').next().unwrap().to_owned()
    }
}

/// The CLI with its own data directory.
pub struct Tokenvault {
    pub data_dir: tempfile::TempDir,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Every run so far, for scans.
    pub runs: std::cell::RefCell<Vec<(Vec<String>, Run)>>,
}

impl Tokenvault {
    pub fn new(allowed: &[&str]) -> Self {
        let mut args = Vec::new();
        for origin in allowed {
            args.push("--allow-outbound".to_owned());
            args.push((*origin).to_owned());
        }
        Tokenvault { data_dir: tempfile::tempdir().unwrap(), args, env: Vec::new(), runs: Default::default() }
    }

    /// A host with a data directory of its own on a shared store (`--storage`), given the
    /// store's master key (base64) in its environment.
    pub fn on_store(allowed: &[&str], storage_url: &str, master_key: &str) -> Self {
        let mut tv = Tokenvault::new(allowed);
        tv.args.extend(["--storage".into(), storage_url.into()]);
        tv.env.push((tokenvault::keys::MASTER_KEY_ENV.into(), master_key.into()));
        tv
    }

    /// A new API key for `tenant`: the key and its id.
    pub fn api_key(&self, tenant: &str) -> (String, String) {
        let made = self.run(&["apikey", "create", tenant], None).json();
        (made["key"].as_str().unwrap().to_owned(), made["id"].as_str().unwrap().to_owned())
    }

    /// Start a command that waits for something (a browser, a user code) and return it running.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut child = Command::new(tokenvault_bin())
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(&self.args)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tokenvault");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        Running { child, stderr, shown: String::new() }
    }

    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut child = Command::new(tokenvault_bin())
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(&self.args)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("TOKENVAULT_DATA_DIR")
            .env_remove("TOKENVAULT_STORAGE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tokenvault");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let output = child.wait_with_output().unwrap();
        let run = Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        let source = format!("tokenvault {}", args.first().unwrap_or(&""));
        canary::record_answer(&source, &run.stdout);
        canary::record(source, &run.stderr);
        self.runs.borrow_mut().push((args.iter().map(|s| s.to_string()).collect(), run.clone()));
        run
    }
}

impl Tokenvault {
    /// Every event of the audit trail, newest first: `tokenvault audit ls`, page by page.
    pub fn audit_events(&self) -> Vec<Value> {
        let mut events = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut args = vec!["audit", "ls", "--limit", "1000"];
            if let Some(cursor) = &cursor {
                args.extend(["--cursor", cursor.as_str()]);
            }
            let page = self.run(&args, None).json();
            events.extend(page["events"].as_array().expect("a page of events").iter().cloned());
            match page["cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return events,
            }
        }
    }
}

/// A CLI run still going (`connect`, `open-link`), its stderr read as it comes.
pub struct Running {
    child: Child,
    stderr: BufReader<std::process::ChildStderr>,
    /// What has been read from stderr so far.
    pub shown: String,
}

impl Running {
    /// The first stderr line (trimmed) that `wanted` accepts; panics if stderr ends first.
    pub fn line_where(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            let mut line = String::new();
            assert!(self.stderr.read_line(&mut line).unwrap() > 0, "ended before printing the line: {}", self.shown);
            self.shown.push_str(&line);
            canary::record("tokenvault (running)", &line);
            if wanted(line.trim()) {
                return line.trim().to_owned();
            }
        }
    }

    /// Wait for the end (asserting success): its stdout as JSON, and everything it
    /// printed, stdout and stderr.
    pub fn finish(mut self) -> (Value, String) {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stderr, &mut rest).unwrap();
        canary::record("tokenvault (running)", &rest);
        self.shown.push_str(&rest);
        let output = self.child.wait_with_output().unwrap();
        assert!(output.status.success(), "failed: {}", self.shown);
        let stdout = String::from_utf8_lossy(&output.stdout);
        canary::record_answer("tokenvault (running)", &stdout);
        self.shown.push_str(&stdout);
        let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"));
        (json, self.shown)
    }
}

/// A vault opened in-process over a fresh data directory, allowed to reach `allowed`.
pub async fn open_vault(data_dir: &Path, allowed: &[&str]) -> tokenvault::Vault {
    let mut options = tokenvault::Options::from_data_dir(data_dir).unwrap();
    options.allow_outbound(&allowed.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    tokenvault::Vault::open(&options).await.unwrap()
}

/// A provider registration for one of the server's clients, endpoints given.
pub fn provider_config(server: &OAuthServer, name: &str, client_id: &str) -> tokenvault::ProviderConfig {
    let (secret, auth) = match client_id {
        "vault-basic" => (Some(&server.basic_secret), tokenvault::ClientAuth::ClientSecretBasic),
        "vault-post" => (Some(&server.post_secret), tokenvault::ClientAuth::ClientSecretPost),
        _ => (None, tokenvault::ClientAuth::ClientSecretPost),
    };
    tokenvault::ProviderConfig {
        name: name.into(),
        authorization_url: Some(format!("{}/auth", server.issuer)),
        token_url: Some(server.token_url()),
        client_id: client_id.into(),
        client_secret: secret.cloned(),
        client_auth: Some(auth),
        // oidc-provider issues a refresh token for offline_access only with prompt=consent.
        scopes: vec!["openid".into(), "offline_access".into()],
        authorization_params: vec![("prompt".into(), "consent".into())],
        ..Default::default()
    }
}

/// A token response JSON as the grant gave it, parsed for `store`.
pub fn grant_of(response: &Value) -> tokenvault::TokenGrant {
    tokenvault::TokenGrant::from_json(response.to_string().as_bytes()).unwrap()
}

/// Real storage with switchable faults on token records, for the storage fault tests.
pub struct FlakyStorage {
    pub inner: std::sync::Arc<dyn tokenvault::storage::Storage>,
    /// Token writes fail as if the backend went away.
    pub fail_token_writes: std::sync::atomic::AtomicBool,
    /// Before the next token write, another writer updates the record (a version conflict).
    pub race_next_token_write: std::sync::atomic::AtomicBool,
    /// Commits (the audit trail's appends) fail as if the backend went away.
    pub fail_commits: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl tokenvault::storage::Storage for FlakyStorage {
    async fn get(&self, key: &str) -> tokenvault::storage::StorageResult<Option<tokenvault::storage::Entry>> {
        self.inner.get(key).await
    }

    async fn put(&self, key: &str, value: &[u8], expected: Option<u64>) -> tokenvault::storage::StorageResult<u64> {
        use std::sync::atomic::Ordering::SeqCst;
        if key.starts_with("tok/") {
            if self.fail_token_writes.load(SeqCst) {
                return Err(tokenvault::storage::StorageError::Unavailable("test: backend unreachable".into()));
            }
            if self.race_next_token_write.swap(false, SeqCst)
                && let Some(current) = self.inner.get(key).await?
            {
                self.inner.put(key, &current.value, Some(current.version)).await?;
            }
        }
        self.inner.put(key, value, expected).await
    }

    async fn delete(&self, key: &str, expected: u64) -> tokenvault::storage::StorageResult<()> {
        self.inner.delete(key, expected).await
    }

    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> tokenvault::storage::StorageResult<tokenvault::storage::KeyPage> {
        self.inner.list(prefix, cursor, limit).await
    }

    async fn commit(
        &self,
        writes: &[tokenvault::storage::Write],
    ) -> tokenvault::storage::StorageResult<Vec<Option<u64>>> {
        if self.fail_commits.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(tokenvault::storage::StorageError::Unavailable("test: backend unreachable".into()));
        }
        self.inner.commit(writes).await
    }

    fn describe(&self) -> String {
        format!("flaky {}", self.inner.describe())
    }
}

/// Two `serve` processes, each with a data directory of its own, on one new schema of the
/// test PostgreSQL, the OAuth server's `idp` provider put through the first.
pub struct TwoServices {
    pub storage_url: String,
    pub a: Tokenvault,
    pub b: Tokenvault,
    pub served_a: Served,
    pub served_b: Served,
    /// The operator key the first printed.
    pub operator: String,
}

impl TwoServices {
    /// None, said on stderr for `test`, when `TOKENVAULT_TEST_POSTGRES` is not set.
    pub fn on_postgres(server: &OAuthServer, test: &str) -> Option<TwoServices> {
        let Ok(url) = std::env::var("TOKENVAULT_TEST_POSTGRES") else {
            eprintln!("SKIPPED {test}: TOKENVAULT_TEST_POSTGRES is not set");
            return None;
        };
        let schema = random_value("tv_").replace('-', "_");
        let storage_url = format!("{url}?schema={schema}");
        let master = tokenvault::keys::MasterKey::generate().unwrap().to_base64();
        let host = || Tokenvault::on_store(&[&server.origin()], &storage_url, &master);
        let (a, b) = (host(), host());
        let served_a = a.serve();
        let operator = served_a.first_key.clone().expect("a fresh service prints its first key");
        let served_b = b.serve();
        let provider = served_a.call("PUT", "/v1/providers/idp", Some(&operator), Some(&server.provider_body()));
        assert_eq!(provider.0, 200, "{}", provider.1);
        Some(TwoServices { storage_url, a, b, served_a, served_b, operator })
    }
}

/// `tokenvault serve` on a free loopback port, its stdout and logs collected as they come.
/// Stopped with SIGTERM when dropped (or by [`Served::stop`]).
pub struct Served {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The operator key a fresh service prints, when it printed one.
    pub first_key: Option<String>,
    /// Everything it printed so far, stdout and stderr (the logs): see [`Served::log`].
    printed: std::sync::Arc<std::sync::Mutex<String>>,
    agent: ureq::Agent,
}

impl Tokenvault {
    /// Start `tokenvault serve`; returns once it listens (a first key is printed before that).
    pub fn serve(&self) -> Served {
        self.serve_with(&[])
    }

    /// `serve` with more options, e.g. `["--refresh-every", "1"]`.
    pub fn serve_with(&self, options: &[&str]) -> Served {
        let mut child = Command::new(tokenvault_bin())
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(&self.args)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(options)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("TOKENVAULT_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tokenvault serve");
        let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (lines, first_lines) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (printed, lines) = (printed.clone(), lines.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    canary::record("serve log", &line);
                    printed.lock().unwrap_or_else(|e| e.into_inner()).push_str(&format!("{line}\n"));
                    let _ = lines.send(line);
                }
            });
        }
        drop(lines);
        let (mut url, mut first_key) = (None, None);
        while url.is_none() {
            let line = first_lines
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("serve did not start: {}", printed.lock().unwrap().clone()));
            if let Some(key) = line.strip_prefix("First API key (operator): ") {
                first_key = Some(key.trim().to_owned());
            }
            url = url.or_else(|| served_url(&line));
        }
        // Redirects are answers to check, not to follow.
        let agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().new_agent();
        Served { child, url: url.unwrap(), first_key, printed, agent }
    }
}

impl Served {
    /// One request: `(status, JSON body or Null)`; `key` goes in `Authorization: Bearer`.
    pub fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> (u16, Value) {
        let (status, text) = self.call_text(method, path, key, body.map(Value::to_string).as_deref());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A browser's GET of `url` (on this service): `(status, Location header, body text)`.
    pub fn browse(&self, url: &str) -> (u16, Option<String>, String) {
        let path = url.strip_prefix(&self.url).unwrap_or_else(|| panic!("{url} is not on {}", self.url));
        let mut response = self.agent.get(format!("{}{path}", self.url)).call().unwrap();
        let location = response.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
        let body = response.body_mut().read_to_string().unwrap_or_default();
        canary::record(format!("GET {path}"), &format!("{}\n{body}", location.as_deref().unwrap_or_default()));
        (response.status().as_u16(), location, body)
    }

    /// One request with a raw body: `(status, body text)`.
    pub fn call_text(&self, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> (u16, String) {
        let request = http_request(method, &format!("{}{path}", self.url));
        let request = match key {
            Some(key) => request.header("authorization", format!("Bearer {key}")),
            None => request,
        };
        let response = match body {
            Some(body) => {
                self.agent.run(request.header("content-type", "application/json").body(body.to_owned()).unwrap())
            }
            None => self.agent.run(request.body(()).unwrap()),
        };
        let mut response = response.unwrap_or_else(|e| {
            // The service's last lines (a panic, say) may still be on their way.
            std::thread::sleep(std::time::Duration::from_millis(300));
            panic!("{method} {path}: {e}\n{}", self.log())
        });
        let text = response.body_mut().read_to_string().unwrap_or_default();
        canary::record_answer(format!("{method} {path}"), &text);
        (response.status().as_u16(), text)
    }

    /// What the service printed so far (stdout and stderr, one line each).
    pub fn log(&self) -> String {
        self.printed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A browser of this service's pages: keeps cookies, shows redirects without following.
    pub fn browser(&self) -> Browser {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().new_agent();
        Browser { agent, base: self.url.clone() }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory now, in KiB (Linux: /proc/PID/status).
    pub fn resident_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// SIGKILL: gone at once, whatever it was doing.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send SIGTERM and wait for the exit: whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

fn http_request(method: &str, url: &str) -> ureq::http::request::Builder {
    ureq::http::Request::builder().method(method).uri(url)
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// The base URL `tokenvault serve` names in the line that says it is serving, if `line` is it.
pub fn served_url(line: &str) -> Option<String> {
    Some(line.strip_prefix("tokenvault is serving ")?.split_whitespace().next()?.to_owned())
}

/// A cookie-keeping client of one service's pages (see [`Served::browser`]).
pub struct Browser {
    agent: ureq::Agent,
    base: String,
}

/// A page as a browser got it.
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub headers: std::collections::HashMap<String, String>,
    pub body: String,
}

impl Page {
    /// The CSRF token of the page's first form.
    pub fn csrf(&self) -> String {
        let marker = r#"name="csrf" value=""#;
        let start = self.body.find(marker).unwrap_or_else(|| panic!("no CSRF field in:\n{}", self.body)) + marker.len();
        self.body[start..].split('"').next().unwrap().to_owned()
    }
}

impl Browser {
    /// GET a path of the service, or a full URL on it.
    pub fn get(&self, path_or_url: &str) -> Page {
        Self::page(format!("GET {path_or_url}"), self.agent.get(self.url(path_or_url)).call())
    }

    /// Submit a form (`application/x-www-form-urlencoded`).
    pub fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        Self::page(format!("POST {path}"), self.agent.post(self.url(path)).send_form(form.iter().copied()))
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http") { path_or_url.to_owned() } else { format!("{}{path_or_url}", self.base) }
    }

    fn page(source: String, response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Page {
        let mut response = response.expect("the service answers");
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or_default().to_owned()))
            .collect::<std::collections::HashMap<_, _>>();
        let page = Page {
            status: response.status().as_u16(),
            location: headers.get("location").cloned(),
            body: response.body_mut().read_to_string().unwrap_or_default(),
            headers,
        };
        canary::record(source, &format!("{}\n{}", page.location.as_deref().unwrap_or_default(), page.body));
        page
    }
}

/// A data directory whose `rust.db` (its keyring wrapped by `master.key`) holds one connection written by
/// the Rust host, and `plan.json` saying what it holds and what another host should write.
pub async fn interop_dir(server: &OAuthServer) -> (tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().unwrap();
    let key = json!({"tenant": "acme", "user": "dora", "provider": "idp", "name": "default"});
    let plan = json!({
        "rust_wrote": {"key": key, "access_token": random_value("rust-at-"), "refresh_token": random_value("rust-rt-")},
        "other_writes": {"key": {"tenant": "acme", "user": "emil", "provider": "idp", "name": "default"},
            "access_token": random_value("other-at-"), "refresh_token": random_value("other-rt-")},
    });
    let vault = open_sqlite_vault(dir.path(), "rust.db").await;
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

/// A vault on the SQLite file `db` of data directory `dir`.
pub async fn open_sqlite_vault(dir: &Path, db: &str) -> Vault {
    let mut options = Options::from_data_dir(dir).unwrap();
    options.storage = StorageUrl::Sqlite(dir.join(db));
    options.cache_dir = None;
    Vault::open(&options).await.unwrap()
}

/// A connection key as the JSON of `plan.json` spells it.
pub fn connection_key(key: &Value) -> ConnectionKey {
    let field = |name: &str| key[name].as_str().unwrap();
    ConnectionKey::new(field("tenant"), field("user"), field("provider"), field("name"))
}

/// Calls each host process of a single-flight test makes at once.
pub const GETS_PER_PROCESS: usize = 50;

/// Host processes on `storage_url` fire `GETS_PER_PROCESS` concurrent `get`s each at one
/// expired token: the OAuth server must see exactly one refresh and no invalid_grant, and
/// every caller receive the same new access token. `hosts` makes the processes from the
/// arguments each takes (`DATA_DIR STORAGE_URL ALLOWED_ORIGIN TENANT USER PROVIDER GETS`, as
/// `vault_worker` does): each reads the connection once, prints `ready`, waits for a line on
/// stdin, then prints one line per get (the access token, or `error KIND`).
pub async fn single_flight_across_processes(storage_url: &str, hosts: impl Fn(&[String]) -> Vec<Command>) {
    let server = OAuthServer::start(600);
    let dir = tempfile::tempdir().unwrap();

    // Set up through an in-process host: provider, and a fresh token, which each worker reads
    // once as it starts. Every host of a shared store is given the same master key: here, one
    // file in the data directory they share.
    let master_key = dir.path().join(tokenvault::keys::MASTER_KEY_FILE);
    tokenvault::keys::MasterKey::generate().unwrap().write_new(&master_key).unwrap();
    let mut options = tokenvault::Options::from_data_dir(dir.path()).unwrap();
    options.storage = StorageUrl::parse(storage_url).unwrap();
    options.allow_outbound(&[server.origin()]).unwrap();
    let vault = tokenvault::Vault::open(&options).await.unwrap();
    vault.put_provider(&provider_config(&server, "idp", "vault-basic")).await.unwrap();
    let mut response = server.grant("vault-basic");
    let original = response["access_token"].as_str().unwrap().to_owned();
    let key = ConnectionKey::new("acme", "alice", "idp", "default");
    vault.store(&key, &grant_of(&response)).await.unwrap();

    // The workers share the data directory (master key, compiled component) and the storage.
    let args: Vec<String> = [dir.path().to_str().unwrap(), storage_url, &server.origin(), "acme", "alice", "idp"]
        .into_iter()
        .map(str::to_owned)
        .chain([GETS_PER_PROCESS.to_string()])
        .collect();
    let mut workers: Vec<_> = hosts(&args)
        .into_iter()
        .map(|mut host| host.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap())
        .collect();
    let processes = workers.len();
    let mut outputs: Vec<_> = workers.iter_mut().map(|w| BufReader::new(w.stdout.take().unwrap())).collect();
    for output in &mut outputs {
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
    }
    // Once all are ready (however long each took to start), the same tokens again, expiring
    // in a second: every worker's next get finds them expired.
    assert_eq!(server.refresh_stats(), (0, 0, 0), "the workers' warm-up gets refreshed");
    response["expires_in"] = 1.into();
    vault.store(&key, &grant_of(&response)).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    for worker in &mut workers {
        worker.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    let mut tokens = Vec::new();
    for (worker, output) in workers.iter_mut().zip(outputs) {
        tokens.extend(output.lines().map(Result::unwrap));
        assert!(worker.wait().unwrap().success());
    }

    assert_eq!(tokens.len(), processes * GETS_PER_PROCESS);
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
