//! What the suites share: timing and statistics, vault fixtures, the guest compiled
//! natively, and a local token endpoint.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokenvault::audit::MemoryAudit;
use tokenvault::keys::{Keys, MasterKeySource};
use tokenvault::storage::{MemoryStorage, Storage};
use tokenvault::{ClientAuth, ConnectionKey, ProviderConfig, SandboxLimits, Services, TokenGrant, Vault};
use tokenvault_guest::platform::{Entry, HttpError, KeyPage, Platform, SealingKey, StorageError};

/// The test-only component, whose `floor` user opens a record and does nothing else.
pub const SANDBOX_COMPONENT: &[u8] = include_bytes!(env!("TOKENVAULT_SANDBOX_COMPONENT_PATH"));

/// Per-operation times of one case.
#[derive(Default, Clone)]
pub struct Sample(pub Vec<Duration>);

impl Sample {
    fn sorted(&self) -> Vec<Duration> {
        let mut times = self.0.clone();
        times.sort();
        times
    }

    pub fn percentile(&self, p: f64) -> Duration {
        let times = self.sorted();
        assert!(!times.is_empty(), "an empty sample");
        times[((times.len() - 1) as f64 * p).round() as usize]
    }

    pub fn median(&self) -> Duration {
        self.percentile(0.5)
    }
}

/// `callers` tasks, each calling `op` again and again for `lasting`: every call's time.
pub async fn concurrently<F, Fut>(callers: usize, lasting: Duration, op: F) -> Sample
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let until = Instant::now() + lasting;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut sample = Sample::default();
                while Instant::now() < until {
                    let start = Instant::now();
                    op().await;
                    sample.0.push(start.elapsed());
                }
                sample
            })
        })
        .collect();
    joined(tasks).await
}

/// The samples of `tasks` together, once all are done.
pub async fn joined(tasks: Vec<tokio::task::JoinHandle<Sample>>) -> Sample {
    let mut all = Sample::default();
    for task in tasks {
        all.0.extend(task.await.unwrap().0);
    }
    all
}

/// Microseconds, for reports.
pub fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 100.0 { format!("{us:.0}") } else { format!("{us:.1}") }
}

pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// Run each case `rounds` times in turn, `per_round` operations at a time, so that a
/// noisy moment hits every case alike; `run(i)` does one operation of case `i`.
pub async fn interleaved(
    names: &[&'static str],
    rounds: usize,
    per_round: usize,
    mut run: impl AsyncFnMut(usize),
) -> Vec<(&'static str, Sample)> {
    let mut samples = vec![Sample::default(); names.len()];
    for case in 0..names.len() {
        for _ in 0..per_round.min(100) {
            run(case).await; // warm up
        }
    }
    for _ in 0..rounds {
        for (case, sample) in samples.iter_mut().enumerate() {
            for _ in 0..per_round {
                let start = Instant::now();
                run(case).await;
                sample.0.push(start.elapsed());
            }
        }
    }
    names.iter().copied().zip(samples).collect()
}

/// A markdown table of samples: median and p99 per case, and the median's ratio to `base`.
pub fn table(samples: &[(&str, Sample)], base: Option<&str>) -> String {
    let base = base.map(|b| samples.iter().find(|(n, _)| *n == b).expect("base case").1.median());
    let mut out = String::from("| case | median µs | p99 µs |");
    out.push_str(if base.is_some() { " ratio |\n|---|---:|---:|---:|\n" } else { "\n|---|---:|---:|\n" });
    for (name, sample) in samples {
        out.push_str(&format!("| {name} | {} | {} |", us(sample.median()), us(sample.percentile(0.99))));
        if let Some(base) = base {
            out.push_str(&format!(" {:.2}× |", ratio(sample.median(), base)));
        }
        out.push('\n');
    }
    out
}

/// One line on a target: what was measured, the bound, met or missed.
pub fn target(what: &str, measured: f64, bound: f64, lower_is_better: bool) -> String {
    let met = if lower_is_better { measured <= bound } else { measured >= bound };
    let relation = if lower_is_better { "≤" } else { "≥" };
    format!("- {what}: **{measured:.2}** (target {relation} {bound}): {}\n", if met { "met" } else { "MISSED" })
}

pub fn find<'a>(samples: &'a [(&str, Sample)], name: &str) -> &'a Sample {
    &samples.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no case {name}")).1
}

pub fn key(user: &str) -> ConnectionKey {
    ConnectionKey::new("acme", user, "idp", "default")
}

/// A token response like a provider's: an hour to live.
pub fn grant(n: u64) -> TokenGrant {
    TokenGrant {
        access_token: format!("gho_{:036}", n),
        token_type: "Bearer".into(),
        expires_in: Some(3600),
        refresh_token: Some(format!("ghr_{:076}", n)),
        scope: Some("openid offline_access repo".into()),
    }
}

pub fn provider(token_url: &str) -> ProviderConfig {
    ProviderConfig {
        name: "idp".into(),
        token_url: Some(token_url.into()),
        client_id: "bench".into(),
        client_secret: Some("bench-secret".into()),
        client_auth: Some(ClientAuth::ClientSecretPost),
        ..Default::default()
    }
}

/// Services over `storage`, its keyring wrapped by a master key in `dir` (so vaults made
/// here over one store share it).
pub async fn services(dir: &Path, storage: Arc<dyn Storage>) -> Services {
    let master = MasterKeySource::DataDir(dir.join("master.key"));
    Services {
        keys: Arc::new(Keys::open(storage.clone(), master, None, true).await.unwrap()),
        storage,
        // In memory: a JSON-lines file would add a write per call to every case alike.
        audit: Arc::new(MemoryAudit::default()),
        clock: Default::default(),
    }
}

/// As `services`, with the audit trail kept in `storage` itself, as `serve` keeps it.
pub async fn trailed_services(dir: &Path, storage: Arc<dyn Storage>) -> Services {
    Services { audit: Arc::new(tokenvault::audit::Trail::new(storage.clone())), ..services(dir, storage).await }
}

pub async fn memory_services(dir: &Path) -> Services {
    services(dir, Arc::new(MemoryStorage::default())).await
}

/// A vault running `component` (the product's unless given) over `services`, allowed to
/// reach `origin`, its compiled form cached in `dir`.
pub fn vault(
    dir: &Path,
    services: Services,
    component: Option<&[u8]>,
    limits: SandboxLimits,
    origin: Option<&str>,
) -> Vault {
    let mut egress = tokenvault::http::EgressPolicy::default();
    egress.allowed.extend(origin.map(|o| o.parse().unwrap()));
    let wasm = component.unwrap_or(tokenvault::COMPONENT_WASM);
    Vault::with_component(wasm, services, egress, limits, Some(&dir.join("cache"))).unwrap()
}

/// The guest's own code compiled natively, over the same records: what the sandbox and
/// the boundary cost, when compared with the component.
pub struct NativePlatform {
    records: BTreeMap<String, (Vec<u8>, u64)>,
    key: (String, Vec<u8>),
}

impl NativePlatform {
    /// A copy of what `storage` holds, and the keyring's active key.
    pub async fn copy_of(services: &Services) -> Self {
        let mut records = BTreeMap::new();
        let page = services.storage.list("", None, 10_000).await.unwrap();
        for key in page.keys {
            let entry = services.storage.get(&key).await.unwrap().unwrap();
            records.insert(key, (entry.value, entry.version));
        }
        let (id, material) = services.keys.active().await.unwrap();
        NativePlatform { records, key: (id, material.to_vec()) }
    }
}

impl Platform for NativePlatform {
    fn storage_get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        Ok(self.records.get(key).map(|(value, version)| Entry { value: value.clone(), version: *version }))
    }
    fn storage_put(&self, _: &str, _: &[u8], _: Option<u64>) -> Result<u64, StorageError> {
        Err(StorageError::Unavailable("read-only".into()))
    }
    fn storage_delete(&self, _: &str, _: u64) -> Result<(), StorageError> {
        Err(StorageError::Unavailable("read-only".into()))
    }
    fn storage_list(&self, _: &str, _: Option<&str>, _: u32) -> Result<KeyPage, StorageError> {
        Err(StorageError::Unavailable("read-only".into()))
    }
    fn storage_commit(&self, _: &[tokenvault::storage::Write]) -> Result<Vec<Option<u64>>, StorageError> {
        Err(StorageError::Unavailable("read-only".into()))
    }
    /// Nothing writes here, so a wait would only time out; the benchmark's gets never wait.
    fn storage_wait_for_change(&self, _: &str, _: Option<u64>, _: u32) -> Result<(), StorageError> {
        Err(StorageError::Unavailable("read-only".into()))
    }
    fn active_key(&self) -> Result<SealingKey, String> {
        Ok(SealingKey { id: self.key.0.clone(), material: self.key.1.clone() })
    }
    fn key_by_id(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        Ok((id == self.key.0).then(|| self.key.1.clone()))
    }
    fn audit(&self, event: tokenvault_guest::model::AuditEvent) {
        std::hint::black_box(event);
    }
    fn now_us(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
    }
    fn sleep_ms(&self, ms: u64) {
        std::thread::sleep(Duration::from_millis(ms))
    }
    fn http(&self, _: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        Err(HttpError::Denied)
    }
}

/// A token endpoint on 127.0.0.1 that answers every refresh with a new token pair after
/// `delay`, counting the requests.
pub struct TokenEndpoint {
    pub origin: String,
    pub url: String,
    pub requests: Arc<AtomicU64>,
}

impl TokenEndpoint {
    /// Serves on a thread and runtime of its own, as a provider across a network does: its
    /// answers never wait behind the vault's work on the bench's worker threads. The
    /// thread lives as long as the process.
    pub async fn start(delay: Duration) -> Self {
        use axum::routing::post;
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let app = axum::Router::new().route(
            "/token",
            post(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    tokio::time::sleep(delay).await;
                    let g = grant(1_000_000 + n);
                    axum::Json(serde_json::json!({
                        "access_token": g.access_token, "token_type": "Bearer", "expires_in": 3600,
                        "refresh_token": g.refresh_token, "scope": g.scope,
                    }))
                }
            }),
        );
        let origin = serve_on_own_thread(app);
        TokenEndpoint { url: format!("{origin}/token"), origin, requests }
    }
}

/// Serve `app` on 127.0.0.1 from a thread and runtime of its own, as a server across a
/// network would: its answers never wait behind the bench's worker threads. Its origin.
fn serve_on_own_thread(app: axum::Router) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), app).await.unwrap()
        })
    });
    origin
}

/// A provider API on 127.0.0.1 (see [`api_app`]).
pub fn api_endpoint() -> String {
    serve_on_own_thread(api_app())
}

/// A provider API: `GET /api/...` answers a small JSON document to any bearer token, 401
/// without one.
pub fn api_app() -> axum::Router {
    use axum::http::{HeaderMap, StatusCode};
    axum::Router::new().route(
        "/api/{*rest}",
        axum::routing::get(|headers: HeaderMap| async move {
            let bearer = headers.get("authorization").is_some_and(|v| v.as_bytes().starts_with(b"Bearer "));
            if !bearer {
                return (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({ "error": "no token" })));
            }
            (StatusCode::OK, axum::Json(serde_json::json!({ "login": "octocat", "id": 1, "plan": "free" })))
        }),
    )
}

/// Resident memory of this process, in bytes.
pub fn rss_bytes() -> u64 {
    rss_in(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

/// Another process's resident memory, in bytes.
pub fn process_rss(pid: u32) -> u64 {
    rss_in(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default())
}

fn rss_in(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Run a script of another language that prints its per-call times in nanoseconds as JSON
/// (`{"SERIES": [ns, …], …}`), and add series `names[i]` to `samples[i]`.
pub fn external_times(command: &mut std::process::Command, names: &[&str], samples: &mut [(&str, Sample)]) {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let times: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for (name, sample) in names.iter().zip(samples) {
        let ns = times[name].as_array().unwrap().iter().map(|t| Duration::from_nanos(t.as_u64().unwrap()));
        sample.1.0.extend(ns);
    }
}
