//! The JSON API under `/v1`, mirroring the CLI: tokens of a tenant's users, and the
//! provider registry. Every handler takes a [`Caller`], so no request reaches the vault
//! without a valid key, and checks that key's scope before anything else.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::api_error::ApiError;
use super::auth::Caller;
use super::console;
use super::console::session::Principal;
use tokenvault::error::Error;
use tokenvault::keys::DataKeyInfo;
use tokenvault::{
    ConnectionInfo, ConnectionKey, ProviderConfig, ProviderInfo, RemovalReceipt, TokenGrant, TokenSet, UserPage,
    parse_json,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tokenvault",
        description = "OAuth token custody: backends store, read fresh and remove their users' tokens. \
                       Every request needs `Authorization: Bearer <API key>` (`tokenvault apikey create`). \
                       Errors are `{\"error\": kind, \"message\": …}`; no response but a token endpoint's \
                       ever holds a token value."
    ),
    modifiers(&BearerAuth),
    security(("api_key" = [])),
    paths(super::proxy::connection_proxy, super::proxy::token_proxy),
    tags(
        (name = "tokens", description = "A tenant's users' connections"),
        (name = "providers", description = "The OAuth providers: the vault's, shared by all tenants, and tenants' own"),
        (name = "keys", description = "The data keys records are sealed with (operator keys only)"),
        (name = "proxy", description = "Calls to a provider's API with a connection's token, which the caller never holds"),
        (name = "audit", description = "The audit trail: every call, who asked and how it ended"),
        (name = "webhooks", description = "A tenant's webhook: its connection events, signed as Standard Webhooks says"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        components.add_security_scheme("access_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_connections, revoke_all))
        .routes(routes!(put_connection, remove_connection))
        .routes(routes!(get_token))
        .routes(routes!(refresh_token))
        .routes(routes!(create_link))
        .routes(routes!(list_users))
        .routes(routes!(create_console_link))
        .routes(routes!(list_providers))
        .routes(routes!(get_provider, put_provider, remove_provider))
        .routes(routes!(erase_tenant))
        .routes(routes!(list_tenant_providers))
        .routes(routes!(get_tenant_provider, put_tenant_provider, remove_tenant_provider))
        .routes(routes!(list_keys))
        .routes(routes!(rotate_key))
        .routes(routes!(super::audit::read_audit))
        .route(super::proxy::CONNECTION_PROXY_ROUTE, axum::routing::any(super::proxy::connection_proxy))
        .route(super::proxy::TOKEN_PROXY_ROUTE, axum::routing::any(super::proxy::token_proxy))
        .routes(routes!(super::proxy::create_access_token, super::proxy::list_access_tokens))
        .routes(routes!(super::proxy::revoke_access_token))
        .routes(routes!(super::proxy::rotate_access_token))
        .routes(routes!(super::webhooks::put_webhook, super::webhooks::get_webhook, super::webhooks::remove_webhook))
        .routes(routes!(super::webhooks::test_webhook))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct UserPath {
    tenant: String,
    user: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct ConnectionPath {
    tenant: String,
    user: String,
    provider: String,
    /// Which of the user's connections to this provider ("default" unless you keep several).
    name: String,
}

impl ConnectionPath {
    fn key(&self, caller: &Caller) -> Result<ConnectionKey, ApiError> {
        caller.for_tenant(&self.tenant)?;
        Ok(ConnectionKey::new(&self.tenant, &self.user, &self.provider, &self.name))
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct ProviderPath {
    name: String,
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The user's connections: metadata only.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/users/{user}/connections", tag = "tokens", params(UserPath),
    responses((status = 200, body = Vec<ConnectionInfo>), (status = "4XX", body = Error)))]
async fn list_connections(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<UserPath>,
) -> ApiResult<Vec<ConnectionInfo>> {
    caller.for_tenant(&path.tenant)?;
    Ok(Json(caller.vault(&state).list(&path.tenant, &path.user).await?))
}

/// Remove every connection of the user, revoking each at its provider: one receipt each.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/users/{user}/connections", tag = "tokens", params(UserPath),
    responses((status = 200, body = Vec<RemovalReceipt>), (status = "4XX", body = Error)))]
async fn revoke_all(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<UserPath>,
) -> ApiResult<Vec<RemovalReceipt>> {
    caller.for_tenant(&path.tenant)?;
    Ok(Json(caller.vault(&state).revoke_all(&path.tenant, &path.user).await?))
}

/// Seal and store a token response (RFC 6749 section 5.1), replacing what the connection held.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/users/{user}/connections/{provider}/{name}", tag = "tokens",
    params(ConnectionPath), request_body = TokenGrant,
    responses((status = 200, body = ConnectionInfo), (status = "4XX", body = Error)))]
async fn put_connection(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<ConnectionPath>,
    body: Bytes,
) -> ApiResult<ConnectionInfo> {
    let key = path.key(&caller)?;
    let grant = TokenGrant::from_json(&body)?;
    Ok(Json(caller.vault(&state).store(&key, &grant).await?))
}

/// Revoke the connection's tokens at the provider (RFC 7009), then delete it here.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/users/{user}/connections/{provider}/{name}", tag = "tokens",
    params(ConnectionPath), responses((status = 200, body = RemovalReceipt), (status = "4XX", body = Error)))]
async fn remove_connection(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<ConnectionPath>,
) -> ApiResult<RemovalReceipt> {
    Ok(Json(caller.vault(&state).remove(&path.key(&caller)?).await?))
}

/// A token fresh enough to use, refreshed first when it is about to expire.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/users/{user}/connections/{provider}/{name}/token", tag = "tokens",
    params(ConnectionPath),
    responses((status = 200, body = TokenSet), (status = 409, description = "reconnect-required", body = Error),
        (status = "4XX", body = Error), (status = 502, description = "the provider failed", body = Error)))]
async fn get_token(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<ConnectionPath>,
) -> ApiResult<TokenSet> {
    Ok(Json(caller.vault(&state).get_warm(&path.key(&caller)?).await?))
}

/// Refresh now, whatever the expiry.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/users/{user}/connections/{provider}/{name}/refresh",
    tag = "tokens", params(ConnectionPath),
    responses((status = 200, body = TokenSet), (status = 409, description = "reconnect-required", body = Error),
        (status = "4XX", body = Error), (status = 502, description = "the provider failed", body = Error)))]
async fn refresh_token(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<ConnectionPath>,
) -> ApiResult<TokenSet> {
    Ok(Json(caller.vault(&state).refresh(&path.key(&caller)?).await?))
}

#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LinkRequest {
    /// Scopes to request instead of the provider's configured ones.
    scopes: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
struct ConnectLinkUrl {
    /// Hand this to the user (and only to them): it works once, until `expires_at`, and
    /// connects their account at the provider to this connection.
    url: String,
    /// Unix seconds.
    expires_at: u64,
}

/// A one-time link (fifteen minutes) that connects the user's account in their browser,
/// with no API key: for a user who has no connection yet or must reconnect.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/users/{user}/connections/{provider}/{name}/link",
    tag = "tokens", params(ConnectionPath), request_body(content = Option<LinkRequest>),
    responses((status = 200, body = ConnectLinkUrl), (status = "4XX", body = Error)))]
async fn create_link(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<ConnectionPath>,
    body: Bytes,
) -> ApiResult<ConnectLinkUrl> {
    let key = path.key(&caller)?;
    let request: LinkRequest =
        if body.is_empty() { LinkRequest::default() } else { parse_json("link request", &body)? };
    let link = caller.vault(&state).link(&key, request.scopes.as_deref()).await?;
    let url = crate::connect_link_url(&state.public_url, &key.provider, &link.code);
    Ok(Json(ConnectLinkUrl { url, expires_at: link.expires_at }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct TenantPath {
    tenant: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UsersQuery {
    /// Continue after this user (the previous page's `next`).
    after: Option<String>,
    /// Users per page, 1 to 1000 (default 100).
    limit: Option<u32>,
}

/// The tenant's users who hold connections, each with their connections' names.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/users", tag = "tokens", params(TenantPath, UsersQuery),
    responses((status = 200, body = UserPage), (status = "4XX", body = Error)))]
async fn list_users(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<TenantPath>,
    axum::extract::Query(query): axum::extract::Query<UsersQuery>,
) -> ApiResult<UserPage> {
    caller.for_tenant(&path.tenant)?;
    Ok(Json(caller.vault(&state).users(&path.tenant, query.after.as_deref(), query.limit.unwrap_or(100)).await?))
}

#[derive(Serialize, ToSchema)]
struct ConsoleLinkUrl {
    /// Hand this to the user (and only to them): it opens their page of the console,
    /// where they see and disconnect their connections. It works once, until `expires_at`;
    /// the session it starts lasts an hour.
    url: String,
    /// Unix seconds.
    expires_at: u64,
}

/// A one-time link (fifteen minutes) into the console for the user: their connections,
/// to disconnect or reconnect, with no API key.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/users/{user}/console-link", tag = "tokens", params(UserPath),
    responses((status = 200, body = ConsoleLinkUrl), (status = "4XX", body = Error)))]
async fn create_console_link(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<UserPath>,
) -> ApiResult<ConsoleLinkUrl> {
    caller.for_tenant(&path.tenant)?;
    for (what, id) in [("tenant", &path.tenant), ("user", &path.user)] {
        if id.is_empty() || id.len() > 256 {
            return Err(Error::invalid_input(format!("the {what} must be 1 to 256 bytes")).into());
        }
    }
    let principal = Principal::User { tenant: path.tenant, user: path.user };
    let (code, expires_at) = state.sessions.link(principal).await?;
    Ok(Json(ConsoleLinkUrl { url: console::link_url(&state.public_url, &code), expires_at }))
}

/// The registered providers, without their secrets.
#[utoipa::path(get, path = "/v1/providers", tag = "providers",
    responses((status = 200, body = Vec<ProviderInfo>), (status = "4XX", body = Error)))]
async fn list_providers(caller: Caller, State(state): State<AppState>) -> ApiResult<Vec<ProviderInfo>> {
    Ok(Json(caller.vault(&state).providers().await?))
}

#[utoipa::path(get, path = "/v1/providers/{name}", tag = "providers", params(ProviderPath),
    responses((status = 200, body = ProviderInfo), (status = "4XX", body = Error)))]
async fn get_provider(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<ProviderPath>,
) -> ApiResult<ProviderInfo> {
    Ok(Json(caller.vault(&state).provider(&path.name).await?))
}

/// Add a provider, or replace the one of that name (operator keys only).
#[utoipa::path(put, path = "/v1/providers/{name}", tag = "providers", params(ProviderPath),
    request_body = ProviderConfig,
    responses((status = 200, body = ProviderInfo), (status = "4XX", body = Error)))]
async fn put_provider(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<ProviderPath>,
    body: Bytes,
) -> ApiResult<ProviderInfo> {
    caller.operator()?;
    let config = provider_in_body(&body, path.name)?;
    Ok(Json(caller.vault(&state).put_provider(&config).await?))
}

/// The provider a `PUT` body registers under `name`, the name in its path: a body that
/// names another is refused.
fn provider_in_body(body: &[u8], name: String) -> Result<ProviderConfig, ApiError> {
    let mut config: ProviderConfig = parse_json("provider", body)?;
    if !config.name.is_empty() && config.name != name {
        return Err(Error::invalid_input(format!("the body names provider {}, the path {name}", config.name)).into());
    }
    config.name = name;
    Ok(config)
}

/// Remove a provider (operator keys only); connections to it are kept.
#[utoipa::path(delete, path = "/v1/providers/{name}", tag = "providers", params(ProviderPath),
    responses((status = 204), (status = "4XX", body = Error)))]
async fn remove_provider(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<ProviderPath>,
) -> Result<axum::http::StatusCode, ApiError> {
    caller.operator()?;
    caller.vault(&state).remove_provider(&path.name).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EraseQuery {
    /// Connections to remove in this step, 1 to 1000 (default 100).
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
struct Erased {
    /// The tenant's credentials revoked in this step (all of them, the first time).
    revoked: super::tenants::Credentials,
    /// Connections removed in this step, and the other records deleted.
    #[serde(flatten)]
    page: tokenvault::ErasePage,
}

/// Erase a tenant (operator keys only), a step at a time: its API keys, access tokens and
/// console sessions revoked; up to `limit` of its connections revoked at their providers
/// (RFC 7009) and deleted, each with its receipt; once none is left, its providers,
/// webhook, events and pending flows. Repeat until `done`; an erase cut short goes on where
/// it stopped. Other tenants are untouched.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "tokens", params(TenantPath, EraseQuery),
    responses((status = 200, body = Erased), (status = "4XX", body = Error)))]
async fn erase_tenant(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<TenantPath>,
    axum::extract::Query(query): axum::extract::Query<EraseQuery>,
) -> ApiResult<Erased> {
    caller.operator()?;
    let vault = caller.vault(&state);
    let (revoked, page) = super::tenants::erase_step(&vault, &path.tenant, query.limit.unwrap_or(100)).await?;
    Ok(Json(Erased { revoked, page }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct TenantProviderPath {
    tenant: String,
    name: String,
}

/// The providers the tenant's connections use: its own (`tenant` set) and the vault's of
/// other names; never their secrets.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/providers", tag = "providers", params(TenantPath),
    responses((status = 200, body = Vec<ProviderInfo>), (status = "4XX", body = Error)))]
async fn list_tenant_providers(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<TenantPath>,
) -> ApiResult<Vec<ProviderInfo>> {
    caller.for_tenant(&path.tenant)?;
    Ok(Json(caller.vault(&state).providers_of(Some(&path.tenant)).await?))
}

/// The provider the tenant's connections of that name use: its own, else the vault's.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/providers/{name}", tag = "providers", params(TenantProviderPath),
    responses((status = 200, body = ProviderInfo), (status = "4XX", body = Error)))]
async fn get_tenant_provider(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<TenantProviderPath>,
) -> ApiResult<ProviderInfo> {
    caller.for_tenant(&path.tenant)?;
    Ok(Json(caller.vault(&state).provider_of(Some(&path.tenant), &path.name).await?))
}

/// Add the tenant's own provider (its own OAuth app), or replace it: its connections use it
/// instead of the vault's of the same name, and no other tenant sees it. Its endpoints
/// must be at origins the operator allows outbound.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/providers/{name}", tag = "providers", params(TenantProviderPath),
    request_body = ProviderConfig,
    responses((status = 200, body = ProviderInfo), (status = "4XX", body = Error)))]
async fn put_tenant_provider(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<TenantProviderPath>,
    body: Bytes,
) -> ApiResult<ProviderInfo> {
    caller.for_tenant(&path.tenant)?;
    let config = provider_in_body(&body, path.name)?;
    Ok(Json(caller.vault(&state).put_provider_of(Some(&path.tenant), &config).await?))
}

/// Remove the tenant's own provider; its connections use the vault's of that name again.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/providers/{name}", tag = "providers",
    params(TenantProviderPath), responses((status = 204), (status = "4XX", body = Error)))]
async fn remove_tenant_provider(
    caller: Caller,
    State(state): State<AppState>,
    Path(path): Path<TenantProviderPath>,
) -> Result<axum::http::StatusCode, ApiError> {
    caller.for_tenant(&path.tenant)?;
    caller.vault(&state).remove_provider_of(Some(&path.tenant), &path.name).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct KeysQuery {
    /// Count the sealed records that name each key (reads every sealed record).
    #[serde(default)]
    records: bool,
}

/// The data keys: id, creation time, status (operator keys only).
#[utoipa::path(get, path = "/v1/keys", tag = "keys", params(KeysQuery),
    responses((status = 200, body = Vec<DataKeyInfo>), (status = "4XX", body = Error)))]
async fn list_keys(
    caller: Caller,
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<KeysQuery>,
) -> ApiResult<Vec<DataKeyInfo>> {
    caller.operator()?;
    let keys = &state.vault.services().keys;
    let counts = if query.records { Some(keys.count_sealed().await?) } else { None };
    Ok(Json(keys.list(counts.as_ref()).await?))
}

/// Make a new data key active for new writes on every host sharing the storage (each
/// notices within seconds). Records sealed before keep their key until `tokenvault keys
/// reencrypt` moves them (operator keys only).
#[utoipa::path(post, path = "/v1/keys/rotate", tag = "keys",
    responses((status = 200, body = DataKeyInfo), (status = "4XX", body = Error)))]
async fn rotate_key(caller: Caller, State(state): State<AppState>) -> ApiResult<DataKeyInfo> {
    caller.operator()?;
    let vault = caller.vault(&state);
    Ok(Json(vault.services().keys.rotate(&vault.audit()).await?))
}
