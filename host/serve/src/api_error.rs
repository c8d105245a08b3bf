//! How the API answers a failure: `{"error": kind, "message": …}` with a fitting status.
//! Messages come from the vault's errors and the checks here, which never hold a value.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use tokenvault::error::{Error, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No credentials, or ones that are wrong, expired or revoked.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Valid credentials that do not reach this tenant or operation.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request conflicts with what exists (an access token's name in use).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A request body over the service's limit.
    #[error("payload-too-large: {0}")]
    TooLarge(String),
    /// A request body that did not arrive in time.
    #[error("request-timeout: {0}")]
    TimedOut(String),
    /// A request target over the service's limit.
    #[error("uri-too-long: {0}")]
    UriTooLong(String),
    /// Request headers over the service's limit.
    #[error("headers-too-large: {0}")]
    HeadersTooLarge(String),
    #[error(transparent)]
    Vault(#[from] Error),
}

impl From<crate::access_tokens::CreateError> for ApiError {
    fn from(err: crate::access_tokens::CreateError) -> Self {
        match err {
            crate::access_tokens::CreateError::NameTaken(_) => ApiError::Conflict(err.to_string()),
            crate::access_tokens::CreateError::Vault(err) => ApiError::Vault(err),
        }
    }
}

/// The host's parsing and checks fail with the component's kinds (invalid-input, not-found).
impl From<VaultError> for ApiError {
    fn from(err: VaultError) -> Self {
        ApiError::Vault(err.into())
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Vault(Error::Vault(err)) => match err {
                VaultError::NotFound(_) => StatusCode::NOT_FOUND,
                VaultError::InvalidInput(_) => StatusCode::BAD_REQUEST,
                // The request is fine; the connection's state is not: the user must connect again.
                VaultError::ReconnectRequired(_) => StatusCode::CONFLICT,
                VaultError::Provider(failure) if failure.timed_out => StatusCode::GATEWAY_TIMEOUT,
                VaultError::Provider(_) | VaultError::EgressDenied(_) => StatusCode::BAD_GATEWAY,
                VaultError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
                VaultError::Integrity(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Vault(Error::Sandbox(_) | Error::Config(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match self {
            ApiError::Vault(err) => serde_json::to_value(&err).expect("errors serialize"),
            ApiError::Unauthorized(message) => serde_json::json!({ "error": "unauthorized", "message": message }),
            ApiError::Forbidden(message) => serde_json::json!({ "error": "forbidden", "message": message }),
            ApiError::Conflict(message) => serde_json::json!({ "error": "conflict", "message": message }),
            ApiError::TooLarge(message) => serde_json::json!({ "error": "payload-too-large", "message": message }),
            ApiError::TimedOut(message) => serde_json::json!({ "error": "request-timeout", "message": message }),
            ApiError::UriTooLong(message) => serde_json::json!({ "error": "uri-too-long", "message": message }),
            ApiError::HeadersTooLarge(message) => {
                serde_json::json!({ "error": "headers-too-large", "message": message })
            }
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert("www-authenticate", "Bearer".parse().expect("a valid header value"));
        }
        response
    }
}
