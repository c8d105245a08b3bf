//! A tenant leaving: its credentials revoked first (API keys, proxy access tokens, console
//! sessions), so nothing new is made of it meanwhile; then, a page at a time, its
//! connections revoked at their providers and deleted, and its providers, webhook, events
//! and pending flows. Every step can be repeated: an erase cut short goes on when run again.
//! The audit trail keeps what happened; other tenants are untouched.

use serde::Serialize;
use utoipa::ToSchema;

use crate::{AccessTokens, ApiKeys, Scope};
use tokenvault::{ErasePage, Result, Vault};

/// The tenant's credentials that were revoked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Credentials {
    pub api_keys: u32,
    pub access_tokens: u32,
    pub console_sessions: u32,
}

/// Revoke every credential of `tenant`'s: tenant API keys, access tokens, console sessions.
pub async fn revoke_credentials(vault: &Vault, tenant: &str) -> Result<Credentials> {
    let mut revoked = Credentials::default();
    let api_keys = ApiKeys::of(vault);
    for key in api_keys.list().await? {
        if key.scope == Scope::Tenant(tenant.to_owned()) {
            api_keys.revoke(&key.id).await?;
            revoked.api_keys += 1;
        }
    }
    let access_tokens = AccessTokens::of(vault, 0);
    for token in access_tokens.list_all().await? {
        if token.tenant == tenant {
            access_tokens.revoke(&token.tenant, &token.user, &token.id).await?;
            revoked.access_tokens += 1;
        }
    }
    revoked.console_sessions = crate::console::session::Sessions::of(vault).end_tenant(tenant).await?;
    Ok(revoked)
}

/// One step: the credentials (each step, so none made since survives), then a page of the
/// component's records.
pub async fn erase_step(vault: &Vault, tenant: &str, limit: u32) -> Result<(Credentials, ErasePage)> {
    let credentials = revoke_credentials(vault, tenant).await?;
    let page = vault.erase_tenant(tenant, limit).await?;
    Ok((credentials, page))
}
