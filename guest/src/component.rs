//! The WebAssembly component: WIT bindings, conversions, and a [`Platform`] over the
//! imports. No token logic lives here.

use crate::error::{ProviderFailure, VaultError};
use crate::model;
use crate::platform::{Entry, HttpError, KeyPage, Platform, SealingKey, StorageError};
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

use exports::tokenvault::vault::{connect, providers, tokens};
use tokenvault::vault::{audit, keyring, storage, types as wit};

/// Guest-side cap on a response body, for hosts that set none.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

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
        Ok(match vault().get_or_link(&key.into(), scopes)? {
            model::TokenOrLink::Token(token) => tokens::TokenOrLink::Token(token.into()),
            model::TokenOrLink::Link(link) => tokens::TokenOrLink::Link(link.into()),
        })
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
        let page = vault().users(&tenant, after.as_deref(), limit)?;
        let users = page
            .users
            .into_iter()
            .map(|u| tokens::UserConnections { user: u.user, connections: u.connections })
            .collect();
        Ok(tokens::UserPage { users, next: page.next })
    }

    fn due_for_refresh(horizon_secs: u32, cursor: Option<String>, limit: u32) -> WitResult<tokens::DuePage> {
        let page = vault().due_for_refresh(horizon_secs, cursor.as_deref(), limit)?;
        Ok(tokens::DuePage { keys: page.keys.into_iter().map(Into::into).collect(), cursor: page.cursor })
    }

    fn refresh_if_due(key: wit::ConnectionKey, horizon_secs: u32) -> WitResult<tokens::RefreshOutcome> {
        Ok(match vault().refresh_if_due(&key.into(), horizon_secs)? {
            model::RefreshOutcome::NotDue => tokens::RefreshOutcome::NotDue,
            model::RefreshOutcome::Refreshed => tokens::RefreshOutcome::Refreshed,
            model::RefreshOutcome::NotRenewable => tokens::RefreshOutcome::NotRenewable,
        })
    }

    fn store(key: wit::ConnectionKey, grant: wit::TokenGrant) -> WitResult<wit::ConnectionInfo> {
        let grant = model::TokenGrant {
            access_token: grant.access_token,
            token_type: grant.token_type,
            expires_in: grant.expires_in,
            refresh_token: grant.refresh_token,
            scope: grant.scope,
        };
        Ok(vault().store(&key.into(), grant)?.into())
    }
}

impl providers::Guest for Component {
    fn put(config: wit::ProviderConfig) -> WitResult<wit::ProviderInfo> {
        let config = model::ProviderConfig {
            name: config.name,
            template: config.template.map(|t| model::TemplateRef { name: t.name, tenant: t.tenant }),
            issuer: config.issuer,
            authorization_url: config.authorization_url,
            token_url: config.token_url,
            revocation_url: config.revocation_url,
            device_authorization_url: config.device_authorization_url,
            client_id: config.client_id,
            client_secret: config.client_secret,
            client_auth: config.client_auth.map(|auth| match auth {
                wit::ClientAuth::ClientSecretBasic => model::ClientAuth::ClientSecretBasic,
                wit::ClientAuth::ClientSecretPost => model::ClientAuth::ClientSecretPost,
            }),
            scopes: config.scopes,
            authorization_params: config.authorization_params,
            refresh_buffer_secs: config.refresh_buffer_secs,
        };
        Ok(vault().put_provider(config)?.into())
    }

    fn get(name: String) -> WitResult<wit::ProviderInfo> {
        Ok(vault().get_provider(&name)?.into())
    }

    fn list() -> WitResult<Vec<wit::ProviderInfo>> {
        Ok(vault().list_providers()?.into_iter().map(Into::into).collect())
    }

    fn remove(name: String) -> WitResult<()> {
        Ok(vault().remove_provider(&name)?)
    }
}

impl connect::Guest for Component {
    fn begin(
        key: wit::ConnectionKey,
        redirect_uri: String,
        scopes: Option<Vec<String>>,
        browser: Option<String>,
    ) -> WitResult<connect::AuthorizationRequest> {
        let request = vault().begin(&key.into(), &redirect_uri, scopes, browser.as_deref())?;
        Ok(connect::AuthorizationRequest { url: request.url, state: request.state, expires_at: request.expires_at })
    }

    fn complete(callback_query: String, browser: Option<String>) -> WitResult<connect::Connected> {
        let (key, info) = vault().complete(&callback_query, browser.as_deref())?;
        Ok(connected(key, info))
    }

    fn link(key: wit::ConnectionKey, scopes: Option<Vec<String>>) -> WitResult<wit::ConnectLink> {
        Ok(vault().link(&key.into(), scopes)?.into())
    }

    fn open_link(
        code: String,
        redirect_uri: String,
        browser: Option<String>,
    ) -> WitResult<connect::AuthorizationRequest> {
        let request = vault().open_link(&code, &redirect_uri, browser.as_deref())?;
        Ok(connect::AuthorizationRequest { url: request.url, state: request.state, expires_at: request.expires_at })
    }

    fn begin_device(key: wit::ConnectionKey, scopes: Option<Vec<String>>) -> WitResult<connect::DeviceAuthorization> {
        let d = vault().begin_device(&key.into(), scopes)?;
        Ok(connect::DeviceAuthorization {
            handle: d.handle,
            user_code: d.user_code,
            verification_uri: d.verification_uri,
            verification_uri_complete: d.verification_uri_complete,
            interval: d.interval,
            expires_at: d.expires_at,
        })
    }

    fn poll_device(handle: String) -> WitResult<connect::DeviceStatus> {
        Ok(match vault().poll_device(&handle)? {
            model::DeviceStatus::Pending(secs) => connect::DeviceStatus::Pending(secs),
            model::DeviceStatus::Connected(key, info) => connect::DeviceStatus::Connected(connected(key, info)),
        })
    }

    fn connect_client(key: wit::ConnectionKey, scopes: Option<Vec<String>>) -> WitResult<wit::ConnectionInfo> {
        Ok(vault().connect_client(&key.into(), scopes)?.into())
    }

    fn sweep_expired(cursor: Option<String>, limit: u32) -> WitResult<connect::SweepPage> {
        let page = vault().sweep_expired(cursor.as_deref(), limit)?;
        Ok(connect::SweepPage { deleted: page.deleted, cursor: page.cursor })
    }
}

fn connected(key: model::ConnectionKey, info: model::ConnectionInfo) -> connect::Connected {
    connect::Connected { key: key.into(), info: info.into() }
}

// ---- conversions ------------------------------------------------------------------

impl From<wit::ConnectionKey> for model::ConnectionKey {
    fn from(k: wit::ConnectionKey) -> Self {
        model::ConnectionKey { tenant: k.tenant, user: k.user, provider: k.provider, name: k.name }
    }
}

impl From<model::ConnectionKey> for wit::ConnectionKey {
    fn from(k: model::ConnectionKey) -> Self {
        wit::ConnectionKey { tenant: k.tenant, user: k.user, provider: k.provider, name: k.name }
    }
}

impl From<model::TokenSet> for wit::TokenSet {
    fn from(t: model::TokenSet) -> Self {
        wit::TokenSet {
            access_token: t.access_token,
            token_type: t.token_type,
            expires_at: t.expires_at,
            scope: t.scope,
            refresh_token: t.refresh_token,
        }
    }
}

impl From<model::ConnectionInfo> for wit::ConnectionInfo {
    fn from(i: model::ConnectionInfo) -> Self {
        wit::ConnectionInfo {
            provider: i.provider,
            name: i.name,
            kind: match i.kind {
                model::ConnectionKind::User => wit::ConnectionKind::User,
                model::ConnectionKind::Client => wit::ConnectionKind::Client,
            },
            scopes: i.scopes,
            expires_at: i.expires_at,
            has_refresh_token: i.has_refresh_token,
            status: match i.status {
                model::ConnectionStatus::Active => wit::ConnectionStatus::Active,
                model::ConnectionStatus::ReconnectRequired => wit::ConnectionStatus::ReconnectRequired,
            },
            updated_at: i.updated_at,
        }
    }
}

impl From<model::ConnectLink> for wit::ConnectLink {
    fn from(l: model::ConnectLink) -> Self {
        wit::ConnectLink { code: l.code, expires_at: l.expires_at }
    }
}

impl From<model::RemovalReceipt> for tokens::RemovalReceipt {
    fn from(r: model::RemovalReceipt) -> Self {
        tokens::RemovalReceipt {
            provider: r.provider,
            name: r.name,
            upstream: match r.upstream {
                model::UpstreamRevocation::Revoked => tokens::UpstreamRevocation::Revoked,
                model::UpstreamRevocation::Unsupported => tokens::UpstreamRevocation::Unsupported,
                model::UpstreamRevocation::Failed(err) => tokens::UpstreamRevocation::Failed(err.into()),
            },
        }
    }
}

impl From<model::ProviderInfo> for wit::ProviderInfo {
    fn from(p: model::ProviderInfo) -> Self {
        wit::ProviderInfo {
            name: p.name,
            template: p.template,
            issuer: p.issuer,
            authorization_url: p.authorization_url,
            token_url: p.token_url,
            revocation_url: p.revocation_url,
            device_authorization_url: p.device_authorization_url,
            client_id: p.client_id,
            has_client_secret: p.has_client_secret,
            client_auth: match p.client_auth {
                model::ClientAuth::ClientSecretBasic => wit::ClientAuth::ClientSecretBasic,
                model::ClientAuth::ClientSecretPost => wit::ClientAuth::ClientSecretPost,
            },
            scopes: p.scopes,
            authorization_params: p.authorization_params,
            refresh_buffer_secs: p.refresh_buffer_secs,
            updated_at: p.updated_at,
        }
    }
}

impl From<VaultError> for wit::Error {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::NotFound(m) => wit::Error::NotFound(m),
            VaultError::InvalidInput(m) => wit::Error::InvalidInput(m),
            VaultError::ReconnectRequired(m) => wit::Error::ReconnectRequired(m),
            VaultError::Provider(ProviderFailure { status, code, message }) => {
                wit::Error::ProviderError(wit::ProviderFailure { status, code, message })
            }
            VaultError::Storage(m) => wit::Error::Storage(m),
            VaultError::Integrity(m) => wit::Error::Integrity(m),
            VaultError::EgressDenied(m) => wit::Error::EgressDenied(m),
        }
    }
}

fn audit_event(e: model::AuditEvent) -> audit::Event {
    use model::{AuditAction as A, AuditOutcome as O};
    audit::Event {
        action: match e.action {
            A::TokenStore => audit::Action::TokenStore,
            A::TokenGet => audit::Action::TokenGet,
            A::TokenRefresh => audit::Action::TokenRefresh,
            A::TokenRemove => audit::Action::TokenRemove,
            A::RevokeAll => audit::Action::RevokeAll,
            A::ProviderPut => audit::Action::ProviderPut,
            A::ProviderRemove => audit::Action::ProviderRemove,
            A::ConnectBegin => audit::Action::ConnectBegin,
            A::ConnectComplete => audit::Action::ConnectComplete,
            A::ConnectLink => audit::Action::ConnectLink,
            A::ConnectOpenLink => audit::Action::ConnectOpenLink,
            A::ConnectDevice => audit::Action::ConnectDevice,
            A::ConnectClient => audit::Action::ConnectClient,
        },
        outcome: match e.outcome {
            O::Ok => audit::Outcome::Ok,
            O::NotFound => audit::Outcome::NotFound,
            O::InvalidInput => audit::Outcome::InvalidInput,
            O::ReconnectRequired => audit::Outcome::ReconnectRequired,
            O::ProviderError => audit::Outcome::ProviderError,
            O::Storage => audit::Outcome::Storage,
            O::Integrity => audit::Outcome::Integrity,
            O::EgressDenied => audit::Outcome::EgressDenied,
        },
        tenant: e.tenant,
        user: e.user,
        provider: e.provider,
        name: e.name,
        at: e.at_ms,
    }
}

// ---- the platform, over the imports -----------------------------------------------

struct Imports;

fn storage_error(e: storage::StorageError) -> StorageError {
    match e {
        storage::StorageError::Conflict => StorageError::Conflict,
        storage::StorageError::Unavailable(why) => StorageError::Unavailable(why),
    }
}

impl Platform for Imports {
    fn storage_get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        let entry = storage::get(key).map_err(storage_error)?;
        Ok(entry.map(|e| Entry { value: e.value, version: e.version }))
    }

    fn storage_put(&self, key: &str, value: &[u8], expected: Option<u64>) -> Result<u64, StorageError> {
        storage::put(key, value, expected).map_err(storage_error)
    }

    fn storage_delete(&self, key: &str, expected: u64) -> Result<(), StorageError> {
        storage::delete(key, expected).map_err(storage_error)
    }

    fn storage_list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<KeyPage, StorageError> {
        let page = storage::list(prefix, cursor, limit).map_err(storage_error)?;
        Ok(KeyPage { keys: page.keys, cursor: page.cursor })
    }

    fn storage_wait_for_change(&self, key: &str, seen: Option<u64>, timeout_ms: u32) -> Result<(), StorageError> {
        storage::wait_for_change(key, seen, timeout_ms).map_err(storage_error)
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
        audit::emit(&audit_event(event));
    }

    fn now_ms(&self) -> u64 {
        let now = wasip2::clocks::wall_clock::now();
        now.seconds * 1000 + u64::from(now.nanoseconds / 1_000_000)
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
    Scheme,
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

    let future = wasip2::http::outgoing_handler::handle(outgoing, None).map_err(http_error)?;
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
