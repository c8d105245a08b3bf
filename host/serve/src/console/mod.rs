//! The console: small server-rendered pages for end users and administrators.
//!
//! - An end user, let in by a console link their backend asked for
//!   (`POST /v1/tenants/{tenant}/users/{user}/console-link`), sees their connections at
//!   `/console/me`, and disconnects (revoked at the provider) or reconnects them.
//! - An administrator signs in with an API key, or through the operator's OpenID Connect
//!   login when one is configured, and sees a tenant's users with their connections,
//!   revokes all of a user's connections, and reads the audit log.
//!
//! Pages show metadata only (the vault's `list` never returns a value, so no page can).
//! Every form carries a CSRF token: its session's, or before sign-in a cookie's. Every
//! page goes out with a Content-Security-Policy that allows no script, and is neither
//! cached nor framed.

// A refusal here is a whole page: handlers' errors are `Response`s on purpose.
#![allow(clippy::result_large_err)]

mod access_tokens;
mod admin;
pub mod oidc;
pub mod session;
mod user;

use axum::extract::{FromRequestParts, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use maud::{Markup, html};
use serde::Deserialize;

use self::session::{Principal, Session, csrf_matches, random_token};
use super::AppState;
use super::api_error::ApiError;
use super::api_keys::Scope;
use tokenvault::Vault;
use tokenvault::audit::{Actor, AuditRecord, AuditUnavailable};

const SESSION_COOKIE: &str = "tv_session";
/// The console's own audit action, beside the component's, and the outcome it adds.
pub(crate) const SIGN_IN: &str = "console-sign-in";
pub(crate) const DENIED: &str = "denied";
/// The sign-in form's CSRF token, before there is a session to hold one. `__Host-`: Secure,
/// whole-site and set by this host alone, so a neighbouring subdomain cannot plant a token of
/// its choosing (browsers treat loopback as secure, so it works on http://127.0.0.1 too).
const SIGN_IN_COOKIE: &str = "__Host-tv_sign_in";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(home))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/enter", get(enter))
        .route("/console/signed-out", get(signed_out))
        .route("/console/me", get(user::connections))
        .route("/console/me/disconnect", post(user::disconnect))
        .route("/console/me/reconnect", post(user::reconnect))
        .route("/console/me/access-tokens", post(access_tokens::create))
        .route("/console/me/access-tokens/revoke", post(access_tokens::revoke))
        .route("/console/admin/access-tokens/revoke", post(access_tokens::admin_revoke))
        .route("/console/admin", get(admin::users))
        .route("/console/admin/user", get(admin::user))
        .route("/console/admin/revoke-all", get(admin::confirm_revoke_all).post(admin::revoke_all))
        .route("/console/admin/audit", get(admin::audit))
        .route("/console/admin/webhooks", get(admin::webhooks))
        .merge(oidc::routes())
        .layer(axum::middleware::map_response(form_refusals))
        .layer(axum::middleware::map_response(super::html::guard_headers))
}

/// A form axum could not read (a field missing, or one it cannot parse) answers a page
/// like every other, not axum's plain text.
async fn form_refusals(response: Response) -> Response {
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/plain"));
    if response.status().is_client_error() && plain {
        return message_page(
            response.status(),
            "The form could not be read",
            None,
            "It is missing a field or holds one that cannot be read. Go back, reload the page and try again.",
        );
    }
    response
}

/// The console link's address for `code`.
pub fn link_url(public_url: &str, code: &str) -> String {
    href(&format!("{public_url}/console/enter"), &[("code", code)])
}

/// `path?k=v&…`, each pair form-encoded.
pub fn href(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        query.append_pair(key, value);
    }
    let query = query.finish();
    if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") }
}

/// A signed-in browser: its session id (from the cookie) and its session.
pub struct Visitor {
    pub id: String,
    pub session: Session,
}

impl Visitor {
    /// Who the audit trail names for what this visitor does.
    pub fn actor(&self) -> Actor {
        match &self.session.principal {
            Principal::Admin { via, .. } => Actor::console(via),
            Principal::User { user, .. } => Actor::console(&format!("user:{user}")),
        }
    }

    /// The vault, acting for this visitor.
    pub fn vault(&self, state: &AppState) -> Vault {
        state.vault.acting_as(self.actor())
    }

    /// A form's CSRF token must be this session's.
    fn check_csrf(&self, presented: &str) -> Result<(), Response> {
        if self.session.csrf_matches(presented) {
            Ok(())
        } else {
            Err(message_page(
                StatusCode::FORBIDDEN,
                "Form expired",
                Some(self),
                "This form does not belong to your session. Reload the page and try again.",
            ))
        }
    }
}

impl FromRequestParts<AppState> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(id) = jar.get(SESSION_COOKIE).map(|c| c.value().to_owned()) else {
            return Err(Redirect::to("/console/sign-in").into_response());
        };
        let session = match state.sessions.find(&id).await {
            Ok(Some(session)) => session,
            Ok(None) => return Err(Redirect::to("/console/sign-in?ended=1").into_response()),
            Err(err) => return Err(error_page(None, err.into())),
        };
        // A session signed in with an API key ends when the key is revoked.
        if let Some(key_id) = session.principal.api_key_id() {
            match state.api_keys.exists(key_id).await {
                Ok(true) => {}
                Ok(false) => {
                    let _ = state.sessions.end(&id).await;
                    return Err(Redirect::to("/console/sign-in?ended=1").into_response());
                }
                Err(err) => return Err(error_page(None, err.into())),
            }
        }
        Ok(Visitor { id, session })
    }
}

/// An administrator's session, and the tenants it reaches.
pub struct Admin {
    pub visitor: Visitor,
    pub scope: Scope,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let visitor = Visitor::from_request_parts(parts, state).await?;
        match &visitor.session.principal {
            Principal::Admin { scope, .. } => Ok(Admin { scope: scope.clone(), visitor }),
            Principal::User { .. } => Err(message_page(
                StatusCode::FORBIDDEN,
                "Administrators only",
                Some(&visitor),
                "This page is for administrators.",
            )),
        }
    }
}

impl Admin {
    /// May this admin act on `tenant`?
    fn check_tenant(&self, tenant: &str) -> Result<(), Response> {
        if self.scope.allows_tenant(tenant) {
            Ok(())
        } else {
            Err(message_page(
                StatusCode::FORBIDDEN,
                "Another tenant",
                Some(&self.visitor),
                &format!("You administer {}, not tenant {tenant}.", self.scope),
            ))
        }
    }
}

/// An end user's session.
pub struct EndUser {
    pub visitor: Visitor,
    pub tenant: String,
    pub user: String,
}

impl FromRequestParts<AppState> for EndUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let visitor = Visitor::from_request_parts(parts, state).await?;
        match visitor.session.principal.clone() {
            Principal::User { tenant, user } => Ok(EndUser { visitor, tenant, user }),
            Principal::Admin { .. } => Err(Redirect::to("/console/admin").into_response()),
        }
    }
}

/// `/console`: wherever the visitor belongs.
async fn home(visitor: Option<Visitor>) -> Redirect {
    match visitor.map(|v| v.session.principal) {
        Some(Principal::Admin { .. }) => Redirect::to("/console/admin"),
        Some(Principal::User { .. }) => Redirect::to("/console/me"),
        None => Redirect::to("/console/sign-in"),
    }
}

impl axum::extract::OptionalFromRequestParts<AppState> for Visitor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Option<Self>, Self::Rejection> {
        Ok(<Visitor as FromRequestParts<AppState>>::from_request_parts(parts, state).await.ok())
    }
}

#[derive(Deserialize)]
struct SignInQuery {
    #[serde(default)]
    ended: Option<String>,
}

async fn sign_in_page(State(state): State<AppState>, jar: CookieJar, Query(query): Query<SignInQuery>) -> Response {
    let notice = query.ended.is_some().then_some("Your session has ended. Sign in again.");
    sign_in_form(&state, jar, StatusCode::OK, notice)
}

/// The sign-in page, with the CSRF cookie its form needs (kept if the browser has one).
fn sign_in_form(state: &AppState, jar: CookieJar, status: StatusCode, notice: Option<&str>) -> Response {
    let (jar, token) = match jar.get(SIGN_IN_COOKIE).map(|c| c.value().to_owned()) {
        Some(token) => (jar, token),
        None => match random_token() {
            Ok(token) => {
                let mut cookie = browser_cookie(
                    state,
                    SIGN_IN_COOKIE,
                    token.clone(),
                    cookie::time::Duration::hours(1),
                    SameSite::Strict,
                );
                cookie.set_secure(true); // as the __Host- prefix requires
                (jar.add(cookie), token)
            }
            Err(err) => return error_page(None, err.into()),
        },
    };
    let body = html! {
        @if let Some(notice) = notice { p.notice { (notice) } }
        p { "End users reach their connections through the link their app gives them. Administrators sign in here." }
        form method="post" action="/console/sign-in" {
            input type="hidden" name="csrf" value=(token);
            label for="api_key" { "Admin API key" }
            input #api_key type="password" name="api_key" autocomplete="off" required placeholder="tvk_…";
            button type="submit" { "Sign in" }
        }
        @if state.oidc.is_some() {
            form method="post" action=(oidc::START_PATH) {
                input type="hidden" name="csrf" value=(token);
                button.secondary type="submit" { "Sign in with your organization" }
            }
        }
    };
    (jar, page(status, "Sign in", None, body)).into_response()
}

#[derive(Deserialize)]
struct SignInForm {
    csrf: String,
    api_key: String,
}

async fn sign_in(State(state): State<AppState>, jar: CookieJar, Form(form): Form<SignInForm>) -> Response {
    if !sign_in_csrf_ok(&jar, &form.csrf) {
        return sign_in_form(&state, jar, StatusCode::FORBIDDEN, Some("The form expired. Try again."));
    }
    let info = match state.api_keys.verify(form.api_key.trim()).await {
        Ok(Some(info)) => info,
        Ok(None) => {
            let _ = audit(&state, SIGN_IN, DENIED, None, None).await; // refused either way
            return sign_in_form(&state, jar, StatusCode::UNAUTHORIZED, Some("That API key is unknown or revoked."));
        }
        Err(err) => return error_page(None, err.into()),
    };
    let principal = Principal::Admin { scope: info.scope, via: format!("apikey:{}", info.id) };
    start_admin_session(&state, jar, principal).await
}

/// Did the sign-in form come from our own page (its token equals the cookie's)?
fn sign_in_csrf_ok(jar: &CookieJar, presented: &str) -> bool {
    jar.get(SIGN_IN_COOKIE).is_some_and(|cookie| csrf_matches(cookie.value(), presented))
}

/// Sign in: a new session (a new id, whatever the browser had), then the admin's home.
async fn start_admin_session(state: &AppState, jar: CookieJar, principal: Principal) -> Response {
    let (tenant, actor) = match &principal {
        Principal::Admin { scope, via } => {
            let tenant = match scope {
                Scope::Tenant(tenant) => Some(tenant.clone()),
                Scope::Operator => None,
            };
            (tenant, Some(Actor::console(via).as_str().to_owned()))
        }
        Principal::User { .. } => (None, None),
    };
    match state.sessions.start(principal, session::ADMIN_TTL_SECS).await {
        Ok((id, _)) => {
            if let Err(refused) = audit(state, SIGN_IN, "ok", tenant, actor).await {
                return error_page(None, tokenvault::Error::storage(refused.to_string()).into());
            }
            let max_age = cookie::time::Duration::seconds(session::ADMIN_TTL_SECS as i64);
            let jar = jar.remove(Cookie::build(SIGN_IN_COOKIE).path("/").secure(true)).add(browser_cookie(
                state,
                SESSION_COOKIE,
                id,
                max_age,
                SameSite::Lax,
            ));
            (jar, Redirect::to("/console/admin")).into_response()
        }
        Err(err) => error_page(None, err.into()),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn sign_out(
    State(state): State<AppState>,
    visitor: Visitor,
    jar: CookieJar,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = visitor.check_csrf(&form.csrf) {
        return refused;
    }
    if let Err(err) = state.sessions.end(&visitor.id).await {
        return error_page(Some(&visitor), err.into());
    }
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/"));
    let back = match visitor.session.principal {
        Principal::Admin { .. } => "/console/sign-in",
        Principal::User { .. } => "/console/signed-out",
    };
    (jar, Redirect::to(back)).into_response()
}

async fn signed_out() -> Response {
    message_page(StatusCode::OK, "Signed out", None, "You are signed out. You can close this window.")
}

#[derive(Deserialize)]
struct EnterQuery {
    code: Option<String>,
}

/// A console link: spend its code, and let the browser in as the user it names.
async fn enter(State(state): State<AppState>, jar: CookieJar, Query(query): Query<EnterQuery>) -> Response {
    let code = query.code.unwrap_or_default();
    match state.sessions.enter(&code).await {
        Ok(Some((id, _))) => {
            let max_age = cookie::time::Duration::seconds(session::USER_TTL_SECS as i64);
            let jar = jar.add(browser_cookie(&state, SESSION_COOKIE, id, max_age, SameSite::Lax));
            (jar, Redirect::to("/console/me")).into_response()
        }
        Ok(None) => message_page(
            StatusCode::GONE,
            "Link expired",
            None,
            "This link is unknown, used already or expired. Ask the app that sent you here for a new one.",
        ),
        Err(err) => error_page(None, err.into()),
    }
}

/// A cookie only this service reads: HttpOnly, whole-site, Secure behind https.
fn browser_cookie(
    state: &AppState,
    name: &'static str,
    value: String,
    max_age: cookie::time::Duration,
    same_site: SameSite,
) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .secure(state.public_url.starts_with("https://"))
        .same_site(same_site)
        .max_age(max_age)
        .build()
}

/// The console's own audit events (sign-ins), beside the component's. A sign-in that
/// cannot be recorded does not happen (unless the operator chose to serve on).
async fn audit(
    state: &AppState,
    action: &str,
    outcome: &str,
    tenant: Option<String>,
    actor: Option<String>,
) -> Result<(), AuditUnavailable> {
    let at_ms = state.vault.services().clock.now().as_millis() as u64;
    let record = AuditRecord {
        at_ms,
        action: action.into(),
        outcome: outcome.into(),
        tenant,
        user: None,
        provider: None,
        name: None,
        actor,
    };
    state.vault.services().audit.record(&record).await
}

/// A page for a vault error: its message (never a value), with a fitting status.
fn error_page(visitor: Option<&Visitor>, error: ApiError) -> Response {
    let text = error.to_string();
    message_page(error.status(), "Something went wrong", visitor, &text)
}

fn message_page(status: StatusCode, title: &str, visitor: Option<&Visitor>, text: &str) -> Response {
    page(status, title, visitor, html! { p { (text) } })
}

/// A console page; maud escapes every value put in it.
fn page(status: StatusCode, title: &str, visitor: Option<&Visitor>, body: Markup) -> Response {
    let header = html! {
        header {
            span.brand { "tokenvault" }
            @if let Some(visitor) = visitor {
                nav {
                    @match &visitor.session.principal {
                        Principal::Admin { scope, .. } => {
                            a href="/console/admin" { "Users" }
                            a href="/console/admin/audit" { "Audit log" }
                            a href="/console/admin/webhooks" { "Webhooks" }
                            span.who { "Admin · " (scope) }
                        }
                        Principal::User { user, .. } => {
                            a href="/console/me" { "Your connections" }
                            span.who { (user) }
                        }
                    }
                    form.inline method="post" action="/console/sign-out" {
                        input type="hidden" name="csrf" value=(visitor.session.csrf);
                        button.link type="submit" { "Sign out" }
                    }
                }
            }
        }
    };
    super::html::page(status, title, STYLE, Some(header), body)
}

const STYLE: &str = "header{display:flex;justify-content:space-between;align-items:center;padding:.8rem 2rem;\
background:#1d2330;color:#fff}header a{color:#fff;margin-right:1rem}.brand{font-weight:700}\
nav{display:flex;align-items:center;gap:.5rem}.who{opacity:.8;margin-right:.5rem}\
main{max-width:60rem;margin:2rem auto}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.5rem;border-bottom:1px solid #e3e6eb;vertical-align:top}\
form.inline{display:inline}a.button{display:inline-block;padding:.4rem .9rem;border-radius:4px;\
color:#fff;text-decoration:none}a.button.danger{background:#b3261e}button{padding:.4rem .9rem;border-radius:4px;border:1px solid #1d2330;\
background:#1d2330;color:#fff;cursor:pointer}button.danger{background:#b3261e;border-color:#b3261e}\
button.secondary{background:#fff;color:#1d2330;margin-top:1rem}button.link{background:none;border:none;\
color:#fff;text-decoration:underline;padding:0}label{display:block;margin:.8rem 0 .3rem}\
input[type=password],input[type=text],select{padding:.4rem;min-width:16rem}.notice{background:#eef3fd;\
padding:.6rem 1rem;border-radius:4px}.warn{background:#fff4e0;color:#7a4b00}.muted{color:#5c6370}\
.filters{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin-bottom:1rem}.filters label{margin:0}\
fieldset{border:1px solid #e3e6eb;border-radius:4px;margin:.8rem 0}label.inline{display:inline;margin-right:.8rem}\
code{background:#f0f2f5;padding:.15rem .35rem;border-radius:3px;word-break:break-all}";
