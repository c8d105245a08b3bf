//! Who is calling: every API request carries `Authorization: Bearer <API key>`.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::api_error::ApiError;
use super::api_keys::{ApiKeyInfo, Scope};

/// The authenticated caller of a request; a handler that takes one cannot run without it.
pub struct Caller(pub ApiKeyInfo);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            return Err(ApiError::Unauthorized("no credentials: send Authorization: Bearer <API key>".into()));
        };
        let presented = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| ApiError::Unauthorized("the Authorization header is not Bearer <API key>".into()))?;
        match state.api_keys.verify(presented).await? {
            Some(info) => Ok(Caller(info)),
            None => Err(ApiError::Unauthorized("unknown or revoked API key".into())),
        }
    }
}

impl Caller {
    /// Allowed to act on `tenant`'s connections?
    pub fn for_tenant(&self, tenant: &str) -> Result<(), ApiError> {
        if self.0.scope.allows_tenant(tenant) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("API key {} is for {}, not tenant {tenant}", self.0.id, self.0.scope)))
        }
    }

    /// Allowed to change what all tenants share (the provider registry)?
    pub fn operator(&self) -> Result<(), ApiError> {
        match self.0.scope {
            Scope::Operator => Ok(()),
            Scope::Tenant(_) => Err(ApiError::Forbidden(format!(
                "API key {} is for {}; only an operator key changes providers",
                self.0.id, self.0.scope
            ))),
        }
    }
}
