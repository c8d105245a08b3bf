//! The administrator's pages: a tenant's users and their connections, revoking all of a
//! user's connections (after a confirmation), the audit log with filters, and webhooks
//! with the events given up on.

use std::collections::BTreeMap;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::user::{connections_table, upstream_text, utc};
use super::{Admin, error_page, href, page};
use crate::AppState;
use crate::api_keys::Scope;
use tokenvault::audit::{AuditAction, AuditFilter, AuditOutcome};

/// Users per page.
const USERS_PER_PAGE: u32 = 50;
/// Audit events shown at most.
const AUDIT_LIMIT: usize = 200;
/// Undelivered webhook events shown at most.
const UNDELIVERED_LIMIT: usize = 200;

#[derive(Deserialize)]
pub struct UsersQuery {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    after: String,
}

/// The tenant a page is about: the one asked for (if this admin reaches it), or the
/// admin's own. An operator who names none gets `None` and picks one.
fn tenant_of(admin: &Admin, asked: &str) -> Result<Option<String>, Response> {
    match (&admin.scope, asked) {
        (Scope::Tenant(own), "") => Ok(Some(own.clone())),
        (Scope::Operator, "") => Ok(None),
        (_, asked) => admin.check_tenant(asked).map(|()| Some(asked.to_owned())),
    }
}

/// An operator names the tenant to look at.
fn tenant_picker(admin: &Admin, action: &str, tenant: &str) -> Markup {
    html! {
        @if admin.scope == Scope::Operator {
            form.filters method="get" action=(action) {
                div { label for="tenant" { "Tenant" } input #tenant type="text" name="tenant" value=(tenant) required; }
                button type="submit" { "Show" }
            }
        }
    }
}

/// The tenant's users, each with their connections counted by provider.
pub async fn users(admin: Admin, State(state): State<AppState>, Query(query): Query<UsersQuery>) -> Response {
    let tenant = match tenant_of(&admin, &query.tenant) {
        Ok(Some(tenant)) => tenant,
        Ok(None) => {
            let body =
                html! { (tenant_picker(&admin, "/console/admin", "")) p.muted { "Name a tenant to see its users." } };
            return page(StatusCode::OK, "Users", Some(&admin.visitor), body);
        }
        Err(refused) => return refused,
    };
    let after = (!query.after.is_empty()).then_some(query.after.as_str());
    let found = match admin.visitor.vault(&state).users(&tenant, after, USERS_PER_PAGE).await {
        Ok(found) => found,
        Err(err) => return error_page(Some(&admin.visitor), err.into()),
    };
    let body = html! {
        (tenant_picker(&admin, "/console/admin", &tenant))
        @if found.users.is_empty() {
            p.muted { "No user of tenant " strong { (tenant) } " has a connection." }
        } @else {
            table {
                thead { tr { th { "User" } th { "Connections" } } }
                tbody {
                    @for user in &found.users {
                        tr data-user=(user.user) {
                            td { a href=(href("/console/admin/user", &[("tenant", &tenant), ("user", &user.user)])) { (user.user) } }
                            td { (by_provider(user.connections.iter().map(|c| c.provider.as_str()))) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &found.next {
            p { a href=(href("/console/admin", &[("tenant", &tenant), ("after", next)])) { "Next users →" } }
        }
    };
    page(StatusCode::OK, &format!("Users of {tenant}"), Some(&admin.visitor), body)
}

/// "github (1), microsoft (3)": connections counted by provider.
fn by_provider<'a>(providers: impl Iterator<Item = &'a str>) -> String {
    let mut counts = BTreeMap::<&str, usize>::new();
    for provider in providers {
        *counts.entry(provider).or_default() += 1;
    }
    counts.iter().map(|(provider, count)| format!("{provider} ({count})")).collect::<Vec<_>>().join(", ")
}

#[derive(Deserialize)]
pub struct UserQuery {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    user: String,
}

impl UserQuery {
    pub(super) fn new(tenant: &str, user: &str) -> Self {
        UserQuery { tenant: tenant.to_owned(), user: user.to_owned() }
    }

    /// The tenant and user named, if this admin reaches them.
    pub(super) fn check(&self, admin: &Admin) -> Result<(String, String), Response> {
        match tenant_of(admin, &self.tenant)? {
            Some(tenant) if !self.user.is_empty() => Ok((tenant, self.user.clone())),
            _ => Err(super::message_page(
                StatusCode::BAD_REQUEST,
                "Which user?",
                Some(&admin.visitor),
                "Name a tenant and a user.",
            )),
        }
    }
}

/// One user's connections, and the way to revoke them all.
pub async fn user(admin: Admin, State(state): State<AppState>, Query(query): Query<UserQuery>) -> Response {
    let (tenant, user) = match query.check(&admin) {
        Ok(named) => named,
        Err(refused) => return refused,
    };
    let list = match admin.visitor.vault(&state).list(&tenant, &user).await {
        Ok(list) => list,
        Err(err) => return error_page(Some(&admin.visitor), err.into()),
    };
    let tokens = match state.access_tokens.list(&tenant, &user).await {
        Ok(tokens) => tokens,
        Err(err) => return error_page(Some(&admin.visitor), err.into()),
    };
    let now = state.vault.services().clock.now().as_secs();
    let csrf = &admin.visitor.session.csrf;
    let body = html! {
        p.muted { "Tenant " (tenant) }
        (connections_table(&list, now, |_| html! {}))
        h2 { "Access tokens" }
        (super::access_tokens::table(&tokens, now, |token| html! {
            form.inline method="post" action="/console/admin/access-tokens/revoke" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="tenant" value=(tenant);
                input type="hidden" name="user" value=(user);
                input type="hidden" name="id" value=(token.id);
                button.danger type="submit" aria-label=(format!("Revoke {}", token.name)) { "Revoke" }
            }
        }))
        @if !list.is_empty() {
            p { a.button.danger href=(href("/console/admin/revoke-all", &[("tenant", &tenant), ("user", &user)])) { "Revoke all…" } }
        }
        p { a href=(href("/console/admin/audit", &[("tenant", &tenant), ("user", &user)])) { "This user's audit events" } }
    };
    page(StatusCode::OK, &format!("User {user}"), Some(&admin.visitor), body)
}

/// Revoking all asks first: what will happen, and a button that does it.
pub async fn confirm_revoke_all(
    admin: Admin,
    State(state): State<AppState>,
    Query(query): Query<UserQuery>,
) -> Response {
    let (tenant, user) = match query.check(&admin) {
        Ok(named) => named,
        Err(refused) => return refused,
    };
    let count = match admin.visitor.vault(&state).list(&tenant, &user).await {
        Ok(list) => list.len(),
        Err(err) => return error_page(Some(&admin.visitor), err.into()),
    };
    let body = html! {
        p.notice.warn {
            "Revoke all " strong { (count) } " connection" @if count != 1 { "s" } " of " strong { (user) }
            " (tenant " (tenant) ")? Each is revoked at its provider and deleted here; the user must connect again. "
            "This cannot be undone."
        }
        form method="post" action="/console/admin/revoke-all" {
            input type="hidden" name="csrf" value=(admin.visitor.session.csrf);
            input type="hidden" name="tenant" value=(tenant);
            input type="hidden" name="user" value=(user);
            button.danger type="submit" { "Yes, revoke all" }
            " "
            a href=(href("/console/admin/user", &[("tenant", &tenant), ("user", &user)])) { "Cancel" }
        }
    };
    page(StatusCode::OK, "Revoke all?", Some(&admin.visitor), body)
}

#[derive(Deserialize)]
pub struct RevokeAllForm {
    csrf: String,
    tenant: String,
    user: String,
}

pub async fn revoke_all(admin: Admin, State(state): State<AppState>, Form(form): Form<RevokeAllForm>) -> Response {
    if let Err(refused) = admin.visitor.check_csrf(&form.csrf) {
        return refused;
    }
    let (tenant, user) = match (UserQuery { tenant: form.tenant, user: form.user }).check(&admin) {
        Ok(named) => named,
        Err(refused) => return refused,
    };
    let receipts = match admin.visitor.vault(&state).revoke_all(&tenant, &user).await {
        Ok(receipts) => receipts,
        Err(err) => return error_page(Some(&admin.visitor), err.into()),
    };
    let body = html! {
        p.notice role="status" { "Revoked " (receipts.len()) " connection" @if receipts.len() != 1 { "s" } " of " strong { (user) } "." }
        @if !receipts.is_empty() {
            table {
                thead { tr { th { "Provider" } th { "Name" } th { "At the provider" } } }
                tbody {
                    @for receipt in &receipts {
                        tr { td { (receipt.provider) } td { (receipt.name) } td { (upstream_text(&receipt.upstream)) } }
                    }
                }
            }
        }
        p { a href=(href("/console/admin", &[("tenant", &tenant)])) { "Back to the users" } }
    };
    page(StatusCode::OK, "Revoked", Some(&admin.visitor), body)
}

#[derive(Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    provider: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    outcome: String,
    /// Where the page before ended.
    #[serde(default)]
    cursor: String,
}

/// The audit trail, newest first, a page at a time, filtered; a tenant's admin sees their
/// tenant's only.
pub async fn audit(admin: Admin, State(state): State<AppState>, Query(query): Query<AuditQuery>) -> Response {
    let tenant = match tenant_of(&admin, &query.tenant) {
        Ok(tenant) => tenant,
        Err(refused) => return refused,
    };
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let filter = AuditFilter {
        tenant: tenant.clone(),
        user: some(&query.user),
        provider: some(&query.provider),
        action: some(&query.action),
        outcome: some(&query.outcome),
    };
    let read =
        tokenvault::audit::AuditQuery { filter, after_ms: None, cursor: some(&query.cursor), limit: AUDIT_LIMIT };
    let trail = match state.vault.services().audit.read(&read).await {
        Ok(page) => page,
        Err(err) => return error_page(Some(&admin.visitor), err.into()),
    };
    let select = |name: &str, options: &[&str], chosen: &str| {
        html! {
            select #(name) name=(name) {
                option value="" { "any" }
                @for option in options { option value=(option) selected[*option == chosen] { (option) } }
            }
        }
    };
    let older = trail.as_ref().and_then(|p| p.cursor.as_deref()).map(|cursor| {
        let filters = [
            ("tenant", query.tenant.as_str()),
            ("user", &query.user),
            ("provider", &query.provider),
            ("action", &query.action),
            ("outcome", &query.outcome),
            ("cursor", cursor),
        ];
        href("/console/admin/audit", &filters)
    });
    let body = html! {
        form.filters method="get" action="/console/admin/audit" {
            @if admin.scope == Scope::Operator {
                div { label for="tenant" { "Tenant" } input #tenant type="text" name="tenant" value=(query.tenant); }
            }
            div { label for="user" { "User" } input #user type="text" name="user" value=(query.user); }
            div { label for="provider" { "Provider" } input #provider type="text" name="provider" value=(query.provider); }
            div { label for="action" { "Action" } (select("action", &[AuditAction::NAMES, &[super::SIGN_IN]].concat(), &query.action)) }
            div { label for="outcome" { "Outcome" } (select("outcome", &[AuditOutcome::NAMES, &[super::DENIED]].concat(), &query.outcome)) }
            button type="submit" { "Filter" }
        }
        @match &trail {
            None => p.muted { "This service's audit sink cannot be read back." },
            Some(page) if page.events.is_empty() => p.muted { "No event matches." },
            Some(page) => {
                p.muted { "Newest first, from the trail every host on this store writes." }
                table {
                    thead { tr { th { "#" } th { "Time (UTC)" } th { "Action" } th { "Outcome" } th { "Tenant" } th { "User" } th { "Provider" } th { "Name" } th { "By" } } }
                    tbody {
                        @for entry in &page.events {
                            @let event = &entry.record;
                            tr.event {
                                td { (entry.id) }
                                td { (utc(event.at_ms / 1000)) }
                                td.action { (event.action) }
                                td { (event.outcome) }
                                td { (event.tenant.as_deref().unwrap_or("")) }
                                td { (event.user.as_deref().unwrap_or("")) }
                                td { (event.provider.as_deref().unwrap_or("")) }
                                td { (event.name.as_deref().unwrap_or("")) }
                                td { (event.actor.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(older) = older { p { a href=(older) { "Older events" } } }
    };
    page(StatusCode::OK, "Audit log", Some(&admin.visitor), body)
}

#[derive(Deserialize)]
pub struct WebhooksQuery {
    #[serde(default)]
    tenant: String,
}

/// A tenant's webhook, and the events that could not be delivered to it within the retry
/// window (every tenant's, for an operator who names none).
pub async fn webhooks(admin: Admin, State(state): State<AppState>, Query(query): Query<WebhooksQuery>) -> Response {
    let tenant = match tenant_of(&admin, &query.tenant) {
        Ok(tenant) => tenant,
        Err(refused) => return refused,
    };
    let hook = match &tenant {
        Some(tenant) => match state.vault.get_webhook(tenant).await {
            Ok(hook) => hook,
            Err(err) => return error_page(Some(&admin.visitor), err.into()),
        },
        None => None,
    };
    let outbox = tokenvault::outbox::Outbox::new(&*state.vault.services().storage);
    let undelivered = match outbox.undelivered(tenant.as_deref(), UNDELIVERED_LIMIT).await {
        Ok(events) => events,
        Err(err) => return error_page(Some(&admin.visitor), tokenvault::Error::from(err).into()),
    };
    let body = html! {
        (tenant_picker(&admin, "/console/admin/webhooks", tenant.as_deref().unwrap_or("")))
        @if let Some(tenant) = &tenant {
            h2 { "Webhook of " (tenant) }
            @match &hook {
                None => p.muted { "This tenant has no webhook (PUT /v1/tenants/{tenant}/webhook sets one)." },
                Some(hook) => dl {
                    dt { "URL" } dd { code { (hook.url) } }
                    dt { "Events" } dd { @if hook.events.is_empty() { "all" } @else { (hook.events.join(", ")) } }
                    dt { "Set" } dd { (utc(hook.updated_at)) }
                },
            }
        }
        h2 { "Undelivered events" }
        @if undelivered.is_empty() {
            p.muted { "None: every event was delivered, or is still being retried." }
        } @else {
            p.muted { "Given up on after the retry window, newest first." }
            table {
                thead { tr { th { "Time (UTC)" } th { "Event" } th { "Tenant" } th { "User" } th { "Provider" } th { "Name" } th { "Tries" } th { "Last answer" } } }
                tbody {
                    @for event in &undelivered {
                        tr.undelivered {
                            td { (utc(event.at_us / 1_000_000)) }
                            td.event-type { (event.kind.name()) }
                            td { (event.tenant) }
                            td { (event.user.as_deref().unwrap_or("")) }
                            td { (event.provider.as_deref().unwrap_or("")) }
                            td { (event.name.as_deref().unwrap_or("")) }
                            td { (event.delivery.attempts) }
                            td { (event.delivery.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    page(StatusCode::OK, "Webhooks", Some(&admin.visitor), body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn connections_are_counted_by_provider() {
        let providers = ["microsoft", "github", "microsoft", "microsoft"];
        assert_eq!(super::by_provider(providers.into_iter()), "github (1), microsoft (3)");
        assert_eq!(super::by_provider(std::iter::empty()), "");
    }
}
