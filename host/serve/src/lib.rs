//! `tokenvault serve`: the vault as an HTTP service next to the backends that use it.
//!
//! [`router`] builds the whole service as an axum `Router` (an embedder may mount it in
//! its own); [`serve`] runs it until a shutdown signal, finishing the calls in flight.

mod api;
mod api_error;
pub mod api_keys;
mod auth;
mod connect;
pub mod console;
mod html;
pub mod jwt;
pub mod scheduler;

use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

pub use api_error::ApiError;
pub use api_keys::{ApiKeyInfo, ApiKeys, NewApiKey, Scope};

use tokenvault::Vault;

/// What every handler reaches.
#[derive(Clone)]
pub struct AppState {
    pub vault: Vault,
    pub api_keys: ApiKeys,
    /// Where browsers reach this service (`http://127.0.0.1:8080`): connect links point
    /// there, and `{public_url}/oauth/callback` is the redirect URI to register at providers.
    pub public_url: String,
    /// Accepts JWTs from the operator's identity provider, when one is configured.
    pub jwt: Option<std::sync::Arc<jwt::JwtVerifier>>,
    /// The console's sessions and console links.
    pub sessions: console::session::Sessions,
    /// The console's sign-in through the operator's OpenID Connect provider, if configured.
    pub oidc: Option<std::sync::Arc<console::oidc::OidcLogin>>,
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
            sessions: console::session::Sessions::of(&vault),
            vault,
            public_url,
            jwt: None,
            oidc: None,
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
        .merge(api)
        .merge(connect::routes())
        .merge(console::routes())
        .route("/openapi.json", get(move || async move { Json(openapi) }))
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn(read_body_first))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Serve `router` on `listener` until `shutdown` completes; calls in flight then finish
/// before this returns.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

async fn ready(State(state): State<AppState>) -> Response {
    // One read of a key nobody writes: proves the backend answers.
    match state.vault.services().storage.get("readyz").await {
        Ok(_) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(e) => ApiError::from(tokenvault::Error::storage(e.to_string())).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let lost = state.vault.services().audit.events_lost();
    let text = format!(
        "# HELP tokenvault_audit_events_lost_total Audit events not written, let pass as audit_on_failure = \"serve\" allows.\n\
         # TYPE tokenvault_audit_events_lost_total counter\n\
         tokenvault_audit_events_lost_total {lost}\n"
    );
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
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

/// The largest request body taken: the API's are a grant or a provider, a few KiB.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Read the whole request body before anything answers. A handler that needs no body,
/// or a refusal (401, 403) sent before the body is read, would otherwise leave it unread;
/// hyper then closes the connection after the response unless the body happened to have
/// arrived already, and a client that reuses the kept-alive connection fails its next
/// request. Reading first makes keep-alive hold whatever the timing.
async fn read_body_first(request: Request, next: Next) -> Response {
    let too_large = || ApiError::TooLarge(format!("request bodies are at most {MAX_BODY_BYTES} bytes")).into_response();
    let declared = request.headers().get(axum::http::header::CONTENT_LENGTH);
    if declared.and_then(|v| v.to_str().ok()?.parse::<usize>().ok()).is_some_and(|n| n > MAX_BODY_BYTES) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
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
}
