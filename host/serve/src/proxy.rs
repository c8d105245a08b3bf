//! The proxy routes: a backend (with an API key) or a user's access token calls a
//! provider's API for a connection, and the component sets the token on the request, so
//! this service never holds it; and the routes that make and revoke access tokens.

use axum::Json;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Path, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::access_tokens::{self, AccessTokenInfo, AccessTokenRequest, NewAccessToken};
use super::api_error::ApiError;
use super::auth::Caller;
use tokenvault::audit::Actor;
use tokenvault::error::Error;
use tokenvault::{ConnectionKey, ProxyRequest, ProxyResponse, parse_json};

/// The route, as axum matches it (`{*path}`: the rest of the path, slashes and all).
pub const CONNECTION_PROXY_ROUTE: &str =
    "/v1/tenants/{tenant}/users/{user}/connections/{provider}/{name}/proxy/{*path}";

/// Segments of [`CONNECTION_PROXY_ROUTE`] before the proxied path.
const CONNECTION_PROXY_PREFIX_SEGMENTS: usize = 9;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ConnectionProxyPath {
    tenant: String,
    user: String,
    provider: String,
    /// Which of the user's connections to this provider ("default" unless you keep several).
    name: String,
    /// The path under the provider's API base URL, e.g. `user/repos`; the query string
    /// passes on as it is.
    #[allow(dead_code)] // read raw from the URI instead: its percent-encoding must reach the check
    path: String,
}

/// Call the connection's provider API (its `api_base_url` plus this path and query) with
/// the connection's access token, refreshed first when due and once more if the provider
/// answers 401. Method, query, body and headers pass on, except `Authorization`, `Cookie`,
/// `Host`, `Proxy-*`, hop-by-hop and `Tokenvault-*` headers; the provider's status,
/// headers (less hop-by-hop and `Set-Cookie`) and body come back. A path that would leave
/// the base URL is refused (400) before anything is sent; no answer in time is 504.
#[utoipa::path(method(get, post, put, patch, delete),
    path = "/v1/tenants/{tenant}/users/{user}/connections/{provider}/{name}/proxy/{path}",
    tag = "proxy", params(ConnectionProxyPath),
    responses((status = 200, description = "the provider's answer, whatever its status"),
        (status = 400, description = "invalid-input: a path that leaves the base, a provider with no API base URL",
            body = Error),
        (status = 409, description = "reconnect-required", body = Error),
        (status = 502, description = "the provider failed or the host denied the request", body = Error),
        (status = 504, description = "the provider did not answer in time", body = Error)))]
pub async fn connection_proxy(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<ConnectionProxyPath>,
    request: Request,
) -> Result<Response, ApiError> {
    caller.for_tenant(&path.tenant)?;
    let key = ConnectionKey::new(&path.tenant, &path.user, &path.provider, &path.name);
    let request = proxy_request(request, CONNECTION_PROXY_PREFIX_SEGMENTS).await?;
    Ok(response(caller.vault(&state).proxy(&key, &request).await?))
}

/// The route of access tokens, as axum matches it.
pub const TOKEN_PROXY_ROUTE: &str = "/v1/proxy/{provider}/{*path}";

/// Segments of [`TOKEN_PROXY_ROUTE`] before the proxied path.
const TOKEN_PROXY_PREFIX_SEGMENTS: usize = 3;

/// The header that picks one of several connections to the provider.
const CONNECTION_HEADER: &str = "tokenvault-connection";

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TokenProxyPath {
    provider: String,
    /// The path under the provider's API base URL.
    #[allow(dead_code)] // read raw from the URI, as for the connection route
    path: String,
}

/// As the connection route, for the user an access token (`Authorization: Bearer tvp_…`)
/// belongs to: header `Tokenvault-Connection` picks the connection to `provider` (default
/// `default`). The token reaches only its connections, methods and paths (403 otherwise);
/// an unknown, expired or revoked one is 401.
#[utoipa::path(method(get, post, put, patch, delete), path = "/v1/proxy/{provider}/{path}", tag = "proxy",
    params(TokenProxyPath, ("Tokenvault-Connection" = Option<String>, Header, description = "the connection's name")),
    security(("access_token" = [])),
    responses((status = 200, description = "the provider's answer, whatever its status"),
        (status = 401, description = "no access token, or one unknown, expired or revoked", body = Error),
        (status = 403, description = "the token does not reach this connection, method or path", body = Error),
        (status = 400, body = Error), (status = 409, body = Error), (status = 502, body = Error),
        (status = 504, body = Error)))]
pub async fn token_proxy(
    State(state): State<AppState>,
    Path(path): Path<TokenProxyPath>,
    request: Request,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("send Authorization: Bearer <access token>".into()))?;
    let token = state
        .access_tokens
        .verify(presented)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("an unknown, expired or revoked access token".into()))?;
    let name = access_tokens::connection_name(request.headers().get(CONNECTION_HEADER).and_then(|v| v.to_str().ok()));
    let key = token.connection(&path.provider, name).ok_or_else(|| {
        ApiError::Forbidden(format!(
            "access token {} does not reach connection {name:?} of {}",
            token.id, path.provider
        ))
    })?;
    if !token.allows_method(request.method().as_str()) {
        return Err(ApiError::Forbidden(format!("access token {} may not send {}", token.id, request.method())));
    }
    let request = proxy_request(request, TOKEN_PROXY_PREFIX_SEGMENTS).await?;
    let route = request.path.split_once('?').map_or(request.path.as_str(), |(route, _)| route);
    if !token.allows_path(route) {
        return Err(ApiError::Forbidden(format!("access token {} does not reach this path", token.id)));
    }
    Ok(response(state.vault.acting_as(Actor::access_token(&token.id)).proxy(&key, &request).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserPath {
    tenant: String,
    user: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AccessTokenPath {
    tenant: String,
    user: String,
    id: String,
}

/// Make an access token for the user's connections: shown once, kept only as a hash. It
/// works on `/v1/proxy` alone, for the connections, methods and paths it names.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/users/{user}/access-tokens", tag = "proxy", params(UserPath),
    request_body = AccessTokenRequest,
    responses((status = 201, body = NewAccessToken),
        (status = 409, description = "an active token of the user has this name", body = Error),
        (status = "4XX", body = Error)))]
pub async fn create_access_token(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<UserPath>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.for_tenant(&path.tenant)?;
    let request: AccessTokenRequest = parse_json("access token request", &body)?;
    let made = state.access_tokens.create(&path.tenant, &path.user, request).await?;
    Ok((StatusCode::CREATED, Json(made)).into_response())
}

/// The user's access tokens: metadata only.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/users/{user}/access-tokens", tag = "proxy", params(UserPath),
    responses((status = 200, body = Vec<AccessTokenInfo>), (status = "4XX", body = Error)))]
pub async fn list_access_tokens(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<UserPath>,
) -> Result<Json<Vec<AccessTokenInfo>>, ApiError> {
    caller.for_tenant(&path.tenant)?;
    Ok(Json(state.access_tokens.list(&path.tenant, &path.user).await?))
}

/// Revoke an access token: refused from the next request on.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/users/{user}/access-tokens/{id}", tag = "proxy",
    params(AccessTokenPath), responses((status = 200, body = AccessTokenInfo), (status = "4XX", body = Error)))]
pub async fn revoke_access_token(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<AccessTokenPath>,
) -> Result<Json<AccessTokenInfo>, ApiError> {
    caller.for_tenant(&path.tenant)?;
    Ok(Json(state.access_tokens.revoke(&path.tenant, &path.user, &path.id).await?))
}

/// A new secret for an access token (same id, reach and expiry): the old one is refused
/// from then on.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/users/{user}/access-tokens/{id}/rotate", tag = "proxy",
    params(AccessTokenPath), responses((status = 200, body = NewAccessToken), (status = "4XX", body = Error)))]
pub async fn rotate_access_token(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<AccessTokenPath>,
) -> Result<Json<NewAccessToken>, ApiError> {
    caller.for_tenant(&path.tenant)?;
    Ok(Json(state.access_tokens.rotate(&path.tenant, &path.user, &path.id).await?))
}

/// The request to pass on: its method, the path after `prefix_segments` segments exactly
/// as the client encoded it (the component checks it; decoding here would hide `%2e%2e`),
/// the query, every header (the component drops what must stop) and the body.
async fn proxy_request(request: Request, prefix_segments: usize) -> Result<ProxyRequest, ApiError> {
    let (parts, body) = request.into_parts();
    let path =
        proxied_path(&parts.uri, prefix_segments).ok_or_else(|| Error::invalid_input("the proxied path is missing"))?;
    // The body was read whole (and bounded) by the service's first layer.
    let body =
        to_bytes(body, usize::MAX).await.map_err(|_| Error::invalid_input("the request body could not be read"))?;
    Ok(ProxyRequest {
        method: parts.method.as_str().to_owned(),
        path,
        headers: parts.headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect(),
        body: body.to_vec(),
    })
}

/// `/rest?query` of a URI whose path has `prefix_segments` segments before `rest`.
fn proxied_path(uri: &Uri, prefix_segments: usize) -> Option<String> {
    let rest = uri.path().splitn(prefix_segments + 2, '/').nth(prefix_segments + 1)?;
    Some(match uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    })
}

/// Marks a provider's answer, which passes as it came (the service rewrites only its own).
#[derive(Clone, Copy)]
pub struct ProviderAnswer;

fn response(answer: ProxyResponse) -> Response {
    let mut response = Response::new(Body::from(answer.body));
    response.extensions_mut().insert(ProviderAnswer);
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers_mut();
    for (name, value) in answer.headers {
        // The component passes only headers it parsed; anything else is dropped, not fatal.
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_bytes(&value)) {
            headers.append(name, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxied_path_is_taken_raw_after_the_route() {
        let uri: Uri = "/v1/tenants/a%20b/users/u/connections/p/n/proxy/x/%2e%2e/y?q=1".parse().unwrap();
        assert_eq!(proxied_path(&uri, CONNECTION_PROXY_PREFIX_SEGMENTS).as_deref(), Some("/x/%2e%2e/y?q=1"));
        let uri: Uri = "/v1/tenants/t/users/u/connections/p/n/proxy/".parse().unwrap();
        assert_eq!(proxied_path(&uri, CONNECTION_PROXY_PREFIX_SEGMENTS).as_deref(), Some("/"));
        let uri: Uri = "/v1/tenants/t/users/u/connections/p/n/proxy".parse().unwrap();
        assert_eq!(proxied_path(&uri, CONNECTION_PROXY_PREFIX_SEGMENTS), None);
    }
}
