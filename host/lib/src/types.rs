//! The vault's values as the host API shows them. Types holding a secret redact it from
//! `Debug`, so a stray `{:?}` in an embedder's log prints no value.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectionKey {
    pub tenant: String,
    pub user: String,
    pub provider: String,
    pub name: String,
}

pub const DEFAULT_CONNECTION_NAME: &str = "default";

impl ConnectionKey {
    pub fn new(
        tenant: impl Into<String>,
        user: impl Into<String>,
        provider: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        ConnectionKey { tenant: tenant.into(), user: user.into(), provider: provider.into(), name: name.into() }
    }
}

/// A usable token set, as `get` and `refresh` return it.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenSet {
    pub access_token: String,
    pub token_type: String,
    /// Unix seconds; absent when the token does not expire.
    pub expires_at: Option<u64>,
    pub scope: Option<String>,
    pub refresh_token: Option<String>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A token response as a provider returns it (RFC 6749 §5.1), e.g. read from stdin.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenGrant {
    pub access_token: String,
    /// Defaults to `Bearer` when a response omits it.
    #[serde(default = "bearer")]
    pub token_type: String,
    /// Seconds; some providers send it as a string.
    #[serde(default, deserialize_with = "number_or_string")]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

impl fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenGrant")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "<redacted>"))
            .field("scope", &self.scope)
            .finish()
    }
}

fn bearer() -> String {
    "Bearer".into()
}

fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        N(u64),
        S(String),
    }
    match Option::<Either>::deserialize(d)? {
        None => Ok(None),
        Some(Either::N(n)) => Ok(Some(n)),
        Some(Either::S(s)) => {
            s.trim().parse().map(Some).map_err(|_| serde::de::Error::custom("expires_in is not a number"))
        }
    }
}

impl TokenGrant {
    /// Parse a token response.
    pub fn from_json(json: &[u8]) -> Result<Self, crate::Error> {
        parse_json("token response", json)
    }
}

/// Parse `what` from JSON. Errors name the problem and its place, never a value (serde's
/// own messages can quote one).
pub fn parse_json<T: serde::de::DeserializeOwned>(what: &str, json: &[u8]) -> Result<T, crate::Error> {
    serde_json::from_slice(json).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        let text = e.to_string();
        let why = match e.classify() {
            serde_json::error::Category::Data
                if text.starts_with("missing field") || text.starts_with("unknown field") =>
            {
                // "unknown field `x`, expected one of …": the name of a field, not a value.
                text.split(" at line").next().unwrap_or("unexpected field").to_owned()
            }
            serde_json::error::Category::Data => {
                format!("a field has the wrong type (line {line}, column {column})")
            }
            _ => format!("not valid JSON (line {line}, column {column})"),
        };
        crate::Error::InvalidInput(format!("{what}: {why}"))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionStatus {
    Active,
    ReconnectRequired,
}

/// How a connection's access token is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionKind {
    /// A user's delegated tokens, renewed with the refresh token.
    User,
    /// The client's own token (client-credentials grant), obtained again when due.
    Client,
}

/// A connection's metadata: never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectionInfo {
    pub provider: String,
    pub name: String,
    pub kind: ConnectionKind,
    pub scopes: Vec<String>,
    pub expires_at: Option<u64>,
    pub has_refresh_token: bool,
    pub status: ConnectionStatus,
    pub updated_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic authentication (RFC 6749 §2.3.1), the default.
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
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
    /// Discover the endpoints from this issuer's metadata.
    pub issuer: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub revocation_url: Option<String>,
    pub device_authorization_url: Option<String>,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_auth: Option<ClientAuth>,
    pub scopes: Vec<String>,
    /// Extra parameters of the authorization request, as `[name, value]` pairs.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Vec<String>>))]
    pub authorization_params: Vec<(String, String)>,
    pub refresh_buffer_secs: Option<u32>,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("template", &self.template)
            .field("issuer", &self.issuer)
            .field("authorization_url", &self.authorization_url)
            .field("token_url", &self.token_url)
            .field("revocation_url", &self.revocation_url)
            .field("device_authorization_url", &self.device_authorization_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "<redacted>"))
            .field("client_auth", &self.client_auth)
            .field("scopes", &self.scopes)
            .field("authorization_params", &self.authorization_params)
            .field("refresh_buffer_secs", &self.refresh_buffer_secs)
            .finish()
    }
}

/// A built-in provider template and its parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TemplateRef {
    pub name: String,
    /// Microsoft: the directory tenant (default "common").
    pub tenant: Option<String>,
}

/// A registered provider, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderInfo {
    pub name: String,
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
    pub updated_at: u64,
}

/// Where to send a user's browser to connect an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthorizationRequest {
    pub url: String,
    /// The opaque state the provider sends back to the redirect URI.
    pub state: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// A connection a completed flow made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Connected {
    pub key: ConnectionKey,
    pub info: ConnectionInfo,
}

/// A one-time, short-lived code that starts connecting a user's account (see
/// [`crate::Vault::open_link`]). It lets its holder connect an account to that user, so
/// show it only to them; `Debug` redacts it.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectLink {
    pub code: String,
    /// Unix seconds.
    pub expires_at: u64,
}

impl fmt::Debug for ConnectLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectLink").field("code", &"<redacted>").field("expires_at", &self.expires_at).finish()
    }
}

/// What [`crate::Vault::get_or_link`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum TokenOrLink {
    Token(TokenSet),
    /// The connection does not exist or must be connected again.
    Link(ConnectLink),
}

/// What became of a removed connection's tokens at the provider. The connection is
/// deleted locally whatever the provider answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum UpstreamRevocation {
    /// The provider accepted revoking the refresh token and the access token (RFC 7009).
    Revoked,
    /// The provider has no revocation endpoint: the tokens stay valid there until they expire.
    Unsupported,
    /// Revoking failed; `reason` says why.
    Failed { reason: crate::Error },
}

/// A removed connection and what happened upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RemovalReceipt {
    pub provider: String,
    pub name: String,
    pub upstream: UpstreamRevocation,
}

/// A started device flow (RFC 8628): what to show the user, and the handle to poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceAuthorization {
    pub handle: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    /// Seconds to wait before polling.
    pub interval: u32,
    /// Unix seconds.
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum DeviceStatus {
    /// The user has not finished: poll again after this many seconds.
    Pending {
        retry_after: u32,
    },
    Connected(Connected),
}

/// A user of a tenant and the connections they hold ([`crate::Vault::users`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserConnections {
    pub user: String,
    pub connections: Vec<ConnectionName>,
}

/// A connection's provider and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectionName {
    pub provider: String,
    pub name: String,
}

/// One page of a tenant's users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserPage {
    pub users: Vec<UserConnections>,
    /// The last user of this page: ask again with `after` set to it for the next page;
    /// none after the last.
    pub next: Option<String>,
}

/// One page of connections due for background refresh ([`crate::Vault::due_for_refresh`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuePage {
    pub keys: Vec<ConnectionKey>,
    /// Where the next page starts; none after the last.
    pub cursor: Option<String>,
}

/// What [`crate::Vault::refresh_if_due`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefreshOutcome {
    /// The token expires after the horizon (or never).
    NotDue,
    /// Renewed, by this call or by another caller it waited for.
    Refreshed,
    /// No refresh token, or the user must connect again.
    NotRenewable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_responses_parse_leniently() {
        let g = TokenGrant::from_json(br#"{"access_token":"a","expires_in":"3600","id_token":"x"}"#).unwrap();
        assert_eq!((g.token_type.as_str(), g.expires_in), ("Bearer", Some(3600)));
        let g =
            TokenGrant::from_json(br#"{"access_token":"a","token_type":"bearer","expires_in":60,"refresh_token":"r"}"#)
                .unwrap();
        assert_eq!(g.expires_in, Some(60));
    }

    #[test]
    fn parse_errors_and_debug_never_quote_values() {
        for bad in [
            &br#"{"access_token":"canary-at","expires_in":"canary-x"}"#[..],
            br#"{"access_token":123,"refresh_token":"canary-rt"}"#,
            br#"{"refresh_token":"canary-rt"}"#,
            br#"canary-at"#,
        ] {
            let err = TokenGrant::from_json(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid-input: token response"), "{err}");
            assert!(!err.contains("canary"), "{err}");
        }
        let g = TokenGrant::from_json(br#"{"access_token":"canary-at","refresh_token":"canary-rt"}"#).unwrap();
        assert!(!format!("{g:?}").contains("canary"));
    }
}
