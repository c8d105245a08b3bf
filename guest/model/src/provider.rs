//! OAuth providers (the vault's clients of them) as registered and as shown.

use serde::{Deserialize, Serialize};

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1). Named as OAuth
/// metadata names the methods (`client_secret_basic`); the WIT's kebab-case names are
/// accepted too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic authentication, the default.
    #[default]
    #[serde(alias = "client-secret-basic")]
    ClientSecretBasic,
    #[serde(alias = "client-secret-post")]
    ClientSecretPost,
}

/// A built-in provider template and its parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TemplateRef {
    /// github, google, microsoft, slack, discord or gitlab.
    pub name: String,
    /// Microsoft: the directory tenant (default "common").
    pub tenant: Option<String>,
}

/// A provider to register. Endpoints come from a template, or from the issuer's metadata,
/// or are given; a given one overrides the others. Every field but `client_id` is optional.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    /// A built-in template (github, google, microsoft, slack, discord, gitlab).
    pub template: Option<TemplateRef>,
    /// Discover the endpoints from this issuer's metadata (RFC 8414, then OpenID Connect).
    pub issuer: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub revocation_url: Option<String>,
    pub device_authorization_url: Option<String>,
    pub client_id: String,
    /// Sealed by the component like a token; never returned.
    pub client_secret: Option<String>,
    /// None: the template's, else the first of basic and post the metadata lists, else basic.
    pub client_auth: Option<ClientAuth>,
    /// Scopes requested when connecting; empty: the template's defaults.
    pub scopes: Vec<String>,
    /// Extra parameters of the authorization request, as `[name, value]` pairs.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Vec<String>>))]
    pub authorization_params: Vec<(String, String)>,
    /// Refresh this many seconds before expiry (default 60), capped at half a token's lifetime.
    pub refresh_buffer_secs: Option<u32>,
    /// Where the provider's API lives (`https://api.github.com`), for the proxy; none: the
    /// template's.
    pub api_base_url: Option<String>,
}
crate::redacted_debug!(ProviderConfig {
    name, template, issuer, authorization_url, token_url, revocation_url, device_authorization_url, client_id,
    client_auth, scopes, authorization_params, refresh_buffer_secs, api_base_url;
    client_secret
});

/// A registered provider, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderInfo {
    pub name: String,
    /// Whose it is: a tenant's own; absent: the vault's, used by every tenant that has
    /// none of this name.
    pub tenant: Option<String>,
    pub template: Option<String>,
    pub issuer: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: String,
    pub revocation_url: Option<String>,
    pub device_authorization_url: Option<String>,
    pub client_id: String,
    pub has_client_secret: bool,
    pub client_auth: ClientAuth,
    pub scopes: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Vec<String>>))]
    pub authorization_params: Vec<(String, String)>,
    pub refresh_buffer_secs: u32,
    /// Where the proxy sends this provider's API calls; none: no proxy.
    pub api_base_url: Option<String>,
    /// Unix seconds.
    pub updated_at: u64,
}
