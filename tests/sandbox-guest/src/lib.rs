//! A test-only component, never shipped: it exports the `vault` world and misbehaves when
//! asked to, by the user named in the key, so the tests can prove what the host's sandbox
//! does with a component gone wrong:
//!
//! - `spin`: loops forever; the call deadline must stop it.
//! - `hog`: allocates until memory runs out; the memory cap must stop it.
//! - `deep`: recurses without end; the stack limit must stop it.
//! - `slow`: computes for 50 ms, then answers like anyone else.
//! - `snoop`: `get` tries what the host must not grant (environment, arguments, working
//!   directory, the file named by the key's `name`, the root directory, stdin, a TCP
//!   connection to the address in the key's `provider`) and returns, as the access
//!   token, one line per attempt saying what it got.
//! - `remember`: `get` reports, as the access token, the marks earlier calls left anywhere
//!   in this instance's linear memory, then leaves one naming the key's tenant: a fresh
//!   instance in a reused pool slot must report none.
//! - `floor`: `get` opens the connection's sealed record with the product's own `seal::open`
//!   and returns its plaintext, and does nothing else: one AES-256-GCM-SIV open plus the
//!   call across the boundary, the floor the benchmarks hold a warm `get` against. The
//!   first call reads the record and its key through the imports; later calls reuse them.
//!
//! For any other user, `store` keeps the access token in storage as is (this component
//! seals nothing) and `get` reads it back: enough to show the host still serves calls.
//! Everything else answers `invalid-input`.

#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../wit",
    world: "tokenvault:vault/vault",
    generate_all,
});

use exports::tokenvault::vault::{connect, keys, providers, proxy, tokens, webhooks};
use tokenvault::vault::{keyring, storage, types as wit};

struct Component;
export!(Component);

type WitResult<T> = Result<T, wit::Error>;

fn misbehave(user: &str) {
    match user {
        "spin" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "hog" => {
            let mut held: Vec<Vec<u8>> = Vec::new();
            loop {
                held.push(vec![1; 1 << 20]);
                std::hint::black_box(&held);
            }
        }
        "deep" => {
            std::hint::black_box(recurse(1));
        }
        "slow" => {
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_millis(50) {
                std::hint::black_box(start);
            }
        }
        _ => {}
    }
}

#[allow(unconditional_recursion)] // the point: to run out of stack
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(depth + 1).wrapping_add(frame[0])
}

fn storage_key(key: &wit::ConnectionKey) -> String {
    format!("sandbox-test/{}/{}/{}/{}", key.tenant, key.user, key.provider, key.name)
}

fn storage_error(e: storage::StorageError) -> wit::Error {
    wit::Error::Storage(match e {
        storage::StorageError::Conflict => "conflict".into(),
        storage::StorageError::Unavailable(why) => why,
    })
}

/// A token set of just a value: what this test component's `get` answers.
fn bearer(access_token: String) -> wit::TokenSet {
    wit::TokenSet { access_token, token_type: "Bearer".into(), expires_at: None, scope: None, refresh_token: None }
}

fn unsupported<T>() -> WitResult<T> {
    Err(wit::Error::InvalidInput("not supported by the sandbox test component".into()))
}

/// Everything a component could try to reach beyond its declared capabilities.
fn snoop(key: &wit::ConnectionKey) -> String {
    use std::io::Read;
    fn outcome<T>(result: std::io::Result<T>, describe: impl Fn(T) -> String) -> String {
        match result {
            Ok(value) => format!("got {}", describe(value)),
            Err(e) => format!("refused ({e})"),
        }
    }
    let env: Vec<String> = std::env::vars().map(|(name, _)| name).collect();
    let args: Vec<String> = std::env::args().collect();
    let mut stdin = [0u8; 64];
    [
        format!("environment: {} variables {env:?}", env.len()),
        format!("arguments: {} {args:?}", args.len()),
        format!("working directory: {}", outcome(std::env::current_dir(), |d| d.display().to_string())),
        format!("file: {}", outcome(std::fs::read(&key.name), |b| format!("{} bytes", b.len()))),
        format!("root directory: {}", outcome(std::fs::read_dir("/"), |d| format!("{} entries", d.count()))),
        format!("stdin: {}", outcome(std::io::stdin().read(&mut stdin), |n| format!("{n} bytes"))),
        format!("socket: {}", outcome(std::net::TcpStream::connect(&key.provider), |_| "a connection".into())),
    ]
    .join("\n")
}

/// Leaves a mark naming `tenant` in this instance's heap, after reporting the marks of
/// earlier calls found anywhere in linear memory: one instance's calls see each other's,
/// a fresh instance (in a reused pool slot) must see none.
fn remember(tenant: &str) -> String {
    // Spelled backwards in the binary, so the data segment holds no copy of the prefix.
    let prefix: Vec<u8> = b":eudiser-tluavnekot".iter().rev().copied().collect();
    let end = core::arch::wasm32::memory_size(0) * 65536;
    // SAFETY: reads this instance's own linear memory, all of it mapped, from past the
    // first KiB (no null pointer) to its end.
    let memory = unsafe { std::slice::from_raw_parts(1024 as *const u8, end - 1024) };
    let own = prefix.as_ptr() as usize - 1024;
    let mut found: Vec<String> = memory
        .windows(prefix.len())
        .enumerate()
        .filter(|&(at, window)| at != own && window == prefix.as_slice())
        .map(|(at, _)| {
            let rest = &memory[at + prefix.len()..];
            let name = rest.iter().take_while(|b| b.is_ascii_alphanumeric()).count();
            String::from_utf8_lossy(&rest[..name]).into_owned()
        })
        .collect();
    found.sort();
    let mut mark = prefix.clone();
    mark.extend_from_slice(tenant.as_bytes());
    mark.push(0);
    std::hint::black_box(Box::leak(mark.into_boxed_slice()));
    format!("residue: [{}]", found.join(","))
}

/// The sealed record and its key, as the first `floor` call read them.
static FLOOR_RECORD: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();

fn floor(key: &wit::ConnectionKey) -> WitResult<String> {
    use tokenvault_guest::{model, record, seal};
    let key = model::ConnectionKey {
        tenant: key.tenant.clone(),
        user: key.user.clone(),
        provider: key.provider.clone(),
        name: key.name.clone(),
    };
    let (envelope, material) = FLOOR_RECORD.get_or_init(|| {
        let entry = storage::get(&record::token_key(&key)).ok().flatten().expect("floor: store the record first");
        let key_id = seal::key_id(&entry.value).expect("floor: a sealed record");
        let material = keyring::key_by_id(key_id).ok().flatten().expect("floor: the record's key");
        (entry.value, material)
    });
    let plaintext = seal::open(envelope, material, &record::token_context(&key))
        .map_err(|_| wit::Error::Integrity("floor: the record does not open".into()))?;
    String::from_utf8(plaintext).map_err(|_| wit::Error::Integrity("floor: not UTF-8".into()))
}

impl tokens::Guest for Component {
    fn get(key: wit::ConnectionKey) -> WitResult<wit::TokenSet> {
        misbehave(&key.user);
        if key.user == "floor" {
            return Ok(bearer(floor(&key)?));
        }
        if key.user == "remember" {
            return Ok(bearer(remember(&key.tenant)));
        }
        if key.user == "snoop" {
            return Ok(bearer(snoop(&key)));
        }
        let entry = storage::get(&storage_key(&key)).map_err(storage_error)?;
        let entry = entry.ok_or_else(|| wit::Error::NotFound("no such connection".into()))?;
        let access_token = String::from_utf8(entry.value).map_err(|_| wit::Error::Integrity("not UTF-8".into()))?;
        Ok(bearer(access_token))
    }

    fn refresh(key: wit::ConnectionKey) -> WitResult<wit::TokenSet> {
        misbehave(&key.user);
        unsupported()
    }

    fn get_or_link(key: wit::ConnectionKey, _scopes: Option<Vec<String>>) -> WitResult<tokens::TokenOrLink> {
        misbehave(&key.user);
        unsupported()
    }

    fn remove(key: wit::ConnectionKey) -> WitResult<tokens::RemovalReceipt> {
        misbehave(&key.user);
        unsupported()
    }

    fn list(_tenant: String, user: String) -> WitResult<Vec<wit::ConnectionInfo>> {
        misbehave(&user);
        unsupported()
    }

    fn revoke_all(_tenant: String, user: String) -> WitResult<Vec<tokens::RemovalReceipt>> {
        misbehave(&user);
        unsupported()
    }

    fn users(_tenant: String, _after: Option<String>, _limit: u32) -> WitResult<tokens::UserPage> {
        unsupported()
    }

    fn due_for_refresh(_horizon_secs: u32, _cursor: Option<String>, _limit: u32) -> WitResult<tokens::DuePage> {
        unsupported()
    }

    fn refresh_if_due(key: wit::ConnectionKey, _horizon_secs: u32) -> WitResult<tokens::RefreshOutcome> {
        misbehave(&key.user);
        unsupported()
    }

    fn erase_tenant(_tenant: String, _limit: u32) -> WitResult<tokens::ErasePage> {
        unsupported()
    }

    fn store(key: wit::ConnectionKey, grant: wit::TokenGrant) -> WitResult<wit::ConnectionInfo> {
        misbehave(&key.user);
        let storage_key = storage_key(&key);
        let current = storage::get(&storage_key).map_err(storage_error)?.map(|e| e.version);
        storage::put(&storage_key, grant.access_token.as_bytes(), current).map_err(storage_error)?;
        Ok(wit::ConnectionInfo {
            provider: key.provider,
            name: key.name,
            kind: wit::ConnectionKind::User,
            scopes: Vec::new(),
            expires_at: None,
            has_refresh_token: false,
            status: wit::ConnectionStatus::Active,
            updated_at: 0,
        })
    }
}

impl providers::Guest for Component {
    fn put(_tenant: Option<String>, _config: wit::ProviderConfig) -> WitResult<wit::ProviderInfo> {
        unsupported()
    }

    fn get(_tenant: Option<String>, _name: String) -> WitResult<wit::ProviderInfo> {
        unsupported()
    }

    fn list(_tenant: Option<String>) -> WitResult<Vec<wit::ProviderInfo>> {
        unsupported()
    }

    fn remove(_tenant: Option<String>, _name: String) -> WitResult<()> {
        unsupported()
    }
}

impl connect::Guest for Component {
    fn begin(
        key: wit::ConnectionKey,
        _redirect_uri: String,
        _scopes: Option<Vec<String>>,
        _browser: Option<String>,
    ) -> WitResult<connect::AuthorizationRequest> {
        misbehave(&key.user);
        unsupported()
    }

    fn complete(_callback_query: String, _browser: Option<String>) -> WitResult<connect::Connected> {
        unsupported()
    }

    fn link(_key: wit::ConnectionKey, _scopes: Option<Vec<String>>) -> WitResult<wit::ConnectLink> {
        unsupported()
    }

    fn open_link(
        _code: String,
        _redirect_uri: String,
        _browser: Option<String>,
    ) -> WitResult<connect::AuthorizationRequest> {
        unsupported()
    }

    fn begin_device(_key: wit::ConnectionKey, _scopes: Option<Vec<String>>) -> WitResult<connect::DeviceAuthorization> {
        unsupported()
    }

    fn poll_device(_handle: String) -> WitResult<connect::DeviceStatus> {
        unsupported()
    }

    fn connect_client(_key: wit::ConnectionKey, _scopes: Option<Vec<String>>) -> WitResult<wit::ConnectionInfo> {
        unsupported()
    }

    fn sweep_expired(_cursor: Option<String>, _limit: u32) -> WitResult<connect::SweepPage> {
        unsupported()
    }
}

impl proxy::Guest for Component {
    fn send(_key: wit::ConnectionKey, _request: proxy::ProxyRequest) -> WitResult<proxy::ProxyResponse> {
        unsupported()
    }
}

impl keys::Guest for Component {
    fn reencrypt(_cursor: Option<String>, _limit: u32) -> WitResult<keys::ReencryptPage> {
        unsupported()
    }
}

impl webhooks::Guest for Component {
    fn put(_tenant: String, _config: webhooks::WebhookConfig) -> WitResult<Option<String>> {
        unsupported()
    }

    fn get(_tenant: String) -> WitResult<Option<webhooks::WebhookInfo>> {
        unsupported()
    }

    fn remove(_tenant: String) -> WitResult<()> {
        unsupported()
    }

    fn sign(
        _tenant: String,
        _event_type: String,
        _id: String,
        _timestamp: u64,
        _body: Vec<u8>,
    ) -> WitResult<Option<webhooks::SignedDelivery>> {
        unsupported()
    }
}
