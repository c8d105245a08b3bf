//! Connecting an account: browser flows, connect links and the device flow.

use serde::{Deserialize, Serialize};

use crate::{ConnectionInfo, ConnectionKey};

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

/// A one-time, short-lived code that starts connecting a user's account. It lets its
/// holder connect an account to that user, so show it only to them; `Debug` redacts it.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectLink {
    pub code: String,
    /// Unix seconds.
    pub expires_at: u64,
}
crate::redacted_debug!(ConnectLink { expires_at; code });

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

/// What one step of the sweep of expired pending records did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepPage {
    pub deleted: u32,
    /// Where the next step starts; none when the sweep is done.
    pub cursor: Option<String>,
}
