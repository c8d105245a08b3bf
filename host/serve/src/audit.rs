//! `GET /v1/audit`: the audit trail, a page at a time, for operators and for a tenant's
//! own events.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::api_error::ApiError;
use super::api_keys::Scope;
use super::auth::Caller;
use tokenvault::audit::{AuditFilter, AuditPage, AuditQuery};
use tokenvault::error::Error;

/// The most events one page holds.
const MAX_LIMIT: usize = 1000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// A tenant key reads its own tenant's events only (the default for it).
    tenant: Option<String>,
    user: Option<String>,
    provider: Option<String>,
    /// e.g. `token-get`, `proxy`, `connect-complete`.
    action: Option<String>,
    /// e.g. `ok`, `reconnect-required`.
    outcome: Option<String>,
    /// Only events after this time (Unix milliseconds).
    after: Option<u64>,
    /// The `cursor` of the page before.
    cursor: Option<String>,
    /// Events per page, 1 to 1000 [default: 100].
    limit: Option<usize>,
}

/// The audit trail every host on the store writes, newest first, filtered: what was
/// asked for, by whom (`actor`: `api-key:ID`, `jwt:SUBJECT`, `access-token:ID`, …), and
/// how it ended. Never a value. Pass `cursor` back for the next (older) page; a page may
/// hold fewer events than `limit` and still have one after it.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = AuditPage), (status = "4XX", body = Error)))]
pub async fn read_audit(
    caller: Caller,
    State(state): State<AppState>,
    Query(params): Query<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let tenant = match (&caller.scope, params.tenant) {
        (Scope::Tenant(own), None) => Some(own.clone()),
        (_, Some(tenant)) => {
            caller.for_tenant(&tenant)?;
            Some(tenant)
        }
        (Scope::Operator, None) => None,
    };
    let limit = params.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::invalid_input(format!("limit must be 1 to {MAX_LIMIT}")).into());
    }
    let filter = AuditFilter {
        tenant,
        user: params.user,
        provider: params.provider,
        action: params.action,
        outcome: params.outcome,
    };
    let query = AuditQuery { filter, after_ms: params.after, cursor: params.cursor, limit };
    match state.vault.services().audit.read(&query).await? {
        Some(page) => Ok(Json(page)),
        None => Err(Error::Config("this service's audit sink cannot be read back".into()).into()),
    }
}
