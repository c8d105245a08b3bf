//! Access tokens in the console: a user lists, makes (shown once, with a copy button and a
//! ready `curl` line through the proxy) and revokes their own; an admin sees and revokes
//! any user's of their tenants.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use maud::{Markup, PreEscaped, html};
use sha2::{Digest, Sha256};

use super::admin::UserQuery;
use super::{Admin, EndUser, error_page, page};
use crate::AppState;
use crate::access_tokens::{AccessTokenInfo, AccessTokenRequest, ConnectionRef, CreateError, NewAccessToken};
use tokenvault::ConnectionInfo;

/// Lifetimes offered when making a token, in days (capped at the service's maximum).
const LIFETIME_DAYS: [u64; 4] = [1, 7, 30, 90];
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// The one script any console page runs: the copy button of a new token. Allowed by its
/// hash on that page alone; every other page runs none.
const COPY_SCRIPT: &str = "for(const b of document.querySelectorAll('button[data-copy]')){b.addEventListener('click',\
()=>navigator.clipboard.writeText(document.getElementById(b.dataset.copy).textContent).then(()=>{b.textContent='Copied'}))}";

/// The user's tokens and the form that makes one.
pub fn section(
    csrf: &str,
    tokens: &[AccessTokenInfo],
    connections: &[ConnectionInfo],
    now: u64,
    max_secs: u64,
) -> Markup {
    html! {
        h2 { "Access tokens" }
        p.muted {
            "An access token lets a tool of yours call a provider's API through tokenvault, for the connections, "
            "methods and paths you choose, without ever holding your provider tokens."
        }
        (table(tokens, now, |token| html! {
            form.inline method="post" action="/console/me/access-tokens/revoke" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="id" value=(token.id);
                button.danger type="submit" aria-label=(format!("Revoke {}", token.name)) { "Revoke" }
            }
        }))
        @if connections.is_empty() {
            p.muted { "Connect an account to make an access token for it." }
        } @else {
            h3 { "New access token" }
            form method="post" action="/console/me/access-tokens" {
                input type="hidden" name="csrf" value=(csrf);
                label for="token-name" { "Name" }
                input #token-name type="text" name="name" required maxlength="100";
                fieldset {
                    legend { "Connections it reaches" }
                    @for info in connections {
                        @let value = serde_json::json!([info.provider, info.name]).to_string();
                        label { input type="checkbox" name="connection" value=(value); " " (info.provider) " (" (info.name) ")" }
                    }
                }
                fieldset {
                    legend { "Methods (none checked: any)" }
                    @for method in METHODS {
                        label.inline { input type="checkbox" name="method" value=(method); " " (method) }
                    }
                }
                label for="token-paths" { "Paths, one per line (empty: any; * stands for a segment, or last, the rest)" }
                textarea #token-paths name="paths" rows="3" cols="40" placeholder="/user\n/repos/*" {}
                label for="token-expires" { "Expires in" }
                select #token-expires name="days" {
                    @for days in LIFETIME_DAYS.iter().filter(|d| **d * 86_400 <= max_secs) {
                        option value=(days) selected[*days == 7] { (days) " day" @if *days != 1 { "s" } }
                    }
                }
                p { button type="submit" { "Make access token" } }
            }
        }
    }
}

/// Tokens as a table, with `actions` for each row.
pub fn table(tokens: &[AccessTokenInfo], now: u64, actions: impl Fn(&AccessTokenInfo) -> Markup) -> Markup {
    let any = |list: &[String]| if list.is_empty() { "any".to_owned() } else { list.join(" ") };
    html! {
        @if tokens.is_empty() {
            p.muted { "No access tokens." }
        } @else {
            table {
                thead { tr { th { "Name" } th { "Connections" } th { "Methods" } th { "Paths" } th { "Expires" } th {} } }
                tbody {
                    @for token in tokens {
                        tr data-access-token=(token.name) {
                            td { (token.name) }
                            td { (token.connections.iter().map(|c| format!("{} ({})", c.provider, c.name)).collect::<Vec<_>>().join(", ")) }
                            td { (any(&token.methods)) }
                            td { (any(&token.paths)) }
                            td { @if token.expires_at <= now { span.badge.failed { "expired" } } @else { (super::user::utc(token.expires_at)) } }
                            td { (actions(token)) }
                        }
                    }
                }
            }
        }
    }
}

/// Make a token from the form; the page shows it once.
pub async fn create(user: EndUser, State(state): State<AppState>, body: Bytes) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_default();
    let all = |name: &str| form.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect::<Vec<_>>();
    if let Err(refused) = user.visitor.check_csrf(field("csrf")) {
        return refused;
    }
    // Each checked connection is `["provider", "name"]`.
    let connections: BTreeSet<(String, String)> =
        all("connection").iter().filter_map(|value| serde_json::from_str(value).ok()).collect();
    let paths: Vec<String> =
        field("paths").lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    let methods = all("method");
    let request = AccessTokenRequest {
        name: field("name").to_owned(),
        connections: connections.into_iter().map(|(provider, name)| ConnectionRef { provider, name }).collect(),
        expires_in: field("days").parse::<u64>().ok().map(|days| days * 86_400),
        methods: (!methods.is_empty()).then_some(methods),
        paths: (!paths.is_empty()).then_some(paths),
    };
    match state.access_tokens.create(&user.tenant, &user.user, request).await {
        Ok(made) => {
            let first = serde_json::from_str::<(String, String)>(field("connection"));
            shown_once(&state, &user, made, first.as_ref().map_or("PROVIDER", |(provider, _)| provider)).await
        }
        Err(CreateError::NameTaken(name)) => {
            let notice = html! { p.notice.warn role="alert" { "You already have an active access token named " strong { (name) } "." } };
            super::user::render(&state, &user, Some(notice)).await
        }
        Err(CreateError::Vault(err)) => {
            let notice = html! { p.notice.warn role="alert" { (err.message()) } };
            super::user::render(&state, &user, Some(notice)).await
        }
    }
}

/// The user's page with the new token at the top, the only time it is shown.
async fn shown_once(state: &AppState, user: &EndUser, made: NewAccessToken, provider: &str) -> Response {
    let curl = format!("curl -H 'Authorization: Bearer {}' {}/v1/proxy/{provider}/PATH", made.token, state.public_url);
    let notice = html! {
        div.notice role="status" {
            p { strong { "Your new access token" } " (shown this once; copy it now):" }
            p { code #new-token { (made.token) } " " button type="button" data-copy="new-token" { "Copy" } }
            p { "Try it:" }
            p { code #new-token-curl { (curl) } " " button type="button" data-copy="new-token-curl" { "Copy" } }
        }
        script { (PreEscaped(COPY_SCRIPT)) }
    };
    let mut response = super::user::render(state, user, Some(notice)).await;
    let policy = format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{}'; form-action 'self' http: https:; \
         frame-ancestors 'none'; base-uri 'none'",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(COPY_SCRIPT.as_bytes()))
    );
    response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_str(&policy).expect("ASCII"));
    response
}

#[derive(serde::Deserialize)]
pub struct RevokeForm {
    csrf: String,
    id: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    user: String,
}

/// A user revokes one of their tokens.
pub async fn revoke(
    user: EndUser,
    State(state): State<AppState>,
    axum::Form(form): axum::Form<RevokeForm>,
) -> Response {
    if let Err(refused) = user.visitor.check_csrf(&form.csrf) {
        return refused;
    }
    match state.access_tokens.revoke(&user.tenant, &user.user, &form.id).await {
        Ok(token) => {
            let notice = html! { p.notice role="status" { "Revoked access token " strong { (token.name) } "." } };
            super::user::render(&state, &user, Some(notice)).await
        }
        Err(err) => error_page(Some(&user.visitor), err.into()),
    }
}

/// An admin revokes a user's token.
pub async fn admin_revoke(
    admin: Admin,
    State(state): State<AppState>,
    axum::Form(form): axum::Form<RevokeForm>,
) -> Response {
    if let Err(refused) = admin.visitor.check_csrf(&form.csrf) {
        return refused;
    }
    let (tenant, user) = match UserQuery::new(&form.tenant, &form.user).check(&admin) {
        Ok(named) => named,
        Err(refused) => return refused,
    };
    match state.access_tokens.revoke(&tenant, &user, &form.id).await {
        Ok(token) => {
            let text = format!("Revoked access token {} of {user}.", token.name);
            page(
                StatusCode::OK,
                "Access token revoked",
                Some(&admin.visitor),
                html! {
                    p.notice role="status" { (text) }
                    p { a href=(super::href("/console/admin/user", &[("tenant", &tenant), ("user", &user)])) { "Back to " (user) } }
                },
            )
        }
        Err(err) => error_page(Some(&admin.visitor), err.into()),
    }
}
