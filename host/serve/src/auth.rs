//! Who is calling: every API request carries `Authorization: Bearer <credential>`, an API
//! key (`tvk_…`) or, when the operator configured an identity provider, a JWT from it.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::api_error::ApiError;
use super::api_keys::Scope;
use tokenvault::Vault;
use tokenvault::audit::Actor;

/// The authenticated caller of a request; a handler that takes one cannot run without it.
pub struct Caller {
    /// An API key's id, or `jwt:<sub>`: for messages and logs.
    pub id: String,
    pub scope: Scope,
    /// Who the audit trail names for what this caller does.
    pub actor: Actor,
}

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
            .ok_or_else(|| ApiError::Unauthorized("the Authorization header is not Bearer <credential>".into()))?;
        if presented.starts_with(crate::access_tokens::KIND.prefix) {
            return Err(ApiError::Unauthorized("an access token works only on /v1/proxy".into()));
        }
        if let Some(info) = state.api_keys.verify(presented).await? {
            return Ok(Caller { actor: Actor::api_key(&info.id), id: info.id, scope: info.scope });
        }
        if let Some(jwt) = &state.jwt
            && !presented.starts_with(crate::api_keys::KIND.prefix)
        {
            return match jwt.verify(presented).await {
                Some(caller) => Ok(Caller {
                    id: format!("jwt:{}", caller.subject),
                    actor: Actor::jwt(&caller.subject),
                    scope: Scope::Tenant(caller.tenant),
                }),
                None => Err(ApiError::Unauthorized("invalid, expired or foreign token".into())),
            };
        }
        Err(ApiError::Unauthorized("unknown or revoked API key".into()))
    }
}

impl Caller {
    /// The vault, acting for this caller.
    pub fn vault(&self, state: &AppState) -> Vault {
        state.vault.acting_as(self.actor.clone())
    }

    /// Allowed to act on `tenant`'s connections?
    pub fn for_tenant(&self, tenant: &str) -> Result<(), ApiError> {
        if self.scope.allows_tenant(tenant) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("{} is for {}, not tenant {tenant}", self.id, self.scope)))
        }
    }

    /// Allowed to change what all tenants share (the provider registry)?
    pub fn operator(&self) -> Result<(), ApiError> {
        match self.scope {
            Scope::Operator => Ok(()),
            Scope::Tenant(_) => Err(ApiError::Forbidden(format!(
                "{} is for {}; only an operator key changes providers",
                self.id, self.scope
            ))),
        }
    }
}
