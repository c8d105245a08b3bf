//! `tokenvault serve`: the vault as an HTTP service next to the backends that use it.
//!
//! [`router`] builds the whole service as an axum `Router` (an embedder may mount it in
//! its own); [`serve`] runs it until a shutdown signal, finishing the calls in flight.

pub mod access_tokens;
mod api;
mod api_error;
pub mod api_keys;
mod audit;
mod auth;
mod connect;
pub mod console;
mod credential;
mod html;
pub mod jwt;
mod proxy;
pub mod scheduler;
pub mod tenants;
pub mod webhooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

pub use access_tokens::AccessTokens;
pub use api_error::ApiError;
pub use api_keys::{ApiKeyInfo, ApiKeys, NewApiKey, Scope};

use tokenvault::Vault;

/// What every handler reaches.
#[derive(Clone)]
pub struct AppState {
    pub vault: Vault,
    pub api_keys: ApiKeys,
    /// The proxy's access tokens (`tvp_…`).
    pub access_tokens: AccessTokens,
    /// Where browsers reach this service (`http://127.0.0.1:8080`): connect links point
    /// there, and `{public_url}/oauth/callback` is the redirect URI to register at providers.
    pub public_url: String,
    /// Accepts JWTs from the operator's identity provider, when one is configured.
    pub jwt: Option<std::sync::Arc<jwt::JwtVerifier>>,
    /// The console's sessions and console links.
    pub sessions: console::session::Sessions,
    /// The console's sign-in through the operator's OpenID Connect provider, if configured.
    pub oidc: Option<std::sync::Arc<console::oidc::OidcLogin>>,
    /// Where tenants' webhooks may point, and how their events are sent.
    pub webhooks: Arc<webhooks::Webhooks>,
}

impl AppState {
    pub fn new(vault: Vault, public_url: &str) -> tokenvault::Result<Self> {
        let parsed = url::Url::parse(public_url)
            .map_err(|e| tokenvault::Error::Config(format!("the public URL {public_url:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
            return Err(tokenvault::Error::Config(format!(
                "the public URL {public_url:?} must be http(s) without a query"
            )));
        }
        let public_url = public_url.trim_end_matches('/').to_owned();
        Ok(AppState {
            api_keys: ApiKeys::of(&vault),
            access_tokens: AccessTokens::of(&vault, access_tokens::DEFAULT_MAX_LIFETIME_SECS),
            sessions: console::session::Sessions::of(&vault),
            vault,
            public_url,
            jwt: None,
            oidc: None,
            webhooks: Arc::new(webhooks::Webhooks::new(Vec::new(), Default::default())?),
        })
    }

    /// The redirect URI providers send browsers back to.
    pub fn callback_url(&self) -> String {
        format!("{}{}", self.public_url, connect::CALLBACK_PATH)
    }

    /// Where people open the console.
    pub fn console_url(&self) -> String {
        format!("{}/console", self.public_url)
    }

    /// The redirect URI to register at the operator's OpenID Connect provider.
    pub fn console_oidc_callback_url(&self) -> String {
        format!("{}{}", self.public_url, console::oidc::CALLBACK_PATH)
    }
}

/// Where a connect link for `provider` with `code` points: the page `connect` serves.
pub fn connect_link_url(public_url: &str, provider: &str, code: &str) -> String {
    let mut url = url::Url::parse(public_url).expect("AppState::new checked the public URL");
    url.path_segments_mut().expect("an http(s) URL").pop_if_empty().extend(["connect", provider]);
    url.query_pairs_mut().append_pair("link", code);
    url.into()
}

/// The service: the API under `/v1`, its OpenAPI description at `/openapi.json`, the
/// connect flow's pages (`/connect/{provider}`, `/oauth/callback`), the console under
/// `/console`, `/healthz` (the process answers), `/readyz` (and its storage does) and
/// `/metrics` (Prometheus text: what an operator alerts on).
pub fn router(state: AppState) -> axum::Router {
    let (api, openapi) = api::routes().split_for_parts();
    axum::Router::new()
        .merge(api.layer(middleware::map_response(api_answer)))
        .merge(connect::routes())
        .merge(console::routes())
        .route("/openapi.json", get(move || async move { Json(openapi) }))
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn(read_body_first))
        .layer(middleware::from_fn(bounded_head))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Every `/v1` answer: a refusal of axum's own (a path or query that does not parse, a
/// method the route lacks) as `{error, message}` JSON like every other error, in words of
/// ours (axum's can quote the request); not cached (a token answer must not be, RFC 6749
/// §5.1) unless a proxied provider's answer says how it may be; never sniffed as another type.
async fn api_answer(response: Response) -> Response {
    use axum::http::{HeaderValue, header};
    let is_json = |r: &Response| {
        r.headers().get(header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/json"))
    };
    let from_provider = response.extensions().get::<proxy::ProviderAnswer>().is_some();
    let mut response = if response.status().is_client_error() && !is_json(&response) && !from_provider {
        let status = response.status();
        let (kind, message) = match status {
            StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "this route does not take that method"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => {
                ("invalid-input", "the request body is not what this route takes")
            }
            _ => ("invalid-input", "the request's path or query is not valid (UTF-8, the expected types)"),
        };
        // Its headers stay (a 405's Allow, say); only the body is ours.
        let (mut parts, _) = response.into_parts();
        parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = serde_json::json!({ "error": kind, "message": message }).to_string();
        Response::from_parts(parts, axum::body::Body::from(body))
    } else {
        response
    };
    let headers = response.headers_mut();
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// What one client may hold of the service: a bound on each connection's patience and on
/// how many are served at once, so slow or idle clients cannot pile up.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From the connection's start (or its last response) to a request's complete headers.
    pub header_timeout: Duration,
    /// From a request's headers to its complete body.
    pub body_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// How long this request's body may take to arrive (set per connection by [`serve`]).
#[derive(Clone, Copy)]
struct BodyTimeout(Duration);

/// Serve `router` on `listener` within `limits` until `shutdown` completes; calls in flight
/// then finish before this returns.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait for connections to close.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(BodyTimeout(limits.body_timeout));
            tower::ServiceExt::oneshot(router.clone(), request)
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_HEAD_BUFFER)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await; // a client that hung up or timed out
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Ready when the storage answers and the keyring opens: a host that cannot do both
/// cannot serve a call.
async fn ready(State(state): State<AppState>) -> Response {
    let services = state.vault.services();
    // One read of a key nobody writes: proves the backend answers.
    if let Err(e) = services.storage.get("readyz").await {
        return ApiError::from(tokenvault::Error::storage(e.to_string())).into_response();
    }
    match services.keys.active().await {
        Ok(_) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(axum::http::header::CONTENT_TYPE, content_type)], state.vault.metrics_text()).into_response()
}

/// One log line per request: method, route template (`/v1/tenants/{tenant}/…`, never
/// the concrete path or query, which may hold codes and state), status and duration.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    let route = route.as_deref().unwrap_or("(no route)");
    let ms = (started.elapsed().as_secs_f64() * 1e3 * 10.0).round() / 10.0;
    if status.is_server_error() {
        tracing::warn!(%method, %route, status = status.as_u16(), ms, "request failed");
    } else {
        tracing::info!(%method, %route, status = status.as_u16(), ms, "request");
    }
    response
}

/// The largest request body taken: the API's are a grant or a provider, a few KiB; a
/// proxied call's goes on to the provider.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Read the whole request body before anything answers. A handler that needs no body,
/// or a refusal (401, 403) sent before the body is read, would otherwise leave it unread;
/// hyper then closes the connection after the response unless the body happened to have
/// arrived already, and a client that reuses the kept-alive connection fails its next
/// request. Reading first makes keep-alive hold whatever the timing.
/// The longest request target and the most header bytes a request may bring; over them it
/// is refused in JSON like every error (414, 431). Past [`MAX_HEAD_BUFFER`] hyper refuses
/// it itself, without a body.
pub const MAX_URI_BYTES: usize = 8 * 1024;
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// What hyper buffers of a request's head at most.
const MAX_HEAD_BUFFER: usize = 64 * 1024;

async fn bounded_head(request: Request, next: Next) -> Response {
    if request.uri().to_string().len() > MAX_URI_BYTES {
        return ApiError::UriTooLong(format!("request targets are at most {MAX_URI_BYTES} bytes")).into_response();
    }
    let header_bytes: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if header_bytes > MAX_HEADER_BYTES {
        let message = format!("request headers are at most {MAX_HEADER_BYTES} bytes");
        return ApiError::HeadersTooLarge(message).into_response();
    }
    next.run(request).await
}

async fn read_body_first(request: Request, next: Next) -> Response {
    let too_large = || ApiError::TooLarge(format!("request bodies are at most {MAX_BODY_BYTES} bytes")).into_response();
    let declared = request.headers().get(axum::http::header::CONTENT_LENGTH);
    if declared.and_then(|v| v.to_str().ok()?.parse::<usize>().ok()).is_some_and(|n| n > MAX_BODY_BYTES) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let timeout = parts.extensions.get::<BodyTimeout>().map_or(ConnectionLimits::default().body_timeout, |t| t.0);
    let Ok(read) = tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await else {
        let message = format!("the request body did not arrive within {} s", timeout.as_secs_f32());
        return ApiError::TimedOut(message).into_response();
    };
    match read {
        Ok(bytes) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Err(e) => {
            let over_limit =
                std::error::Error::source(&e).is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if over_limit {
                too_large()
            } else {
                let message = format!("the request body could not be read: {e}");
                ApiError::from(tokenvault::Error::invalid_input(message)).into_response()
            }
        }
    }
}

/// The first key of a fresh service: when no API key exists yet, an operator key, so
/// whoever started the service can call it and make tenant keys.
pub async fn first_key(api_keys: &ApiKeys) -> tokenvault::Result<Option<NewApiKey>> {
    if !api_keys.list().await?.is_empty() {
        return Ok(None);
    }
    api_keys.create(Scope::Operator).await.map(Some)
}

/// Not found, as JSON like every other error.
async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": "not-found", "message": "no such endpoint" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_link_urls_escape_their_parts() {
        assert_eq!(
            connect_link_url("http://127.0.0.1:8080", "github", "abc"),
            "http://127.0.0.1:8080/connect/github?link=abc"
        );
        assert_eq!(
            connect_link_url("https://vault.example/base/", "a b", "x&y"),
            "https://vault.example/base/connect/a%20b?link=x%26y"
        );
    }

    mod connection_limits {
        use std::time::Duration;

        use axum::routing::post;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpStream;

        use super::super::*;

        /// A service on a free port with `limits`, echoing POST /echo bodies.
        async fn start(limits: ConnectionLimits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
            let router = axum::Router::new()
                .route("/echo", post(|body: String| async move { body }))
                .layer(middleware::from_fn(read_body_first))
                .layer(middleware::from_fn(bounded_head));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel();
            tokio::spawn(serve(listener, router, limits, async move {
                let _ = stopped.await;
            }));
            (address, stop)
        }

        /// All the server sends until it closes the connection; panics if it is still open
        /// after `patience` (the limit under test is far shorter).
        async fn until_closed(stream: &mut TcpStream, patience: Duration) -> String {
            let mut answer = Vec::new();
            tokio::time::timeout(patience, stream.read_to_end(&mut answer))
                .await
                .expect("the server kept the connection open")
                .unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        }

        const SHORT: Duration = Duration::from_millis(300);
        const PATIENCE: Duration = Duration::from_secs(20);

        #[tokio::test]
        async fn headers_that_never_end_are_cut_off() {
            let (address, _stop) = start(ConnectionLimits { header_timeout: SHORT, ..Default::default() }).await;
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\n").await.unwrap(); // no final CRLF
            until_closed(&mut stream, PATIENCE).await;
            // A client that never sends a byte is cut off as well.
            let mut idle = TcpStream::connect(address).await.unwrap();
            until_closed(&mut idle, PATIENCE).await;
        }

        #[tokio::test]
        async fn a_body_that_never_arrives_is_answered_408() {
            let (address, _stop) = start(ConnectionLimits { body_timeout: SHORT, ..Default::default() }).await;
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream
                .write_all(
                    b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\nconnection: close\r\n\r\nonly ten b",
                )
                .await
                .unwrap();
            let answer = until_closed(&mut stream, PATIENCE).await;
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            assert!(answer.contains(r#""error":"request-timeout""#), "{answer}");
        }

        #[tokio::test]
        async fn connections_beyond_the_limit_wait_for_one_to_close() {
            let limits = ConnectionLimits { max_connections: 1, ..Default::default() };
            let (address, _stop) = start(limits).await;
            let request = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi";
            let holder = TcpStream::connect(address).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await; // accepted, holding the one slot
            let mut waiting = TcpStream::connect(address).await.unwrap(); // in the backlog
            waiting.write_all(request).await.unwrap();
            let mut early = [0u8; 1];
            let served_early = tokio::time::timeout(SHORT, waiting.read(&mut early)).await;
            assert!(served_early.is_err(), "a second connection was served while the limit was taken");
            drop(holder);
            let answer = until_closed(&mut waiting, PATIENCE).await;
            assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hi"), "{answer}");
        }
    }
}
