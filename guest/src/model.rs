//! The vault's public values, mirroring the WIT `types` interface.
//!
//! Types that hold a secret deliberately do not derive `Debug`, so that no `{:?}` can
//! print one.

use crate::error::ProviderFailure;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionKey {
    pub tenant: String,
    pub user: String,
    pub provider: String,
    pub name: String,
}

impl ConnectionKey {
    pub fn new(tenant: &str, user: &str, provider: &str, name: &str) -> Self {
        Self { tenant: tenant.into(), user: user.into(), provider: provider.into(), name: name.into() }
    }
}

/// A usable token set, as `get` and `refresh` return it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSet {
    pub access_token: String,
    pub token_type: String,
    pub expires_at: Option<u64>,
    pub scope: Option<String>,
    pub refresh_token: Option<String>,
}

/// A token response as a provider returns it (RFC 6749 §5.1).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionStatus {
    Active,
    ReconnectRequired,
}

/// How a connection's access token is renewed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionKind {
    /// A user's delegated tokens, renewed with the refresh token.
    #[default]
    User,
    /// The client's own token (client-credentials grant).
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    ClientSecretBasic,
    ClientSecretPost,
}

/// A built-in provider template and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    pub name: String,
    /// Microsoft: the directory tenant.
    pub tenant: Option<String>,
}

/// A provider to register: endpoints from a template, from discovery, or given (a given
/// one wins).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProviderConfig {
    pub name: String,
    pub template: Option<TemplateRef>,
    pub issuer: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub revocation_url: Option<String>,
    pub device_authorization_url: Option<String>,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_auth: Option<ClientAuth>,
    pub scopes: Vec<String>,
    pub authorization_params: Vec<(String, String)>,
    pub refresh_buffer_secs: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub authorization_params: Vec<(String, String)>,
    pub refresh_buffer_secs: u32,
    pub updated_at: u64,
}

/// Where to send a user's browser to connect an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRequest {
    pub url: String,
    pub state: String,
    pub expires_at: u64,
}

/// A one-time code that starts connecting an account (see `connect::link`). It grants
/// the right to connect an account to its user, so it has no `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectLink {
    pub code: String,
    pub expires_at: u64,
}

/// What `get_or_link` found.
pub enum TokenOrLink {
    Token(TokenSet),
    Link(ConnectLink),
}

/// What became of a removed connection's tokens at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamRevocation {
    Revoked,
    /// The provider has no revocation endpoint.
    Unsupported,
    Failed(crate::error::VaultError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovalReceipt {
    pub provider: String,
    pub name: String,
    pub upstream: UpstreamRevocation,
}

/// A started device flow (RFC 8628), as the user and the poller need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuthorization {
    pub handle: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub interval: u32,
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Poll again after this many seconds.
    Pending(u32),
    Connected(ConnectionKey, ConnectionInfo),
}

/// Audit event, mirroring the WIT `audit` interface: no field can carry a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    pub tenant: Option<String>,
    pub user: Option<String>,
    pub provider: Option<String>,
    pub name: Option<String>,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    TokenStore,
    TokenGet,
    TokenRefresh,
    TokenRemove,
    RevokeAll,
    ProviderPut,
    ProviderRemove,
    ConnectBegin,
    ConnectComplete,
    ConnectLink,
    ConnectOpenLink,
    ConnectDevice,
    ConnectClient,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    Ok,
    NotFound,
    InvalidInput,
    ReconnectRequired,
    ProviderError,
    Storage,
    Integrity,
    EgressDenied,
}

impl<T> From<&crate::error::Result<T>> for AuditOutcome {
    fn from(result: &crate::error::Result<T>) -> Self {
        use crate::error::VaultError as E;
        match result {
            Ok(_) => AuditOutcome::Ok,
            Err(E::NotFound(_)) => AuditOutcome::NotFound,
            Err(E::InvalidInput(_)) => AuditOutcome::InvalidInput,
            Err(E::ReconnectRequired(_)) => AuditOutcome::ReconnectRequired,
            Err(E::Provider(ProviderFailure { .. })) => AuditOutcome::ProviderError,
            Err(E::Storage(_)) => AuditOutcome::Storage,
            Err(E::Integrity(_)) => AuditOutcome::Integrity,
            Err(E::EgressDenied(_)) => AuditOutcome::EgressDenied,
        }
    }
}

/// One page of connections due for background refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuePage {
    pub keys: Vec<ConnectionKey>,
    pub cursor: Option<String>,
}

/// A user of a tenant and their connections' (provider, name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConnections {
    pub user: String,
    pub connections: Vec<(String, String)>,
}

/// One page of a tenant's users; `next` is the last user, to continue after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPage {
    pub users: Vec<UserConnections>,
    pub next: Option<String>,
}

/// What a background refresh of one connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    NotDue,
    Refreshed,
    NotRenewable,
}

/// What one step of the sweep of expired pending records did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepPage {
    pub deleted: u32,
    pub cursor: Option<String>,
}
