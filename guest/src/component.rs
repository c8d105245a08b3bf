//! The WebAssembly component: WIT bindings, conversions, and a [`Platform`] over the
//! imports. No token logic lives here.

use crate::model;
use crate::platform::{Entry, HttpError, KeyPage, Platform, ResponseTimeout, SealingKey, StorageError, Write};
use crate::vault::Vault;

wit_bindgen::generate!({
    path: "../wit",
    world: "tokenvault:vault/vault",
    with: {
        "wasi:http/types@0.2.12": wasip2::http::types,
        "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
        "wasi:io/poll@0.2.12": wasip2::io::poll,
        "wasi:io/error@0.2.12": wasip2::io::error,
        "wasi:io/streams@0.2.12": wasip2::io::streams,
        "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
        "wasi:clocks/wall-clock@0.2.12": wasip2::clocks::wall_clock,
        "wasi:random/random@0.2.12": wasip2::random::random,
    },
});

use exports::tokenvault::vault::{connect, keys, providers, proxy, tokens, webhooks};
use tokenvault::vault::{audit, keyring, storage, types as wit};

/// Guest-side cap on a response body, for hosts that set none (the Rust host's own cap,
/// 1 MiB by default, applies first); it bounds a proxied answer held in the sandbox's memory.
const MAX_RESPONSE_BYTES: usize = 8 << 20;

struct Component;
export!(Component);

fn vault() -> Vault<Imports> {
    Vault::new(Imports)
}

type WitResult<T> = Result<T, wit::Error>;

impl tokens::Guest for Component {
    fn get(key: wit::ConnectionKey) -> WitResult<wit::TokenSet> {
        Ok(vault().get(&key.into())?.into())
    }

    fn refresh(key: wit::ConnectionKey) -> WitResult<wit::TokenSet> {
        Ok(vault().refresh(&key.into())?.into())
    }

    fn get_or_link(key: wit::ConnectionKey, scopes: Option<Vec<String>>) -> WitResult<tokens::TokenOrLink> {
        Ok(vault().get_or_link(&key.into(), scopes)?.into())
    }

    fn remove(key: wit::ConnectionKey) -> WitResult<tokens::RemovalReceipt> {
        Ok(vault().remove(&key.into())?.into())
    }

    fn list(tenant: String, user: String) -> WitResult<Vec<wit::ConnectionInfo>> {
        Ok(vault().list(&tenant, &user)?.into_iter().map(Into::into).collect())
    }

    fn revoke_all(tenant: String, user: String) -> WitResult<Vec<tokens::RemovalReceipt>> {
        Ok(vault().revoke_all(&tenant, &user)?.into_iter().map(Into::into).collect())
    }

    fn users(tenant: String, after: Option<String>, limit: u32) -> WitResult<tokens::UserPage> {
        Ok(vault().users(&tenant, after.as_deref(), limit)?.into())
    }

    fn due_for_refresh(horizon_secs: u32, cursor: Option<String>, limit: u32) -> WitResult<tokens::DuePage> {
        Ok(vault().due_for_refresh(horizon_secs, cursor.as_deref(), limit)?.into())
    }

    fn refresh_if_due(key: wit::ConnectionKey, horizon_secs: u32) -> WitResult<tokens::RefreshOutcome> {
        Ok(vault().refresh_if_due(&key.into(), horizon_secs)?.into())
    }

    fn erase_tenant(tenant: String, limit: u32) -> WitResult<tokens::ErasePage> {
        Ok(vault().erase_tenant(&tenant, limit)?.into())
    }

    fn store(key: wit::ConnectionKey, grant: wit::TokenGrant) -> WitResult<wit::ConnectionInfo> {
        Ok(vault().store(&key.into(), grant.into())?.into())
    }
}

impl providers::Guest for Component {
    fn put(tenant: Option<String>, config: wit::ProviderConfig) -> WitResult<wit::ProviderInfo> {
        Ok(vault().put_provider(tenant.as_deref(), config.into())?.into())
    }

    fn get(tenant: Option<String>, name: String) -> WitResult<wit::ProviderInfo> {
        Ok(vault().get_provider(tenant.as_deref(), &name)?.into())
    }

    fn list(tenant: Option<String>) -> WitResult<Vec<wit::ProviderInfo>> {
        Ok(vault().list_providers(tenant.as_deref())?.into_iter().map(Into::into).collect())
    }

    fn remove(tenant: Option<String>, name: String) -> WitResult<()> {
        Ok(vault().remove_provider(tenant.as_deref(), &name)?)
    }
}

impl connect::Guest for Component {
    fn begin(
        key: wit::ConnectionKey,
        redirect_uri: String,
        scopes: Option<Vec<String>>,
        browser: Option<String>,
    ) -> WitResult<connect::AuthorizationRequest> {
        Ok(vault().begin(&key.into(), &redirect_uri, scopes, browser.as_deref())?.into())
    }

    fn complete(callback_query: String, browser: Option<String>) -> WitResult<connect::Connected> {
        Ok(vault().complete(&callback_query, browser.as_deref())?.into())
    }

    fn link(key: wit::ConnectionKey, scopes: Option<Vec<String>>) -> WitResult<wit::ConnectLink> {
        Ok(vault().link(&key.into(), scopes)?.into())
    }

    fn open_link(
        code: String,
        redirect_uri: String,
        browser: Option<String>,
    ) -> WitResult<connect::AuthorizationRequest> {
        Ok(vault().open_link(&code, &redirect_uri, browser.as_deref())?.into())
    }

    fn begin_device(key: wit::ConnectionKey, scopes: Option<Vec<String>>) -> WitResult<connect::DeviceAuthorization> {
        Ok(vault().begin_device(&key.into(), scopes)?.into())
    }

    fn poll_device(handle: String) -> WitResult<connect::DeviceStatus> {
        Ok(vault().poll_device(&handle)?.into())
    }

    fn connect_client(key: wit::ConnectionKey, scopes: Option<Vec<String>>) -> WitResult<wit::ConnectionInfo> {
        Ok(vault().connect_client(&key.into(), scopes)?.into())
    }

    fn sweep_expired(cursor: Option<String>, limit: u32) -> WitResult<connect::SweepPage> {
        Ok(vault().sweep_expired(cursor.as_deref(), limit)?.into())
    }
}

impl proxy::Guest for Component {
    fn send(key: wit::ConnectionKey, request: proxy::ProxyRequest) -> WitResult<proxy::ProxyResponse> {
        Ok(vault().proxy(&key.into(), request.into())?.into())
    }
}

impl keys::Guest for Component {
    fn reencrypt(cursor: Option<String>, limit: u32) -> WitResult<keys::ReencryptPage> {
        Ok(vault().reencrypt(cursor.as_deref(), limit)?.into())
    }
}

impl webhooks::Guest for Component {
    fn put(tenant: String, config: webhooks::WebhookConfig) -> WitResult<Option<String>> {
        Ok(vault().put_webhook(&tenant, config.into())?)
    }

    fn get(tenant: String) -> WitResult<Option<webhooks::WebhookInfo>> {
        Ok(vault().get_webhook(&tenant)?.map(Into::into))
    }

    fn remove(tenant: String) -> WitResult<()> {
        Ok(vault().remove_webhook(&tenant)?)
    }

    fn sign(
        tenant: String,
        event_type: String,
        id: String,
        timestamp: u64,
        body: Vec<u8>,
    ) -> WitResult<Option<webhooks::SignedDelivery>> {
        Ok(vault().sign_delivery(&tenant, &event_type, &id, timestamp, &body)?.map(Into::into))
    }
}

tokenvault_model::wit_conversions!(
    types = wit,
    tokens = tokens,
    connect = connect,
    keys = keys,
    proxy = proxy,
    webhooks = webhooks,
    audit = audit,
    storage = storage
);

// ---- the platform, over the imports -----------------------------------------------

struct Imports;

impl Platform for Imports {
    fn storage_get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        Ok(storage::get(key)?.map(Into::into))
    }

    fn storage_put(&self, key: &str, value: &[u8], expected: Option<u64>) -> Result<u64, StorageError> {
        Ok(storage::put(key, value, expected)?)
    }

    fn storage_delete(&self, key: &str, expected: u64) -> Result<(), StorageError> {
        Ok(storage::delete(key, expected)?)
    }

    fn storage_list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<KeyPage, StorageError> {
        Ok(storage::list(prefix, cursor, limit)?.into())
    }

    fn storage_commit(&self, writes: &[Write]) -> Result<Vec<Option<u64>>, StorageError> {
        let writes: Vec<storage::Write> = writes.iter().cloned().map(Into::into).collect();
        Ok(storage::commit(&writes)?)
    }

    fn storage_wait_for_change(&self, key: &str, seen: Option<u64>, timeout_ms: u32) -> Result<(), StorageError> {
        Ok(storage::wait_for_change(key, seen, timeout_ms)?)
    }

    fn active_key(&self) -> Result<SealingKey, String> {
        let key = keyring::active_key()?;
        Ok(SealingKey { id: key.id, material: key.material })
    }

    fn key_by_id(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        // A key id always names the same material, so an instance that serves several calls
        // (a host's session of one tenant) asks the host once per key: one import crossing
        // less on every later `get`. The cache dies with the instance.
        thread_local! {
            static OPENING_KEYS: std::cell::RefCell<Vec<(String, Vec<u8>)>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        if let Some(material) =
            OPENING_KEYS.with_borrow(|keys| keys.iter().find(|(k, _)| k == id).map(|(_, m)| m.clone()))
        {
            return Ok(Some(material));
        }
        let material = keyring::key_by_id(id)?;
        if let Some(material) = &material {
            OPENING_KEYS.with_borrow_mut(|keys| keys.push((id.to_owned(), material.clone())));
        }
        Ok(material)
    }

    fn audit(&self, event: model::AuditEvent) {
        audit::emit(&event.into());
    }

    fn now_us(&self) -> u64 {
        let now = wasip2::clocks::wall_clock::now();
        now.seconds * 1_000_000 + u64::from(now.nanoseconds / 1000)
    }

    fn sleep_ms(&self, ms: u64) {
        wasip2::clocks::monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000)).block();
    }

    fn http(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        http_call(request)
    }
}

// ---- outgoing HTTP over wasi:http -------------------------------------------------

use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

fn failed(what: &str) -> impl Fn(()) -> HttpError + '_ {
    move |()| HttpError::Failed(format!("could not {what}"))
}

fn http_call(request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let headers = Fields::new();
    for (name, value) in &parts.headers {
        headers
            .append(name.as_str(), value.as_bytes())
            .map_err(|e| HttpError::Failed(format!("header {name} refused: {e:?}")))?;
    }
    // Without a length wasmtime sends the body chunked, which some token endpoints read as empty.
    headers
        .set("content-length", &[body.len().to_string().into_bytes()])
        .map_err(|e| HttpError::Failed(format!("content-length refused: {e:?}")))?;

    let outgoing = OutgoingRequest::new(headers);
    let method = match parts.method.as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        other => Method::Other(other.to_owned()),
    };
    outgoing.set_method(&method).map_err(failed("set the method"))?;
    let scheme = match parts.uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        _ => {
            return Err(HttpError::Failed("only http and https URLs are supported".into()));
        }
    };
    outgoing.set_scheme(Some(&scheme)).map_err(failed("set the scheme"))?;
    outgoing.set_authority(parts.uri.authority().map(|a| a.as_str())).map_err(failed("set the authority"))?;
    outgoing.set_path_with_query(parts.uri.path_and_query().map(|p| p.as_str())).map_err(failed("set the path"))?;
    let outgoing_body = outgoing.body().map_err(failed("open the request body"))?;

    let options = parts.extensions.get::<ResponseTimeout>().map(|ResponseTimeout(timeout)| {
        let options = RequestOptions::new();
        // A host that cannot honour it keeps its own limit.
        let _ = options.set_first_byte_timeout(Some(timeout.as_nanos().try_into().unwrap_or(u64::MAX)));
        options
    });
    let future = wasip2::http::outgoing_handler::handle(outgoing, options).map_err(http_error)?;
    let written = write_body(outgoing_body, &body);
    // A denied request first shows as a body write error; the response says why.
    let response = await_response(&future)?;
    written?;
    read_response(response)
}

fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), HttpError> {
    {
        let stream = body.write().map_err(failed("open the request body stream"))?;
        for chunk in bytes.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|_| HttpError::Failed("could not write the request body".into()))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(http_error)
}

fn await_response(future: &FutureIncomingResponse) -> Result<IncomingResponse, HttpError> {
    loop {
        match future.get() {
            Some(Ok(Ok(response))) => return Ok(response),
            Some(Ok(Err(code))) => return Err(http_error(code)),
            Some(Err(())) => return Err(HttpError::Failed("response already taken".into())),
            None => future.subscribe().block(),
        }
    }
}

fn read_response(response: IncomingResponse) -> Result<oauth2::HttpResponse, HttpError> {
    let mut builder = http::Response::builder().status(response.status());
    for (name, value) in response.headers().entries() {
        builder = builder.header(name, value);
    }
    let incoming = response.consume().map_err(failed("read the response body"))?;
    let mut body = Vec::new();
    {
        let stream = incoming.stream().map_err(failed("read the response body"))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(HttpError::Failed(format!("response body failed: {}", e.to_debug_string())));
                }
            }
            if body.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError::Failed(format!("response body larger than {MAX_RESPONSE_BYTES} bytes")));
            }
        }
    }
    drop(IncomingBody::finish(incoming));
    builder.body(body).map_err(|_| HttpError::Failed("response has invalid headers".into()))
}

fn http_error(code: ErrorCode) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied,
        ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => {
            HttpError::Timeout
        }
        ErrorCode::HttpResponseBodySize(_) => HttpError::Failed("response body larger than the host allows".into()),
        other => HttpError::Failed(format!("{other:?}")),
    }
}
